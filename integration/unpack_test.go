package integration

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/snapshots"
	digest "github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"

	"github.com/flotilla/flotilla/integration/imagekit"
)

// snapshotters are the backends every unpack test runs against.
var snapshotters = []string{"overlayfs", "native"}

// largeSize is the payload of the large test image: big enough to take
// several reads and writes of every buffer on the way, small enough for CI.
const largeSize = 8 << 20

// testImage is one image of the unpack tests and how to build it.
type testImage struct {
	name  string
	build func() (*imagekit.Image, error)
	// large is set for BuildLarge's image, whose payload is checked
	// against imagekit.LargeContent instead of an expected tree.
	large bool
}

func unpackImages() []testImage {
	layers := func(opts ...imagekit.Option) func() (*imagekit.Image, error) {
		return func() (*imagekit.Image, error) { return imagekit.BuildLayers(opts...) }
	}
	return []testImage{
		{name: "busybox", build: func() (*imagekit.Image, error) { return imagekit.BuildBusybox() }},
		{name: "layers-gzip", build: layers(imagekit.WithCompression(imagekit.CompressionGzip))},
		{name: "layers-zstd", build: layers(imagekit.WithCompression(imagekit.CompressionZstd))},
		{name: "layers-none", build: layers(imagekit.WithCompression(imagekit.CompressionNone))},
		{name: "layers-docker", build: layers(imagekit.WithFormat(imagekit.FormatDocker))},
		{name: "multiarch", build: func() (*imagekit.Image, error) { return imagekit.BuildMultiarch() }},
		{name: "large", large: true, build: func() (*imagekit.Image, error) {
			return imagekit.BuildLarge(imagekit.WithSize(largeSize), imagekit.WithTempDir(os.TempDir()))
		}},
	}
}

// requireRootForMounts skips tests that mount snapshots when not root.
func requireRootForMounts(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("unpacking and mounting snapshots needs root")
	}
}

// chainIDs are the snapshot names an image's layers unpack to, lowest first.
func chainIDs(img *imagekit.Image) []digest.Digest {
	diffIDs := make([]digest.Digest, len(img.Layers))
	for i, l := range img.Layers {
		diffIDs[i] = l.DiffID
	}
	return identity.ChainIDs(diffIDs)
}

// snapshotInfo is what `ctr snapshots info` prints.
type snapshotInfo struct {
	Kind   string
	Name   string
	Parent string
}

func infoOf(t *testing.T, s *Stack, ns, sn, key string) snapshotInfo {
	t.Helper()
	out := s.MustCtr(ns, "snapshots", "--snapshotter", sn, "info", key)
	var info snapshotInfo
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("snapshots info %s: %v\n%s", key, err, out)
	}
	return info
}

// mountView makes a read-only view of snapshot parent in backend sn,
// mounts it with the command `ctr snapshots mounts` prints, and returns
// the mount point. The mount is undone and the view removed when the test
// ends, failed or not.
func mountView(t *testing.T, s *Stack, ns, sn, parent string) string {
	t.Helper()
	key := fmt.Sprintf("view-%d", rand.Uint64())
	// The view is a garbage-collection root, as a client that keeps a
	// snapshot past its lease must make it: ctr's `snapshots view` takes
	// no lease, and a collection (the pull's lease going triggers one)
	// would remove it, on containerd as on Flotilla.
	client, err := containerd.New(s.Socket, containerd.WithDefaultNamespace(ns))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	if _, err := client.SnapshotService(sn).View(context.Background(), key, parent,
		snapshots.WithLabels(map[string]string{"containerd.io/gc.root": time.Now().UTC().Format(time.RFC3339)})); err != nil {
		t.Fatalf("view %s of %s: %v", key, parent, err)
	}
	t.Cleanup(func() {
		if out, err := s.Ctr(ns, "snapshots", "--snapshotter", sn, "rm", key); err != nil {
			t.Errorf("remove view %s: %v\n%s", key, err, out)
		}
	})
	target := t.TempDir()
	mountCmd := strings.TrimSpace(s.MustCtr(ns, "snapshots", "--snapshotter", sn, "mounts", target, key))
	if out, err := exec.Command("sh", "-c", mountCmd).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", mountCmd, err, out)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(target, 0); err != nil {
			t.Errorf("unmount %s: %v", target, err)
			syscall.Unmount(target, syscall.MNT_DETACH)
		}
	})
	return target
}

// checkLine finds ref's line in `ctr images check` output.
func checkLine(out, ref string) string {
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[0] == ref {
			return line
		}
	}
	return ""
}

func sha256File(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func TestPullUnpacksEveryImage(t *testing.T) {
	requireTool(t, "ctr")
	requireRootForMounts(t)
	reg := imagekit.StartRegistry(t)
	s := startStack(t)
	stopPluginsOnCleanup(t, s)
	images := unpackImages()
	pushedImages := make([]pushed, len(images))
	for i, ti := range images {
		pushedImages[i] = pushImage(t, reg, ti.name, ti.build)
	}

	for _, sn := range snapshotters {
		t.Run(sn, func(t *testing.T) {
			ns := "unpack-" + sn
			for i, ti := range images {
				p := pushedImages[i]
				t.Run(ti.name+" pulls, checks complete and unpacks as a committed chain", func(t *testing.T) {
					s.MustCtr(ns, "images", "pull", "--plain-http", "--snapshotter", sn, p.ref)

					line := checkLine(s.MustCtr(ns, "images", "check", "--snapshotter", sn), p.ref)
					f := strings.Fields(line)
					if len(f) < 6 || f[3] != "complete" || f[len(f)-1] != "true" {
						t.Errorf("images check: %q, want complete and unpacked", line)
					}

					chain := chainIDs(p.img)
					parent := ""
					for i, id := range chain {
						info := infoOf(t, s, ns, sn, id.String())
						if info.Kind != "Committed" || info.Parent != parent {
							t.Errorf("layer %d snapshot %s: kind %s parent %q, want Committed with parent %q", i, id, info.Kind, info.Parent, parent)
						}
						parent = id.String()
					}
					ls := s.MustCtr(ns, "snapshots", "--snapshotter", sn, "ls")
					for _, id := range chain {
						if !strings.Contains(ls, id.String()) {
							t.Errorf("snapshots ls does not list %s:\n%s", id, ls)
						}
					}

					switch {
					case p.img.Expected != nil:
						root := mountView(t, s, ns, sn, parent)
						if err := p.img.Expected.Check(root); err != nil {
							t.Errorf("mounted top snapshot differs from the expected tree:\n%v", err)
						}
					case ti.large:
						root := mountView(t, s, ns, sn, parent)
						h := sha256.New()
						io.Copy(h, imagekit.LargeContent(largeSize, 1))
						if got, want := sha256File(t, filepath.Join(root, imagekit.LargeFile)), hex.EncodeToString(h.Sum(nil)); got != want {
							t.Errorf("%s sha256 %s, want %s", imagekit.LargeFile, got, want)
						}
					default:
						root := mountView(t, s, ns, sn, parent)
						if fi, err := os.Stat(filepath.Join(root, "bin", "busybox")); err != nil || fi.Mode()&0o111 == 0 {
							t.Errorf("bin/busybox in the unpacked multiarch image: %v %v", fi, err)
						}
					}
				})
			}
		})
	}
}

func TestWhiteoutImageTopSnapshotHoldsExpectedTree(t *testing.T) {
	requireTool(t, "ctr")
	requireRootForMounts(t)
	reg := imagekit.StartRegistry(t)
	s := startStack(t)
	stopPluginsOnCleanup(t, s)
	p := pushImage(t, reg, "whiteouts", func() (*imagekit.Image, error) { return imagekit.BuildLayers() })
	chain := chainIDs(p.img)
	top := chain[len(chain)-1].String()

	for _, sn := range snapshotters {
		t.Run(sn+": deleted files gone, opaque dir replaced, hardlinks and modes right", func(t *testing.T) {
			ns := "whiteout-" + sn
			s.MustCtr(ns, "images", "pull", "--plain-http", "--snapshotter", sn, p.ref)
			root := mountView(t, s, ns, sn, top)
			if err := p.img.Expected.Check(root); err != nil {
				t.Fatalf("mounted top snapshot differs from the expected tree:\n%v", err)
			}
			for _, gone := range []string{"gone", "data/a.txt", "etc/motd", "opaque/old1", "opaque/sub", "replaced/child"} {
				if _, err := os.Lstat(filepath.Join(root, gone)); err == nil {
					t.Errorf("%s is still there", gone)
				}
			}
		})
	}
}

// canary is a host file a hostile layer aims at.
type canary struct {
	path  string
	sum   string
	mtime time.Time
	dev   uint64
	ino   uint64
}

func newCanary(t *testing.T, path string) *canary {
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
	c := &canary{path: path}
	c.sum, c.mtime, c.dev, c.ino = c.state(t)
	return c
}

func (c *canary) state(t *testing.T) (string, time.Time, uint64, uint64) {
	t.Helper()
	fi, err := os.Lstat(c.path)
	if err != nil {
		t.Fatalf("canary %s: %v", c.path, err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return sha256File(t, c.path), fi.ModTime(), uint64(st.Dev), st.Ino
}

// check fails t when the canary changed or when a file under root is a
// hardlink to it.
func (c *canary) check(t *testing.T, root string) {
	t.Helper()
	sum, mtime, dev, ino := c.state(t)
	if sum != c.sum || !mtime.Equal(c.mtime) || dev != c.dev || ino != c.ino {
		t.Errorf("canary %s changed: sha256 %s mtime %v inode %d:%d, was %s %v %d:%d", c.path, sum, mtime, dev, ino, c.sum, c.mtime, c.dev, c.ino)
	}
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		if fi, err := os.Lstat(p); err == nil {
			if st := fi.Sys().(*syscall.Stat_t); uint64(st.Dev) == c.dev && st.Ino == c.ino {
				t.Errorf("%s is a hardlink to the canary %s", p, c.path)
			}
		}
		return nil
	})
}

// listTree lists every path under dir with its type and size.
func listTree(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return nil
		}
		out[p] = fmt.Sprintf("%v %d %v", fi.Mode(), fi.Size(), fi.ModTime())
		return nil
	})
	return out
}

// TestHostileLayersAreRefused pulls each hostile image with each snapshotter:
// every one is refused with invalid argument — symlink-escape too, since
// Flotilla's diff never writes beneath a symlink the same layer created (see
// snapshotd/diff/archive, root_linux.go) — and the host files it aimed at
// are unchanged.
func TestHostileLayersAreRefused(t *testing.T) {
	requireTool(t, "ctr")
	requireRootForMounts(t)
	reg := imagekit.StartRegistry(t)
	s := startStack(t)
	stopPluginsOnCleanup(t, s)
	passwdBefore := sha256File(t, "/etc/passwd")
	t.Cleanup(func() {
		if got := sha256File(t, "/etc/passwd"); got != passwdBefore {
			t.Errorf("/etc/passwd changed: sha256 %s, was %s", got, passwdBefore)
		}
	})

	for _, sn := range snapshotters {
		for _, attack := range imagekit.Attacks {
			t.Run(fmt.Sprintf("%s: %s is refused with invalid argument and its target is unchanged", sn, attack), func(t *testing.T) {
				host := t.TempDir()
				c := newCanary(t, filepath.Join(host, "etc", "passwd"))
				hostBefore := listTree(t, host)
				name := fmt.Sprintf("hostile-%s-%s", attack, sn)
				p := pushImage(t, reg, name, func() (*imagekit.Image, error) { return imagekit.BuildHostile(attack, c.path) })
				ns := "hostile-" + sn

				out, err := s.Ctr(ns, "images", "pull", "--plain-http", "--snapshotter", sn, p.ref)
				if err == nil {
					t.Fatalf("pull of a hostile layer succeeded:\n%s", out)
				}
				if !strings.Contains(strings.ToLower(out), "invalid argument") {
					t.Errorf("pull failed without saying invalid argument: %v\n%s", err, out)
				}
				t.Logf("pull refused: %s", lastLines(out, 1))

				c.check(t, s.Layout.Root)
				hostAfter := listTree(t, host)
				for p, v := range hostAfter {
					if hostBefore[p] != v {
						t.Errorf("outside the snapshot, %s changed: %q -> %q", p, hostBefore[p], v)
					}
				}
				for p := range hostBefore {
					if _, ok := hostAfter[p]; !ok {
						t.Errorf("outside the snapshot, %s was removed", p)
					}
				}
			})
		}
	}
}
