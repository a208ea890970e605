package events

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	apievents "github.com/containerd/containerd/api/events"
	eventsapi "github.com/containerd/containerd/api/services/events/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/flotilla/flotilla/services/namespace"
)

// fakeEventd records forwarded envelopes and rejects those on rejectTopic.
type fakeEventd struct {
	eventsapi.UnimplementedEventsServer
	rejectTopic string

	mu  sync.Mutex
	got []*types.Envelope
}

func (f *fakeEventd) Forward(_ context.Context, req *eventsapi.ForwardRequest) (*emptypb.Empty, error) {
	if req.GetEnvelope().GetTopic() == f.rejectTopic {
		return nil, errgrpc.ToGRPC(fmt.Errorf("no: %w", errdefs.ErrInvalidArgument))
	}
	f.mu.Lock()
	f.got = append(f.got, req.GetEnvelope())
	f.mu.Unlock()
	return &emptypb.Empty{}, nil
}

func (f *fakeEventd) received() []*types.Envelope {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*types.Envelope(nil), f.got...)
}

// serveFake starts fake on the unix socket sock until the test ends.
func serveFake(t *testing.T, sock string, fake *fakeEventd) {
	t.Helper()
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	eventsapi.RegisterEventsServer(s, fake)
	go s.Serve(l)
	t.Cleanup(s.Stop)
}

func newTestRemote(t *testing.T, sock string, opts ...RemoteOption) (*Remote, *prometheus.Registry) {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	opts = append([]RemoteOption{WithLogger(log), WithRetryBackoff(10*time.Millisecond, 50*time.Millisecond)}, opts...)
	r, err := NewRemote(sock, opts...)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	if err := r.Register(reg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		r.Close(ctx)
	})
	return r, reg
}

func publishN(t *testing.T, r *Remote, from, to int) (dropped []int) {
	t.Helper()
	ctx := namespace.WithNamespace(context.Background(), "test")
	for i := from; i < to; i++ {
		err := r.Publish(ctx, "/namespaces/create", &apievents.NamespaceCreate{Name: strconv.Itoa(i)})
		switch {
		case err == nil:
		case errdefs.IsResourceExhausted(err):
			dropped = append(dropped, i)
		default:
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	return dropped
}

func names(t *testing.T, envs []*types.Envelope) []int {
	t.Helper()
	var out []int
	for _, env := range envs {
		var ev apievents.NamespaceCreate
		if err := env.GetEvent().UnmarshalTo(&ev); err != nil {
			t.Fatalf("event of %s: %v", env.GetTopic(), err)
		}
		n, _ := strconv.Atoi(ev.Name)
		out = append(out, n)
		if env.GetNamespace() != "test" || env.GetTimestamp() == nil {
			t.Fatalf("envelope %d: namespace %q, timestamp %v", n, env.GetNamespace(), env.GetTimestamp())
		}
	}
	return out
}

func flush(t *testing.T, r *Remote) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.Close(ctx); err != nil {
		t.Fatalf("close: %v", err)
	}
}

func TestRemoteKeepsOrderWhileEventdIsAbsent(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "eventd.sock")
	r, _ := newTestRemote(t, sock)
	if dropped := publishN(t, r, 0, 200); len(dropped) != 0 {
		t.Fatalf("dropped %v with room in the queue", dropped)
	}
	time.Sleep(100 * time.Millisecond) // a few failed attempts
	fake := &fakeEventd{}
	serveFake(t, sock, fake)
	publishN(t, r, 200, 300)
	flush(t, r)

	got := names(t, fake.received())
	if len(got) != 300 {
		t.Fatalf("eventd received %d events, want 300", len(got))
	}
	for i, n := range got {
		if n != i {
			t.Fatalf("event %d arrived at position %d: order not kept", n, i)
		}
	}
	if got := r.Publish(namespace.WithNamespace(context.Background(), "test"), "/x", &apievents.NamespaceCreate{}); !errdefs.IsFailedPrecondition(got) {
		t.Fatalf("publish after close = %v, want FailedPrecondition", got)
	}
}

func TestRemoteOverflowDropsNewestAndCountsExactly(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "eventd.sock")
	r, reg := newTestRemote(t, sock, WithQueueSize(10))
	dropped := publishN(t, r, 0, 25)
	if len(dropped) != 15 || dropped[0] != 10 {
		t.Fatalf("dropped %v, want events 10..24", dropped)
	}
	n, err := testutil.GatherAndCount(reg, "events_publisher_dropped_total")
	if err != nil || n != 1 {
		t.Fatalf("dropped series = %d, %v", n, err)
	}
	fake := &fakeEventd{}
	serveFake(t, sock, fake)
	flush(t, r)

	if v := testutil.ToFloat64(r.dropped.WithLabelValues("/namespaces/create", DropQueueFull)); v != 15 {
		t.Fatalf("dropped counter = %v, want 15", v)
	}
	if v := testutil.ToFloat64(r.sent.WithLabelValues("/namespaces/create")); v != 10 {
		t.Fatalf("sent counter = %v, want 10", v)
	}
	got := names(t, fake.received())
	if fmt.Sprint(got) != fmt.Sprint([]int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}) {
		t.Fatalf("eventd received %v, want the first 10 in order", got)
	}
}

func TestRemoteDropsRejectedEventAndGoesOn(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "eventd.sock")
	fake := &fakeEventd{rejectTopic: "/bad/topic"}
	serveFake(t, sock, fake)
	r, _ := newTestRemote(t, sock)
	ctx := namespace.WithNamespace(context.Background(), "test")
	publishN(t, r, 0, 1)
	if err := r.Publish(ctx, "/bad/topic", &apievents.NamespaceCreate{Name: "x"}); err != nil {
		t.Fatal(err)
	}
	publishN(t, r, 1, 2)
	flush(t, r)
	if got := names(t, fake.received()); fmt.Sprint(got) != "[0 1]" {
		t.Fatalf("received %v, want [0 1]", got)
	}
	if v := testutil.ToFloat64(r.dropped.WithLabelValues("/bad/topic", DropRejected)); v != 1 {
		t.Fatalf("rejected counter = %v, want 1", v)
	}
}

func TestRemoteCloseGivesUpWithinItsBound(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "eventd.sock")
	r, _ := newTestRemote(t, sock)
	publishN(t, r, 0, 5)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	err := r.Close(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("close with eventd absent = %v, want deadline exceeded", err)
	}
	if v := testutil.ToFloat64(r.dropped.WithLabelValues("/namespaces/create", DropClosed)); v != 5 {
		t.Fatalf("closed counter = %v, want 5", v)
	}
}

func TestRemotePublishRejectsBadInput(t *testing.T) {
	r, _ := newTestRemote(t, filepath.Join(t.TempDir(), "eventd.sock"))
	ns := namespace.WithNamespace(context.Background(), "test")
	for _, tc := range []struct {
		name  string
		ctx   context.Context
		topic string
		event any
	}{
		{"topic without leading slash", ns, "tasks/exit", &apievents.TaskExit{}},
		{"nil event", ns, "/tasks/exit", nil},
		{"event that is not a message and cannot be marshalled", ns, "/tasks/exit", func() {}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := r.Publish(tc.ctx, tc.topic, tc.event); !errdefs.IsInvalidArgument(err) {
				t.Fatalf("Publish = %v, want InvalidArgument", err)
			}
		})
	}
	t.Run("no namespace in context is FailedPrecondition", func(t *testing.T) {
		if err := r.Publish(context.Background(), "/tasks/exit", &apievents.TaskExit{}); !errdefs.IsFailedPrecondition(err) {
			t.Fatalf("Publish = %v, want FailedPrecondition", err)
		}
	})
}
