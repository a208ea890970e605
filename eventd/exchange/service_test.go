package exchange

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	apievents "github.com/containerd/containerd/api/events"
	api "github.com/containerd/containerd/api/services/events/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/flotilla/flotilla/eventd/bus"
	"github.com/flotilla/flotilla/services/namespace"
)

func TestPublishAndForwardRejectBadInput(t *testing.T) {
	b := bus.NewMemory(bus.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	defer b.Close()
	s := New(b, NewMetrics())
	ns := namespace.WithNamespace(context.Background(), "default")
	ev := envelope(t, "default", "/tasks/exit", &apievents.TaskExit{}).Event
	now := timestamppb.Now()

	publish := []struct {
		name string
		ctx  context.Context
		req  *api.PublishRequest
	}{
		{"publish with topic lacking its slash", ns, &api.PublishRequest{Topic: "tasks/exit", Event: ev}},
		{"publish with empty topic component", ns, &api.PublishRequest{Topic: "/tasks//exit", Event: ev}},
		{"publish without event", ns, &api.PublishRequest{Topic: "/tasks/exit"}},
	}
	for _, tc := range publish {
		t.Run(tc.name+" is invalid", func(t *testing.T) {
			if _, err := s.Publish(tc.ctx, tc.req); !errdefs.IsInvalidArgument(err) {
				t.Fatalf("Publish = %v, want InvalidArgument", err)
			}
		})
	}
	t.Run("publish without namespace is FailedPrecondition", func(t *testing.T) {
		if _, err := s.Publish(context.Background(), &api.PublishRequest{Topic: "/tasks/exit", Event: ev}); !errdefs.IsFailedPrecondition(err) {
			t.Fatalf("Publish = %v, want FailedPrecondition", err)
		}
	})
	forward := []struct {
		name string
		env  *types.Envelope
	}{
		{"forward without envelope", nil},
		{"forward with zero timestamp", &types.Envelope{Timestamp: &timestamppb.Timestamp{}, Namespace: "default", Topic: "/tasks/exit", Event: ev}},
		{"forward with Go's zero time", &types.Envelope{Timestamp: timestamppb.New(time.Time{}), Namespace: "default", Topic: "/tasks/exit", Event: ev}},
		{"forward without timestamp", &types.Envelope{Namespace: "default", Topic: "/tasks/exit", Event: ev}},
		{"forward without namespace", &types.Envelope{Timestamp: now, Topic: "/tasks/exit", Event: ev}},
		{"forward with invalid namespace", &types.Envelope{Timestamp: now, Namespace: "no/slash", Topic: "/tasks/exit", Event: ev}},
		{"forward with invalid topic", &types.Envelope{Timestamp: now, Namespace: "default", Topic: "/tasks/", Event: ev}},
		{"forward without event", &types.Envelope{Timestamp: now, Namespace: "default", Topic: "/tasks/exit"}},
	}
	for _, tc := range forward {
		t.Run(tc.name+" is invalid", func(t *testing.T) {
			if _, err := s.Forward(ns, &api.ForwardRequest{Envelope: tc.env}); !errdefs.IsInvalidArgument(err) {
				t.Fatalf("Forward = %v, want InvalidArgument", err)
			}
		})
	}
	t.Run("valid publish and forward are accepted", func(t *testing.T) {
		if _, err := s.Publish(ns, &api.PublishRequest{Topic: "/tasks/exit", Event: ev}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Forward(context.Background(), &api.ForwardRequest{Envelope: &types.Envelope{Timestamp: now, Namespace: "other", Topic: "/tasks/exit", Event: ev}}); err != nil {
			t.Fatal(err)
		}
	})
}
