package integration

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	leasesapi "github.com/containerd/containerd/api/services/leases/v1"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
)

// TestGCLabelsAsContainerd2 sets up content and snapshots labelled with
// every garbage collection label containerd 2.4's collector reads
// (core/metadata/gc.go: gc.root, gc.ref.*, gc.bref.*, gc.cond.snapshot
// with gc.cond.value-usedat, gc.expire), through containerd's API, on
// Flotilla and on containerd 2.4.2, runs a collection on each (the lease
// they were made under deleted with Sync), lists what is left with ctr, and
// checks that Flotilla keeps and removes what containerd does.
func TestGCLabelsAsContainerd2(t *testing.T) {
	requireTool(t, "ctr")
	const ns = "gclabels"
	now := time.Now().UTC()
	blob := func(name string) string { return fmt.Sprintf("gc label case %s\n", name) }
	digest := func(name string) string { return fmt.Sprintf("sha256:%x", sha256.Sum256([]byte(blob(name)))) }
	type labelled struct {
		name   string
		labels []string
	}
	// Every blob, with the labels it gets; the snapshots are below.
	blobs := []labelled{
		{"root", []string{"containerd.io/gc.root=" + now.Format(time.RFC3339)}},
		{"root-prefix", []string{"containerd.io/gc.rootless=1"}},
		{"expire-future", []string{"containerd.io/gc.expire=" + now.Add(time.Hour).Format(time.RFC3339)}},
		{"orphan", nil},
		{"child", nil},
		{"named-child", nil},
		{"parent", []string{"containerd.io/gc.root=1", "containerd.io/gc.ref.content.c=" + digest("child"),
			"containerd.io/gc.ref.content/x=" + digest("named-child")}},
		{"bref-to-root", []string{"containerd.io/gc.bref.content=" + digest("root")}},
		{"bref-to-orphan", []string{"containerd.io/gc.bref.content.o=" + digest("orphan")}},
		{"bref-to-snapshot", []string{"containerd.io/gc.bref.snapshot.overlayfs=snap-root"}},
		{"bref-to-gone-snapshot", []string{"containerd.io/gc.bref.snapshot.overlayfs/n=snap-none"}},
		{"cond", []string{"containerd.io/gc.root=1",
			"containerd.io/gc.cond.snapshot.overlayfs=usedat<1h|snap-recent",
			"containerd.io/gc.cond.snapshot.overlayfs/old=usedat<1h|snap-old",
			"containerd.io/gc.cond.snapshot.overlayfs/never=usedat<1h|snap-unused",
			"containerd.io/gc.cond.snapshot.overlayfs/stale=usedat>1h,usedat<1m|snap-stale"}},
	}
	// Every snapshot, with the labels it is made with (nil: gc.root).
	snapshots := []labelled{
		{"snap-root", nil},
		{"snap-plain", []string{}},
		{"snap-recent", []string{"containerd.io/gc.cond.value-usedat=" + now.Format(time.RFC3339)}},
		{"snap-old", []string{"containerd.io/gc.cond.value-usedat=" + now.Add(-2*time.Hour).Format(time.RFC3339)}},
		{"snap-unused", []string{}},
		{"snap-stale", []string{"containerd.io/gc.cond.value-usedat=" + now.Add(-3*time.Hour).Format(time.RFC3339)}},
		{"snap-bref", []string{"containerd.io/gc.bref.content=" + digest("root")}},
		{"snap-bref-orphan", []string{"containerd.io/gc.bref.content=" + digest("orphan")}},
		{"snap-expire-future", []string{"containerd.io/gc.expire=" + now.Add(time.Hour).Format(time.RFC3339)}},
		{"snap-ref-parent", []string{"containerd.io/gc.root=1", "containerd.io/gc.ref.content=" + digest("child")}},
	}

	// kept returns the names of the blobs and snapshots a collection on
	// tg left.
	kept := func(t *testing.T, tg target) []string {
		ctr := func(args ...string) string {
			t.Helper()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, "ctr", append([]string{"--address", tg.socket, "--namespace", ns}, args...)...)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("%s: ctr %s: %v\n%s", tg.name, strings.Join(args, " "), err, out)
			}
			return string(out)
		}
		// Everything is made under a lease, labelled as it is made, so
		// that no collection (containerd runs one at start-up) comes
		// between; deleting the lease with Sync is the collection.
		conn, err := grpc.NewClient("unix://"+tg.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ctx := inNamespace(context.Background(), ns)
		ls := leasesapi.NewLeasesClient(conn)
		if _, err := ls.Create(ctx, &leasesapi.CreateRequest{ID: "gclabels-setup"}); err != nil {
			t.Fatalf("%s: create lease: %v", tg.name, err)
		}
		lctx := metadata.AppendToOutgoingContext(ctx, "containerd-lease", "gclabels-setup")
		asMap := func(labels []string) map[string]string {
			m := map[string]string{}
			for _, l := range labels {
				k, v, _ := strings.Cut(l, "=")
				m[k] = v
			}
			return m
		}
		cs := contentapi.NewContentClient(conn)
		for _, b := range blobs {
			if err := writeBlob(lctx, cs, "ingest-"+b.name, []byte(blob(b.name)), asMap(b.labels)); err != nil {
				t.Fatalf("%s: write blob %s: %v", tg.name, b.name, err)
			}
		}
		sn := snapshotsapi.NewSnapshotsClient(conn)
		for _, s := range snapshots {
			labels := s.labels
			if labels == nil {
				labels = []string{"containerd.io/gc.root=1"}
			}
			if _, err := sn.Prepare(lctx, &snapshotsapi.PrepareSnapshotRequest{Snapshotter: "overlayfs", Key: s.name, Labels: asMap(labels)}); err != nil {
				t.Fatalf("%s: prepare %s: %v", tg.name, s.name, err)
			}
		}
		if _, err := ls.Delete(ctx, &leasesapi.DeleteRequest{ID: "gclabels-setup", Sync: true}); err != nil {
			t.Fatalf("%s: delete the lease with sync: %v", tg.name, err)
		}

		var names []string
		have := ctr("content", "ls", "-q")
		for _, b := range blobs {
			if strings.Contains(have, digest(b.name)) {
				names = append(names, b.name)
			}
		}
		snaps := ctr("snapshots", "ls")
		for _, s := range snapshots {
			for _, l := range strings.Split(snaps, "\n") {
				if f := strings.Fields(l); len(f) > 0 && f[0] == s.name {
					names = append(names, s.name)
				}
			}
		}
		slices.Sort(names)
		return names
	}

	var reference []string
	t.Run("containerd 2.4", func(t *testing.T) {
		reference = kept(t, startContainerd2(t))
		t.Logf("containerd 2.4 kept %q", reference)
		// The collection ran: what nothing keeps went.
		if slices.Contains(reference, "orphan") || !slices.Contains(reference, "root") {
			t.Fatalf("containerd's collection did not run as expected: kept %q", reference)
		}
	})
	if reference == nil {
		t.Fatal("no reference from containerd 2.4")
	}
	t.Run("flotilla", func(t *testing.T) {
		got := kept(t, flotillaTarget(startStack(t)))
		if !slices.Equal(got, reference) {
			t.Errorf("Flotilla kept %q\ncontainerd 2.4 kept %q", got, reference)
		}
	})
}
