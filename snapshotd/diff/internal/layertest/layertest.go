// Package layertest builds layer tars and describes directory trees for
// the diff packages' tests: the whiteout layers of the test-image kit
// (integration/imagekit, which snapshotd cannot import) rebuilt here, and a
// snapshot of a tree that tests compare against what they expect.
package layertest

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"
)

// Stamp is the modification time of every entry the builders make.
var Stamp = time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)

// Dir is a directory entry.
func Dir(name string, mode int64) *tar.Header {
	return &tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode, ModTime: Stamp}
}

// File is a regular file entry; its body is Body(hdr).
func File(name string, mode int64, body string) *tar.Header {
	return &tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(body)), ModTime: Stamp,
		PAXRecords: map[string]string{bodyKey: body}}
}

// Symlink is a symlink entry.
func Symlink(name, target string) *tar.Header {
	return &tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777, ModTime: Stamp}
}

// Hardlink is a hardlink entry.
func Hardlink(name, target string) *tar.Header {
	return &tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: target, Mode: 0o644, ModTime: Stamp}
}

// Owned sets an entry's owner.
func Owned(h *tar.Header, uid, gid int) *tar.Header {
	h.Uid, h.Gid = uid, gid
	return h
}

// bodyKey carries a File's body in its header until Tar writes it; it is
// removed before the header is written.
const bodyKey = "layertest.body"

// Tar writes hdrs as a tar stream. A header's Size beyond its body is
// written as is (for hostile layers), and the stream then ends where the
// body does, without the end-of-archive blocks.
func Tar(t testing.TB, hdrs ...*tar.Header) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range hdrs {
		h := *h
		body := ""
		if h.PAXRecords != nil {
			body = h.PAXRecords[bodyKey]
			recs := map[string]string{}
			for k, v := range h.PAXRecords {
				if k != bodyKey {
					recs[k] = v
				}
			}
			h.PAXRecords = recs
			if len(recs) == 0 {
				h.PAXRecords = nil
			}
		}
		if h.Format == tar.FormatUnknown {
			h.Format = tar.FormatPAX
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatalf("tar header %s: %v", h.Name, err)
		}
		if _, err := tw.Write([]byte(body)); err != nil {
			t.Fatalf("tar body %s: %v", h.Name, err)
		}
		if int64(len(body)) < h.Size {
			return buf.Bytes() // a short body: the stream ends here
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatalf("tar close: %v", err)
	}
	return buf.Bytes()
}

// Gzip compresses data with gzip.
func Gzip(t testing.TB, data []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(data)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// Zstd compresses data with zstd.
func Zstd(t testing.TB, data []byte) []byte {
	t.Helper()
	zw, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer zw.Close()
	return zw.EncodeAll(data, nil)
}

// WhiteoutLayers are the test-image kit's whiteout image layers, lowest
// first: the upper ones delete a file, a middle layer's file and a whole
// directory, make a directory opaque, replace a directory by a file,
// replace files with new modes, and add hardlinks, setuid/setgid/sticky
// modes and an owned directory.
func WhiteoutLayers() [][]*tar.Header {
	base := []*tar.Header{
		Dir("bin", 0o755),
		File("bin/tool", 0o4755, "tool v1\n"),
		Dir("data", 0o755),
		File("data/a.txt", 0o644, "a v1\n"),
		File("data/b.txt", 0o644, "b v1\n"),
		File("data/keep.txt", 0o644, "keep\n"),
		Symlink("data/link-to-a", "a.txt"),
		Dir("etc", 0o755),
		File("etc/hostname", 0o644, "base\n"),
		File("etc/shadow", 0o600, "root:*:19000:0:99999:7:::\n"),
		Dir("gone", 0o755),
		File("gone/inside", 0o644, "inside\n"),
		Dir("gone/deeper", 0o755),
		File("gone/deeper/file", 0o644, "deep\n"),
		Dir("hard", 0o755),
		File("hard/orig", 0o644, "one inode, two names\n"),
		Hardlink("hard/link", "hard/orig"),
		Dir("home", 0o755),
		Owned(Dir("home/user", 0o700), 1000, 1000),
		Owned(File("home/user/notes", 0o640, "notes\n"), 1000, 1000),
		Dir("opaque", 0o755),
		File("opaque/old1", 0o644, "old1\n"),
		Dir("opaque/sub", 0o755),
		File("opaque/sub/old2", 0o644, "old2\n"),
		Dir("replaced", 0o755),
		File("replaced/child", 0o644, "child\n"),
	}
	middle := []*tar.Header{
		Dir("data", 0o755),
		File("data/b.txt", 0o644, "b v2\n"),
		File("data/c.txt", 0o644, "c v1\n"),
		Dir("etc", 0o755),
		File("etc/motd", 0o644, "motd\n"),
		Dir("var", 0o755),
		Dir("var/log", 0o755),
		File("var/log/app.log", 0o644, "log\n"),
	}
	upper := []*tar.Header{
		File(".wh.gone", 0o644, ""),
		Dir("bin", 0o755),
		File("bin/sgid-tool", 0o2755, "sgid\n"),
		File("bin/tool", 0o4755, "tool v2\n"),
		Dir("data", 0o755),
		File("data/.wh.a.txt", 0o644, ""),
		File("data/b.txt", 0o444, "b v3\n"),
		Symlink("data/latest", "c.txt"),
		Dir("etc", 0o755),
		File("etc/.wh.motd", 0o644, ""),
		File("etc/hostname", 0o644, "upper\n"),
		Dir("opaque", 0o755),
		File("opaque/.wh..wh..opq", 0o644, ""),
		File("opaque/new", 0o644, "new\n"),
		File("replaced", 0o644, "now a file\n"),
		File("secret", 0o600, "secret\n"),
		Dir("tmp", 0o1777),
		Dir("usr", 0o755),
		Dir("usr/bin", 0o755),
		File("usr/bin/app", 0o755, "#!/bin/sh\necho app\n"),
		Hardlink("usr/bin/app-alias", "usr/bin/app"),
	}
	return [][]*tar.Header{base, middle, upper}
}

// WhiteoutExpected is the tree applying WhiteoutLayers in order gives, as
// Snapshot describes it.
func WhiteoutExpected() map[string]string {
	return map[string]string{
		"bin":               "dir 0755 0:0",
		"bin/sgid-tool":     "file 2755 0:0 sgid\n",
		"bin/tool":          "file 4755 0:0 tool v2\n",
		"data":              "dir 0755 0:0",
		"data/b.txt":        "file 0444 0:0 b v3\n",
		"data/c.txt":        "file 0644 0:0 c v1\n",
		"data/keep.txt":     "file 0644 0:0 keep\n",
		"data/latest":       "symlink 0:0 -> c.txt",
		"data/link-to-a":    "symlink 0:0 -> a.txt",
		"etc":               "dir 0755 0:0",
		"etc/hostname":      "file 0644 0:0 upper\n",
		"etc/shadow":        "file 0600 0:0 root:*:19000:0:99999:7:::\n",
		"hard":              "dir 0755 0:0",
		"hard/link":         "file 0644 0:0 one inode, two names\n",
		"hard/orig":         "file 0644 0:0 one inode, two names\n",
		"home":              "dir 0755 0:0",
		"home/user":         "dir 0700 1000:1000",
		"home/user/notes":   "file 0640 1000:1000 notes\n",
		"opaque":            "dir 0755 0:0",
		"opaque/new":        "file 0644 0:0 new\n",
		"replaced":          "file 0644 0:0 now a file\n",
		"secret":            "file 0600 0:0 secret\n",
		"tmp":               "dir 1777 0:0",
		"usr":               "dir 0755 0:0",
		"usr/bin":           "dir 0755 0:0",
		"usr/bin/app":       "file 0755 0:0 #!/bin/sh\necho app\n",
		"usr/bin/app-alias": "file 0755 0:0 #!/bin/sh\necho app\n",
		"var":               "dir 0755 0:0",
		"var/log":           "dir 0755 0:0",
		"var/log/app.log":   "file 0644 0:0 log\n",
	}
}

// WhiteoutHardlinks are the names of WhiteoutExpected that must share an inode.
var WhiteoutHardlinks = [][2]string{{"hard/orig", "hard/link"}, {"usr/bin/app", "usr/bin/app-alias"}}

// Snapshot describes every entry under root but root itself, by path:
// "dir MODE UID:GID", "file MODE UID:GID CONTENT", "symlink UID:GID ->
// TARGET", "char|block MODE UID:GID MAJOR:MINOR" or "fifo MODE UID:GID",
// with MODE the octal permission and setuid/setgid/sticky bits.
func Snapshot(t testing.TB, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == root {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		mode := fmt.Sprintf("%04o", st.Mode&0o7777)
		owner := fmt.Sprintf("%d:%d", st.Uid, st.Gid)
		switch st.Mode & syscall.S_IFMT {
		case syscall.S_IFDIR:
			out[rel] = "dir " + mode + " " + owner
		case syscall.S_IFREG:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			out[rel] = "file " + mode + " " + owner + " " + string(b)
		case syscall.S_IFLNK:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			out[rel] = "symlink " + owner + " -> " + target
		case syscall.S_IFCHR, syscall.S_IFBLK:
			kind := "char"
			if st.Mode&syscall.S_IFMT == syscall.S_IFBLK {
				kind = "block"
			}
			out[rel] = fmt.Sprintf("%s %s %s %d:%d", kind, mode, owner, unix.Major(st.Rdev), unix.Minor(st.Rdev))
		case syscall.S_IFIFO:
			out[rel] = "fifo " + mode + " " + owner
		}
		return nil
	})
	if err != nil {
		t.Fatalf("snapshot %s: %v", root, err)
	}
	return out
}

// Diff describes how got differs from want, or "" when they are equal.
func Diff(want, got map[string]string) string {
	var lines []string
	for k, w := range want {
		if g, ok := got[k]; !ok {
			lines = append(lines, fmt.Sprintf("missing %s (want %q)", k, w))
		} else if g != w {
			lines = append(lines, fmt.Sprintf("%s: got %q, want %q", k, g, w))
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			lines = append(lines, fmt.Sprintf("unexpected %s (%q)", k, g))
		}
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// SameInode tells whether two paths are one inode.
func SameInode(t testing.TB, a, b string) bool {
	t.Helper()
	fa, err1 := os.Lstat(a)
	fb, err2 := os.Lstat(b)
	if err1 != nil || err2 != nil {
		t.Fatalf("stat %s, %s: %v %v", a, b, err1, err2)
	}
	return os.SameFile(fa, fb)
}

// Canary is a host file outside the tree a hostile layer is applied to.
type Canary struct {
	Path  string
	sum   string
	mtime time.Time
	ino   uint64
}

// NewCanary writes a canary file at path and remembers its digest, time
// and inode.
func NewCanary(t testing.TB, path string) *Canary {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	old := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	if err := os.Chtimes(path, old, old); err != nil {
		t.Fatal(err)
	}
	c := &Canary{Path: path}
	c.sum, c.mtime, c.ino = c.state(t)
	return c
}

func (c *Canary) state(t testing.TB) (string, time.Time, uint64) {
	t.Helper()
	b, err := os.ReadFile(c.Path)
	if err != nil {
		t.Fatalf("canary %s: %v", c.Path, err)
	}
	fi, err := os.Lstat(c.Path)
	if err != nil {
		t.Fatalf("canary %s: %v", c.Path, err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), fi.ModTime(), fi.Sys().(*syscall.Stat_t).Ino
}

// Check fails t when the canary changed, or when a file under root shares
// its inode (a hardlink to it).
func (c *Canary) Check(t testing.TB, root string) {
	t.Helper()
	sum, mtime, ino := c.state(t)
	if sum != c.sum || !mtime.Equal(c.mtime) || ino != c.ino {
		t.Errorf("canary %s changed: sha256 %s mtime %v ino %d, was %s %v %d", c.Path, sum, mtime, ino, c.sum, c.mtime, c.ino)
	}
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if fi, err := os.Lstat(p); err == nil && fi.Sys().(*syscall.Stat_t).Ino == c.ino && fi.Mode().IsRegular() {
			t.Errorf("%s is a hardlink to the canary %s", p, c.Path)
		}
		return nil
	})
}

// TempDir makes a directory with a short path under /tmp (overlay mount
// options and socket paths have length limits) and removes it at the end
// of the test, after the cleanups registered later (unmounts) have run.
func TempDir(t testing.TB, pattern string) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", pattern)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Never remove through a mount a failed test left behind.
		for _, m := range MountsUnder(dir) {
			unix.Unmount(m, unix.MNT_DETACH)
		}
		if left := MountsUnder(dir); len(left) > 0 {
			t.Errorf("mounts left under %s: %v", dir, left)
			return
		}
		os.RemoveAll(dir)
	})
	return dir
}

// MountsUnder lists the mount points at or under dir, deepest first.
func MountsUnder(dir string) []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := strings.ReplaceAll(f[4], "\\040", " ")
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	slices.SortFunc(out, func(a, b string) int { return len(b) - len(a) })
	return out
}
