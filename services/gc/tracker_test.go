package gc

import (
	"context"
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

// memSource is an in-memory Source: objects and edges, removed by name.
type memSource struct {
	objects map[Ref]Object
	edges   []Edge
}

func (m *memSource) Mark(_ context.Context, fn func(Graph) error) error {
	var g Graph
	for _, o := range m.objects {
		g.Objects = append(g.Objects, o)
	}
	g.Edges = append(g.Edges, m.edges...)
	return fn(g)
}

func (m *memSource) Remove(_ context.Context, refs []Ref) ([]Removed, error) {
	r := Removed{Kind: KindContent}
	for _, ref := range refs {
		if _, ok := m.objects[ref]; ok {
			delete(m.objects, ref)
			r.Count++
			r.Refs = append(r.Refs, ref)
		}
	}
	return []Removed{r}, nil
}

func TestTracker(t *testing.T) {
	ctx := context.Background()
	a, b := Content("ns", "sha256:a"), Content("ns", "sha256:b")
	newStore := func() (Store, *Tracker, *memSource) {
		src := &memSource{objects: map[Ref]Object{a: {Ref: a}, b: {Ref: b}}}
		tr := NewTracker()
		return NewStore("test", tr, src), tr, src
	}

	t.Run("an object touched after Begin is reported by Hold and never swept", func(t *testing.T) {
		s, tr, src := newStore()
		if err := s.Begin(ctx, "e1", 0); err != nil {
			t.Fatal(err)
		}
		tr.Touch(a)
		touched, err := s.Hold(ctx, "e1", 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(touched) != 1 || touched[0] != a {
			t.Errorf("Hold: touched %v, want [%v]", touched, a)
		}
		if _, err := s.Sweep(ctx, "e1", []Ref{a, b}); err != nil {
			t.Fatal(err)
		}
		s.End(ctx, "e1")
		if _, ok := src.objects[a]; !ok {
			t.Errorf("the touched object was swept")
		}
		if _, ok := src.objects[b]; ok {
			t.Errorf("the untouched object named was not swept")
		}
	})

	t.Run("writers wait from Hold until End", func(t *testing.T) {
		s, tr, _ := newStore()
		s.Begin(ctx, "e1", 0)
		if _, err := s.Hold(ctx, "e1", 0); err != nil {
			t.Fatal(err)
		}
		entered := make(chan struct{})
		go func() {
			done := tr.Write(a)
			close(entered)
			done()
		}()
		if _, err := s.Sweep(ctx, "e1", nil); err != nil {
			t.Fatal(err)
		}
		select {
		case <-entered:
			t.Fatal("a write ran while the collection held writers")
		default:
		}
		s.End(ctx, "e1")
		<-entered
	})

	t.Run("a hold that lapses lets writers go and refuses the sweep", func(t *testing.T) {
		s, tr, src := newStore()
		s.Begin(ctx, "e1", 0)
		if _, err := s.Hold(ctx, "e1", time.Millisecond); err != nil {
			t.Fatal(err)
		}
		done := tr.Write(a) // blocks until the hold lapses
		done()
		if _, err := s.Sweep(ctx, "e1", []Ref{b}); !errdefs.IsFailedPrecondition(err) {
			t.Errorf("Sweep after the hold lapsed: %v, want FailedPrecondition", err)
		}
		if _, ok := src.objects[b]; !ok {
			t.Errorf("a sweep after the hold lapsed removed something")
		}
	})

	t.Run("calls for an epoch not open are FailedPrecondition", func(t *testing.T) {
		s, _, _ := newStore()
		s.Begin(ctx, "e1", 0)
		s.Begin(ctx, "e2", 0)
		if _, err := s.Hold(ctx, "e1", 0); !errdefs.IsFailedPrecondition(err) {
			t.Errorf("Hold of a replaced epoch: %v, want FailedPrecondition", err)
		}
		if err := s.Mark(ctx, "e3", func(Graph) error { return nil }); !errdefs.IsFailedPrecondition(err) {
			t.Errorf("Mark of an unknown epoch: %v, want FailedPrecondition", err)
		}
	})

	t.Run("a nil tracker never waits", func(t *testing.T) {
		var tr *Tracker
		tr.Write(a)()
		tr.Touch(a)
	})
}

func TestLabelRefs(t *testing.T) {
	refs := LabelRefs("ns", map[string]string{
		"containerd.io/gc.ref.content.config":       "sha256:c",
		"containerd.io/gc.ref.content.l.0":          "sha256:l",
		"containerd.io/gc.ref.content":              "sha256:x",
		"containerd.io/gc.ref.contentious":          "sha256:no",
		"containerd.io/gc.ref.snapshot.overlayfs":   "chain",
		"containerd.io/gc.ref.snapshot.native/base": "b",
		"containerd.io/gc.ref.image":                "img",
		"other":                                     "sha256:no",
	})
	want := map[Ref]bool{
		Content("ns", "sha256:c"): true, Content("ns", "sha256:l"): true, Content("ns", "sha256:x"): true,
		Snapshot("ns", "overlayfs", "chain"): true, Snapshot("ns", "native", "b"): true, Image("ns", "img"): true,
	}
	if len(refs) != len(want) {
		t.Errorf("LabelRefs: %v, want %v", refs, want)
	}
	for _, r := range refs {
		if !want[r] {
			t.Errorf("LabelRefs: unexpected %v", r)
		}
	}
}
