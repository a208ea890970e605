package archive

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	lt "github.com/flotilla/flotilla/snapshotd/diff/internal/layertest"
)

func requireRoot(t testing.TB) {
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

// hostile is a layer that aims at a canary file outside the root, perhaps
// over a lower layer that set the trap. It is either refused
// (InvalidArgument, and no file with its payload is written anywhere) or
// contained: applied with everything it writes inside the root — for the
// layers that write the canary's name, at landsAt(canary) beneath the
// root; for whiteouts, removing removes(canary) beneath the root.
type hostile struct {
	name      string
	lower     func(t *testing.T, canary string) []byte
	layer     func(t *testing.T, canary string) []byte
	opts      []ApplyOption
	contained bool
	landsAt   func(canary string) string
	removes   func(canary string) string
}

const payload = "pwned\n"

func hostileLayers() []hostile {
	climb := strings.Repeat("../", 32)
	refused := func(name string, layer func(*testing.T, string) []byte, opts ...ApplyOption) hostile {
		return hostile{name: name, layer: layer, opts: opts}
	}
	refusedOver := func(name string, lower, layer func(*testing.T, string) []byte) hostile {
		return hostile{name: name, lower: lower, layer: layer}
	}
	contained := func(name string, landsAt func(string) string, lower, layer func(*testing.T, string) []byte) hostile {
		return hostile{name: name, lower: lower, layer: layer, contained: true, landsAt: landsAt}
	}
	inRoot := func(c string) string { return strings.TrimPrefix(c, "/") }
	inRootEtc := func(c string) string { return "etc/" + filepath.Base(c) }
	// Lower layers that set traps for the layer above.
	absLink := func(t *testing.T, c string) []byte {
		return lt.Tar(t, lt.Symlink("escape", filepath.Dir(c)), lt.File(inRoot(c), 0o644, "root's own\n"))
	}
	climbLink := func(t *testing.T, c string) []byte {
		return lt.Tar(t, lt.Symlink("escape", "../etc"), lt.File(inRootEtc(c), 0o644, "root's own\n"))
	}
	return []hostile{
		refused("path traversal with .. is refused", func(t *testing.T, c string) []byte {
			return lt.Tar(t, lt.File(climb+inRoot(c), 0o644, payload))
		}),
		refused("traversal hidden in the middle of a name is refused", func(t *testing.T, c string) []byte {
			return lt.Tar(t, lt.Dir("a", 0o755), lt.File("a/../../"+filepath.Base(c), 0o644, payload))
		}),
		refused("absolute path is refused", func(t *testing.T, c string) []byte {
			return lt.Tar(t, lt.File(c, 0o644, payload))
		}),

		// Symlinks of the layer itself: never followed.
		refused("write through this layer's absolute symlink is refused", func(t *testing.T, c string) []byte {
			return lt.Tar(t, lt.Symlink("escape", filepath.Dir(c)), lt.File("escape/"+filepath.Base(c), 0o644, payload))
		}),
		refused("write through this layer's climbing relative symlink is refused", func(t *testing.T, c string) []byte {
			return lt.Tar(t, lt.Symlink("escape", "../etc"), lt.File("escape/"+filepath.Base(c), 0o644, payload))
		}),
		refused("write through a chain of this layer's climbing symlinks is refused", func(t *testing.T, c string) []byte {
			return lt.Tar(t, lt.Dir("d", 0o755), lt.Symlink("d/up", ".."), lt.Symlink("d/up2", "up/d/up/.."),
				lt.File("d/up2/etc/"+filepath.Base(c), 0o644, payload))
		}),
		refused("write through a hardlink to this layer's symlink is refused", func(t *testing.T, c string) []byte {
			return lt.Tar(t, lt.Symlink("escape", filepath.Dir(c)), lt.Hardlink("alias", "escape"),
				lt.File("alias/"+filepath.Base(c), 0o644, payload))
		}),
		refused("whiteout through this layer's symlink to outside is refused", func(t *testing.T, c string) []byte {
			return lt.Tar(t, lt.Symlink("escape", filepath.Dir(c)), lt.File("escape/.wh."+filepath.Base(c), 0o644, ""))
		}),
		refused("whiteout through this layer's climbing symlink is refused", func(t *testing.T, c string) []byte {
			return lt.Tar(t, lt.Symlink("escape", "../etc"), lt.File("escape/.wh."+filepath.Base(c), 0o644, ""))
		}),
		refused("opaque directory through this layer's symlink to outside is refused", func(t *testing.T, c string) []byte {
			return lt.Tar(t, lt.Symlink("escape", filepath.Dir(c)), lt.File("escape/.wh..wh..opq", 0o644, ""))
		}),
		refused("hardlink through this layer's symlink to outside is refused", func(t *testing.T, c string) []byte {
			return lt.Tar(t, lt.Symlink("up", filepath.Dir(c)), lt.Hardlink("passwd", "up/"+filepath.Base(c)), lt.File("passwd", 0o644, payload))
		}),
		refused("symlink loop of this layer is refused", func(t *testing.T, c string) []byte {
			return lt.Tar(t, lt.Symlink("a", "b"), lt.Symlink("b", "a"), lt.File("a/"+filepath.Base(c), 0o644, payload))
		}),
		refusedOver("a lower layer's symlink replaced by this layer's own is refused", absLink, func(t *testing.T, c string) []byte {
			return lt.Tar(t, lt.Symlink("escape", "/"), lt.File("escape/"+filepath.Base(c), 0o644, payload))
		}),

		// Symlinks of lower layers: followed, inside the root.
		contained("write through a lower layer's absolute symlink lands under the root at the symlink's target", inRoot,
			absLink, func(t *testing.T, c string) []byte {
				return lt.Tar(t, lt.File("escape/"+filepath.Base(c), 0o644, payload))
			}),
		contained("write through a lower layer's climbing relative symlink stops at the root", inRootEtc,
			climbLink, func(t *testing.T, c string) []byte {
				return lt.Tar(t, lt.File("escape/"+filepath.Base(c), 0o644, payload))
			}),
		contained("write through a chain of a lower layer's climbing symlinks stops at the root", inRootEtc,
			func(t *testing.T, c string) []byte {
				return lt.Tar(t, lt.Dir("d", 0o755), lt.Symlink("d/up", ".."), lt.Symlink("d/up2", "up/d/up/.."))
			}, func(t *testing.T, c string) []byte {
				return lt.Tar(t, lt.File("d/up2/etc/"+filepath.Base(c), 0o644, payload))
			}),
		{name: "whiteout through a lower layer's symlink to outside removes the root's file, nothing outside", contained: true,
			removes: inRoot, lower: absLink, layer: func(t *testing.T, c string) []byte {
				return lt.Tar(t, lt.File("escape/.wh."+filepath.Base(c), 0o644, ""))
			}},
		{name: "whiteout through a lower layer's climbing symlink removes the root's file, nothing outside", contained: true,
			removes: inRootEtc, lower: climbLink, layer: func(t *testing.T, c string) []byte {
				return lt.Tar(t, lt.File("escape/.wh."+filepath.Base(c), 0o644, ""))
			}},
		contained("opaque directory through a lower layer's symlink to outside empties nothing outside", nil,
			absLink, func(t *testing.T, c string) []byte {
				return lt.Tar(t, lt.File("escape/.wh..wh..opq", 0o644, ""))
			}),
		refusedOver("hardlink through a lower layer's symlink to outside finds no target under the root and is refused",
			func(t *testing.T, c string) []byte { return lt.Tar(t, lt.Symlink("up", filepath.Dir(c))) },
			func(t *testing.T, c string) []byte {
				return lt.Tar(t, lt.Hardlink("passwd", "up/"+filepath.Base(c)), lt.File("passwd", 0o644, payload))
			}),
		refusedOver("symlink loop of a lower layer is refused",
			func(t *testing.T, c string) []byte { return lt.Tar(t, lt.Symlink("a", "b"), lt.Symlink("b", "a")) },
			func(t *testing.T, c string) []byte { return lt.Tar(t, lt.File("a/"+filepath.Base(c), 0o644, payload)) }),

		refused("hardlink climbing outside is refused", func(t *testing.T, c string) []byte {
			return lt.Tar(t, lt.Hardlink("passwd", climb+inRoot(c)), lt.File("passwd", 0o644, payload))
		}),
		refused("hardlink to an absolute path is refused", func(t *testing.T, c string) []byte {
			return lt.Tar(t, lt.Hardlink("passwd", c), lt.File("passwd", 0o644, payload))
		}),
		refused("whiteout of .. is refused", func(t *testing.T, c string) []byte {
			return lt.Tar(t, lt.Dir("d", 0o755), lt.File("d/.wh..", 0o644, ""))
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

// TestApplyRefusesOrContainsHostileLayers applies each hostile layer onto
// a plain directory (over its lower layer applied there first) and onto an
// overlay upper directory (over its lower layer in a lower directory).
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
					opts := h.opts
					lowerRoot := root
					if overlay {
						lowerRoot = filepath.Join(host, "lower")
						if err := os.Mkdir(lowerRoot, 0o755); err != nil {
							t.Fatal(err)
						}
						opts = append([]ApplyOption{WithOverlayLowers(lowerRoot)}, opts...)
					}
					if h.lower != nil {
						if err := apply(t, lowerRoot, h.lower(t, canary.Path)); err != nil {
							t.Fatalf("lower layer: %v", err)
						}
					}
					before := lt.Snapshot(t, host)
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
						if !strings.HasPrefix(p, "root/") && after[p] != before[p] {
							t.Errorf("outside the root, %s changed: %q -> %q", p, before[p], after[p])
						}
						if !h.contained && strings.HasSuffix(after[p], " "+payload) {
							t.Errorf("a refused layer wrote %s: %q", p, after[p])
						}
					}
					for p := range before {
						if _, ok := after[p]; !ok && !strings.HasPrefix(p, "root/") {
							t.Errorf("outside the root, %s was removed", p)
						}
					}
					if _, ok := after["root/huge"]; ok {
						t.Error("a partial root/huge was left")
					}
					if h.landsAt != nil {
						at := "root/" + h.landsAt(canary.Path)
						if got := after[at]; got != "file 0644 0:0 "+payload {
							t.Errorf("%s = %q, want the layer's file there", at, got)
						}
					}
					if h.removes != nil {
						at := "root/" + h.removes(canary.Path)
						want := "" // removed
						if overlay {
							want = "char 0000 0:0 0:0" // hidden by an overlay whiteout
						}
						if got := after[at]; got != want {
							t.Errorf("%s = %q, want %q", at, got, want)
						}
					}
				})
			}
		}
	})
}

// applyLayers applies layers in order onto root.
func applyLayers(t *testing.T, root string, layers ...[]byte) {
	t.Helper()
	for i, layer := range layers {
		if err := apply(t, root, layer); err != nil {
			t.Fatalf("layer %d: %v", i, err)
		}
	}
}

func TestApplyResolvesInsideTheRoot(t *testing.T) {
	requireRoot(t)
	resolvers(t, func(t *testing.T) {
		t.Run("a lower layer's relative symlink that stays inside is followed", func(t *testing.T) {
			root := lt.TempDir(t, "in-")
			applyLayers(t, root,
				lt.Tar(t, lt.Dir("usr", 0o755), lt.Dir("usr/lib", 0o755), lt.Symlink("lib", "usr/lib"),
					lt.Dir("a", 0o755), lt.Symlink("a/up", "../usr")),
				lt.Tar(t, lt.File("lib/one", 0o644, "1"), lt.File("a/up/lib/two", 0o644, "2"),
					lt.Hardlink("three", "lib/one")))
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
			applyLayers(t, root,
				lt.Tar(t, lt.Dir("run", 0o755), lt.Dir("var", 0o755), lt.Symlink("var/run", "/run"),
					lt.File("run/old", 0o644, "old")),
				lt.Tar(t, lt.Dir("var", 0o755), lt.File("var/run/x", 0o644, "x"),
					lt.Hardlink("var/run/y", "var/run/x"), lt.File("var/run/.wh.old", 0o644, "")))
			want := map[string]string{
				"run":     "dir 0755 0:0",
				"run/x":   "file 0644 0:0 x",
				"run/y":   "file 0644 0:0 x",
				"var":     "dir 0755 0:0",
				"var/run": "symlink 0:0 -> /run",
			}
			if d := lt.Diff(want, lt.Snapshot(t, root)); d != "" {
				t.Fatalf("tree differs:\n%s", d)
			}
			if !lt.SameInode(t, filepath.Join(root, "run/x"), filepath.Join(root, "run/y")) {
				t.Error("hardlink through the absolute symlink is not the target's inode")
			}
			if names, _ := os.ReadDir(hostRun); len(names) != 0 {
				t.Errorf("the host's %s got %v", hostRun, names)
			}
		})
		t.Run("a write through a lower layer's dangling absolute symlink makes its target under the root", func(t *testing.T) {
			root := lt.TempDir(t, "in-")
			applyLayers(t, root,
				lt.Tar(t, lt.Dir("var", 0o755), lt.Symlink("var/lock", "/run/lock")),
				lt.Tar(t, lt.File("var/lock/pid", 0o644, "1")))
			if got := lt.Snapshot(t, root)["run/lock/pid"]; got != "file 0644 0:0 1" {
				t.Errorf("run/lock/pid = %q", got)
			}
		})
		t.Run("a lower layer's relative symlink climbing above the root stops at the root", func(t *testing.T) {
			root := lt.TempDir(t, "in-")
			applyLayers(t, root,
				lt.Tar(t, lt.Dir("a", 0o755), lt.Symlink("a/top", "../../../..")),
				lt.Tar(t, lt.File("a/top/f", 0o644, "f")))
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

func TestApplyNeverFollowsItsOwnSymlinks(t *testing.T) {
	requireRoot(t)
	resolvers(t, func(t *testing.T) {
		for _, c := range []struct {
			name   string
			lower  []*tar.Header
			layer  []*tar.Header
			refuse bool
			want   map[string]string // entries of the root that must be so ("" = absent)
		}{
			{
				name:   "a file beneath this layer's symlink to an inner directory is refused and not written",
				layer:  []*tar.Header{lt.Dir("usr", 0o755), lt.Symlink("lib", "usr"), lt.File("lib/f", 0o644, "f")},
				refuse: true,
				want:   map[string]string{"lib": "symlink 0:0 -> usr", "usr/f": "", "lib/f": ""},
			},
			{
				name:   "a directory beneath this layer's symlink is refused and not made",
				layer:  []*tar.Header{lt.Symlink("lib", "/usr/lib"), lt.Dir("lib/sub", 0o755)},
				refuse: true,
				want:   map[string]string{"usr": ""},
			},
			{
				name:  "this layer's symlink replaced by its directory is a directory again",
				layer: []*tar.Header{lt.Symlink("s", "/etc"), lt.Dir("s", 0o750), lt.File("s/f", 0o644, "f")},
				want:  map[string]string{"s": "dir 0750 0:0", "s/f": "file 0644 0:0 f", "etc": ""},
			},
			{
				name:  "a lower layer's symlink replaced by this layer's directory is a directory",
				lower: []*tar.Header{lt.Symlink("s", "/etc")},
				layer: []*tar.Header{lt.Dir("s", 0o750), lt.File("s/f", 0o644, "f")},
				want:  map[string]string{"s": "dir 0750 0:0", "s/f": "file 0644 0:0 f", "etc": ""},
			},
			{
				name:  "a symlink this layer made beneath a lower layer's symlink is known at its resolved path",
				lower: []*tar.Header{lt.Dir("usr/lib", 0o755), lt.Symlink("lib", "usr/lib")},
				layer: []*tar.Header{lt.Symlink("lib/x", "/opt"), lt.File("usr/lib/x/f", 0o644, "f")},
				// usr/lib/x is this layer's symlink, whatever name made it.
				refuse: true,
				want:   map[string]string{"usr/lib/x": "symlink 0:0 -> /opt", "opt": ""},
			},
			{
				name:  "a directory this layer made and then replaced by a file leaves no time to set",
				layer: []*tar.Header{lt.Dir("d", 0o755), lt.Dir("d/e", 0o755), lt.File("d", 0o644, "now a file")},
				want:  map[string]string{"d": "file 0644 0:0 now a file"},
			},
		} {
			t.Run(c.name, func(t *testing.T) {
				root := lt.TempDir(t, "own-")
				if c.lower != nil {
					applyLayers(t, root, lt.Tar(t, c.lower...))
				}
				err := apply(t, root, lt.Tar(t, c.layer...))
				switch {
				case c.refuse && !errdefs.IsInvalidArgument(err):
					t.Fatalf("Apply = %v, want InvalidArgument", err)
				case c.refuse && !strings.Contains(err.Error(), "created by this layer"):
					t.Errorf("Apply = %v, want it to name the layer's symlink", err)
				case !c.refuse && err != nil:
					t.Fatalf("Apply = %v", err)
				}
				got := lt.Snapshot(t, root)
				for p, want := range c.want {
					if got[p] != want {
						t.Errorf("%s = %q, want %q", p, got[p], want)
					}
				}
			})
		}
	})
}

// overlayStack applies layers as a snapshotter stacks them: the first onto
// a plain directory, each next one onto a new upper directory over the
// ones before (WithOverlayLowers). It returns the directories, topmost
// first.
func overlayStack(t *testing.T, base string, layers ...[]byte) []string {
	t.Helper()
	var dirs []string
	for i, layer := range layers {
		dir := filepath.Join(base, fmt.Sprintf("l%d", i))
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		var opts []ApplyOption
		if i > 0 {
			opts = append(opts, WithOverlayLowers(dirs...))
		}
		if err := apply(t, dir, layer, opts...); err != nil {
			t.Fatalf("layer %d: %v", i, err)
		}
		dirs = append([]string{dir}, dirs...)
	}
	return dirs
}

// mergedTree mounts dirs (topmost first) as a read-only overlay and
// describes what it shows.
func mergedTree(t *testing.T, base string, dirs []string) map[string]string {
	t.Helper()
	merged := filepath.Join(base, "merged")
	if err := os.Mkdir(merged, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("overlay", merged, "overlay", unix.MS_RDONLY, "lowerdir="+strings.Join(dirs, ":")); err != nil {
		t.Fatalf("mount overlay: %v", err)
	}
	defer unix.Unmount(merged, unix.MNT_DETACH)
	return lt.Snapshot(t, merged)
}

func TestApplyOntoOverlayUpperResolvesThroughLowers(t *testing.T) {
	requireRoot(t)
	resolvers(t, func(t *testing.T) {
		t.Run("a write beneath a lower symlink var/run -> /run lands at <upper>/run and the merged tree keeps the symlink", func(t *testing.T) {
			base := lt.TempDir(t, "ovl-")
			dirs := overlayStack(t, base,
				lt.Tar(t, lt.Dir("run", 0o755), lt.Dir("var", 0o755), lt.Symlink("var/run", "/run")),
				lt.Tar(t, lt.File("var/run/x", 0o644, "x"), lt.Hardlink("var/run/y", "var/run/x")))
			upper := lt.Snapshot(t, dirs[0])
			if d := lt.Diff(map[string]string{"run": "dir 0755 0:0", "run/x": "file 0644 0:0 x", "run/y": "file 0644 0:0 x"}, upper); d != "" {
				t.Errorf("upper directory differs:\n%s", d)
			}
			want := map[string]string{
				"run":     "dir 0755 0:0",
				"run/x":   "file 0644 0:0 x",
				"run/y":   "file 0644 0:0 x",
				"var":     "dir 0755 0:0",
				"var/run": "symlink 0:0 -> /run",
			}
			if d := lt.Diff(want, mergedTree(t, base, dirs)); d != "" {
				t.Fatalf("merged tree differs:\n%s", d)
			}
		})

		t.Run("parents made in the upper copy the lower directory's mode, owner and times", func(t *testing.T) {
			base := lt.TempDir(t, "ovl-")
			varDir := lt.Owned(lt.Dir("var", 0o750), 5, 6)
			libDir := lt.Owned(lt.Dir("var/lib", 0o2711), 7, 8)
			old := time.Date(2010, 1, 2, 3, 4, 5, 0, time.UTC)
			varDir.ModTime, libDir.ModTime = old, old
			dirs := overlayStack(t, base,
				lt.Tar(t, varDir, libDir),
				lt.Tar(t, lt.File("var/lib/app/data", 0o600, "d")))
			upper := lt.Snapshot(t, dirs[0])
			want := map[string]string{
				"var":              "dir 0750 5:6",
				"var/lib":          "dir 2711 7:8",
				"var/lib/app":      "dir 2755 0:8", // mkdir in a setgid directory
				"var/lib/app/data": "file 0600 0:0 d",
			}
			if d := lt.Diff(want, upper); d != "" {
				t.Errorf("upper directory differs:\n%s", d)
			}
			for _, p := range []string{"var", "var/lib"} {
				var st unix.Stat_t
				if err := unix.Lstat(filepath.Join(dirs[0], p), &st); err != nil {
					t.Fatal(err)
				}
				if got := time.Unix(st.Mtim.Unix()); !got.Equal(old) {
					t.Errorf("upper %s mtime %v, want the lower's %v", p, got, old)
				}
			}
			if d := lt.Diff(want, mergedTree(t, base, dirs)); d != "" {
				t.Errorf("merged tree differs:\n%s", d)
			}
		})

		t.Run("a whiteout or opaque directory in a layer hides the lower entries it covers", func(t *testing.T) {
			base := lt.TempDir(t, "ovl-")
			dirs := overlayStack(t, base,
				lt.Tar(t, lt.Dir("data", 0o755), lt.Symlink("srv", "/data"), lt.Symlink("opt", "/data"),
					lt.Dir("etc", 0o755), lt.Owned(lt.Dir("etc/conf", 0o700), 3, 3), lt.File("etc/conf/old", 0o644, "old")),
				// The middle layer whites out srv: the top layer's srv/x
				// does not follow the bottom layer's symlink.
				lt.Tar(t, lt.File(".wh.srv", 0o644, "")),
				lt.Tar(t, lt.File("srv/x", 0o644, "x"),
					lt.File(".wh.opt", 0o644, ""), lt.File("opt/y", 0o644, "y"),
					lt.Dir("etc", 0o755), lt.File("etc/.wh..wh..opq", 0o644, ""), lt.File("etc/conf/new", 0o644, "new")))
			want := map[string]string{
				"data":         "dir 0755 0:0",
				"srv":          "dir 0755 0:0",
				"srv/x":        "file 0644 0:0 x",
				"opt":          "dir 0755 0:0",
				"opt/y":        "file 0644 0:0 y",
				"etc":          "dir 0755 0:0",
				"etc/conf":     "dir 0755 0:0",
				"etc/conf/new": "file 0644 0:0 new",
			}
			if d := lt.Diff(want, mergedTree(t, base, dirs)); d != "" {
				t.Fatalf("merged tree differs:\n%s", d)
			}
		})

		t.Run("a write beneath a lower symlink of a lower directory the upper lacks is placed through it", func(t *testing.T) {
			base := lt.TempDir(t, "ovl-")
			dirs := overlayStack(t, base,
				lt.Tar(t, lt.Dir("usr", 0o755), lt.Dir("usr/lib", 0o755), lt.Symlink("lib", "usr/lib"), lt.File("usr/lib/one", 0o644, "1")),
				lt.Tar(t, lt.File("lib/two", 0o644, "2"), lt.Hardlink("lib/three", "lib/two")))
			want := map[string]string{
				"usr":           "dir 0755 0:0",
				"usr/lib":       "dir 0755 0:0",
				"usr/lib/one":   "file 0644 0:0 1",
				"usr/lib/two":   "file 0644 0:0 2",
				"usr/lib/three": "file 0644 0:0 2",
				"lib":           "symlink 0:0 -> usr/lib",
			}
			if d := lt.Diff(want, mergedTree(t, base, dirs)); d != "" {
				t.Fatalf("merged tree differs:\n%s", d)
			}
		})

		t.Run("lower directories are never written", func(t *testing.T) {
			base := lt.TempDir(t, "ovl-")
			lowerLayer := lt.Tar(t, lt.Dir("run", 0o755), lt.Dir("var", 0o755), lt.Symlink("var/run", "/run"), lt.File("run/keep", 0o644, "k"))
			dirs := overlayStack(t, base, lowerLayer)
			before := lt.Snapshot(t, dirs[0])
			upper := filepath.Join(base, "upper")
			os.Mkdir(upper, 0o755)
			if err := apply(t, upper, lt.Tar(t, lt.File("var/run/x", 0o644, "x"), lt.File("var/run/.wh.keep", 0o644, ""),
				lt.File("run/.wh..wh..opq", 0o644, "")), WithOverlayLowers(dirs...)); err != nil {
				t.Fatal(err)
			}
			if d := lt.Diff(before, lt.Snapshot(t, dirs[0])); d != "" {
				t.Errorf("the lower directory changed:\n%s", d)
			}
		})
	})
}
