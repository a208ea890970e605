package gc

import (
	"context"
	"time"
)

// Source is what a daemon knows of its own objects.
type Source interface {
	// Mark calls fn with every object the daemon keeps and the references
	// it records, in batches of a size it chooses.
	Mark(ctx context.Context, fn func(Graph) error) error
	// Remove removes the objects named; one already gone is skipped. It
	// runs while the daemon's writers are held, so it must not enter
	// Tracker.Write. A failure to remove one object does not stop the
	// others; what was removed is reported along with the error.
	Remove(ctx context.Context, refs []Ref) ([]Removed, error)
}

// local is a daemon's Store: a Source guarded by a Tracker.
type local struct {
	name    string
	tracker *Tracker
	source  Source
}

// NewStore returns the Store of the daemon called name, over source, whose
// writes tracker guards.
func NewStore(name string, tracker *Tracker, source Source) Store {
	return &local{name: name, tracker: tracker, source: source}
}

func (l *local) Name() string { return l.name }

func (l *local) Begin(_ context.Context, epoch string, timeout time.Duration) error {
	return l.tracker.begin(epoch, timeout)
}

func (l *local) Mark(ctx context.Context, epoch string, fn func(Graph) error) error {
	if err := l.tracker.check(epoch); err != nil {
		return err
	}
	return l.source.Mark(ctx, fn)
}

func (l *local) Hold(_ context.Context, epoch string, timeout time.Duration) ([]Ref, error) {
	return l.tracker.hold(epoch, timeout)
}

func (l *local) Sweep(ctx context.Context, epoch string, remove []Ref) ([]Removed, error) {
	return l.tracker.sweep(epoch, remove, func(refs []Ref) ([]Removed, error) {
		// Called with none too: a source may clean up beyond what it is named.
		return l.source.Remove(ctx, refs)
	})
}

func (l *local) End(_ context.Context, epoch string) error {
	l.tracker.end(epoch)
	return nil
}
