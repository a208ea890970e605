package exchange

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"

	apievents "github.com/containerd/containerd/api/events"
	api "github.com/containerd/containerd/api/services/events/v1"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/flotilla/flotilla/eventd/bus"
	"github.com/flotilla/flotilla/services/namespace"
)

// Topics are chosen by clients: metrics labelled by them must stay bounded.
func TestMetricsTopicsAreBounded(t *testing.T) {
	b := bus.NewMemory(bus.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	defer b.Close()
	m := NewMetrics()
	s := New(b, m)
	ctx := namespace.WithNamespace(context.Background(), "metrics")
	ev := envelope(t, "metrics", "/tasks/exit", &apievents.TaskExit{}).Event

	if _, err := s.Publish(ctx, &api.PublishRequest{Topic: "/tasks/exit", Event: ev}); err != nil {
		t.Fatal(err)
	}
	const custom = 200
	for i := 0; i < custom; i++ {
		if _, err := s.Publish(ctx, &api.PublishRequest{Topic: fmt.Sprintf("/client/chosen%d", i), Event: ev}); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("a known topic is its own label", func(t *testing.T) {
		if got := testutil.ToFloat64(m.Published.WithLabelValues("/tasks/exit")); got != 1 {
			t.Fatalf("/tasks/exit published = %v, want 1", got)
		}
	})
	t.Run("every other topic counts as other", func(t *testing.T) {
		if got := testutil.ToFloat64(m.Published.WithLabelValues("other")); got != custom {
			t.Fatalf("other published = %v, want %d", got, custom)
		}
		if n := testutil.CollectAndCount(m.Published); n != 2 {
			t.Fatalf("%d published series after %d client topics, want 2", n, custom)
		}
	})
}
