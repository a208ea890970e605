package overlayfs

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/flotilla/flotilla/snapshotd/snapshotter"

	"github.com/flotilla/flotilla/snapshotd/snapshottest"
)

func TestConformanceInProcess(t *testing.T) {
	snapshottest.Run(t, snapshottest.InProcess(New))
}

func TestUpperDirIsOwnedLikeItsParent(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("overlay and chown need root")
	}
	s, err := New(t.TempDir())
	if err != nil {
		t.Skip(err)
	}
	ctx := context.Background()
	mounts, err := s.Prepare(ctx, "base", "")
	if err != nil {
		t.Fatal(err)
	}
	// A remapped parent, as the client's WithRemappedSnapshot makes it.
	if err := os.Chown(mounts[0].Source, 1000, 2000); err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(ctx, "base-committed", "base"); err != nil {
		t.Fatal(err)
	}
	mounts, err = s.Prepare(ctx, "child", "base-committed")
	if err != nil {
		t.Fatal(err)
	}
	upper := ""
	for _, o := range mounts[0].Options {
		if v, ok := strings.CutPrefix(o, "upperdir="); ok {
			upper = v
		}
	}
	var st unix.Stat_t
	if err := unix.Stat(upper, &st); err != nil {
		t.Fatalf("upperdir %q: %v", upper, err)
	}
	if st.Uid != 1000 || st.Gid != 2000 {
		t.Fatalf("upperdir owned by %d:%d, want the parent's 1000:2000", st.Uid, st.Gid)
	}
}

func TestIDMappingLabelsGiveIDMappedMounts(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("overlay and chown need root")
	}
	s, err := New(t.TempDir())
	if err != nil {
		t.Skip(err)
	}
	ctx := context.Background()
	if _, err := s.Prepare(ctx, "base", ""); err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(ctx, "base-committed", "base"); err != nil {
		t.Fatal(err)
	}
	labels := snapshotter.WithLabels(map[string]string{
		LabelUIDMapping: "0:33:100,100:333:65536",
		LabelGIDMapping: "0:66:100,100:666:65536",
	})
	mounts, err := s.Prepare(ctx, "mapped", "base-committed", labels)
	if err != nil {
		t.Fatal(err)
	}
	again, err := s.Mounts(ctx, "mapped")
	if err != nil {
		t.Fatal(err)
	}
	for _, ms := range [][]snapshotter.Mount{mounts, again} {
		opts := strings.Join(ms[0].Options, " ")
		if !strings.Contains(opts, "uidmap=0:33:100,100:333:65536") || !strings.Contains(opts, "gidmap=0:66:100,100:666:65536") {
			t.Fatalf("mount options %q lack the ID mappings", opts)
		}
	}
	upper := ""
	for _, o := range mounts[0].Options {
		if v, ok := strings.CutPrefix(o, "upperdir="); ok {
			upper = v
		}
	}
	var st unix.Stat_t
	if err := unix.Stat(upper, &st); err != nil {
		t.Fatal(err)
	}
	if st.Uid != 33 || st.Gid != 66 {
		t.Fatalf("upperdir owned by %d:%d, want the mapped root 33:66", st.Uid, st.Gid)
	}

	t.Run("a uid mapping without a gid mapping is invalid", func(t *testing.T) {
		_, err := s.Prepare(ctx, "half", "base-committed", snapshotter.WithLabels(map[string]string{LabelUIDMapping: "0:33:100"}))
		if !errdefs.IsInvalidArgument(err) {
			t.Fatalf("Prepare: %v, want InvalidArgument", err)
		}
	})
	t.Run("mappings without root are invalid", func(t *testing.T) {
		_, err := s.Prepare(ctx, "noroot", "base-committed", snapshotter.WithLabels(map[string]string{LabelUIDMapping: "1:33:100", LabelGIDMapping: "1:33:100"}))
		if !errdefs.IsInvalidArgument(err) {
			t.Fatalf("Prepare: %v, want InvalidArgument", err)
		}
	})
}
