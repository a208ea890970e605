package transfer

import (
	"context"
	"errors"
	"runtime"
	"testing"
)

func TestSlotsGoToTheLowestRankThenPartFirst(t *testing.T) {
	ctx := context.Background()
	s := newSlots(1)
	if err := s.acquire(ctx, 9, 0); err != nil {
		t.Fatal(err)
	}
	type want struct{ rank, part int }
	order := []want{{3, 1}, {1, 2}, {2, 0}, {1, 0}}
	got := make(chan want, len(order))
	started := make(chan struct{})
	for i, w := range order {
		go func() {
			started <- struct{}{}
			if err := s.acquire(ctx, w.rank, w.part); err != nil {
				t.Error(err)
				return
			}
			got <- w
		}()
		<-started
		waitQueued(t, s, i+1)
	}
	for _, exp := range []want{{1, 0}, {1, 2}, {2, 0}, {3, 1}} {
		s.release()
		if g := <-got; g != exp {
			t.Fatalf("slot went to rank %d part %d, want rank %d part %d", g.rank, g.part, exp.rank, exp.part)
		}
	}
}

func TestSlotsAcquireGivesUpWithItsContext(t *testing.T) {
	s := newSlots(1)
	s.acquire(context.Background(), 0, 0)
	ctx, cancel := context.WithCancelCause(context.Background())
	gone := errors.New("pull cancelled")
	done := make(chan error)
	go func() { done <- s.acquire(ctx, 1, 0) }()
	waitQueued(t, s, 1)
	cancel(gone)
	if err := <-done; !errors.Is(err, gone) {
		t.Fatalf("acquire after cancel: %v, want %v", err, gone)
	}
	s.release()
	// The slot is free again, not handed to the waiter that left.
	if err := s.acquire(context.Background(), 5, 0); err != nil {
		t.Fatal(err)
	}
}

func (s *slots) waitingNow() slotQueue {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append(slotQueue(nil), s.waiting...)
}

// waitQueued waits until n acquires wait for a slot.
func waitQueued(t *testing.T, s *slots, n int) {
	t.Helper()
	for len(s.waitingNow()) < n {
		runtime.Gosched()
	}
}
