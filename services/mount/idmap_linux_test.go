package mount

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
)

func owner(t *testing.T, path string) (uint32, uint32) {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return st.Uid, st.Gid
}

func TestIDMappedMountsShowRootsFilesAsTheMappedRoots(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	const uidmap, gidmap = "uidmap=0:1000:65536", "gidmap=0:2000:65536"
	for _, tc := range []struct {
		name  string
		mount func(dir string) *types.Mount
		file  string // in the mount, created by root in the source
	}{
		{"a bind mount", func(dir string) *types.Mount {
			return &types.Mount{Type: "bind", Source: filepath.Join(dir, "lower"), Options: []string{"rbind", "rw", uidmap, gidmap}}
		}, "file"},
		{"an overlay through its lower directories", func(dir string) *types.Mount {
			return &types.Mount{Type: "overlay", Source: "overlay", Options: []string{
				"workdir=" + filepath.Join(dir, "work"), "upperdir=" + filepath.Join(dir, "upper"),
				"lowerdir=" + filepath.Join(dir, "lower"), uidmap, gidmap}}
		}, "file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for _, d := range []string{"lower", "upper", "work", "target"} {
				if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.WriteFile(filepath.Join(dir, "lower", tc.file), []byte("x"), 0o644); err != nil {
				t.Fatal(err)
			}
			target := filepath.Join(dir, "target")
			if err := Mount(tc.mount(dir), target); err != nil {
				t.Fatal(err)
			}
			defer Unmount(target)
			if uid, gid := owner(t, filepath.Join(target, tc.file)); uid != 1000 || gid != 2000 {
				t.Fatalf("root's file seen as %d:%d, want 1000:2000", uid, gid)
			}
			// No temporary lower mounts are left behind.
			left, _ := filepath.Glob(filepath.Join(os.TempDir(), "flotilla-idmapped-*"))
			for _, l := range left {
				if ok, _ := IsMountPoint(l); ok {
					t.Errorf("left mounted: %s", l)
				}
			}
		})
	}
	t.Run("a uidmap without a gidmap is invalid", func(t *testing.T) {
		dir := t.TempDir()
		err := Mount(&types.Mount{Type: "bind", Source: dir, Options: []string{"rbind", uidmap}}, dir)
		if !errdefs.IsInvalidArgument(err) {
			t.Fatalf("Mount: %v, want InvalidArgument", err)
		}
	})
	t.Run("a malformed mapping is invalid", func(t *testing.T) {
		dir := t.TempDir()
		err := Mount(&types.Mount{Type: "bind", Source: dir, Options: []string{"rbind", "uidmap=0:1000", gidmap}}, dir)
		if !errdefs.IsInvalidArgument(err) {
			t.Fatalf("Mount: %v, want InvalidArgument", err)
		}
	})
}
