package mount

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

func TestParseOptions(t *testing.T) {
	cases := []struct {
		name    string
		options []string
		flags   uintptr
		prop    uintptr
		data    string
	}{
		{"rbind ro is a recursive read-only bind", []string{"rbind", "ro"}, unix.MS_BIND | unix.MS_REC | unix.MS_RDONLY, 0, ""},
		{"overlay dirs are data", []string{"lowerdir=/a:/b", "upperdir=/u", "workdir=/w"}, 0, 0, "lowerdir=/a:/b,upperdir=/u,workdir=/w"},
		{"a later rw clears ro", []string{"ro", "rw", "nosuid"}, unix.MS_NOSUID, 0, ""},
		{"unknown words pass through", []string{"nodev", "size=64k", "mode=755"}, unix.MS_NODEV, 0, "size=64k,mode=755"},
		{"propagation is kept apart from the flags", []string{"rbind", "rprivate", "relatime"}, unix.MS_BIND | unix.MS_REC | unix.MS_RELATIME, unix.MS_PRIVATE | unix.MS_REC, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			flags, prop, data := ParseOptions(c.options)
			if flags != c.flags || prop != c.prop || strings.Join(data, ",") != c.data {
				t.Fatalf("ParseOptions(%q) = %#x %#x %q, want %#x %#x %q", c.options, flags, prop, data, c.flags, c.prop, c.data)
			}
		})
	}
}

func TestMountAndUnmount(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	dir := t.TempDir()
	lower, upper, work, target := filepath.Join(dir, "lower"), filepath.Join(dir, "upper"), filepath.Join(dir, "work"), filepath.Join(dir, "rootfs")
	for _, d := range []string{lower, upper, work, target} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(lower, "file"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name     string
		mount    *types.Mount
		writable bool
	}{
		{"overlay is writable and leaves lower alone", &types.Mount{Type: "overlay", Source: "overlay", Options: []string{"lowerdir=" + lower, "upperdir=" + upper, "workdir=" + work}}, true},
		{"read-only bind refuses writes", &types.Mount{Type: "bind", Source: lower, Options: []string{"rbind", "ro"}}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if err := All([]*types.Mount{c.mount}, target); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = Unmount(target) })
			if ok, _ := IsMountPoint(target); !ok {
				t.Fatal("not mounted")
			}
			if _, err := os.Stat(filepath.Join(target, "file")); err != nil {
				t.Fatal(err)
			}
			err := os.WriteFile(filepath.Join(target, "new"), []byte("y"), 0o644)
			if (err == nil) != c.writable {
				t.Fatalf("write: %v, writable %v", err, c.writable)
			}
			start := time.Now()
			if err := Unmount(target); err != nil {
				t.Fatal(err)
			}
			t.Logf("unmount took %v", time.Since(start))
			if ok, _ := IsMountPoint(target); ok {
				t.Fatal("still mounted")
			}
			if _, err := os.Stat(filepath.Join(lower, "new")); err == nil {
				t.Fatal("write reached the lower dir")
			}
		})
	}
	t.Run("a missing bind source is NotFound", func(t *testing.T) {
		err := All([]*types.Mount{{Type: "bind", Source: filepath.Join(dir, "absent")}}, target)
		if !errdefs.IsNotFound(err) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("a mount without a type is InvalidArgument", func(t *testing.T) {
		err := All([]*types.Mount{{Source: lower}}, target)
		if !errdefs.IsInvalidArgument(err) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("a failing mount undoes the ones before it", func(t *testing.T) {
		ms := []*types.Mount{
			{Type: "bind", Source: lower, Options: []string{"rbind"}},
			{Type: "bind", Source: filepath.Join(dir, "absent"), Target: "sub", Options: []string{"rbind"}},
		}
		if err := All(ms, target); !errdefs.IsNotFound(err) {
			t.Fatalf("err = %v", err)
		}
		if ok, _ := IsMountPoint(target); ok {
			t.Fatal("first mount left behind")
		}
	})
	t.Run("an overlay whose options exceed a page is mounted", func(t *testing.T) {
		var lowers []string
		for i := range 80 {
			d := filepath.Join(dir, "layers", fmt.Sprintf("a-rather-long-directory-name-for-layer-%03d", i))
			if err := os.MkdirAll(d, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(d, fmt.Sprintf("f%03d", i)), []byte("x"), 0o644); err != nil {
				t.Fatal(err)
			}
			lowers = append([]string{d}, lowers...)
		}
		opt := "lowerdir=" + strings.Join(lowers, ":")
		if len(opt) < os.Getpagesize() {
			t.Fatalf("options only %d bytes", len(opt))
		}
		if err := Mount(&types.Mount{Type: "overlay", Source: "overlay", Options: []string{opt, "ro"}}, target); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = Unmount(target) })
		names, err := os.ReadDir(target)
		if err != nil || len(names) != 80 {
			t.Fatalf("merged tree has %d entries (%v), want 80", len(names), err)
		}
		if err := Unmount(target); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("unmounting a plain directory is fine", func(t *testing.T) {
		if err := Unmount(target); err != nil {
			t.Fatal(err)
		}
	})
}

func TestCommonParent(t *testing.T) {
	cases := []struct {
		name  string
		paths []string
		want  string
	}{
		{"snapshot dirs share the snapshots directory", []string{"/var/lib/s/snapshots/12/fs", "/var/lib/s/snapshots/3/fs"}, "/var/lib/s/snapshots"},
		{"one path gives its parent", []string{"/a/b/c"}, "/a/b"},
		{"nothing shared but the root", []string{"/a/x", "/b/y"}, "/"},
		{"a relative path gives nothing", []string{"/a/x", "b/y"}, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := commonParent(c.paths); got != c.want {
				t.Errorf("commonParent(%q) = %q, want %q", c.paths, got, c.want)
			}
		})
	}
}

// TestLongOverlayWithoutLowerdirPlus takes the path of kernels older than
// 6.8 (Debian 12's 6.1) whatever this one is: a deep overlay chain whose
// options exceed a page is mounted with lower directories relative to
// their parent.
func TestLongOverlayWithoutLowerdirPlus(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	forceRelative = true
	t.Cleanup(func() { forceRelative = false })
	dir := t.TempDir()
	target := filepath.Join(dir, "rootfs")
	if err := os.Mkdir(target, 0o755); err != nil {
		t.Fatal(err)
	}
	layers := func(n int, name string) []string {
		var lowers []string
		for i := range n {
			d := filepath.Join(dir, "layers", fmt.Sprintf(name, i))
			if err := os.MkdirAll(d, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(d, fmt.Sprintf("f%03d", i)), []byte("x"), 0o644); err != nil {
				t.Fatal(err)
			}
			lowers = append([]string{d}, lowers...)
		}
		return lowers
	}
	t.Run("a chain of 80 layers is mounted read-only and unmounted", func(t *testing.T) {
		lowers := layers(80, "%03d-a-rather-long-directory-name-for-a-layer")
		opt := "lowerdir=" + strings.Join(lowers, ":")
		if len(opt) < os.Getpagesize() {
			t.Fatalf("options only %d bytes", len(opt))
		}
		wd, _ := os.Getwd()
		if err := Mount(&types.Mount{Type: "overlay", Source: "overlay", Options: []string{opt, "ro"}}, target); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = Unmount(target) })
		if now, _ := os.Getwd(); now != wd {
			t.Errorf("the process's working directory moved to %s", now)
		}
		names, err := os.ReadDir(target)
		if err != nil || len(names) != 80 {
			t.Fatalf("merged tree has %d entries (%v), want 80", len(names), err)
		}
		if err := os.WriteFile(filepath.Join(target, "new"), nil, 0o644); err == nil {
			t.Error("read-only overlay took a write")
		}
		if err := Unmount(target); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("a writable overlay keeps absolute upper and work dirs", func(t *testing.T) {
		lowers := layers(60, "%03d-another-rather-long-directory-name-for-a-layer")
		upper, work := filepath.Join(dir, "upper"), filepath.Join(dir, "work")
		for _, d := range []string{upper, work} {
			if err := os.Mkdir(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		opts := []string{"lowerdir=" + strings.Join(lowers, ":"), "upperdir=" + upper, "workdir=" + work}
		if err := Mount(&types.Mount{Type: "overlay", Source: "overlay", Options: opts}, target); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = Unmount(target) })
		if err := os.WriteFile(filepath.Join(target, "new"), []byte("y"), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(upper, "new")); err != nil {
			t.Errorf("write did not land in the upper dir: %v", err)
		}
		if err := Unmount(target); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("options too long even when relative are InvalidArgument", func(t *testing.T) {
		var lowers []string
		for i := range 400 {
			lowers = append(lowers, filepath.Join("/", fmt.Sprintf("top-%03d", i), "fs"))
		}
		err := Mount(&types.Mount{Type: "overlay", Source: "overlay", Options: []string{"lowerdir=" + strings.Join(lowers, ":")}}, target)
		if !errdefs.IsInvalidArgument(err) {
			t.Fatalf("err = %v, want InvalidArgument", err)
		}
	})
}
