package publish

import (
	"context"
	"io"
	"os/exec"
	"slices"
	"sync"
	"testing"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// fakeBinary records each invocation and fails the first failures[topic]
// invocations of a topic.
type fakeBinary struct {
	mu       sync.Mutex
	calls    [][]string
	events   []any
	failures map[string]int
	block    chan struct{}
}

func (f *fakeBinary) run(cmd *exec.Cmd) (int, error) {
	if f.block != nil {
		<-f.block
	}
	data, err := io.ReadAll(cmd.Stdin)
	if err != nil {
		return -1, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, cmd.Args[1:])
	topic := cmd.Args[5]
	if f.failures[topic] > 0 {
		f.failures[topic]--
		return 1, nil
	}
	var a anypb.Any
	if err := proto.Unmarshal(data, &a); err != nil {
		return 2, nil
	}
	v, err := typeurl.UnmarshalAny(&a)
	if err != nil {
		return 3, nil
	}
	f.events = append(f.events, v)
	return 0, nil
}

func TestPublish(t *testing.T) {
	cases := []struct {
		name      string
		failures  map[string]int
		attempts  int
		wantCalls int
		wantTopic []string
	}{
		{"events are delivered in order, once each", nil, 3, 3, []string{"/tasks/create", "/tasks/start", "/tasks/exit"}},
		{"a failed delivery is retried before the next event", map[string]int{"/tasks/start": 2}, 3, 5, []string{"/tasks/create", "/tasks/start", "/tasks/exit"}},
		{"an event that keeps failing is dropped after the last attempt", map[string]int{"/tasks/start": 9}, 2, 4, []string{"/tasks/create", "/tasks/exit"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fake := &fakeBinary{failures: c.failures}
			b := New("/bin/publish", "/run/d.sock", "ns1", WithRunner(fake.run), WithRetry(c.attempts, time.Millisecond))
			ctx := context.Background()
			for _, e := range []struct {
				topic string
				ev    any
			}{
				{"/tasks/create", &eventstypes.TaskCreate{ContainerID: "c1", Pid: 10}},
				{"/tasks/start", &eventstypes.TaskStart{ContainerID: "c1", Pid: 10}},
				{"/tasks/exit", &eventstypes.TaskExit{ContainerID: "c1", ID: "c1", Pid: 10, ExitStatus: 7}},
			} {
				if err := b.Publish(ctx, e.topic, e.ev); err != nil {
					t.Fatal(err)
				}
			}
			if err := b.Close(ctx); err != nil {
				t.Fatal(err)
			}
			if len(fake.calls) != c.wantCalls {
				t.Fatalf("%d invocations, want %d: %v", len(fake.calls), c.wantCalls, fake.calls)
			}
			want := []string{"--address", "/run/d.sock", "publish", "--topic", "/tasks/create", "--namespace", "ns1"}
			if !slices.Equal(fake.calls[0], want) {
				t.Fatalf("invocation %q, want %q", fake.calls[0], want)
			}
			var got []string
			for _, call := range fake.calls {
				if len(got) == 0 || got[len(got)-1] != call[4] {
					got = append(got, call[4])
				}
			}
			var delivered []string
			for _, ev := range fake.events {
				switch ev.(type) {
				case *eventstypes.TaskCreate:
					delivered = append(delivered, "/tasks/create")
				case *eventstypes.TaskStart:
					delivered = append(delivered, "/tasks/start")
				case *eventstypes.TaskExit:
					delivered = append(delivered, "/tasks/exit")
				}
			}
			if !slices.Equal(delivered, c.wantTopic) {
				t.Fatalf("delivered %v, want %v", delivered, c.wantTopic)
			}
		})
	}
}

func TestPublishDoesNotWaitForTheBinary(t *testing.T) {
	fake := &fakeBinary{block: make(chan struct{})}
	b := New("/bin/publish", "a", "ns", WithRunner(fake.run))
	done := make(chan error)
	go func() {
		done <- b.Publish(context.Background(), "/tasks/oom", &eventstypes.TaskOOM{ContainerID: "c"})
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Publish blocked on the binary")
	}
	close(fake.block)
	if err := b.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := b.Publish(context.Background(), "/tasks/oom", &eventstypes.TaskOOM{}); err == nil {
		t.Fatal("Publish after Close succeeded")
	}
}

func TestEncodeUsesContainerdTypeURLs(t *testing.T) {
	data, err := Encode(&eventstypes.TaskExit{ContainerID: "c"})
	if err != nil {
		t.Fatal(err)
	}
	var a anypb.Any
	if err := proto.Unmarshal(data, &a); err != nil {
		t.Fatal(err)
	}
	if a.TypeUrl != "containerd.events.TaskExit" {
		t.Fatalf("type URL %q", a.TypeUrl)
	}
}
