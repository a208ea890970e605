package leases

import (
	"context"
	"errors"
	"maps"
	"path/filepath"
	"strings"
	"testing"
	"time"

	api "github.com/containerd/containerd/api/services/leases/v1"
	"github.com/containerd/errdefs"
	digest "github.com/opencontainers/go-digest"
	"google.golang.org/grpc"

	"github.com/flotilla/flotilla/contentd/internal/testserver"
	"github.com/flotilla/flotilla/contentd/metadata"
	"github.com/flotilla/flotilla/services/namespace"
)

var blob = digest.FromString("blob")

func newClient(t *testing.T) api.LeasesClient {
	t.Helper()
	db := testserver.OpenDB(t, filepath.Join(t.TempDir(), "meta.db"))
	conn := testserver.Serve(t, func(s *grpc.Server) {
		api.RegisterLeasesServer(s, NewService(NewStore(db)))
	})
	return api.NewLeasesClient(conn)
}

func nsContext(ns string) context.Context {
	return namespace.WithNamespace(context.Background(), ns)
}

func mustCreate(t *testing.T, c api.LeasesClient, ctx context.Context, id string, labels map[string]string) *api.Lease {
	t.Helper()
	resp, err := c.Create(ctx, &api.CreateRequest{ID: id, Labels: labels})
	if err != nil {
		t.Fatalf("create lease %q: %v", id, err)
	}
	return resp.GetLease()
}

func TestCreateListDelete(t *testing.T) {
	c := newClient(t)
	ctx := nsContext("ns")
	before := time.Now().Add(-time.Second)
	expire := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	l := mustCreate(t, c, ctx, "mine", map[string]string{"a": "b", LabelExpire: expire})
	if l.GetID() != "mine" || l.GetCreatedAt().AsTime().Before(before) || l.GetLabels()[LabelExpire] != expire {
		t.Errorf("create answered %v", l)
	}
	// ctr generates IDs like this one, which are not identifiers.
	if got := mustCreate(t, c, ctx, "289428163-DZc-", nil); got.GetID() != "289428163-DZc-" {
		t.Errorf("create answered ID %q", got.GetID())
	}
	g1 := mustCreate(t, c, ctx, "", nil)
	g2 := mustCreate(t, c, ctx, "", nil)
	if g1.GetID() == "" || g1.GetID() == g2.GetID() {
		t.Errorf("generated IDs %q and %q, want distinct and not empty", g1.GetID(), g2.GetID())
	}

	list, err := c.List(ctx, &api.ListRequest{})
	if err != nil || len(list.GetLeases()) != 4 {
		t.Fatalf("list = %v, %v; want 4 leases", list, err)
	}
	if other, err := c.List(nsContext("other"), &api.ListRequest{}); err != nil || len(other.GetLeases()) != 0 {
		t.Errorf("list in another namespace = %v, %v; want none", other, err)
	}
	if _, err := c.Delete(ctx, &api.DeleteRequest{ID: "mine", Sync: true}); err != nil {
		t.Fatal(err)
	}
	list, err = c.List(ctx, &api.ListRequest{Filters: []string{"id==mine"}})
	if err != nil || len(list.GetLeases()) != 0 {
		t.Errorf("list after delete = %v, %v", list, err)
	}
}

func TestErrors(t *testing.T) {
	c := newClient(t)
	ctx := nsContext("ns")
	mustCreate(t, c, ctx, "taken", nil)
	for _, tc := range []struct {
		name    string
		call    func() error
		is      func(error) bool
		message string
	}{
		{"create of an existing lease is AlreadyExists", func() error {
			_, err := c.Create(ctx, &api.CreateRequest{ID: "taken"})
			return err
		}, errdefs.IsAlreadyExists, `"taken"`},
		{"create with an expiry that is not RFC 3339 is InvalidArgument", func() error {
			_, err := c.Create(ctx, &api.CreateRequest{ID: "x", Labels: map[string]string{LabelExpire: "tomorrow"}})
			return err
		}, errdefs.IsInvalidArgument, LabelExpire},
		{"create without a namespace is FailedPrecondition", func() error {
			_, err := c.Create(context.Background(), &api.CreateRequest{ID: "x"})
			return err
		}, errdefs.IsFailedPrecondition, "namespace"},
		{"delete of a missing lease is NotFound", func() error {
			_, err := c.Delete(ctx, &api.DeleteRequest{ID: "nothere"})
			return err
		}, errdefs.IsNotFound, "nothere"},
		{"delete in another namespace is NotFound", func() error {
			_, err := c.Delete(nsContext("other"), &api.DeleteRequest{ID: "taken"})
			return err
		}, errdefs.IsNotFound, "taken"},
		{"add resource to a missing lease is NotFound", func() error {
			_, err := c.AddResource(ctx, &api.AddResourceRequest{ID: "nothere", Resource: &api.Resource{ID: blob.String(), Type: "content"}})
			return err
		}, errdefs.IsNotFound, "nothere"},
		{"add content resource that is not a digest is InvalidArgument", func() error {
			_, err := c.AddResource(ctx, &api.AddResourceRequest{ID: "taken", Resource: &api.Resource{ID: "nodigest", Type: "content"}})
			return err
		}, errdefs.IsInvalidArgument, "nodigest"},
		{"add snapshot resource without a snapshotter is InvalidArgument", func() error {
			_, err := c.AddResource(ctx, &api.AddResourceRequest{ID: "taken", Resource: &api.Resource{ID: "k", Type: "snapshots"}})
			return err
		}, errdefs.IsInvalidArgument, "snapshots"},
		{"add resource without a type is InvalidArgument", func() error {
			_, err := c.AddResource(ctx, &api.AddResourceRequest{ID: "taken", Resource: &api.Resource{ID: "k"}})
			return err
		}, errdefs.IsInvalidArgument, "type"},
		{"add without a resource is InvalidArgument", func() error {
			_, err := c.AddResource(ctx, &api.AddResourceRequest{ID: "taken"})
			return err
		}, errdefs.IsInvalidArgument, "resource"},
		{"delete resource of a missing lease is NotFound", func() error {
			_, err := c.DeleteResource(ctx, &api.DeleteResourceRequest{ID: "nothere", Resource: &api.Resource{ID: "r", Type: "ingests"}})
			return err
		}, errdefs.IsNotFound, "nothere"},
		{"list resources of a missing lease is NotFound", func() error {
			_, err := c.ListResources(ctx, &api.ListResourcesRequest{ID: "nothere"})
			return err
		}, errdefs.IsNotFound, "nothere"},
		{"list with a malformed filter is InvalidArgument", func() error {
			_, err := c.List(ctx, &api.ListRequest{Filters: []string{"id=="}})
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
}

func TestListFilters(t *testing.T) {
	c := newClient(t)
	ctx := nsContext("ns")
	mustCreate(t, c, ctx, "pull-1", map[string]string{"purpose": "pull"})
	mustCreate(t, c, ctx, "pull-2", map[string]string{"purpose": "pull", "com.example/owner": "me"})
	mustCreate(t, c, ctx, "build", map[string]string{"purpose": "build"})
	for _, tc := range []struct {
		name    string
		filters []string
		want    string
	}{
		{"no filter lists all sorted by ID", nil, "build,pull-1,pull-2"},
		{"id equality", []string{"id==pull-2"}, "pull-2"},
		{"id regexp", []string{"id~=^pull"}, "pull-1,pull-2"},
		{"label equality", []string{"labels.purpose==build"}, "build"},
		{"quoted label key", []string{`labels."com.example/owner"`}, "pull-2"},
		{"several filters mean or", []string{"id==build", `labels."com.example/owner"==me`}, "build,pull-2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := c.List(ctx, &api.ListRequest{Filters: tc.filters})
			if err != nil {
				t.Fatal(err)
			}
			ids := make([]string, 0, len(resp.GetLeases()))
			for _, l := range resp.GetLeases() {
				ids = append(ids, l.GetID())
			}
			if got := strings.Join(ids, ","); got != tc.want {
				t.Errorf("got %s, want %s", got, tc.want)
			}
		})
	}
}

func TestResources(t *testing.T) {
	c := newClient(t)
	ctx := nsContext("ns")
	mustCreate(t, c, ctx, "l", nil)
	add := []*api.Resource{
		{ID: blob.String(), Type: "content"},
		{ID: "ingest-ref-1", Type: "ingests"},
		{ID: "layer-key", Type: "snapshots/overlayfs"},
		{ID: "name", Type: "image"},
		{ID: blob.String(), Type: "content"}, // twice: still one
	}
	for _, r := range add {
		if _, err := c.AddResource(ctx, &api.AddResourceRequest{ID: "l", Resource: r}); err != nil {
			t.Fatalf("add %v: %v", r, err)
		}
	}
	want := []string{"content " + blob.String(), "image name", "ingests ingest-ref-1", "snapshots/overlayfs layer-key"}
	if got := resources(t, c, ctx, "l"); !equal(got, want) {
		t.Errorf("resources = %v, want %v", got, want)
	}

	for _, r := range []*api.Resource{{ID: "ingest-ref-1", Type: "ingests"}, {ID: "never-added", Type: "ingests"}} {
		if _, err := c.DeleteResource(ctx, &api.DeleteResourceRequest{ID: "l", Resource: r}); err != nil {
			t.Fatalf("delete %v: %v", r, err)
		}
	}
	want = []string{"content " + blob.String(), "image name", "snapshots/overlayfs layer-key"}
	if got := resources(t, c, ctx, "l"); !equal(got, want) {
		t.Errorf("after delete, resources = %v, want %v", got, want)
	}

	// Deleting the lease and making it again starts it empty.
	if _, err := c.Delete(ctx, &api.DeleteRequest{ID: "l"}); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, c, ctx, "l", nil)
	if got := resources(t, c, ctx, "l"); len(got) != 0 {
		t.Errorf("recreated lease holds %v", got)
	}
}

func TestDeleteExpired(t *testing.T) {
	db := testserver.OpenDB(t, filepath.Join(t.TempDir(), "meta.db"))
	s := NewStore(db)
	now := time.Now()
	past := now.Add(-time.Minute).UTC().Format(time.RFC3339)
	future := now.Add(time.Hour).UTC().Format(time.RFC3339)
	for _, l := range []struct{ ns, id, expire string }{
		{"a", "expired", past}, {"a", "later", future}, {"a", "forever", ""}, {"b", "expired-too", past},
	} {
		labels := map[string]string{}
		if l.expire != "" {
			labels[LabelExpire] = l.expire
		}
		if _, err := s.Create(nsContext(l.ns), l.id, labels); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.AddResource(nsContext("a"), "expired", Resource{ID: blob.String(), Type: "content"}); err != nil {
		t.Fatal(err)
	}
	deleted, err := s.DeleteExpired(now)
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string][]string{"a": {"expired"}, "b": {"expired-too"}}; len(deleted) != 2 ||
		!equal(deleted["a"], want["a"]) || !equal(deleted["b"], want["b"]) {
		t.Errorf("deleted %v, want %v", deleted, want)
	}
	left, err := s.List(nsContext("a"))
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 2 || left[0].ID != "forever" || left[1].ID != "later" {
		t.Errorf("left %v, want forever and later", left)
	}
}

func TestStoreSurvivesReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "meta.db")
	db, err := metadata.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx := nsContext("ns")
	s := NewStore(db)
	created, err := s.Create(ctx, "kept", map[string]string{"a": "b"})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.AddResource(ctx, "kept", Resource{ID: "ref", Type: "ingests"}); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	s = NewStore(testserver.OpenDB(t, path))
	list, err := s.List(ctx)
	if err != nil || len(list) != 1 {
		t.Fatalf("after reopen: %v, %v", list, err)
	}
	if got := list[0]; got.ID != "kept" || !maps.Equal(got.Labels, map[string]string{"a": "b"}) || !got.CreatedAt.Equal(created.CreatedAt) {
		t.Errorf("after reopen got %+v, want %+v", got, created)
	}
	rs, err := s.ListResources(ctx, "kept")
	if err != nil || len(rs) != 1 || rs[0] != (Resource{ID: "ref", Type: "ingests"}) {
		t.Errorf("resources after reopen: %v, %v", rs, err)
	}
	if err := s.Delete(ctx, "kept"); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "kept"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("second delete: %v, want NotFound", err)
	}
}

func resources(t *testing.T, c api.LeasesClient, ctx context.Context, id string) []string {
	t.Helper()
	resp, err := c.ListResources(ctx, &api.ListResourcesRequest{ID: id})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range resp.GetResources() {
		out = append(out, r.GetType()+" "+r.GetID())
	}
	return out
}

func equal(a, b []string) bool { return strings.Join(a, "\n") == strings.Join(b, "\n") }
