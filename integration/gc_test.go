package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc/metadata"

	"github.com/flotilla/flotilla/flotctl/stack"
	"github.com/flotilla/flotilla/integration/imagekit"
	contentdv1 "github.com/flotilla/flotilla/proto/contentd/v1"
)

// diskUse is the bytes of the files holding blobs, ingests and snapshots
// under the stack's root: every file but the daemons' databases, which
// bbolt never shrinks.
func diskUse(t *testing.T, s *Stack) int64 {
	t.Helper()
	var total int64
	for _, dir := range []string{filepath.Join(s.Layout.Root, "contentd", "content"), filepath.Join(s.Layout.Root, "snapshotd")} {
		filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() || strings.HasSuffix(path, ".db") || strings.HasSuffix(path, ".json") {
				return nil
			}
			if fi, err := d.Info(); err == nil {
				total += fi.Size()
			}
			return nil
		})
	}
	return total
}

// collect runs a collection through the gateway, as flotctl gc does.
func collect(t *testing.T, s *Stack) *contentdv1.CollectResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	resp, err := contentdv1.NewGCClient(s.Conn()).Collect(ctx, &contentdv1.CollectRequest{})
	if err != nil {
		t.Fatalf("gc collect: %v", err)
	}
	return resp
}

// blobsOf names every blob of img.
func blobsOf(img *imagekit.Image) []digest.Digest {
	var out []digest.Digest
	for _, b := range img.Blobs {
		out = append(out, b.Descriptor.Digest)
	}
	return out
}

func listed(out string, names ...string) []string {
	var found []string
	for _, n := range names {
		if strings.Contains(out, n) {
			found = append(found, n)
		}
	}
	return found
}

func chainNames(img *imagekit.Image) []string {
	var out []string
	for _, id := range chainIDs(img) {
		out = append(out, id.String())
	}
	return out
}

func digestNames(ds []digest.Digest) []string {
	var out []string
	for _, d := range ds {
		out = append(out, d.String())
	}
	return out
}

// eventually polls cond until it holds or a minute passes (collections
// triggered by deletions run in the background, after containerd's pause).
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	until(t, time.Minute, what, func() (bool, string) { return cond(), "" })
}

// until polls cond every 100 ms until it holds or within passes, then
// fails saying what and the last state cond described. It is for states
// that send no event to wait on: another process's log line, a registry
// key, a gateway reaching its backends, a collection in the background.
func until(t *testing.T, within time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		ok, last := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %v\n%s", what, within, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestGCRemovedImagesFreeBlobsAndSnapshotsContainersKeepTheirs(t *testing.T) {
	requireTool(t, "ctr")
	requireRootForMounts(t)
	reg := imagekit.StartRegistry(t)
	s := startStack(t)
	stopPluginsOnCleanup(t, s)
	used := pushImage(t, reg, "gc-used", func() (*imagekit.Image, error) { return imagekit.BuildBusybox() })
	unused := pushImage(t, reg, "gc-unused", func() (*imagekit.Image, error) { return imagekit.BuildLayers() })
	const ns = "gc"

	before := diskUse(t, s)
	s.MustCtr(ns, "images", "pull", "--plain-http", used.ref)
	s.MustCtr(ns, "images", "pull", "--plain-http", unused.ref)
	s.MustCtr(ns, "containers", "create", used.ref, "gc-c1")
	if diskUse(t, s) <= before {
		t.Fatalf("the pulls used no disk")
	}

	s.MustCtr(ns, "images", "rm", used.ref, unused.ref)
	// The deletions trigger collections; one on demand waits for them.
	collect(t, s)

	content := s.MustCtr(ns, "content", "ls")
	snapshots := s.MustCtr(ns, "snapshots", "ls")
	if found := listed(content, digestNames(blobsOf(unused.img))...); len(found) > 0 {
		t.Errorf("blobs of the removed, unused image are still there: %v\n%s", found, content)
	}
	if found := listed(snapshots, chainNames(unused.img)...); len(found) > 0 {
		t.Errorf("snapshots of the removed, unused image are still there: %v\n%s", found, snapshots)
	}
	if found := listed(snapshots, chainNames(used.img)...); len(found) != len(chainIDs(used.img)) {
		t.Errorf("the container's image snapshots went while it exists: have %v of %v\n%s", found, chainNames(used.img), snapshots)
	}
	if !strings.Contains(snapshots, "gc-c1") {
		t.Errorf("the container's own snapshot went:\n%s", snapshots)
	}

	s.MustCtr(ns, "containers", "rm", "gc-c1")
	// taskd asks contentd to collect after a container is deleted.
	eventually(t, "the deleted container's snapshots are collected", func() bool {
		out := s.MustCtr(ns, "snapshots", "ls")
		return len(listed(out, append(chainNames(used.img), "gc-c1")...)) == 0
	})
	if out := s.MustCtr(ns, "content", "ls"); len(listed(out, digestNames(blobsOf(used.img))...)) > 0 {
		t.Errorf("blobs of the removed image are still there:\n%s", out)
	}
	if after := diskUse(t, s); after != before {
		t.Errorf("disk use after removing everything: %d bytes, before the pulls: %d", after, before)
	}
}

func TestGCImagesRmSyncLeavesNothingOfTheImage(t *testing.T) {
	requireTool(t, "ctr")
	requireRootForMounts(t)
	reg := imagekit.StartRegistry(t)
	s := startStack(t)
	stopPluginsOnCleanup(t, s)
	p := pushImage(t, reg, "gc-sync", func() (*imagekit.Image, error) { return imagekit.BuildLayers() })
	const ns = "gc-sync"

	s.MustCtr(ns, "images", "pull", "--plain-http", p.ref)
	if found := listed(s.MustCtr(ns, "snapshots", "ls"), chainNames(p.img)...); len(found) == 0 {
		t.Fatalf("the pull unpacked nothing")
	}
	s.MustCtr(ns, "images", "rm", "--sync", p.ref)
	// No further collection: --sync answers once it is done.
	if out := s.MustCtr(ns, "content", "ls"); len(listed(out, digestNames(blobsOf(p.img))...)) > 0 {
		t.Errorf("ctr content ls after images rm --sync still shows the image's blobs:\n%s", out)
	}
	if out := s.MustCtr(ns, "snapshots", "ls"); len(listed(out, chainNames(p.img)...)) > 0 {
		t.Errorf("ctr snapshots ls after images rm --sync still shows the image's snapshots:\n%s", out)
	}
}

func TestGCPullUnderItsLeaseLosesNothingWhileCollectionsLoop(t *testing.T) {
	requireTool(t, "ctr")
	requireRootForMounts(t)
	reg := imagekit.StartRegistry(t)
	s := startStack(t)
	stopPluginsOnCleanup(t, s)
	small := pushImage(t, reg, "gc-loop-busybox", func() (*imagekit.Image, error) { return imagekit.BuildBusybox() })
	large := pushImage(t, reg, "gc-loop-large", func() (*imagekit.Image, error) {
		return imagekit.BuildLarge(imagekit.WithSize(64<<20), imagekit.WithTempDir(t.TempDir()))
	})
	const ns = "gc-loop"

	gcClient := contentdv1.NewGCClient(s.Conn())
	stop := make(chan struct{})
	done := make(chan error, 1)
	var rounds int
	go func() {
		for {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			_, err := gcClient.Collect(ctx, &contentdv1.CollectRequest{})
			cancel()
			if err != nil {
				done <- err
				return
			}
			rounds++
		}
	}()
	s.MustCtr(ns, "images", "pull", "--plain-http", large.ref)
	s.MustCtr(ns, "images", "pull", "--plain-http", small.ref)
	close(stop)
	if err := <-done; err != nil {
		t.Fatalf("a collection during the pulls failed: %v", err)
	}
	if rounds < 2 {
		t.Fatalf("only %d collections ran during the pulls", rounds)
	}
	t.Logf("%d collections ran during the pulls", rounds)

	for _, p := range []pushed{large, small} {
		line := checkLine(s.MustCtr(ns, "images", "check"), p.ref)
		if f := strings.Fields(line); len(f) < 6 || f[3] != "complete" || f[len(f)-1] != "true" {
			t.Errorf("images check after pulls amid collections: %q, want complete and unpacked", line)
		}
	}
	if out := s.MustCtr(ns, "run", "--rm", small.ref, "gc-loop-run", "echo", "hi"); strings.TrimSpace(out) != "hi" {
		t.Errorf("ctr run printed %q, want hi", out)
	}
	// Nothing the images reference goes with them still there.
	collect(t, s)
	for _, p := range []pushed{large, small} {
		line := checkLine(s.MustCtr(ns, "images", "check"), p.ref)
		if f := strings.Fields(line); len(f) < 6 || f[3] != "complete" || f[len(f)-1] != "true" {
			t.Errorf("images check after one more collection: %q", line)
		}
	}
}

func TestGCLeaseWithExpiryHoldsABlobUntilItExpires(t *testing.T) {
	requireTool(t, "ctr")
	s := startStackWith(t, func(l *stack.Layout) {
		l.ExtraArgs = map[string][]string{"contentd": {"--expiry-interval", "200ms"}}
	})
	const ns = "gc-lease"
	s.MustCtr(ns, "leases", "create", "--id", "hold-2s", "--expires", "2s")
	data := []byte("held by a lease that expires in two seconds")
	dgst := digest.FromBytes(data)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	leased := metadata.AppendToOutgoingContext(inNamespace(ctx, ns), "containerd-lease", "hold-2s")
	if err := writeBlob(leased, contentAPI(t, s), "gc-lease-blob", data, nil); err != nil {
		t.Fatal(err)
	}

	collect(t, s)
	if out := s.MustCtr(ns, "content", "ls"); !strings.Contains(out, dgst.String()) {
		t.Fatalf("a collection while the lease lives took its blob:\n%s", out)
	}
	eventually(t, "the blob goes once its lease expired", func() bool {
		return !strings.Contains(s.MustCtr(ns, "content", "ls"), dgst.String())
	})
	if out := s.MustCtr(ns, "leases", "ls"); strings.Contains(out, "hold-2s") {
		t.Errorf("the expired lease is still listed:\n%s", out)
	}
}

func TestGCWrongBytesThenFixedRegistryPullSucceeds(t *testing.T) {
	requireTool(t, "ctr")
	requireRootForMounts(t)
	reg := runRegistry(t)
	s := startStack(t)
	stopPluginsOnCleanup(t, s)
	p := pushImage(t, reg.Addr, "gc-corrupt", func() (*imagekit.Image, error) { return imagekit.BuildBusybox() })
	layer := p.img.Layers[0].Descriptor.Digest
	data := filepath.Join(reg.Dir, "data", "docker", "registry", "v2", "blobs", "sha256", layer.Encoded()[:2], layer.Encoded(), "data")
	orig, err := os.ReadFile(data)
	if err != nil {
		t.Fatal(err)
	}
	bad := append([]byte(nil), orig...)
	bad[len(bad)/2] ^= 0xff
	if err := os.WriteFile(data, bad, 0o644); err != nil {
		t.Fatal(err)
	}

	const ns = "gc-corrupt"
	if out, err := s.Ctr(ns, "images", "pull", "--plain-http", p.ref); err == nil {
		t.Fatalf("ctr pull of a corrupt layer succeeded:\n%s", out)
	}
	// As in containerd, the failed commit keeps its ingest, held by the
	// pull's lease; ctr deletes the lease, and the collection that follows
	// takes the ingest, so a retry does not resume the wrong bytes.
	eventually(t, "the corrupt layer's ingest goes with the pull's lease", func() bool {
		return !strings.Contains(s.MustCtr(ns, "content", "active"), layer.Encoded())
	})
	if err := os.WriteFile(data, orig, 0o644); err != nil {
		t.Fatal(err)
	}
	s.MustCtr(ns, "images", "pull", "--plain-http", p.ref)
	if out := s.MustCtr(ns, "run", "--rm", p.ref, "gc-corrupt-run", "echo", "hi"); strings.TrimSpace(out) != "hi" {
		t.Errorf("ctr run printed %q, want hi", out)
	}
}

func TestGCKill9DuringACollectionLeavesConsistentStores(t *testing.T) {
	requireTool(t, "ctr")
	requireRootForMounts(t)
	reg := imagekit.StartRegistry(t)
	s := startStack(t)
	stopPluginsOnCleanup(t, s)
	kept := pushImage(t, reg, "gc-kill-kept", func() (*imagekit.Image, error) { return imagekit.BuildBusybox() })
	const ns = "gc-kill"
	s.MustCtr(ns, "images", "pull", "--plain-http", kept.ref)

	for _, victim := range []string{"contentd", "snapshotd"} {
		t.Run("kill -9 of "+victim, func(t *testing.T) {
			// Garbage for the collections to work on: an image pulled and removed.
			gone := pushImage(t, reg, "gc-kill-gone-"+victim, func() (*imagekit.Image, error) { return imagekit.BuildLayers() })
			s.MustCtr(ns, "images", "pull", "--plain-http", gone.ref)
			s.MustCtr(ns, "images", "rm", gone.ref)

			gcClient := contentdv1.NewGCClient(s.Conn())
			started := make(chan struct{})
			loopDone := make(chan struct{})
			go func() {
				defer close(loopDone)
				for n := 0; ; n++ {
					if n == 1 {
						close(started)
					}
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					_, err := gcClient.Collect(ctx, &contentdv1.CollectRequest{})
					cancel()
					if err != nil {
						return // the victim is gone
					}
				}
			}()
			<-started
			s.Kill9(victim)
			<-loopDone
			s.Up()

			// The next collection finishes, and the stores agree.
			collect(t, s)
			line := checkLine(s.MustCtr(ns, "images", "check"), kept.ref)
			if f := strings.Fields(line); len(f) < 6 || f[3] != "complete" || f[len(f)-1] != "true" {
				t.Errorf("images check after the kill: %q, want complete and unpacked", line)
			}
			snapshots := s.MustCtr(ns, "snapshots", "ls")
			names := map[string]bool{}
			var parents []string
			for _, l := range strings.Split(snapshots, "\n")[1:] {
				if f := strings.Fields(l); len(f) >= 3 {
					names[f[0]] = true
					parents = append(parents, f[1])
				} else if len(f) == 2 {
					names[f[0]] = true
				}
			}
			for _, p := range parents {
				if !names[p] {
					t.Errorf("a snapshot's parent %s is missing:\n%s", p, snapshots)
				}
			}
			if found := listed(snapshots, chainNames(gone.img)...); len(found) > 0 {
				t.Errorf("the removed image's snapshots outlived the next collection: %v", found)
			}
			if found := listed(s.MustCtr(ns, "content", "ls"), digestNames(blobsOf(gone.img))...); len(found) > 0 {
				t.Errorf("the removed image's blobs outlived the next collection: %v", found)
			}
			if out := s.MustCtr(ns, "run", "--rm", kept.ref, "gc-kill-run", "echo", "hi"); strings.TrimSpace(out) != "hi" {
				t.Errorf("ctr run after the kill printed %q, want hi", out)
			}
		})
	}
}

func TestGCFlotctlGCSaysWhatWentAndTheBytesFreed(t *testing.T) {
	requireTool(t, "ctr")
	s := startStack(t)
	const ns = "gc-flotctl"
	data := []byte(strings.Repeat("nothing references this blob ", 100))
	dgst := digest.FromBytes(data)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// Written without a lease or label: nothing keeps it, and nothing
	// deleted triggers a collection, so it stays until one is asked for.
	if err := writeBlob(inNamespace(ctx, ns), contentAPI(t, s), "gc-flotctl-blob", data, nil); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(s.MustCtr(ns, "content", "ls"), dgst.String()) {
		t.Fatal("the blob is not there")
	}

	out := mustFlotctl(t, s, "gc")
	if !strings.Contains(out, dgst.String()) || !strings.Contains(out, "content") {
		t.Errorf("flotctl gc does not list the blob it removed:\n%s", out)
	}
	if !strings.Contains(out, fmt.Sprintf("(%d bytes)", len(data))) {
		t.Errorf("flotctl gc does not say it reclaimed the blob's %d bytes:\n%s", len(data), out)
	}
	if strings.Contains(s.MustCtr(ns, "content", "ls"), dgst.String()) {
		t.Errorf("the blob flotctl gc reported removed is still listed")
	}
	var res struct {
		Removed []struct{ Kind, ID string }
		Bytes   int64
	}
	if err := json.Unmarshal([]byte(mustFlotctl(t, s, "gc", "--format", "json")), &res); err != nil {
		t.Fatal(err)
	}
	if len(res.Removed) != 0 || res.Bytes != 0 {
		t.Errorf("a second collection removed %+v", res)
	}
}
