package gc

import (
	"fmt"
	"sync"
	"time"

	"github.com/containerd/errdefs"
)

// Bounds a store puts on what a collector asks: how long an epoch stays
// open and how long writers stay blocked without the collector's word.
const (
	DefaultEpochTimeout = 5 * time.Minute
	MaxEpochTimeout     = 30 * time.Minute
	DefaultHoldTimeout  = 30 * time.Second
	MaxHoldTimeout      = 2 * time.Minute
)

// Tracker guards a store's writes against a collection running across
// stores. Every write that creates or changes an object, or makes it
// reference another, runs between Write and the function it returns; a
// lookup that may lead a client to reference an object calls Touch. While
// an epoch is open both record what they name, so the collector keeps it;
// while a hold is on, Write waits.
//
// A nil *Tracker tracks nothing and never waits, for stores outside any
// collection (tests, tools).
type Tracker struct {
	// gate is read-locked by each write, write-locked by Begin (briefly,
	// so no write straddles the epoch's start) and by a hold.
	gate sync.RWMutex

	mu         sync.Mutex
	epoch      string // "" when none is open
	touched    map[Ref]struct{}
	epochTimer *time.Timer
	held       bool // gate is write-locked for epoch's hold
	holdTimer  *time.Timer
	holdFor    time.Duration
	lapsed     bool // the hold ran out before Sweep
	sweeping   bool // a sweep runs under the hold: only it releases it
}

// NewTracker returns a tracker with no epoch open.
func NewTracker() *Tracker { return &Tracker{} }

// Write enters a write that touches refs; the caller calls the returned
// function once the write is durable (or failed). It waits while a hold
// is on. Writes must not nest.
func (t *Tracker) Write(refs ...Ref) (done func()) {
	if t == nil {
		return func() {}
	}
	t.gate.RLock()
	t.Touch(refs...)
	return t.gate.RUnlock
}

// Touch records refs as touched if an epoch is open.
func (t *Tracker) Touch(refs ...Ref) {
	if t == nil || len(refs) == 0 {
		return
	}
	t.mu.Lock()
	if t.epoch != "" {
		for _, r := range refs {
			t.touched[r] = struct{}{}
		}
	}
	t.mu.Unlock()
}

// begin opens epoch once the writes in flight are done, ending any other.
func (t *Tracker) begin(epoch string, timeout time.Duration) error {
	if epoch == "" {
		return fmt.Errorf("gc: an epoch needs a name: %w", errdefs.ErrInvalidArgument)
	}
	t.mu.Lock()
	t.endLocked()
	t.mu.Unlock()

	t.gate.Lock()
	defer t.gate.Unlock()
	t.mu.Lock()
	defer t.mu.Unlock()
	t.endLocked() // another Begin may have slipped in
	t.epoch = epoch
	t.touched = map[Ref]struct{}{}
	t.lapsed = false
	t.epochTimer = time.AfterFunc(bound(timeout, DefaultEpochTimeout, MaxEpochTimeout), func() { t.end(epoch) })
	return nil
}

// check is FailedPrecondition unless epoch is open; t.mu is held.
func (t *Tracker) checkLocked(epoch string) error {
	if t.epoch == "" || t.epoch != epoch {
		return fmt.Errorf("gc: epoch %q is not open here (it ended or timed out, or another began): %w", epoch, errdefs.ErrFailedPrecondition)
	}
	return nil
}

func (t *Tracker) check(epoch string) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.checkLocked(epoch)
}

// hold blocks writers for epoch and returns what was touched since begin.
func (t *Tracker) hold(epoch string, timeout time.Duration) ([]Ref, error) {
	if err := t.check(epoch); err != nil {
		return nil, err
	}
	t.gate.Lock() // waits for the writes in flight
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.checkLocked(epoch); err != nil || t.held {
		t.gate.Unlock()
		if err == nil {
			err = fmt.Errorf("gc: epoch %q is already held: %w", epoch, errdefs.ErrFailedPrecondition)
		}
		return nil, err
	}
	t.held = true
	t.holdFor = bound(timeout, DefaultHoldTimeout, MaxHoldTimeout)
	t.holdTimer = time.AfterFunc(t.holdFor, func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		if t.epoch == epoch && t.held {
			t.lapsed = true
			t.releaseLocked()
		}
	})
	refs := make([]Ref, 0, len(t.touched))
	for r := range t.touched {
		refs = append(refs, r)
	}
	return refs, nil
}

// sweep runs remove, with writers held, on the refs not touched since
// begin. Writers stay held until end.
func (t *Tracker) sweep(epoch string, refs []Ref, remove func([]Ref) ([]Removed, error)) ([]Removed, error) {
	t.mu.Lock()
	if err := t.checkLocked(epoch); err != nil {
		t.mu.Unlock()
		return nil, err
	}
	if !t.held || !t.holdTimer.Stop() {
		t.mu.Unlock()
		return nil, fmt.Errorf("gc: epoch %q holds no writers (not held, or the hold lapsed): nothing removed: %w", epoch, errdefs.ErrFailedPrecondition)
	}
	keep := make([]Ref, 0, len(refs))
	for _, r := range refs {
		if _, ok := t.touched[r]; !ok {
			keep = append(keep, r)
		}
	}
	t.sweeping = true
	t.mu.Unlock()
	// The gate stays write-locked: no writer runs while objects go.
	removed, err := remove(keep)
	t.mu.Lock()
	t.sweeping = false
	// Writers stay held until End: the other stores may still be sweeping,
	// and a write here could reference what they remove. Should End never
	// come, the hold gives way as it would have before the sweep.
	if t.held {
		if t.epoch != epoch {
			t.releaseLocked() // ended during the sweep
		} else {
			t.holdTimer = time.AfterFunc(t.holdFor, func() {
				t.mu.Lock()
				defer t.mu.Unlock()
				if t.epoch == epoch && t.held {
					t.releaseLocked()
				}
			})
		}
	}
	t.mu.Unlock()
	return removed, err
}

// end closes epoch if it is the open one.
func (t *Tracker) end(epoch string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.epoch == epoch {
		t.endLocked()
	}
}

func (t *Tracker) endLocked() {
	if t.epoch == "" {
		return
	}
	if t.held && !t.sweeping {
		if t.holdTimer != nil {
			t.holdTimer.Stop()
		}
		t.releaseLocked()
	}
	if t.epochTimer != nil {
		t.epochTimer.Stop()
	}
	t.epoch, t.touched = "", nil
}

// releaseLocked lets writers go on; t.mu is held and so is the hold.
func (t *Tracker) releaseLocked() {
	t.held = false
	t.gate.Unlock()
}

func bound(d, def, maxD time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return min(d, maxD)
}
