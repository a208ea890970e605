package service

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"testing"

	"github.com/flotilla/flotilla/snapshotd/plugins/native"
	"github.com/flotilla/flotilla/snapshotd/snapshotter"
)

// named adds the Names that Holdings needs to backends.
type named struct{ backends }

func (n named) Names() []string { return slices.Sorted(maps.Keys(n.backends)) }

func TestHoldingsNamesNamespacesWithSnapshotsInAnyBackend(t *testing.T) {
	open := func() snapshotter.Snapshotter {
		sn, err := native.New(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { sn.Close() })
		return sn
	}
	a, b := open(), open()
	ctx := context.Background()
	// Backends see namespaced keys, as the Snapshots service makes them.
	for _, p := range []struct {
		sn  snapshotter.Snapshotter
		key string
	}{{a, "team-a/k1"}, {a, "team-a/k2"}, {b, "team-b/k"}} {
		if _, err := p.sn.Prepare(ctx, p.key, ""); err != nil {
			t.Fatal(err)
		}
	}
	held, err := Holdings(named{backends{"a": a, "b": b}})(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := fmt.Sprint(held), "map[team-a:[snapshots] team-b:[snapshots]]"; got != want {
		t.Errorf("holdings = %s, want %s", got, want)
	}
}
