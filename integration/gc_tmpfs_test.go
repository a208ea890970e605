package integration

import (
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/flotilla/flotilla/flotctl/stack"
	"github.com/flotilla/flotilla/integration/imagekit"
)

func TestGCFullDataRootFailsThePullAndTheSpaceComesBack(t *testing.T) {
	requireTool(t, "ctr")
	requireRootForMounts(t)
	reg := imagekit.StartRegistry(t)
	large := pushImage(t, reg, "gc-full-large", func() (*imagekit.Image, error) {
		return imagekit.BuildLarge(imagekit.WithSize(96<<20), imagekit.WithTempDir(t.TempDir()))
	})
	small := pushImage(t, reg, "gc-full-small", func() (*imagekit.Image, error) { return imagekit.BuildBusybox() })

	// contentd's data root on a 64 MiB tmpfs: the large layer cannot fit.
	dataRoot := t.TempDir()
	if err := syscall.Mount("tmpfs", dataRoot, "tmpfs", 0, "size=64m"); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(dataRoot, syscall.MNT_DETACH) })
	s := startStackWith(t, func(l *stack.Layout) {
		l.ExtraArgs = map[string][]string{"contentd": {"--root", filepath.Join(dataRoot, "contentd")}}
	})
	stopPluginsOnCleanup(t, s)
	const ns = "gc-full"
	free := func() uint64 {
		var st syscall.Statfs_t
		if err := syscall.Statfs(dataRoot, &st); err != nil {
			t.Fatal(err)
		}
		return st.Bavail * uint64(st.Bsize)
	}
	before := free()

	out, err := s.Ctr(ns, "images", "pull", "--plain-http", large.ref)
	if err == nil {
		t.Fatalf("a pull larger than the disk succeeded:\n%s", out)
	}
	if !strings.Contains(out, "no space left on device") {
		t.Errorf("the failed pull does not say the disk is full:\n%s", lastLines(out, 5))
	}
	// ctr deleted its lease; the collection that follows frees the partial download.
	eventually(t, "the space of the failed pull comes back", func() bool {
		return free() >= before-1<<20
	})
	s.MustCtr(ns, "images", "pull", "--plain-http", small.ref)
	if out := s.MustCtr(ns, "run", "--rm", small.ref, "gc-full-run", "echo", "hi"); strings.TrimSpace(out) != "hi" {
		t.Errorf("ctr run printed %q, want hi", out)
	}
}
