package service

import (
	"context"
	"path/filepath"
	"slices"
	"testing"

	"github.com/flotilla/flotilla/services/gc"
	"github.com/flotilla/flotilla/snapshotd/plugins/native"
)

// TestSweepPrunesHoldsThatKeepNothing: a sweep drops the records of holds
// by leases that are gone and of snapshots that are not there, and keeps
// the rest.
func TestSweepPrunesHoldsThatKeepNothing(t *testing.T) {
	ctx := context.Background()
	sn, err := native.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sn.Close() })
	for _, key := range []string{"ns/kept", "ns/of-gone-lease"} {
		if _, err := sn.Prepare(ctx, key, ""); err != nil {
			t.Fatal(err)
		}
	}
	holds, err := OpenLeaseHolds(filepath.Join(t.TempDir(), "leaseholds.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { holds.Close() })
	for _, h := range [][2]string{{"live", "kept"}, {"live", "removed-by-a-client"}, {"gone", "of-gone-lease"}} {
		if err := holds.Add("ns", h[0], "native", h[1]); err != nil {
			t.Fatal(err)
		}
	}
	src := NewGCSource(named{backends{"native": sn}}, holds)
	if err := src.Mark(ctx, func(gc.Graph) error { return nil }); err != nil {
		t.Fatal(err)
	}
	removed, err := src.Remove(ctx, []gc.Ref{gc.Lease("ns", "gone")})
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != 1 || removed[0].Kind != gc.KindLeaseHold || removed[0].Count != 2 {
		t.Errorf("removed %+v, want 2 lease holds", removed)
	}
	var left []string
	holds.ForEach(func(lease, snapshot gc.Ref) { left = append(left, lease.ID+"→"+snapshot.ID) })
	if !slices.Equal(left, []string{"live→kept"}) {
		t.Errorf("holds left: %q, want only live→kept", left)
	}
	// The snapshot the gone lease held is not removed by this: whether it
	// lives is the collector's answer.
	if _, err := sn.Stat(ctx, "ns/of-gone-lease"); err != nil {
		t.Errorf("the snapshot of the gone lease: %v", err)
	}
}
