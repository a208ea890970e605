package gc

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/flotilla/flotilla/services/gc"
)

// memSource is an in-memory gc.Source for one store.
type memSource struct {
	objects map[gc.Ref]gc.Object
	edges   []gc.Edge
	// onMark runs after the store reported, as a write racing the
	// collection would.
	onMark func()
	// asked is every ref a sweep named.
	asked []gc.Ref
}

func (m *memSource) Mark(_ context.Context, fn func(gc.Graph) error) error {
	var g gc.Graph
	for _, o := range m.objects {
		g.Objects = append(g.Objects, o)
	}
	g.Edges = append(g.Edges, m.edges...)
	err := fn(g)
	if m.onMark != nil {
		m.onMark()
	}
	return err
}

func (m *memSource) Remove(_ context.Context, refs []gc.Ref) ([]gc.Removed, error) {
	m.asked = append(m.asked, refs...)
	var out []gc.Removed
	for _, r := range refs {
		if _, ok := m.objects[r]; ok {
			delete(m.objects, r)
			out = append(out, gc.Removed{Kind: r.Kind, Count: 1, Refs: []gc.Ref{r}})
		}
	}
	return out, nil
}

type peers []gc.Store

func (p peers) Stores(context.Context) ([]gc.Store, error) { return p, nil }

func objects(objs ...gc.Object) map[gc.Ref]gc.Object {
	m := map[gc.Ref]gc.Object{}
	for _, o := range objs {
		m[o.Ref] = o
	}
	return m
}

func TestCollect(t *testing.T) {
	ctx := context.Background()
	img := gc.Image("ns", "img")
	manifest, layer, orphan := gc.Content("ns", "sha256:m"), gc.Content("ns", "sha256:l"), gc.Content("ns", "sha256:o")
	chain, parent, stale := gc.Snapshot("ns", "overlayfs", "c2"), gc.Snapshot("ns", "overlayfs", "c1"), gc.Snapshot("ns", "overlayfs", "s")
	ctr := gc.Container("ns", "c")
	flat, flatHeld, flatChild := gc.Lease("ns", "flat"), gc.Content("ns", "sha256:f"), gc.Content("ns", "sha256:fc")

	content := &memSource{
		objects: objects(gc.Object{Ref: img, Root: true}, gc.Object{Ref: manifest}, gc.Object{Ref: layer}, gc.Object{Ref: orphan},
			gc.Object{Ref: flat, Root: true, Flat: true}, gc.Object{Ref: flatHeld}, gc.Object{Ref: flatChild}),
		edges: []gc.Edge{{From: img, To: manifest}, {From: manifest, To: layer},
			{From: flat, To: flatHeld}, {From: flatHeld, To: flatChild}},
	}
	snapshots := &memSource{
		objects: objects(gc.Object{Ref: chain}, gc.Object{Ref: parent}, gc.Object{Ref: stale}),
		edges:   []gc.Edge{{From: chain, To: parent}},
	}
	containers := &memSource{objects: objects(gc.Object{Ref: ctr, Root: true}), edges: []gc.Edge{{From: ctr, To: chain}}}

	// A write in contentd after snapshotd reported: a label referencing
	// the stale snapshot, made while the collection runs.
	contentTracker := gc.NewTracker()
	snapshots.onMark = func() {
		done := contentTracker.Write(gc.Content("ns", "sha256:new"), stale)
		done()
	}
	c := New(gc.NewStore("contentd", contentTracker, content),
		peers{gc.NewStore("snapshotd", gc.NewTracker(), snapshots), gc.NewStore("taskd", gc.NewTracker(), containers)}, nil, nil)
	res, err := c.Collect(ctx)
	if err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name string
		src  *memSource
		ref  gc.Ref
		kept bool
	}{
		{"an image keeps its manifest", content, manifest, true},
		{"a manifest keeps its layer", content, layer, true},
		{"content nothing references goes", content, orphan, false},
		{"a container keeps its snapshot in another store", snapshots, chain, true},
		{"a snapshot keeps its parent", snapshots, parent, true},
		{"a snapshot referenced by a write during the collection stays", snapshots, stale, true},
		{"a flat lease keeps what it holds", content, flatHeld, true},
		{"a flat lease does not keep what that references", content, flatChild, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, ok := tc.src.objects[tc.ref]; ok != tc.kept {
				t.Errorf("%v kept: %v, want %v", tc.ref, ok, tc.kept)
			}
		})
	}
	if len(res.Removed) != 2 {
		t.Errorf("removed %v, want the orphan and the flat lease's child", res.Removed)
	}

	// With the write gone by, the next collection takes the stale snapshot.
	snapshots.onMark = nil
	if _, err := c.Collect(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := snapshots.objects[stale]; ok {
		t.Errorf("the stale snapshot outlived a collection with no write touching it")
	}
}

// downNode is a node's store that cannot be reached.
type downNode struct{ gc.Store }

func (downNode) Node() string { return "c" }
func (downNode) Begin(context.Context, string, time.Duration) error {
	return fmt.Errorf("dial 10.0.0.3:7002: connection refused")
}

func TestCollectStopsBeforeSweepingWhenANodeCannotBeAsked(t *testing.T) {
	orphan := gc.Content("ns", "sha256:o")
	content := &memSource{objects: objects(gc.Object{Ref: orphan})}
	reg := prometheus.NewRegistry()
	c := New(gc.NewStore("contentd", gc.NewTracker(), content),
		peers{downNode{gc.NewStore("snapshotd", gc.NewTracker(), &memSource{})}}, NewMetrics(reg), nil)
	_, err := c.Collect(context.Background())
	if !errdefs.IsUnavailable(err) {
		t.Fatalf("collection with node c down = %v, want Unavailable", err)
	}
	var u *UnreachableError
	if !errors.As(err, &u) || u.Nodes["c"] == "" {
		t.Errorf("error %v does not name node c", err)
	}
	if _, ok := content.objects[orphan]; !ok {
		t.Errorf("contentd swept while node c could not be asked")
	}
	if got := testutil.ToFloat64(c.metrics.blocked.WithLabelValues("c")); got != 1 {
		t.Errorf("flotilla_gc_blocked_total{node=\"c\"} = %v, want 1", got)
	}
}

func TestCollectNamesGoneLeasesToTheStoresRecordingTheirHolds(t *testing.T) {
	live, expired, gone := gc.Lease("ns", "live"), gc.Lease("ns", "expired"), gc.Lease("ns", "gone")
	held := gc.Snapshot("ns", "overlayfs", "held")
	content := &memSource{objects: objects(gc.Object{Ref: live, Root: true}, gc.Object{Ref: expired})}
	snapshots := &memSource{
		objects: objects(gc.Object{Ref: held}),
		edges:   []gc.Edge{{From: live, To: held}, {From: expired, To: held}, {From: gone, To: held}},
	}
	c := New(gc.NewStore("contentd", gc.NewTracker(), content),
		peers{gc.NewStore("snapshotd", gc.NewTracker(), snapshots)}, nil, nil)
	if _, err := c.Collect(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, ok := snapshots.objects[held]; !ok {
		t.Errorf("a snapshot held by a live lease was removed")
	}
	slices.SortFunc(snapshots.asked, func(a, b gc.Ref) int { return strings.Compare(a.String(), b.String()) })
	if want := []gc.Ref{expired, gone}; !slices.Equal(snapshots.asked, want) {
		t.Errorf("snapshotd was asked to drop %v, want the holds of %v", snapshots.asked, want)
	}
	if slices.Contains(content.asked, gone) {
		t.Errorf("contentd was named a lease it does not have")
	}
}

// A flat lease keeps what it holds with what that cannot exist without (a
// snapshot's parents, an image's target) and an ingest's blob, as
// containerd's flat leases, but nothing else those reference.
func TestCollectFlatLease(t *testing.T) {
	lease := gc.Lease("ns", "flat")
	s1, s2 := gc.Snapshot("ns", "overlayfs", "s1"), gc.Snapshot("ns", "overlayfs", "s2")
	img, manifest, layer, labelled := gc.Image("ns", "img"), gc.Content("ns", "sha256:m"), gc.Content("ns", "sha256:l"), gc.Content("ns", "sha256:c")
	ingest, expected := gc.Ingest("ns", "i"), gc.Content("ns", "sha256:e")
	content := &memSource{
		objects: objects(gc.Object{Ref: lease, Root: true, Flat: true}, gc.Object{Ref: img}, gc.Object{Ref: manifest},
			gc.Object{Ref: layer}, gc.Object{Ref: labelled}, gc.Object{Ref: ingest}, gc.Object{Ref: expected}),
		edges: []gc.Edge{{From: lease, To: s2}, {From: lease, To: img}, {From: lease, To: ingest},
			{From: img, To: manifest, Essential: true}, {From: manifest, To: layer}, {From: ingest, To: expected}},
	}
	snapshots := &memSource{
		objects: objects(gc.Object{Ref: s1}, gc.Object{Ref: s2}),
		edges:   []gc.Edge{{From: s2, To: s1, Essential: true}, {From: s2, To: labelled}},
	}
	c := New(gc.NewStore("contentd", gc.NewTracker(), content), peers{gc.NewStore("snapshotd", gc.NewTracker(), snapshots)}, nil, nil)
	if _, err := c.Collect(context.Background()); err != nil {
		t.Fatal(err)
	}
	for ref, want := range map[gc.Ref]bool{s1: true, s2: true, img: true, manifest: true, ingest: true, expected: true, layer: false, labelled: false} {
		_, inContent := content.objects[ref]
		_, inSnapshots := snapshots.objects[ref]
		if got := inContent || inSnapshots; got != want {
			t.Errorf("%v kept: %v, want %v", ref, got, want)
		}
	}
}

// A conditional reference keeps its snapshot only while the snapshot's
// last use meets the condition.
func TestCollectConditionalRefs(t *testing.T) {
	blob := gc.Content("ns", "sha256:a")
	recent, old := gc.Snapshot("ns", "overlayfs", "recent"), gc.Snapshot("ns", "overlayfs", "old")
	content := &memSource{objects: objects(gc.Object{Ref: blob, Root: true}),
		edges: []gc.Edge{{From: blob, To: recent, Condition: "usedat<1h"}, {From: blob, To: old, Condition: "usedat<1h"}}}
	snapshots := &memSource{objects: objects(gc.Object{Ref: recent, UsedAt: time.Now()}, gc.Object{Ref: old, UsedAt: time.Now().Add(-2 * time.Hour)})}
	c := New(gc.NewStore("contentd", gc.NewTracker(), content), peers{gc.NewStore("snapshotd", gc.NewTracker(), snapshots)}, nil, nil)
	if _, err := c.Collect(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, ok := snapshots.objects[recent]; !ok {
		t.Errorf("the snapshot used within the condition was removed")
	}
	if _, ok := snapshots.objects[old]; ok {
		t.Errorf("the snapshot last used outside the condition was kept")
	}
}
