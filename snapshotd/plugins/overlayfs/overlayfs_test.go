package overlayfs

import (
	"context"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

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
