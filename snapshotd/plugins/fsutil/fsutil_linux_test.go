package fsutil

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestCopyTree(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("ownership and device nodes need root")
	}
	src, dst := t.TempDir(), t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(src, "d", "ro"), 0o755))
	must(os.WriteFile(filepath.Join(src, "d", "file"), []byte("content"), 0o640))
	must(unix.Chmod(filepath.Join(src, "d", "file"), 0o4755))
	must(os.Chown(filepath.Join(src, "d", "file"), 1000, 1001))
	must(unix.Chmod(filepath.Join(src, "d", "file"), 0o4755)) // chown cleared setuid
	must(os.Link(filepath.Join(src, "d", "file"), filepath.Join(src, "hardlink")))
	must(os.Symlink("d/file", filepath.Join(src, "symlink")))
	must(unix.Mkfifo(filepath.Join(src, "fifo"), 0o600))
	must(unix.Mknod(filepath.Join(src, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
	must(unix.Lsetxattr(filepath.Join(src, "d", "file"), "user.flotilla", []byte("x"), 0))
	old := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)
	must(os.Chtimes(filepath.Join(src, "d", "file"), old, old))
	must(os.Chmod(filepath.Join(src, "d", "ro"), 0o500))

	must(CopyTree(context.Background(), dst, src))

	stat := func(p string) unix.Stat_t {
		t.Helper()
		var st unix.Stat_t
		must(unix.Lstat(filepath.Join(dst, p), &st))
		return st
	}
	for _, tc := range []struct {
		name string
		ok   func() bool
	}{
		{"content is copied", func() bool { b, _ := os.ReadFile(filepath.Join(dst, "d", "file")); return string(b) == "content" }},
		{"mode with setuid survives chown", func() bool { return stat("d/file").Mode&07777 == 0o4755 }},
		{"owner is kept", func() bool { st := stat("d/file"); return st.Uid == 1000 && st.Gid == 1001 }},
		{"hard links stay linked", func() bool { return stat("hardlink").Ino == stat("d/file").Ino }},
		{"symlink keeps its target", func() bool { l, _ := os.Readlink(filepath.Join(dst, "symlink")); return l == "d/file" }},
		{"fifo is a fifo", func() bool { return stat("fifo").Mode&unix.S_IFMT == unix.S_IFIFO }},
		{"device node keeps its numbers", func() bool {
			st := stat("null")
			return st.Mode&unix.S_IFMT == unix.S_IFCHR && st.Rdev == unix.Mkdev(1, 3)
		}},
		{"extended attributes are copied", func() bool {
			b := make([]byte, 8)
			n, err := unix.Lgetxattr(filepath.Join(dst, "d", "file"), "user.flotilla", b)
			return err == nil && string(b[:n]) == "x"
		}},
		{"modification time is kept", func() bool { return stat("d/file").Mtim.Sec == old.Unix() }},
		{"read-only directory is copied with its mode", func() bool { return stat("d/ro").Mode&0o777 == 0o500 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !tc.ok() {
				t.Fail()
			}
		})
	}
	t.Run("usage counts a hard-linked inode once", func(t *testing.T) {
		u, err := Usage(context.Background(), dst)
		if err != nil {
			t.Fatal(err)
		}
		// root, d, d/ro, file(+hardlink), symlink, fifo, null
		if u.Inodes != 7 {
			t.Fatalf("inodes = %d, want 7", u.Inodes)
		}
	})
}
