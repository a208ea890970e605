package namespaces

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	api "github.com/containerd/containerd/api/services/namespaces/v1"
	"github.com/containerd/errdefs"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/grpc"

	"github.com/flotilla/flotilla/contentd/internal/testserver"
	"github.com/flotilla/flotilla/contentd/metadata"
	"github.com/flotilla/flotilla/services/namespace"
)

// fakeOccupants answers Holds with fixed holdings or a fixed error, and
// records the namespace its context carried; Namespaces answers names and
// namesErr.
type fakeOccupants struct {
	held     []string
	err      error
	asked    []string
	names    []string
	namesErr error
}

func (f *fakeOccupants) Namespaces(context.Context) ([]string, error) { return f.names, f.namesErr }

func (f *fakeOccupants) Holds(ctx context.Context, ns string) ([]string, error) {
	got, _ := namespace.FromContext(ctx)
	f.asked = append(f.asked, ns+"@"+got)
	return f.held, f.err
}

func TestDeleteAsksOccupants(t *testing.T) {
	for _, tc := range []struct {
		name       string
		occupants  *fakeOccupants
		blobs      bool // contentd itself holds blobs in the namespace
		is         func(error) bool
		message    string
		wantExists bool
	}{
		{
			name:       "containers held elsewhere is FailedPrecondition naming containers",
			occupants:  &fakeOccupants{held: []string{"containers"}},
			is:         errdefs.IsFailedPrecondition,
			message:    `namespace "ns" must be empty, but it still has containers`,
			wantExists: true,
		},
		{
			name:       "holdings of contentd and of others are named together, sorted",
			occupants:  &fakeOccupants{held: []string{"snapshots", "containers"}},
			blobs:      true,
			is:         errdefs.IsFailedPrecondition,
			message:    `namespace "ns" must be empty, but it still has blobs, containers, snapshots`,
			wantExists: true,
		},
		{
			name:       "an unreachable peer is Unavailable naming it",
			occupants:  &fakeOccupants{err: fmt.Errorf("taskd: connection refused: %w", errdefs.ErrUnavailable)},
			is:         errdefs.IsUnavailable,
			message:    "taskd",
			wantExists: true,
		},
		{
			name:       "a peer failing otherwise is Unavailable too",
			occupants:  &fakeOccupants{err: fmt.Errorf("snapshotd: list snapshotters: %w", errdefs.ErrNotImplemented)},
			is:         errdefs.IsUnavailable,
			message:    "snapshotd",
			wantExists: true,
		},
		{
			name:      "a namespace empty everywhere is deleted",
			occupants: &fakeOccupants{},
			is:        func(err error) bool { return err == nil },
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db := testserver.OpenDB(t, filepath.Join(t.TempDir(), "meta.db"))
			conn := testserver.Serve(t, func(s *grpc.Server) {
				api.RegisterNamespacesServer(s, NewService(NewStore(db), tc.occupants, &testserver.Recorder{}, nil))
			})
			c := api.NewNamespacesClient(conn)
			ctx := namespace.WithNamespace(context.Background(), "default")
			create(t, c, "ns", nil)
			if tc.blobs {
				putRecord(t, db, "ns", metadata.BucketContent)
			}

			_, err := c.Delete(ctx, &api.DeleteNamespaceRequest{Name: "ns"})
			if !tc.is(err) {
				t.Fatalf("delete: %v", err)
			}
			if err != nil && !strings.Contains(err.Error(), tc.message) {
				t.Errorf("error %q does not say %q", err, tc.message)
			}
			if want := []string{"ns@ns"}; fmt.Sprint(tc.occupants.asked) != fmt.Sprint(want) {
				t.Errorf("occupants asked %v, want %v (in the namespace being deleted)", tc.occupants.asked, want)
			}
			list, err := c.List(ctx, &api.ListNamespacesRequest{})
			if err != nil {
				t.Fatal(err)
			}
			if exists := namesOf(list.GetNamespaces()) == "ns"; exists != tc.wantExists {
				t.Errorf("namespace listed = %v after delete (list: %s), want %v", exists, namesOf(list.GetNamespaces()), tc.wantExists)
			}
		})
	}
}

func TestDeleteOfNamespaceUnknownToContentd(t *testing.T) {
	for _, tc := range []struct {
		name    string
		held    []string
		is      func(error) bool
		message string
	}{
		{"held by others only is FailedPrecondition naming what they hold", []string{"containers"},
			errdefs.IsFailedPrecondition, `namespace "nothere" must be empty, but it still has containers`},
		{"held by no one is NotFound", nil, errdefs.IsNotFound, `"nothere"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db := testserver.OpenDB(t, filepath.Join(t.TempDir(), "meta.db"))
			occ := &fakeOccupants{held: tc.held}
			conn := testserver.Serve(t, func(s *grpc.Server) {
				api.RegisterNamespacesServer(s, NewService(NewStore(db), occ, &testserver.Recorder{}, nil))
			})
			_, err := api.NewNamespacesClient(conn).Delete(context.Background(), &api.DeleteNamespaceRequest{Name: "nothere"})
			if !tc.is(err) {
				t.Fatalf("delete: %v", err)
			}
			if !strings.Contains(err.Error(), tc.message) {
				t.Errorf("error %q does not say %q", err, tc.message)
			}
		})
	}
}

func TestListIncludesNamespacesHeldOnlyByOthers(t *testing.T) {
	for _, tc := range []struct {
		name     string
		occ      *fakeOccupants
		filter   string
		want     string
		wantFail bool
	}{
		{"others' namespaces are merged with contentd's, sorted, once each",
			&fakeOccupants{names: []string{"moby", "labelled", "zeta"}}, "", "alpha,labelled,moby,zeta", false},
		{"the filter applies to others' namespaces too",
			&fakeOccupants{names: []string{"moby", "zeta"}}, "name~=^[am]", "alpha,moby", false},
		{"a label filter leaves out others' namespaces, which have no labels",
			&fakeOccupants{names: []string{"moby"}}, "labels.team==a", "labelled", false},
		{"a service that cannot answer leaves what the others said",
			&fakeOccupants{names: []string{"moby"}, namesErr: fmt.Errorf("snapshotd: %w", errdefs.ErrUnavailable)}, "", "alpha,labelled,moby", false},
		{"an invalid name from a peer is left out",
			&fakeOccupants{names: []string{"-bad", "moby"}}, "", "alpha,labelled,moby", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db := testserver.OpenDB(t, filepath.Join(t.TempDir(), "meta.db"))
			conn := testserver.Serve(t, func(s *grpc.Server) {
				api.RegisterNamespacesServer(s, NewService(NewStore(db), tc.occ, &testserver.Recorder{}, nil))
			})
			c := api.NewNamespacesClient(conn)
			create(t, c, "alpha", nil)
			create(t, c, "labelled", map[string]string{"team": "a"})
			resp, err := c.List(context.Background(), &api.ListNamespacesRequest{Filter: tc.filter})
			if err != nil {
				t.Fatal(err)
			}
			if got := namesOf(resp.GetNamespaces()); got != tc.want {
				t.Errorf("list = %s, want %s", got, tc.want)
			}
			for _, ns := range resp.GetNamespaces() {
				if ns.GetName() == "labelled" && ns.GetLabels()["team"] != "a" {
					t.Errorf("contentd's labels lost when others hold the namespace too: %v", ns)
				}
			}
		})
	}
}

// putRecord stores one record in store bucket name of namespace ns.
func putRecord(t *testing.T, db *bolt.DB, ns string, name []byte) {
	t.Helper()
	if err := db.Update(func(tx *bolt.Tx) error {
		b, err := metadata.CreateStoreBucket(tx, ns, name)
		if err != nil {
			return err
		}
		return b.Put([]byte("x"), []byte("y"))
	}); err != nil {
		t.Fatal(err)
	}
}
