package containers

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	api "github.com/containerd/containerd/api/services/containers/v1"
	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/flotilla/flotilla/services/namespace"
	"github.com/flotilla/flotilla/taskd/metadata"
)

func newTestStore(t *testing.T) *BoltStore {
	t.Helper()
	db, err := metadata.Open(filepath.Join(t.TempDir(), "meta.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return NewStore(db)
}

var specAny = &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Spec", Value: []byte(`{"ociVersion":"1.0.2","weird":[1, 2]}`)}

func container(id string, mods ...func(*api.Container)) *api.Container {
	c := &api.Container{ID: id, Spec: specAny, Runtime: &api.Container_Runtime{Name: "io.containerd.runc.v2"}}
	for _, m := range mods {
		m(c)
	}
	return c
}

func TestCreateValidates(t *testing.T) {
	s := newTestStore(t)
	ctx := namespace.WithNamespace(context.Background(), "ns")
	for _, tc := range []struct {
		name string
		c    *api.Container
		want func(error) bool
	}{
		{"a valid container is stored", container("ok"), func(err error) bool { return err == nil }},
		{"a bad id is InvalidArgument", container("no/slash"), errdefs.IsInvalidArgument},
		{"no runtime name is InvalidArgument", container("nort", func(c *api.Container) { c.Runtime = nil }), errdefs.IsInvalidArgument},
		{"no spec is InvalidArgument", container("nospec", func(c *api.Container) { c.Spec = nil }), errdefs.IsInvalidArgument},
		{"a snapshot key without snapshotter is InvalidArgument", container("snap", func(c *api.Container) { c.SnapshotKey = "k" }), errdefs.IsInvalidArgument},
		{"an oversized label is InvalidArgument", container("big", func(c *api.Container) { c.Labels = map[string]string{"k": string(make([]byte, 5000))} }), errdefs.IsInvalidArgument},
		{"an empty label key is InvalidArgument", container("emptykey", func(c *api.Container) { c.Labels = map[string]string{"": "v"} }), errdefs.IsInvalidArgument},
		{"a label key over 4096 bytes is InvalidArgument", container("bigkey", func(c *api.Container) { c.Labels = map[string]string{string(make([]byte, 4097)): ""} }), errdefs.IsInvalidArgument},
		{"an empty extension key is InvalidArgument", container("ext", func(c *api.Container) { c.Extensions = map[string]*anypb.Any{"": specAny} }), errdefs.IsInvalidArgument},
		{"a taken id is AlreadyExists", container("ok"), errdefs.IsAlreadyExists},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := s.Create(ctx, tc.c); !tc.want(err) {
				t.Fatalf("create: %v", err)
			}
		})
	}
	t.Run("no namespace is FailedPrecondition", func(t *testing.T) {
		if _, err := s.Create(context.Background(), container("x")); !errdefs.IsFailedPrecondition(err) {
			t.Fatalf("create: %v", err)
		}
	})
}

func TestSpecIsKeptByteForByte(t *testing.T) {
	s := newTestStore(t)
	ctx := namespace.WithNamespace(context.Background(), "ns")
	if _, err := s.Create(ctx, container("c")); err != nil {
		t.Fatal(err)
	}
	got, err := s.Get(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got.Spec, specAny) || got.CreatedAt == nil || got.UpdatedAt == nil {
		t.Fatalf("got %v", got)
	}
	if _, err := s.Get(namespace.WithNamespace(context.Background(), "other"), "c"); !errdefs.IsNotFound(err) {
		t.Fatalf("get in another namespace: %v", err)
	}
}

func TestUpdateFieldPaths(t *testing.T) {
	otherSpec := &anypb.Any{TypeUrl: specAny.TypeUrl, Value: []byte(`{"ociVersion":"1.1.0"}`)}
	for _, tc := range []struct {
		name   string
		in     *api.Container
		paths  []string
		check  func(*api.Container) bool
		failed func(error) bool
	}{
		{
			name:  "labels.KEY sets one label and keeps the others",
			in:    container("c", func(c *api.Container) { c.Labels = map[string]string{"b": "2", "a": "ignored"} }),
			paths: []string{"labels.b"},
			check: func(c *api.Container) bool { return c.Labels["a"] == "1" && c.Labels["b"] == "2" },
		},
		{
			name:  "labels.KEY to the empty value removes the label",
			in:    container("c"),
			paths: []string{"labels.a"},
			check: func(c *api.Container) bool { _, ok := c.Labels["a"]; return !ok },
		},
		{
			name:  "labels replaces every label",
			in:    container("c", func(c *api.Container) { c.Labels = map[string]string{"z": "26"} }),
			paths: []string{"labels"},
			check: func(c *api.Container) bool { return len(c.Labels) == 1 && c.Labels["z"] == "26" },
		},
		{
			name:  "spec, image and snapshotkey change",
			in:    container("c", func(c *api.Container) { c.Spec = otherSpec; c.Image = "img:2"; c.SnapshotKey = "k2" }),
			paths: []string{"spec", "image", "snapshotkey"},
			check: func(c *api.Container) bool {
				return proto.Equal(c.Spec, otherSpec) && c.Image == "img:2" && c.SnapshotKey == "k2"
			},
		},
		{
			name:  "extensions.KEY sets one extension",
			in:    container("c", func(c *api.Container) { c.Extensions = map[string]*anypb.Any{"y": otherSpec} }),
			paths: []string{"extensions.y"},
			check: func(c *api.Container) bool {
				return len(c.Extensions) == 2 && proto.Equal(c.Extensions["y"], otherSpec)
			},
		},
		{
			name:  "no paths replaces the mutable fields",
			in:    container("c", func(c *api.Container) { c.Snapshotter = "overlayfs"; c.Image = "img:3" }),
			check: func(c *api.Container) bool { return c.Image == "img:3" && len(c.Labels) == 0 },
		},
		{
			name:   "no paths with another runtime is InvalidArgument",
			in:     container("c", func(c *api.Container) { c.Snapshotter = "overlayfs"; c.Runtime.Name = "io.containerd.other.v1" }),
			failed: errdefs.IsInvalidArgument,
		},
		{
			name:   "an unknown path is InvalidArgument",
			in:     container("c"),
			paths:  []string{"runtime"},
			failed: errdefs.IsInvalidArgument,
		},
		{
			name:   "a missing container is NotFound",
			in:     container("nope"),
			paths:  []string{"image"},
			failed: errdefs.IsNotFound,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newTestStore(t)
			ctx := namespace.WithNamespace(context.Background(), "ns")
			_, err := s.Create(ctx, container("c", func(c *api.Container) {
				c.Labels = map[string]string{"a": "1"}
				c.Snapshotter, c.SnapshotKey, c.Image = "overlayfs", "k1", "img:1"
				c.Extensions = map[string]*anypb.Any{"x": specAny}
			}))
			if err != nil {
				t.Fatal(err)
			}
			got, err := s.Update(ctx, tc.in, tc.paths...)
			if tc.failed != nil {
				if !tc.failed(err) {
					t.Fatalf("update: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			stored, _ := s.Get(ctx, "c")
			if !tc.check(got) || !proto.Equal(got, stored) {
				t.Fatalf("after update: %v (stored %v)", got, stored)
			}
		})
	}
}

func TestListFilters(t *testing.T) {
	s := newTestStore(t)
	ctx := namespace.WithNamespace(context.Background(), "ns")
	for _, c := range []*api.Container{
		container("web", func(c *api.Container) {
			c.Image = "nginx:1"
			c.Labels = map[string]string{"tier": "front", "a.b": "dotted"}
		}),
		container("db", func(c *api.Container) {
			c.Image = "postgres:16"
			c.Snapshotter = "native"
			c.Labels = map[string]string{"tier": "back"}
		}),
		container("job", func(c *api.Container) { c.Runtime.Name = "io.containerd.kata.v2" }),
	} {
		if _, err := s.Create(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		filters []string
		want    []string
	}{
		{nil, []string{"db", "job", "web"}},
		{[]string{"id==web"}, []string{"web"}},
		{[]string{"image~=^postgres"}, []string{"db"}},
		{[]string{"labels.tier==front", "labels.tier==back"}, []string{"db", "web"}},
		{[]string{`labels."a.b"==dotted`}, []string{"web"}},
		{[]string{"runtime.name==io.containerd.kata.v2"}, []string{"job"}},
		{[]string{"snapshotter==native"}, []string{"db"}},
		{[]string{"labels.tier"}, []string{"db", "web"}},
	} {
		t.Run(fmtFilters(tc.filters), func(t *testing.T) {
			list, err := s.List(ctx, tc.filters...)
			if err != nil {
				t.Fatal(err)
			}
			var ids []string
			for _, c := range list {
				ids = append(ids, c.ID)
			}
			if !slices.Equal(ids, tc.want) {
				t.Fatalf("got %v, want %v", ids, tc.want)
			}
		})
	}
	t.Run("a bad filter is InvalidArgument", func(t *testing.T) {
		if _, err := s.List(ctx, "id=="); !errdefs.IsInvalidArgument(err) {
			t.Fatalf("list: %v", err)
		}
	})
}

func fmtFilters(fs []string) string {
	if len(fs) == 0 {
		return "no filter lists all"
	}
	return "filters " + strings.Join(fs, " or ")
}

func TestDelete(t *testing.T) {
	s := newTestStore(t)
	ctx := namespace.WithNamespace(context.Background(), "ns")
	if _, err := s.Create(ctx, container("c")); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "c"); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "c"); !errdefs.IsNotFound(err) {
		t.Fatalf("second delete: %v", err)
	}
}

func TestHoldingsNamesNamespacesWithContainers(t *testing.T) {
	s := newTestStore(t)
	for _, ns := range []string{"kept", "emptied"} {
		if _, err := s.Create(namespace.WithNamespace(context.Background(), ns), container("c")); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Delete(namespace.WithNamespace(context.Background(), "emptied"), "c"); err != nil {
		t.Fatal(err)
	}
	held, err := s.Holdings(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(held) != 1 || !slices.Equal(held["kept"], []string{"containers"}) {
		t.Errorf("holdings = %v, want only kept holding containers (a namespace whose containers are gone holds nothing)", held)
	}
}
