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
