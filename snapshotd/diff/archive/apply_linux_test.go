package archive

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	lt "github.com/flotilla/flotilla/snapshotd/diff/internal/layertest"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: ownership, device nodes, trusted xattrs and mounts")
	}
}

func apply(t *testing.T, root string, data []byte, opts ...ApplyOption) error {
	t.Helper()
	return Apply(context.Background(), root, bytes.NewReader(data), opts...)
}

// resolvers runs f with openat2(RESOLVE_BENEATH) and with the userspace walk.
func resolvers(t *testing.T, f func(t *testing.T)) {
	for _, walk := range []bool{false, true} {
		name := "openat2"
		if walk {
			name = "walk"
		}
		t.Run(name, func(t *testing.T) {
			forceWalk = walk
			defer func() { forceWalk = false }()
			f(t)
		})
	}
}

func TestApplyWhiteoutLayers(t *testing.T) {
	requireRoot(t)
	resolvers(t, func(t *testing.T) {
		t.Run("onto a plain directory whiteouts remove and opaque directories are emptied", func(t *testing.T) {
			root := lt.TempDir(t, "ap-")
			for i, layer := range lt.WhiteoutLayers() {
				if err := apply(t, root, lt.Tar(t, layer...)); err != nil {
					t.Fatalf("layer %d: %v", i, err)
				}
			}
			if d := lt.Diff(lt.WhiteoutExpected(), lt.Snapshot(t, root)); d != "" {
				t.Fatalf("tree differs:\n%s", d)
			}
			for _, pair := range lt.WhiteoutHardlinks {
				if !lt.SameInode(t, filepath.Join(root, pair[0]), filepath.Join(root, pair[1])) {
					t.Errorf("%s and %s are not one inode", pair[0], pair[1])
				}
			}
		})

		t.Run("onto overlay upper directories whiteouts are overlay whiteouts and the merged tree is right", func(t *testing.T) {
			base := lt.TempDir(t, "ov-")
			var uppers []string
			for i, layer := range lt.WhiteoutLayers() {
				upper := filepath.Join(base, string(rune('1'+i)))
				if err := os.Mkdir(upper, 0o755); err != nil {
					t.Fatal(err)
				}
				var opts []ApplyOption
				if i > 0 {
					opts = append(opts, WithOverlayWhiteouts())
				}
				if err := apply(t, upper, lt.Tar(t, layer...), opts...); err != nil {
					t.Fatalf("layer %d: %v", i, err)
				}
				uppers = append([]string{upper}, uppers...)
			}
			top := lt.Snapshot(t, uppers[0])
			for _, wh := range []string{"gone", "data/a.txt", "etc/motd"} {
				if top[wh] != "char 0000 0:0 0:0" {
					t.Errorf("upper %s = %q, want an overlay whiteout", wh, top[wh])
				}
			}
			if v, err := getxattr(filepath.Join(uppers[0], "opaque"), overlayOpaqueXattr); err != nil || string(v) != "y" {
				t.Errorf("upper opaque/ has %s=%q (%v), want y", overlayOpaqueXattr, v, err)
			}
			merged := filepath.Join(base, "m")
			os.Mkdir(merged, 0o755)
			if err := unix.Mount("overlay", merged, "overlay", unix.MS_RDONLY, "lowerdir="+strings.Join(uppers, ":")); err != nil {
				t.Fatalf("mount overlay: %v", err)
			}
			t.Cleanup(func() { unix.Unmount(merged, unix.MNT_DETACH) })
			if d := lt.Diff(lt.WhiteoutExpected(), lt.Snapshot(t, merged)); d != "" {
				t.Fatalf("merged tree differs:\n%s", d)
			}
			for _, pair := range lt.WhiteoutHardlinks {
				if !lt.SameInode(t, filepath.Join(merged, pair[0]), filepath.Join(merged, pair[1])) {
					t.Errorf("%s and %s are not one inode", pair[0], pair[1])
				}
			}
		})
	})
}

func TestApplyEntries(t *testing.T) {
	requireRoot(t)
	dirTime := time.Date(2001, 2, 3, 4, 5, 6, 700, time.UTC)
	fileTime := time.Date(2002, 3, 4, 5, 6, 7, 800, time.UTC)
	xattrFile := lt.File("x/attr", 0o644, "x")
	xattrFile.PAXRecords["SCHILY.xattr.user.flotilla"] = "yes"
	xattrFile.PAXRecords["SCHILY.xattr.trusted.overlay.opaque"] = "y"
	timed := lt.File("timed/file", 0o644, "t")
	timed.ModTime = fileTime
	timedDir := lt.Dir("timed", 0o750)
	timedDir.ModTime = dirTime
	suid := lt.Owned(lt.File("suid", 0o4750, "s"), 1000, 1000)
	chr := &tar.Header{Typeflag: tar.TypeChar, Name: "dev/null", Mode: 0o666, Devmajor: 1, Devminor: 3, ModTime: lt.Stamp}
	blk := &tar.Header{Typeflag: tar.TypeBlock, Name: "dev/loop9", Mode: 0o660, Devmajor: 7, Devminor: 9, ModTime: lt.Stamp}
	fifo := &tar.Header{Typeflag: tar.TypeFifo, Name: "dev/fifo", Mode: 0o620, ModTime: lt.Stamp}

	root := lt.TempDir(t, "en-")
	if err := apply(t, root, lt.Tar(t,
		lt.Dir("dev", 0o755), chr, blk, fifo,
		lt.Dir("x", 0o755), xattrFile, suid,
		timedDir, timed,
		lt.Owned(lt.Symlink("link", "suid"), 7, 8),
		lt.Dir("replace-dir", 0o755), lt.File("replace-dir/child", 0o644, "c"),
		lt.File("replace-file", 0o644, "f"),
		lt.Dir("keep", 0o700), lt.File("keep/child", 0o644, "k"),
		lt.File("missing/parent/file", 0o644, "p"),
	)); err != nil {
		t.Fatal(err)
	}
	if err := apply(t, root, lt.Tar(t,
		lt.File("replace-dir", 0o600, "now a file"),
		lt.Dir("replace-file", 0o711),
		lt.Dir("keep", 0o755),
	)); err != nil {
		t.Fatal(err)
	}
	got := lt.Snapshot(t, root)
	for name, want := range map[string]string{
		"dev/null":            "char 0666 0:0 1:3",
		"dev/loop9":           "block 0660 0:0 7:9",
		"dev/fifo":            "fifo 0620 0:0",
		"suid":                "file 4750 1000:1000 s",
		"link":                "symlink 7:8 -> suid",
		"replace-dir":         "file 0600 0:0 now a file",
		"replace-file":        "dir 0711 0:0",
		"keep":                "dir 0755 0:0",
		"keep/child":          "file 0644 0:0 k",
		"missing/parent/file": "file 0644 0:0 p",
	} {
		t.Run(name+" is "+want, func(t *testing.T) {
			if got[name] != want {
				t.Errorf("got %q", got[name])
			}
		})
	}
	t.Run("replaced directory's children are gone", func(t *testing.T) {
		if _, ok := got["replace-dir/child"]; ok {
			t.Error("replace-dir/child still there")
		}
	})
	t.Run("xattrs are set except overlayfs's own", func(t *testing.T) {
		if v, err := getxattr(filepath.Join(root, "x/attr"), "user.flotilla"); err != nil || string(v) != "yes" {
			t.Errorf("user.flotilla = %q, %v", v, err)
		}
		if _, err := getxattr(filepath.Join(root, "x/attr"), overlayOpaqueXattr); !errors.Is(err, unix.ENODATA) {
			t.Errorf("trusted.overlay.opaque from the layer was set (%v)", err)
		}
	})
	t.Run("times are the headers', directories' after their children", func(t *testing.T) {
		for p, want := range map[string]time.Time{"timed": dirTime, "timed/file": fileTime, "link": lt.Stamp, "dev/null": lt.Stamp} {
			var st unix.Stat_t
			if err := unix.Lstat(filepath.Join(root, p), &st); err != nil {
				t.Fatal(err)
			}
			if got := time.Unix(st.Mtim.Unix()); !got.Equal(want) {
				t.Errorf("%s mtime %v, want %v", p, got, want)
			}
		}
	})
}

// hostile is a layer that aims at a canary file outside the root. It is
// either refused (InvalidArgument) or contained: applied with everything it
// writes inside the root — for the layers that write the canary's name,
// at landsAt(canary) beneath the root.
type hostile struct {
	name      string
	layer     func(t *testing.T, canary string) []byte
	opts      []ApplyOption
	contained bool
	landsAt   func(canary string) string
}

func hostileLayers() []hostile {
	climb := strings.Repeat("../", 32)
	refused := func(name string, layer func(*testing.T, string) []byte, opts ...ApplyOption) hostile {
		return hostile{name: name, layer: layer, opts: opts}
	}
	contained := func(name string, landsAt func(string) string, layer func(*testing.T, string) []byte) hostile {
		return hostile{name: name, layer: layer, contained: true, landsAt: landsAt}
	}
	return []hostile{
		refused("path traversal with .. is refused", func(t *testing.T, c string) []byte {
			return lt.Tar(t, lt.File(climb+strings.TrimPrefix(c, "/"), 0o644, "pwned\n"))
		}),
		refused("traversal hidden in the middle of a name is refused", func(t *testing.T, c string) []byte {
			return lt.Tar(t, lt.Dir("a", 0o755), lt.File("a/../../"+filepath.Base(c), 0o644, "pwned\n"))
		}),
		refused("absolute path is refused", func(t *testing.T, c string) []byte {
			return lt.Tar(t, lt.File(c, 0o644, "pwned\n"))
		}),
		contained("write through an absolute symlink lands under the root at the symlink's target",
			func(c string) string { return strings.TrimPrefix(c, "/") },
			func(t *testing.T, c string) []byte {
				return lt.Tar(t, lt.Symlink("escape", filepath.Dir(c)), lt.File("escape/"+filepath.Base(c), 0o644, "pwned\n"))
			}),
		contained("write through a climbing relative symlink stops at the root",
			func(c string) string { return "etc/" + filepath.Base(c) },
			func(t *testing.T, c string) []byte {
				return lt.Tar(t, lt.Symlink("escape", "../etc"), lt.File("escape/"+filepath.Base(c), 0o644, "pwned\n"))
			}),
		contained("write through a chain of climbing symlinks stops at the root",
			func(c string) string { return "etc/" + filepath.Base(c) },
			func(t *testing.T, c string) []byte {
				return lt.Tar(t, lt.Dir("d", 0o755), lt.Symlink("d/up", ".."), lt.Symlink("d/up2", "up/d/up/.."),
					lt.File("d/up2/etc/"+filepath.Base(c), 0o644, "pwned\n"))
			}),
		refused("hardlink climbing outside is refused", func(t *testing.T, c string) []byte {
			return lt.Tar(t, lt.Hardlink("passwd", climb+strings.TrimPrefix(c, "/")), lt.File("passwd", 0o644, "pwned\n"))
		}),
		refused("hardlink to an absolute path is refused", func(t *testing.T, c string) []byte {
			return lt.Tar(t, lt.Hardlink("passwd", c), lt.File("passwd", 0o644, "pwned\n"))
		}),
		refused("hardlink through a symlink to outside finds no target under the root and is refused", func(t *testing.T, c string) []byte {
			return lt.Tar(t, lt.Symlink("up", filepath.Dir(c)), lt.Hardlink("passwd", "up/"+filepath.Base(c)), lt.File("passwd", 0o644, "pwned\n"))
		}),
		refused("hardlink through a climbing symlink finds no target under the root and is refused", func(t *testing.T, c string) []byte {
			return lt.Tar(t, lt.Symlink("up", "../etc"), lt.Hardlink("passwd", "up/"+filepath.Base(c)), lt.File("passwd", 0o644, "pwned\n"))
		}),
		contained("whiteout through a symlink to outside removes nothing outside", nil, func(t *testing.T, c string) []byte {
			return lt.Tar(t, lt.Symlink("escape", filepath.Dir(c)), lt.File("escape/.wh."+filepath.Base(c), 0o644, ""))
		}),
		contained("whiteout through a climbing symlink removes nothing outside", nil, func(t *testing.T, c string) []byte {
			return lt.Tar(t, lt.Symlink("escape", "../etc"), lt.File("escape/.wh."+filepath.Base(c), 0o644, ""))
		}),
		contained("opaque directory through a symlink to outside empties nothing outside", nil, func(t *testing.T, c string) []byte {
			return lt.Tar(t, lt.Symlink("escape", filepath.Dir(c)), lt.File("escape/.wh..wh..opq", 0o644, ""))
		}),
		refused("whiteout of .. is refused", func(t *testing.T, c string) []byte {
			return lt.Tar(t, lt.Dir("d", 0o755), lt.File("d/.wh..", 0o644, ""))
		}),
		refused("symlink loop is refused", func(t *testing.T, c string) []byte {
			return lt.Tar(t, lt.Symlink("a", "b"), lt.Symlink("b", "a"), lt.File("a/"+filepath.Base(c), 0o644, "pwned\n"))
		}),
		refused("size of 1 PiB is refused", func(t *testing.T, c string) []byte {
			h := lt.File("huge", 0o644, strings.Repeat("x", 4096))
			h.Size = 1 << 50
			return lt.Tar(t, h)
		}),
		refused("size beyond the rest of the stream is refused", func(t *testing.T, c string) []byte {
			h := lt.File("huge", 0o644, strings.Repeat("x", 4096))
			h.Size = 1 << 30
			return lt.Tar(t, h)
		}, WithStreamSize(8192)),
		refused("body cut short is refused and leaves no file", func(t *testing.T, c string) []byte {
			h := lt.File("huge", 0o644, strings.Repeat("x", 4096))
			h.Size = 1 << 20
			return lt.Tar(t, h)
		}),
	}
}

func TestApplyRefusesOrContainsHostileLayers(t *testing.T) {
	requireRoot(t)
	resolvers(t, func(t *testing.T) {
		for _, overlay := range []bool{false, true} {
			for _, h := range hostileLayers() {
				name := h.name
				if overlay {
					name += " on an overlay upper directory"
				}
				t.Run(name, func(t *testing.T) {
					host := lt.TempDir(t, "ho-")
					canary := lt.NewCanary(t, filepath.Join(host, "etc", "passwd"))
					root := filepath.Join(host, "root")
					if err := os.Mkdir(root, 0o755); err != nil {
						t.Fatal(err)
					}
					before := lt.Snapshot(t, host)
					opts := h.opts
					if overlay {
						opts = append([]ApplyOption{WithOverlayWhiteouts()}, opts...)
					}
					err := apply(t, root, h.layer(t, canary.Path), opts...)
					switch {
					case h.contained && err != nil:
						t.Fatalf("Apply = %v, want it applied inside the root", err)
					case !h.contained && !errdefs.IsInvalidArgument(err):
						t.Fatalf("Apply = %v, want InvalidArgument", err)
					}
					canary.Check(t, root)
					after := lt.Snapshot(t, host)
					for p := range after {
						if !strings.HasPrefix(p, "root/") {
							if after[p] != before[p] {
								t.Errorf("outside the root, %s changed: %q -> %q", p, before[p], after[p])
							}
						}
					}
					for p := range before {
						if _, ok := after[p]; !ok {
							t.Errorf("outside the root, %s was removed", p)
						}
					}
					if _, ok := after["root/huge"]; ok {
						t.Error("a partial root/huge was left")
					}
					if h.landsAt != nil {
						at := "root/" + h.landsAt(canary.Path)
						if got := after[at]; got != "file 0644 0:0 pwned\n" {
							t.Errorf("%s = %q, want the layer's file there", at, got)
						}
					}
				})
			}
		}
	})
}

func TestApplyResolvesInsideTheRoot(t *testing.T) {
	requireRoot(t)
	resolvers(t, func(t *testing.T) {
		t.Run("a relative symlink that stays inside is followed", func(t *testing.T) {
			root := lt.TempDir(t, "in-")
			err := apply(t, root, lt.Tar(t,
				lt.Dir("usr", 0o755), lt.Dir("usr/lib", 0o755), lt.Symlink("lib", "usr/lib"),
				lt.Dir("a", 0o755), lt.Symlink("a/up", "../usr"),
				lt.File("lib/one", 0o644, "1"), lt.File("a/up/lib/two", 0o644, "2"),
				lt.Hardlink("three", "lib/one"),
			))
			if err != nil {
				t.Fatal(err)
			}
			got := lt.Snapshot(t, root)
			if got["usr/lib/one"] != "file 0644 0:0 1" || got["usr/lib/two"] != "file 0644 0:0 2" {
				t.Errorf("writes through inner symlinks went elsewhere: %v", got)
			}
			if !lt.SameInode(t, filepath.Join(root, "three"), filepath.Join(root, "usr/lib/one")) {
				t.Error("hardlink through an inner symlink is not the target's inode")
			}
		})
		t.Run("a write through a lower layer's absolute symlink var/run -> /run lands at <root>/run", func(t *testing.T) {
			host := lt.TempDir(t, "in-")
			root := filepath.Join(host, "root")
			os.Mkdir(root, 0o755)
			hostRun := filepath.Join(host, "run")
			os.Mkdir(hostRun, 0o755)
			lower := lt.Tar(t, lt.Dir("run", 0o755), lt.Dir("var", 0o755), lt.Symlink("var/run", "/run"),
				lt.File("run/old", 0o644, "old"))
			upper := lt.Tar(t, lt.Dir("var", 0o755), lt.File("var/run/x", 0o644, "x"),
				lt.Hardlink("var/run/y", "var/run/x"), lt.File("var/run/.wh.old", 0o644, ""))
			for i, layer := range [][]byte{lower, upper} {
				if err := apply(t, root, layer); err != nil {
					t.Fatalf("layer %d: %v", i, err)
				}
			}
			got := lt.Snapshot(t, root)
			want := map[string]string{
				"run":     "dir 0755 0:0",
				"run/x":   "file 0644 0:0 x",
				"run/y":   "file 0644 0:0 x",
				"var":     "dir 0755 0:0",
				"var/run": "symlink 0:0 -> /run",
			}
			if d := lt.Diff(want, got); d != "" {
				t.Fatalf("tree differs:\n%s", d)
			}
			if !lt.SameInode(t, filepath.Join(root, "run/x"), filepath.Join(root, "run/y")) {
				t.Error("hardlink through the absolute symlink is not the target's inode")
			}
			if names, _ := os.ReadDir(hostRun); len(names) != 0 {
				t.Errorf("the host's %s got %v", hostRun, names)
			}
		})
		t.Run("a write through a dangling absolute symlink makes its target under the root", func(t *testing.T) {
			root := lt.TempDir(t, "in-")
			err := apply(t, root, lt.Tar(t, lt.Dir("var", 0o755), lt.Symlink("var/lock", "/run/lock"),
				lt.File("var/lock/pid", 0o644, "1")))
			if err != nil {
				t.Fatal(err)
			}
			if got := lt.Snapshot(t, root)["run/lock/pid"]; got != "file 0644 0:0 1" {
				t.Errorf("run/lock/pid = %q", got)
			}
		})
		t.Run("a relative symlink climbing above the root stops at the root", func(t *testing.T) {
			root := lt.TempDir(t, "in-")
			err := apply(t, root, lt.Tar(t, lt.Dir("a", 0o755), lt.Symlink("a/top", "../../../.."),
				lt.File("a/top/f", 0o644, "f")))
			if err != nil {
				t.Fatal(err)
			}
			if got := lt.Snapshot(t, root)["f"]; got != "file 0644 0:0 f" {
				t.Errorf("f = %q", got)
			}
		})
		t.Run("unknown entry types are refused", func(t *testing.T) {
			root := lt.TempDir(t, "in-")
			err := apply(t, root, lt.Tar(t, &tar.Header{Typeflag: 'Z', Name: "odd", ModTime: lt.Stamp}))
			if !errdefs.IsInvalidArgument(err) {
				t.Fatalf("Apply = %v, want InvalidArgument", err)
			}
		})
		t.Run("a truncated tar header is refused", func(t *testing.T) {
			root := lt.TempDir(t, "in-")
			data := lt.Tar(t, lt.File("a", 0o644, "a"))
			err := apply(t, root, data[:300])
			if !errdefs.IsInvalidArgument(err) {
				t.Fatalf("Apply = %v, want InvalidArgument", err)
			}
		})
	})
}
