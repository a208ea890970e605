package namespaces

import (
	"context"
	"maps"
	"path/filepath"
	"strings"
	"testing"

	eventsapi "github.com/containerd/containerd/api/events"
	api "github.com/containerd/containerd/api/services/namespaces/v1"
	"github.com/containerd/errdefs"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/flotilla/flotilla/contentd/internal/testserver"
	"github.com/flotilla/flotilla/contentd/metadata"
	"github.com/flotilla/flotilla/services/namespace"
)

// newClient serves a fresh database and returns a client, the database and
// the events published.
func newClient(t *testing.T) (api.NamespacesClient, *bolt.DB, *testserver.Recorder) {
	t.Helper()
	db := testserver.OpenDB(t, filepath.Join(t.TempDir(), "meta.db"))
	rec := &testserver.Recorder{}
	conn := testserver.Serve(t, func(s *grpc.Server) {
		api.RegisterNamespacesServer(s, NewService(NewStore(db), nil, rec, nil))
	})
	return api.NewNamespacesClient(conn), db, rec
}

func create(t *testing.T, c api.NamespacesClient, name string, labels map[string]string) {
	t.Helper()
	if _, err := c.Create(context.Background(), &api.CreateNamespaceRequest{
		Namespace: &api.Namespace{Name: name, Labels: labels},
	}); err != nil {
		t.Fatalf("create %s: %v", name, err)
	}
}

func TestCreateGetListDelete(t *testing.T) {
	c, _, rec := newClient(t)
	ctx := namespace.WithNamespace(context.Background(), "default")

	resp, err := c.Create(ctx, &api.CreateNamespaceRequest{Namespace: &api.Namespace{Name: "foo", Labels: map[string]string{"a": "b"}}})
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.GetNamespace(); got.GetName() != "foo" || got.GetLabels()["a"] != "b" {
		t.Fatalf("create answered %v", got)
	}
	create(t, c, "bar", nil)

	got, err := c.Get(ctx, &api.GetNamespaceRequest{Name: "foo"})
	if err != nil || !maps.Equal(got.GetNamespace().GetLabels(), map[string]string{"a": "b"}) {
		t.Fatalf("get foo = %v, %v", got, err)
	}
	list, err := c.List(ctx, &api.ListNamespacesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if names := namesOf(list.GetNamespaces()); names != "bar,foo" {
		t.Fatalf("list = %s, want bar,foo", names)
	}
	if _, err := c.Delete(ctx, &api.DeleteNamespaceRequest{Name: "foo"}); err != nil {
		t.Fatal(err)
	}
	list, err = c.List(ctx, &api.ListNamespacesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if names := namesOf(list.GetNamespaces()); names != "bar" {
		t.Fatalf("list after delete = %s, want bar", names)
	}

	evs := rec.Take()
	want := []struct{ ns, topic string }{
		{"default", TopicCreate}, {"bar", TopicCreate}, {"default", TopicDelete},
	}
	if len(evs) != len(want) {
		t.Fatalf("published %d events, want %d: %v", len(evs), len(want), evs)
	}
	for i, w := range want {
		if evs[i].Namespace != w.ns || evs[i].Topic != w.topic {
			t.Errorf("event %d: %s in %q, want %s in %q", i, evs[i].Topic, evs[i].Namespace, w.topic, w.ns)
		}
	}
	if ev, ok := evs[0].Event.(*eventsapi.NamespaceCreate); !ok || ev.Name != "foo" || ev.Labels["a"] != "b" {
		t.Errorf("create event = %#v", evs[0].Event)
	}
	if ev, ok := evs[2].Event.(*eventsapi.NamespaceDelete); !ok || ev.Name != "foo" {
		t.Errorf("delete event = %#v", evs[2].Event)
	}
}

func TestErrors(t *testing.T) {
	c, db, rec := newClient(t)
	ctx := context.Background()
	create(t, c, "taken", nil)
	create(t, c, "busy", nil)
	if err := db.Update(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{metadata.BucketImages, metadata.BucketContent} {
			b, err := metadata.CreateStoreBucket(tx, "busy", name)
			if err != nil {
				return err
			}
			if err := b.Put([]byte("x"), []byte("y")); err != nil {
				return err
			}
		}
		// An empty store bucket does not keep a namespace alive.
		_, err := metadata.CreateStoreBucket(tx, "busy", metadata.BucketLeases)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	rec.Take()

	for _, tc := range []struct {
		name    string
		call    func() error
		is      func(error) bool
		message string
	}{
		{"create of an existing namespace is AlreadyExists", func() error {
			_, err := c.Create(ctx, &api.CreateNamespaceRequest{Namespace: &api.Namespace{Name: "taken"}})
			return err
		}, errdefs.IsAlreadyExists, `"taken"`},
		{"create with a leading dash is InvalidArgument", func() error {
			_, err := c.Create(ctx, &api.CreateNamespaceRequest{Namespace: &api.Namespace{Name: "-bad"}})
			return err
		}, errdefs.IsInvalidArgument, "-bad"},
		{"create with a 77-character name is InvalidArgument", func() error {
			_, err := c.Create(ctx, &api.CreateNamespaceRequest{Namespace: &api.Namespace{Name: strings.Repeat("a", 77)}})
			return err
		}, errdefs.IsInvalidArgument, "77 characters"},
		{"create with an empty name is InvalidArgument", func() error {
			_, err := c.Create(ctx, &api.CreateNamespaceRequest{Namespace: &api.Namespace{}})
			return err
		}, errdefs.IsInvalidArgument, "empty"},
		{"create without a namespace is InvalidArgument", func() error {
			_, err := c.Create(ctx, &api.CreateNamespaceRequest{})
			return err
		}, errdefs.IsInvalidArgument, "required"},
		{"create with an oversized label is InvalidArgument", func() error {
			_, err := c.Create(ctx, &api.CreateNamespaceRequest{Namespace: &api.Namespace{Name: "big",
				Labels: map[string]string{"k": strings.Repeat("v", metadata.MaxLabelSize)}}})
			return err
		}, errdefs.IsInvalidArgument, "label"},
		{"get with an invalid name is InvalidArgument", func() error {
			_, err := c.Get(ctx, &api.GetNamespaceRequest{Name: "-bad"})
			return err
		}, errdefs.IsInvalidArgument, "-bad"},
		{"update with an invalid name is InvalidArgument", func() error {
			_, err := c.Update(ctx, &api.UpdateNamespaceRequest{Namespace: &api.Namespace{Name: "-bad", Labels: map[string]string{"a": "b"}}})
			return err
		}, errdefs.IsInvalidArgument, "-bad"},
		{"delete of a missing namespace is NotFound", func() error {
			_, err := c.Delete(ctx, &api.DeleteNamespaceRequest{Name: "nothere"})
			return err
		}, errdefs.IsNotFound, "nothere"},
		{"delete of a namespace holding images and blobs is FailedPrecondition", func() error {
			_, err := c.Delete(ctx, &api.DeleteNamespaceRequest{Name: "busy"})
			return err
		}, errdefs.IsFailedPrecondition, `namespace "busy" must be empty, but it still has blobs, images`},
		{"list with a malformed filter is InvalidArgument", func() error {
			_, err := c.List(ctx, &api.ListNamespacesRequest{Filter: "name=="})
			return err
		}, errdefs.IsInvalidArgument, "filter"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			if !tc.is(err) {
				t.Fatalf("got %v", err)
			}
			if !strings.Contains(err.Error(), tc.message) {
				t.Errorf("error %q does not say %q", err, tc.message)
			}
		})
	}
	if evs := rec.Take(); len(evs) != 0 {
		t.Errorf("failed calls published %v", evs)
	}
	if _, err := c.Get(ctx, &api.GetNamespaceRequest{Name: "busy"}); err != nil {
		t.Errorf("refused delete removed the namespace: %v", err)
	}
}

func TestUpdate(t *testing.T) {
	initial := map[string]string{"a": "1", "b": "2"}
	for _, tc := range []struct {
		name   string
		labels map[string]string
		paths  []string
		want   map[string]string
		err    func(error) bool
	}{
		{"no paths replace every label", map[string]string{"c": "3"}, nil, map[string]string{"c": "3"}, nil},
		{"no paths and no labels clear them", nil, nil, map[string]string{}, nil},
		{"path labels replaces every label", map[string]string{"c": "3"}, []string{"labels"}, map[string]string{"c": "3"}, nil},
		{"labels.KEY sets one label", map[string]string{"a": "9", "c": "3"}, []string{"labels.a"}, map[string]string{"a": "9", "b": "2"}, nil},
		{"labels.KEY adds a new label", map[string]string{"c": "3"}, []string{"labels.c"}, map[string]string{"a": "1", "b": "2", "c": "3"}, nil},
		{"labels.KEY with no value deletes the label", nil, []string{"labels.a"}, map[string]string{"b": "2"}, nil},
		{"labels.KEY with an empty value deletes the label", map[string]string{"b": ""}, []string{"labels.b"}, map[string]string{"a": "1"}, nil},
		{"label keys may hold dots", map[string]string{"x.y/z": "v"}, []string{"labels.x.y/z"}, map[string]string{"a": "1", "b": "2", "x.y/z": "v"}, nil},
		{"several paths apply in order", map[string]string{"c": "3"}, []string{"labels.a", "labels.c"}, map[string]string{"b": "2", "c": "3"}, nil},
		{"an unknown path is InvalidArgument and changes nothing", map[string]string{"a": "9"}, []string{"labels.a", "name"}, initial, errdefs.IsInvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _, rec := newClient(t)
			ctx := context.Background()
			create(t, c, "ns", initial)
			rec.Take()
			req := &api.UpdateNamespaceRequest{Namespace: &api.Namespace{Name: "ns", Labels: tc.labels}}
			if tc.paths != nil {
				req.UpdateMask = &fieldmaskpb.FieldMask{Paths: tc.paths}
			}
			resp, err := c.Update(ctx, req)
			if tc.err != nil {
				if !tc.err(err) {
					t.Fatalf("update: %v", err)
				}
			} else if err != nil {
				t.Fatalf("update: %v", err)
			} else if !maps.Equal(resp.GetNamespace().GetLabels(), tc.want) {
				t.Errorf("update answered %v, want %v", resp.GetNamespace().GetLabels(), tc.want)
			}
			got, err := c.Get(ctx, &api.GetNamespaceRequest{Name: "ns"})
			if err != nil {
				t.Fatal(err)
			}
			if labels := got.GetNamespace().GetLabels(); !maps.Equal(labels, tc.want) && !(len(labels) == 0 && len(tc.want) == 0) {
				t.Errorf("stored labels %v, want %v", labels, tc.want)
			}
			evs := rec.Take()
			if tc.err != nil {
				if len(evs) != 0 {
					t.Errorf("failed update published %v", evs)
				}
				return
			}
			if len(evs) != 1 || evs[0].Topic != TopicUpdate {
				t.Fatalf("published %v, want one %s", evs, TopicUpdate)
			}
			if ev, ok := evs[0].Event.(*eventsapi.NamespaceUpdate); !ok || ev.Name != "ns" || !maps.Equal(ev.Labels, tc.want) {
				t.Errorf("update event = %#v", evs[0].Event)
			}
		})
	}
}

// containerd's clients ask for their namespace before putting anything in
// it (the Go client's New with a default namespace, dockerd) and set labels
// on namespaces not yet created (its integration suite): both work.
func TestNamespacesComeIntoBeingAsInContainerd(t *testing.T) {
	t.Run("get of a namespace not yet created answers it with no labels and creates nothing", func(t *testing.T) {
		c, _, rec := newClient(t)
		resp, err := c.Get(context.Background(), &api.GetNamespaceRequest{Name: "moby"})
		if err != nil {
			t.Fatalf("get: %v", err)
		}
		if ns := resp.GetNamespace(); ns.GetName() != "moby" || len(ns.GetLabels()) != 0 {
			t.Errorf("get answered %v, want moby with no labels", ns)
		}
		list, err := c.List(context.Background(), &api.ListNamespacesRequest{})
		if err != nil || len(list.GetNamespaces()) != 0 {
			t.Errorf("list after get = %v, %v; want none", list.GetNamespaces(), err)
		}
		if evs := rec.Take(); len(evs) != 0 {
			t.Errorf("get published %v", evs)
		}
	})
	for _, tc := range []struct {
		name    string
		labels  map[string]string
		paths   []string
		created bool
		want    map[string]string
	}{
		{"update of one label creates the namespace", map[string]string{"k": "v"}, []string{"labels.k"}, true, map[string]string{"k": "v"}},
		{"update replacing all labels creates the namespace", map[string]string{"k": "v"}, nil, true, map[string]string{"k": "v"}},
		{"update deleting a label creates the namespace, as SetLabel does", nil, []string{"labels.k"}, true, map[string]string{}},
		{"update replacing all labels by none creates nothing, as in containerd", nil, nil, false, map[string]string{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _, rec := newClient(t)
			ctx := context.Background()
			req := &api.UpdateNamespaceRequest{Namespace: &api.Namespace{Name: "testing", Labels: tc.labels}}
			if tc.paths != nil {
				req.UpdateMask = &fieldmaskpb.FieldMask{Paths: tc.paths}
			}
			if _, err := c.Update(ctx, req); err != nil {
				t.Fatalf("update: %v", err)
			}
			got, err := c.Get(ctx, &api.GetNamespaceRequest{Name: "testing"})
			if err != nil {
				t.Fatal(err)
			}
			if labels := got.GetNamespace().GetLabels(); !maps.Equal(labels, tc.want) && len(labels)+len(tc.want) > 0 {
				t.Errorf("labels %v, want %v", labels, tc.want)
			}
			list, err := c.List(ctx, &api.ListNamespacesRequest{})
			if err != nil {
				t.Fatal(err)
			}
			if listed := namesOf(list.GetNamespaces()) == "testing"; listed != tc.created {
				t.Errorf("namespace listed = %v, want %v", listed, tc.created)
			}
			if evs := rec.Take(); len(evs) != 1 || evs[0].Topic != TopicUpdate {
				t.Errorf("published %v, want one %s", evs, TopicUpdate)
			}
		})
	}
}

func TestListFilter(t *testing.T) {
	c, _, _ := newClient(t)
	create(t, c, "prod", map[string]string{"tier": "prod", "team": "a"})
	create(t, c, "test", map[string]string{"tier": "test"})
	create(t, c, "plain", nil)
	for _, tc := range []struct {
		name, filter, want string
	}{
		{"empty filter lists all sorted by name", "", "plain,prod,test"},
		{"name equality", "name==test", "test"},
		{"name regexp", "name~=^p", "plain,prod"},
		{"label equality", "labels.tier==prod", "prod"},
		{"label presence", "labels.tier", "prod,test"},
		{"label inequality includes namespaces without it", "labels.tier!=prod", "plain,test"},
		{"selectors joined by comma must all match", "labels.tier,labels.team==a", "prod"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := c.List(context.Background(), &api.ListNamespacesRequest{Filter: tc.filter})
			if err != nil {
				t.Fatal(err)
			}
			if got := namesOf(resp.GetNamespaces()); got != tc.want {
				t.Errorf("got %s, want %s", got, tc.want)
			}
		})
	}
}

func TestStoreSurvivesReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "meta.db")
	db, err := metadata.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	s := NewStore(db)
	if _, err := s.Create("kept", map[string]string{"a": "b"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Create("gone", nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete("gone"); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	s = NewStore(testserver.OpenDB(t, path))
	got, err := s.Get("kept")
	if err != nil || !maps.Equal(got.Labels, map[string]string{"a": "b"}) {
		t.Fatalf("after reopen: %v, %v", got, err)
	}
	list, err := s.List("")
	if err != nil || len(list) != 1 || list[0].Name != "kept" {
		t.Fatalf("list after reopen = %v, %v; want only kept", list, err)
	}
}

func TestNamespaceMadeByAnotherStoreIsListed(t *testing.T) {
	db := testserver.OpenDB(t, filepath.Join(t.TempDir(), "meta.db"))
	if err := db.Update(func(tx *bolt.Tx) error {
		_, err := metadata.CreateStoreBucket(tx, "implicit", metadata.BucketImages)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	s := NewStore(db)
	list, err := s.List("")
	if err != nil || len(list) != 1 || list[0].Name != "implicit" {
		t.Fatalf("list = %v, %v", list, err)
	}
	if err := s.Delete("implicit"); err != nil {
		t.Fatalf("delete of a namespace with only empty stores: %v", err)
	}
}

func namesOf(list []*api.Namespace) string {
	names := make([]string, 0, len(list))
	for _, ns := range list {
		names = append(names, ns.GetName())
	}
	return strings.Join(names, ",")
}
