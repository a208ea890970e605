package archive

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	lt "github.com/flotilla/flotilla/snapshotd/diff/internal/layertest"
)

// fuzzHost is a fixed directory outside every root the fuzzer applies to,
// so that inputs can aim absolute symlinks and hardlinks at it.
const fuzzHost = "/tmp/flotilla-fuzz-host"

// FuzzApply applies arbitrary bytes as a layer into a temporary root: it
// must never panic, never touch anything outside the root (a canary beside
// the root and one at a fixed host path stay as they were, no file
// appears next to them, no file in the root is a hardlink to them).
func FuzzApply(f *testing.F) {
	requireRoot(f)
	for _, layer := range [][]byte{
		lt.Tar(f, lt.Dir("etc", 0o755), lt.File("etc/hosts", 0o644, "127.0.0.1 localhost\n"), lt.Symlink("bin", "usr/bin")),
		lt.Tar(f, lt.Symlink("esc", fuzzHost), lt.File("esc/pwned", 0o644, "x")),
		lt.Tar(f, lt.Symlink("up", "../outside"), lt.File("up/etc/passwd", 0o644, "x")),
		lt.Tar(f, lt.File("../outside/pwned", 0o644, "x")),
		lt.Tar(f, lt.Hardlink("passwd", fuzzHost+"/etc/passwd")),
		lt.Tar(f, lt.Hardlink("passwd", "../outside/etc/passwd")),
		lt.Tar(f, lt.Dir("a", 0o755), lt.File("a/.wh..wh..opq", 0o644, ""), lt.File(".wh.a", 0o644, "")),
	} {
		f.Add(layer)
	}
	// Shared by the fuzzing processes: made once, never rewritten.
	hostPasswd := filepath.Join(fuzzHost, "etc", "passwd")
	if err := os.MkdirAll(filepath.Dir(hostPasswd), 0o755); err != nil {
		f.Fatal(err)
	}
	if fd, err := os.OpenFile(hostPasswd, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644); err == nil {
		fd.WriteString(hostContent)
		fd.Close()
	}

	f.Fuzz(func(t *testing.T, layer []byte) {
		base := lt.TempDir(t, "fz-")
		root := filepath.Join(base, "root")
		if err := os.Mkdir(root, 0o755); err != nil {
			t.Fatal(err)
		}
		canary := lt.NewCanary(t, filepath.Join(base, "outside", "etc", "passwd"))
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		// Errors are expected: most inputs are not valid tars. Only what
		// Apply leaves outside root matters.
		Apply(ctx, root, bytes.NewReader(layer), WithMaxFileSize(1<<20), WithStreamSize(int64(len(layer))))

		canary.Check(t, root)
		checkHost(t, hostPasswd, root)
		for dir, want := range map[string]string{
			base:                                  "outside root",
			filepath.Join(base, "outside"):        "etc",
			filepath.Join(base, "outside", "etc"): "passwd",
			fuzzHost:                              "etc",
			filepath.Join(fuzzHost, "etc"):        "passwd",
		} {
			if got := names(t, dir); got != want {
				t.Errorf("%s holds %q, want %q: the layer wrote outside its root", dir, got, want)
			}
		}
	})
}

func names(t *testing.T, dir string) string {
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	sort.Strings(out)
	return strings.Join(out, " ")
}

const hostContent = "root:x:0:0:root:/root:/bin/sh\n"

// checkHost fails t if the host file changed or a file under root is a
// hardlink to it.
func checkHost(t *testing.T, path, root string) {
	b, err := os.ReadFile(path)
	if err != nil || string(b) != hostContent {
		t.Errorf("%s changed: %q, %v", path, b, err)
	}
	host, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	filepath.WalkDir(root, func(p string, _ os.DirEntry, err error) error {
		if fi, lerr := os.Lstat(p); err == nil && lerr == nil && os.SameFile(fi, host) {
			t.Errorf("%s is a hardlink to %s", p, path)
		}
		return nil
	})
}
