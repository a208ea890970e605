package publish

import (
	"context"
	"net"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	ttrpcevents "github.com/containerd/containerd/api/services/ttrpc/events/v1"
	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/types/known/emptypb"
)

// eventsServer is a daemon's ttrpc Events service that records envelopes.
type eventsServer struct {
	mu     sync.Mutex
	topics []string
	nss    []string
}

func (e *eventsServer) Forward(_ context.Context, r *ttrpcevents.ForwardRequest) (*emptypb.Empty, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.topics = append(e.topics, r.GetEnvelope().GetTopic())
	e.nss = append(e.nss, r.GetEnvelope().GetNamespace())
	return &emptypb.Empty{}, nil
}

func (e *eventsServer) got() ([]string, []string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.topics), slices.Clone(e.nss)
}

// serveEvents serves rec on path until the returned stop is called.
func serveEvents(t *testing.T, path string, rec *eventsServer) (stop func()) {
	t.Helper()
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	ttrpcevents.RegisterTTRPCEventsService(srv, rec)
	go srv.Serve(context.Background(), l)
	var once sync.Once
	stop = func() { once.Do(func() { srv.Close() }) }
	t.Cleanup(stop)
	return stop
}

func waitTopics(t *testing.T, rec *eventsServer, n int) []string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if topics, _ := rec.got(); len(topics) >= n {
			return topics
		}
		time.Sleep(5 * time.Millisecond)
	}
	topics, _ := rec.got()
	t.Fatalf("delivered %v, want %d events", topics, n)
	return nil
}

func TestTTRPCPublisherDeliversInOrderInTheShimsNamespace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "events.ttrpc")
	rec := &eventsServer{}
	serveEvents(t, path, rec)
	p := NewTTRPC("unix://"+path, "ns1", WithRetry(3, time.Millisecond))
	ctx := context.Background()
	p.Publish(ctx, "/tasks/create", &eventstypes.TaskCreate{ContainerID: "c"})
	p.Publish(ctx, "/tasks/start", &eventstypes.TaskStart{ContainerID: "c"})
	p.Publish(ctx, "/tasks/exit", &eventstypes.TaskExit{ContainerID: "c"})
	if err := p.Close(ctx); err != nil {
		t.Fatal(err)
	}
	topics, nss := rec.got()
	if want := []string{"/tasks/create", "/tasks/start", "/tasks/exit"}; !slices.Equal(topics, want) {
		t.Fatalf("delivered %v, want %v", topics, want)
	}
	for _, ns := range nss {
		if ns != "ns1" {
			t.Fatalf("namespace %q, want ns1", ns)
		}
	}
}

func TestTTRPCPublisherRedialsAfterTheDaemonRestarts(t *testing.T) {
	path := filepath.Join(t.TempDir(), "events.ttrpc")
	first := &eventsServer{}
	stop := serveEvents(t, path, first)
	p := NewTTRPC(path, "ns1", WithRetry(50, 10*time.Millisecond))
	t.Cleanup(func() { p.Close(context.Background()) })
	p.Publish(context.Background(), "/tasks/create", &eventstypes.TaskCreate{ContainerID: "c"})
	waitTopics(t, first, 1)

	stop() // the daemon goes away; the next event waits for its return
	p.Publish(context.Background(), "/tasks/exit", &eventstypes.TaskExit{ContainerID: "c"})
	time.Sleep(50 * time.Millisecond)
	second := &eventsServer{}
	serveEvents(t, path, second)
	if got := waitTopics(t, second, 1); !slices.Equal(got, []string{"/tasks/exit"}) {
		t.Fatalf("after the restart the daemon got %v, want [/tasks/exit]", got)
	}
}
