package bus

import (
	"context"
	"io"
	"log/slog"
	"strconv"
	"testing"
	"time"

	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
)

func quiet() Option { return WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))) }

func env(topic string, i int) *types.Envelope {
	return &types.Envelope{Namespace: "ns" + strconv.Itoa(i%2), Topic: topic}
}

func receive(t *testing.T, s *Subscription, n int) []*types.Envelope {
	t.Helper()
	var out []*types.Envelope
	for len(out) < n {
		select {
		case e, ok := <-s.C():
			if !ok {
				t.Fatalf("subscription closed after %d of %d envelopes", len(out), n)
			}
			out = append(out, e)
		case <-time.After(5 * time.Second):
			t.Fatalf("received %d of %d envelopes", len(out), n)
		}
	}
	return out
}

func TestMemoryDeliversInOrderToEverySubscriber(t *testing.T) {
	m := NewMemory(quiet())
	defer m.Close()
	a, b := m.Subscribe(nil), m.Subscribe(nil)
	for i := range 100 {
		if err := m.Publish(context.Background(), env("/t/"+strconv.Itoa(i), i)); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range []*Subscription{a, b} {
		for i, e := range receive(t, s, 100) {
			if want := "/t/" + strconv.Itoa(i); e.Topic != want {
				t.Fatalf("envelope %d is %s, want %s", i, e.Topic, want)
			}
		}
	}
}

func TestMemoryAppliesEachSubscribersMatch(t *testing.T) {
	m := NewMemory(quiet())
	defer m.Close()
	odd := m.Subscribe(func(e *types.Envelope) bool { return e.Namespace == "ns1" })
	for i := range 10 {
		m.Publish(context.Background(), env("/t", i))
	}
	m.Close()
	var got []string
	for e := range odd.C() {
		got = append(got, e.Namespace)
	}
	if len(got) != 5 {
		t.Fatalf("filtered subscriber got %v, want 5 envelopes of ns1", got)
	}
	for _, ns := range got {
		if ns != "ns1" {
			t.Fatalf("filtered subscriber got namespace %s", ns)
		}
	}
}

func TestMemorySlowSubscriberLosesEventsWithoutBlockingOthers(t *testing.T) {
	var hooked int
	m := NewMemory(quiet(), WithBuffer(4), WithDropHook(func(*types.Envelope) { hooked++ }))
	defer m.Close()
	slow := m.Subscribe(nil)
	fast := m.Subscribe(nil)
	done := make(chan []*types.Envelope)
	go func() { done <- receive(t, fast, 50) }()
	for i := range 50 {
		m.Publish(context.Background(), env("/t", i))
		// Let the fast reader keep its buffer from filling.
		for len(fast.C()) > 2 {
			time.Sleep(time.Millisecond)
		}
	}
	if got := len(<-done); got != 50 {
		t.Fatalf("fast subscriber got %d", got)
	}
	if slow.Dropped() != 46 || hooked != 46 {
		t.Fatalf("slow subscriber dropped %d (hook saw %d), want 46 beyond its buffer of 4", slow.Dropped(), hooked)
	}
	if fast.Dropped() != 0 {
		t.Fatalf("fast subscriber dropped %d", fast.Dropped())
	}
}

func TestMemoryCloseEndsSubscriptionsAndRefusesPublish(t *testing.T) {
	m := NewMemory(quiet())
	s := m.Subscribe(nil)
	s2 := m.Subscribe(nil)
	s2.Close()
	s2.Close() // twice is fine
	m.Close()
	if _, ok := <-s.C(); ok {
		t.Fatal("subscription still open after Close")
	}
	if err := m.Publish(context.Background(), env("/t", 0)); !errdefs.IsUnavailable(err) {
		t.Fatalf("publish after close = %v, want Unavailable", err)
	}
	if _, ok := <-m.Subscribe(nil).C(); ok {
		t.Fatal("subscription made after Close is open")
	}
}
