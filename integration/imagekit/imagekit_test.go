package imagekit

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func needBusybox(t testing.TB) {
	t.Helper()
	if _, err := os.Stat(DefaultBusybox); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s (busybox-static) is required in CI: %v", DefaultBusybox, err)
		}
		t.Skipf("%s not installed: %v", DefaultBusybox, err)
	}
}

var variants = []struct {
	compression Compression
	format      Format
	layerType   string
}{
	{CompressionGzip, FormatOCI, ocispec.MediaTypeImageLayerGzip},
	{CompressionZstd, FormatOCI, ocispec.MediaTypeImageLayerZstd},
	{CompressionNone, FormatOCI, ocispec.MediaTypeImageLayer},
	{CompressionGzip, FormatDocker, MediaTypeDockerLayerGzip},
	{CompressionNone, FormatDocker, MediaTypeDockerLayer},
}

func TestBuildWritesAVerifiableLayout(t *testing.T) {
	needBusybox(t)
	for _, kind := range Kinds {
		for _, v := range variants {
			t.Run(fmt.Sprintf("%s %s %s: every digest and size in the layout checks out", kind, v.format, v.compression), func(t *testing.T) {
				img, err := Build(kind, WithCompression(v.compression), WithFormat(v.format), WithSize(3<<20+123), WithTempDir(t.TempDir()))
				if err != nil {
					t.Fatal(err)
				}
				defer img.Close()
				dir := t.TempDir()
				ref := "example.test/flotilla/" + string(kind) + ":1"
				if err := img.WriteLayout(dir, ref); err != nil {
					t.Fatal(err)
				}
				index, visited := checkLayout(t, dir)
				if len(index.Manifests) != 1 || index.Manifests[0].Digest != img.Target.Digest {
					t.Fatalf("index.json manifests %+v, want the target %s", index.Manifests, img.Target.Digest)
				}
				ann := index.Manifests[0].Annotations
				if ann[ocispec.AnnotationRefName] != ref || ann[AnnotationImageName] != ref {
					t.Errorf("index.json annotations %v, want both names %q", ann, ref)
				}
				if len(visited) != len(img.Blobs) {
					t.Errorf("layout reaches %d blobs, image lists %d", len(visited), len(img.Blobs))
				}
				for _, b := range img.Blobs {
					d, ok := visited[b.Descriptor.Digest]
					if !ok {
						t.Errorf("blob %s of the image is not reachable in the layout", b.Descriptor.Digest)
						continue
					}
					if d.Size != b.Descriptor.Size || d.MediaType != b.Descriptor.MediaType {
						t.Errorf("blob %s: layout says %s/%d, image %s/%d", d.Digest, d.MediaType, d.Size, b.Descriptor.MediaType, b.Descriptor.Size)
					}
				}
				for _, l := range img.Layers {
					if l.Descriptor.MediaType != v.layerType {
						t.Errorf("layer %s has media type %q, want %q", l.Descriptor.Digest, l.Descriptor.MediaType, v.layerType)
					}
				}
				wantRoot := map[Kind]map[Format]string{
					KindMultiarch: {FormatOCI: ocispec.MediaTypeImageIndex, FormatDocker: MediaTypeDockerManifestList},
				}[kind][v.format]
				if wantRoot == "" {
					wantRoot = map[Format]string{FormatOCI: ocispec.MediaTypeImageManifest, FormatDocker: MediaTypeDockerManifest}[v.format]
				}
				if img.Target.MediaType != wantRoot {
					t.Errorf("target media type %q, want %q", img.Target.MediaType, wantRoot)
				}
			})
		}
	}
}

func TestWriteArchiveHoldsTheLayoutFiles(t *testing.T) {
	needBusybox(t)
	busybox, err := BuildBusybox()
	if err != nil {
		t.Fatal(err)
	}
	layers, err := BuildLayers(WithCompression(CompressionZstd))
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	images := map[string]*Image{"docker.io/library/busybox:latest": busybox, "flotilla/layers:zstd": layers}
	if err := WriteArchive(&buf, images); err != nil {
		t.Fatal(err)
	}
	// Unpack the archive and check it as a layout: same files, same digests.
	dir := t.TempDir()
	tr := tar.NewReader(&buf)
	var names []string
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, hdr.Name)
		p := filepath.Join(dir, filepath.FromSlash(hdr.Name))
		if hdr.Typeflag == tar.TypeDir {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if !slices.Contains(names, "oci-layout") || !slices.Contains(names, "index.json") {
		t.Fatalf("archive entries %v lack oci-layout or index.json", names)
	}
	index, visited := checkLayout(t, dir)
	if len(index.Manifests) != 2 {
		t.Fatalf("index.json names %d images, want 2", len(index.Manifests))
	}
	for _, m := range index.Manifests {
		img := images[m.Annotations[AnnotationImageName]]
		if img == nil || img.Target.Digest != m.Digest {
			t.Errorf("index.json entry %s %v does not match an image", m.Digest, m.Annotations)
		}
	}
	if want := len(busybox.Blobs) + len(layers.Blobs); len(visited) != want {
		t.Errorf("archive holds %d blobs, want %d", len(visited), want)
	}
}

func TestWriteDockerArchiveNamesEachImagesConfigAndLayers(t *testing.T) {
	needBusybox(t)
	busybox, err := BuildBusybox()
	if err != nil {
		t.Fatal(err)
	}
	layers, err := BuildLayers()
	if err != nil {
		t.Fatal(err)
	}
	images := map[string]*Image{"flotilla/busybox:1": busybox, "flotilla/layers:1": layers}
	var buf bytes.Buffer
	if err := WriteDockerArchive(&buf, images); err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{}
	tr := tar.NewReader(&buf)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		files[hdr.Name] = data
	}
	var manifest []dockerManifestEntry
	if err := json.Unmarshal(files["manifest.json"], &manifest); err != nil {
		t.Fatalf("manifest.json: %v", err)
	}
	if len(manifest) != 2 {
		t.Fatalf("manifest.json has %d entries, want 2", len(manifest))
	}
	for _, e := range manifest {
		if len(e.RepoTags) != 1 || images[e.RepoTags[0]] == nil {
			t.Fatalf("entry tags %v name no image", e.RepoTags)
		}
		img := images[e.RepoTags[0]]
		check := func(name string, want digest.Digest) {
			if got := digest.FromBytes(files[name]); got != want {
				t.Errorf("%s: %s holds %s, want %s", e.RepoTags[0], name, got, want)
			}
		}
		check(e.Config, img.Config.Digest)
		if len(e.Layers) != len(img.Layers) {
			t.Fatalf("%s: %d layers, want %d", e.RepoTags[0], len(e.Layers), len(img.Layers))
		}
		for i, l := range img.Layers {
			check(e.Layers[i], l.Descriptor.Digest)
		}
	}
}

func TestBuildIsReproducible(t *testing.T) {
	needBusybox(t)
	for _, kind := range Kinds {
		t.Run(string(kind)+" built twice has the same digest", func(t *testing.T) {
			var digests []digest.Digest
			for range 2 {
				img, err := Build(kind, WithCompression(CompressionZstd), WithSize(1<<20), WithTempDir(t.TempDir()))
				if err != nil {
					t.Fatal(err)
				}
				digests = append(digests, img.Target.Digest)
				img.Close()
			}
			if digests[0] != digests[1] {
				t.Errorf("digests differ: %v", digests)
			}
		})
	}
}

func TestLayersExpectedIsWhatApplyingTheLayersGives(t *testing.T) {
	for _, v := range variants {
		t.Run(fmt.Sprintf("%s %s", v.format, v.compression), func(t *testing.T) {
			img, err := BuildLayers(WithCompression(v.compression), WithFormat(v.format))
			if err != nil {
				t.Fatal(err)
			}
			if len(img.Layers) != 3 {
				t.Fatalf("%d layers, want 3", len(img.Layers))
			}
			if err := img.Expected.Compare(applyImage(t, img)); err != nil {
				t.Errorf("expected tree differs from the applied layers:\n%v", err)
			}
		})
	}
}

func TestLayersImageExercisesWhiteoutsAndSpecialFiles(t *testing.T) {
	img, err := BuildLayers(WithCompression(CompressionNone))
	if err != nil {
		t.Fatal(err)
	}
	var upper []*tar.Header
	for _, l := range img.Layers {
		hdrs, err := tarHeaders(l.Data)
		if err != nil {
			t.Fatal(err)
		}
		upper = hdrs
	}
	has := func(pred func(*tar.Header) bool) bool { return slices.ContainsFunc(upper, pred) }
	for name, pred := range map[string]func(*tar.Header) bool{
		"a file whiteout":          func(h *tar.Header) bool { return h.Name == "data/.wh.a.txt" },
		"a directory whiteout":     func(h *tar.Header) bool { return h.Name == ".wh.gone" },
		"an opaque directory":      func(h *tar.Header) bool { return h.Name == "opaque/.wh..wh..opq" },
		"a hardlink":               func(h *tar.Header) bool { return h.Typeflag == tar.TypeLink },
		"a symlink":                func(h *tar.Header) bool { return h.Typeflag == tar.TypeSymlink },
		"a setuid file":            func(h *tar.Header) bool { return h.Mode&0o4000 != 0 },
		"a 0600 file":              func(h *tar.Header) bool { return h.Mode == 0o600 && h.Typeflag == tar.TypeReg },
		"a file over a lower dir":  func(h *tar.Header) bool { return h.Name == "replaced" && h.Typeflag == tar.TypeReg },
		"a replaced file new mode": func(h *tar.Header) bool { return h.Name == "data/b.txt" && h.Mode == 0o444 },
	} {
		if !has(pred) {
			t.Errorf("upper layer lacks %s", name)
		}
	}
	for _, gone := range []string{"data/a.txt", "gone", "gone/inside", "etc/motd", "opaque/old1", "opaque/sub", "replaced/child"} {
		if _, ok := img.Expected.Lookup(gone); ok {
			t.Errorf("expected tree still holds %s", gone)
		}
	}
}

func TestBusyboxImage(t *testing.T) {
	needBusybox(t)
	img, err := BuildBusybox(WithCompression(CompressionGzip))
	if err != nil {
		t.Fatal(err)
	}
	t.Run("its expected tree is what unpacking it gives", func(t *testing.T) {
		if err := img.Expected.Compare(applyImage(t, img)); err != nil {
			t.Error(err)
		}
	})
	t.Run("it holds the machine's busybox and the usual files", func(t *testing.T) {
		binary, err := os.ReadFile(DefaultBusybox)
		if err != nil {
			t.Fatal(err)
		}
		if e, ok := img.Expected.Lookup("bin/busybox"); !ok || e.Content != string(binary) || e.Mode != 0o755 {
			t.Errorf("bin/busybox is not the machine's binary with mode 0755")
		}
		for _, p := range []string{"bin/sh", "bin/echo", "bin/cat", "bin/true", "bin/sleep", "bin/ls"} {
			if e, ok := img.Expected.Lookup(p); !ok || e.Type != TypeSymlink || e.Target != "busybox" {
				t.Errorf("%s is not a symlink to busybox: %+v", p, e)
			}
		}
		for _, p := range []string{"etc/passwd", "etc/group", "tmp", "proc", "dev", "sys"} {
			if _, ok := img.Expected.Lookup(p); !ok {
				t.Errorf("%s missing", p)
			}
		}
	})
	t.Run("every applet it links is one busybox has", func(t *testing.T) {
		out, err := exec.Command(DefaultBusybox, "--list").Output()
		if err != nil {
			t.Skipf("cannot run %s: %v", DefaultBusybox, err)
		}
		have := strings.Fields(string(out))
		for _, a := range BusyboxApplets {
			if !slices.Contains(have, a) {
				t.Errorf("busybox has no applet %q", a)
			}
		}
	})
	t.Run("its config runs sh for the machine's platform", func(t *testing.T) {
		b, _ := img.Blob(img.Config.Digest)
		cfg := string(b.Data)
		for _, want := range []string{`"Cmd":["sh"]`, `"Env":["` + BusyboxPath + `"]`, `"os":"linux"`, `"architecture":"` + HostPlatform().Architecture + `"`} {
			if !strings.Contains(cfg, want) {
				t.Errorf("config %s lacks %s", cfg, want)
			}
		}
	})
}

func TestMultiarchIndexNamesBothPlatformsAndSharesTheLayer(t *testing.T) {
	needBusybox(t)
	img, err := BuildMultiarch()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := img.WriteLayout(dir, "multi:1"); err != nil {
		t.Fatal(err)
	}
	_, visited := checkLayout(t, dir)
	var platforms []string
	layers := 0
	for _, d := range visited {
		if d.Platform != nil {
			platforms = append(platforms, d.Platform.OS+"/"+d.Platform.Architecture)
		}
		if d.MediaType == ocispec.MediaTypeImageLayerGzip {
			layers++
		}
	}
	slices.Sort(platforms)
	if !slices.Equal(platforms, []string{"linux/amd64", "linux/arm64"}) {
		t.Errorf("platforms %v, want linux/amd64 and linux/arm64", platforms)
	}
	if layers != 1 {
		t.Errorf("%d distinct layers, want the one busybox layer shared", layers)
	}
	// 1 index + 2 manifests + 2 configs + 1 layer.
	if len(img.Blobs) != 6 {
		t.Errorf("%d blobs, want 6", len(img.Blobs))
	}
}

func TestLargeImage(t *testing.T) {
	const size = 5<<20 + 7
	for _, c := range []Compression{CompressionNone, CompressionGzip, CompressionZstd} {
		t.Run(string(c)+": the layer file holds the seeded payload and Close removes it", func(t *testing.T) {
			tmp := t.TempDir()
			img, err := BuildLarge(WithSize(size), WithSeed(42), WithCompression(c), WithTempDir(tmp))
			if err != nil {
				t.Fatal(err)
			}
			l := img.Layers[0]
			if l.Path == "" || l.Data != nil {
				t.Fatalf("layer is not kept in a file: path %q, %d bytes in memory", l.Path, len(l.Data))
			}
			if filepath.Dir(l.Path) != tmp {
				t.Errorf("layer written to %s, want under %s", l.Path, tmp)
			}
			if c != CompressionNone && l.Descriptor.Size < size {
				t.Errorf("compressed layer is %d bytes for a %d-byte payload: the data compresses", l.Descriptor.Size, size)
			}
			r, err := l.Open()
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			blobDigest := digest.SHA256.Digester()
			diffID := digest.SHA256.Digester()
			tr := tar.NewReader(io.TeeReader(decompress(t, l.Descriptor.MediaType, io.TeeReader(r, blobDigest.Hash())), diffID.Hash()))
			hdr, err := tr.Next()
			if err != nil || hdr.Name != LargeFile || hdr.Size != size {
				t.Fatalf("tar header %+v, %v", hdr, err)
			}
			got, _ := io.ReadAll(tr)
			want, _ := io.ReadAll(LargeContent(size, 42))
			if !bytes.Equal(got, want) {
				t.Error("payload differs from LargeContent")
			}
			if _, err := tr.Next(); !errors.Is(err, io.EOF) {
				t.Errorf("after the payload: %v, want EOF", err)
			}
			io.Copy(io.Discard, r)
			if blobDigest.Digest() != l.Descriptor.Digest {
				t.Errorf("layer file digest %s, descriptor %s", blobDigest.Digest(), l.Descriptor.Digest)
			}
			if diffID.Digest() != l.DiffID {
				t.Errorf("uncompressed digest %s, diff ID %s", diffID.Digest(), l.DiffID)
			}
			if err := img.Close(); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(l.Path); !os.IsNotExist(err) {
				t.Errorf("layer file still there after Close: %v", err)
			}
		})
	}
}

func TestHostileLayers(t *testing.T) {
	target := "/srv/victim/file"
	climbs := func(name string) bool {
		return strings.HasPrefix(path.Clean("var/lib/rootfs/"+name), "../")
	}
	tests := []struct {
		attack Attack
		check  func(t *testing.T, hdrs []*tar.Header, err error)
	}{
		{AttackTraversal, func(t *testing.T, hdrs []*tar.Header, err error) {
			if err != nil || len(hdrs) != 1 || !climbs(hdrs[0].Name) || !strings.HasSuffix(hdrs[0].Name, "/srv/victim/file") {
				t.Errorf("want one file climbing out to the target, got %v %v", names(hdrs), err)
			}
		}},
		{AttackAbsolute, func(t *testing.T, hdrs []*tar.Header, err error) {
			if err != nil || len(hdrs) != 1 || hdrs[0].Name != target {
				t.Errorf("want one file named %s, got %v %v", target, names(hdrs), err)
			}
		}},
		{AttackSymlinkEscape, func(t *testing.T, hdrs []*tar.Header, err error) {
			if err != nil || len(hdrs) != 2 || hdrs[0].Typeflag != tar.TypeSymlink || hdrs[0].Linkname != "/srv/victim" || hdrs[1].Name != "escape/file" {
				t.Errorf("want a symlink to /srv/victim then escape/file, got %v %v", names(hdrs), err)
			}
		}},
		{AttackHardlinkOutside, func(t *testing.T, hdrs []*tar.Header, err error) {
			if err != nil || len(hdrs) != 2 || hdrs[0].Typeflag != tar.TypeLink || !climbs(hdrs[0].Linkname) || hdrs[1].Name != "passwd" {
				t.Errorf("want a hardlink climbing out then a write to it, got %v %v", names(hdrs), err)
			}
		}},
		{AttackHardlinkAbsolute, func(t *testing.T, hdrs []*tar.Header, err error) {
			if err != nil || len(hdrs) != 2 || hdrs[0].Typeflag != tar.TypeLink || hdrs[0].Linkname != target {
				t.Errorf("want a hardlink to %s then a write to it, got %v %v", target, names(hdrs), err)
			}
		}},
		{AttackHugeSize, func(t *testing.T, hdrs []*tar.Header, err error) {
			if len(hdrs) != 1 || hdrs[0].Size != HugeSize || !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Errorf("want one %d-byte header and a short body, got %v, %v", int64(HugeSize), hdrs, err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(string(tt.attack)+" layer holds the attack it documents", func(t *testing.T) {
			for _, c := range []Compression{CompressionNone, CompressionGzip, CompressionZstd} {
				l, err := HostileLayer(tt.attack, target, WithCompression(c))
				if err != nil {
					t.Fatal(err)
				}
				raw, err := io.ReadAll(decompress(t, l.Descriptor.MediaType, bytes.NewReader(l.Data)))
				if err != nil {
					t.Fatal(err)
				}
				if digest.FromBytes(raw) != l.DiffID || digest.FromBytes(l.Data) != l.Descriptor.Digest {
					t.Errorf("%s: digests do not match the bytes", c)
				}
				hdrs, err := tarHeaders(raw)
				tt.check(t, hdrs, err)
			}
		})
	}
	t.Run("hostile image wraps the layer in a pullable manifest", func(t *testing.T) {
		img, err := BuildHostile(AttackTraversal, target)
		if err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		if err := img.WriteLayout(dir, "hostile:traversal"); err != nil {
			t.Fatal(err)
		}
		checkLayout(t, dir)
	})
	t.Run("a relative target or unknown attack is invalid", func(t *testing.T) {
		if _, err := HostileLayer(AttackTraversal, "etc/passwd"); !errdefs.IsInvalidArgument(err) {
			t.Errorf("relative target: %v, want InvalidArgument", err)
		}
		if _, err := HostileLayer("nope", ""); !errdefs.IsInvalidArgument(err) {
			t.Errorf("unknown attack: %v, want InvalidArgument", err)
		}
	})
}

func names(hdrs []*tar.Header) []string {
	var n []string
	for _, h := range hdrs {
		n = append(n, fmt.Sprintf("%c:%s->%s", h.Typeflag, h.Name, h.Linkname))
	}
	return n
}

func TestTreeCheck(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to set owners")
	}
	tests := []struct {
		name    string
		mutate  func(t *testing.T, root string)
		wantErr string
	}{
		{"an exact copy passes", func(*testing.T, string) {}, ""},
		{"a missing file is reported", func(t *testing.T, root string) { must(t, os.Remove(filepath.Join(root, "secret"))) }, "secret: missing"},
		{"an extra file is reported", func(t *testing.T, root string) {
			must(t, os.WriteFile(filepath.Join(root, "data/a.txt"), nil, 0o644))
		}, "data/a.txt: unexpected file"},
		{"a lost setuid bit is reported", func(t *testing.T, root string) { must(t, os.Chmod(filepath.Join(root, "bin/tool"), 0o755)) }, "bin/tool: mode"},
		{"different content is reported", func(t *testing.T, root string) {
			must(t, os.WriteFile(filepath.Join(root, "etc/hostname"), []byte("base\n"), 0o644))
		}, "etc/hostname: content"},
		{"a wrong owner is reported", func(t *testing.T, root string) { must(t, os.Lchown(filepath.Join(root, "home/user/notes"), 0, 0)) }, "home/user/notes: owner 0:0"},
		{"a wrong symlink target is reported", func(t *testing.T, root string) {
			p := filepath.Join(root, "data/latest")
			must(t, os.Remove(p))
			must(t, os.Symlink("b.txt", p))
		}, "data/latest: symlink"},
		{"a broken hardlink is reported", func(t *testing.T, root string) {
			p := filepath.Join(root, "hard/link")
			must(t, os.Remove(p))
			must(t, os.WriteFile(p, []byte("one inode, two names\n"), 0o644))
		}, "hard/orig: hardlinked with [], want [hard/link,hard/orig]"},
		{"a hardlink to a file outside is reported", func(t *testing.T, root string) {
			outside := filepath.Join(t.TempDir(), "outside")
			must(t, os.WriteFile(outside, []byte("secret\n"), 0o600))
			must(t, os.Remove(filepath.Join(root, "secret")))
			must(t, os.Link(outside, filepath.Join(root, "secret")))
		}, "secret: hardlinked with [secret], want no other name"},
		{"a directory in place of a file is reported", func(t *testing.T, root string) {
			p := filepath.Join(root, "replaced")
			must(t, os.Remove(p))
			must(t, os.Mkdir(p, 0o755))
		}, "replaced: is a dir, want a file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			materialize(t, root, LayersExpected())
			tt.mutate(t, root)
			err := LayersExpected().Check(root)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("Check: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("Check: %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestOptionsAndSizes(t *testing.T) {
	t.Run("docker format with zstd is invalid", func(t *testing.T) {
		if _, err := BuildLayers(WithFormat(FormatDocker), WithCompression(CompressionZstd)); !errdefs.IsInvalidArgument(err) {
			t.Errorf("got %v, want InvalidArgument", err)
		}
	})
	t.Run("unknown kind, compression and format are invalid", func(t *testing.T) {
		for _, err := range []error{
			func() error { _, err := Build("nope"); return err }(),
			func() error { _, err := Build(KindLayers, WithCompression("lz4")); return err }(),
			func() error { _, err := Build(KindLayers, WithFormat("v1")); return err }(),
		} {
			if !errdefs.IsInvalidArgument(err) {
				t.Errorf("got %v, want InvalidArgument", err)
			}
		}
	})
	for _, tt := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"4096", 4096, true}, {"64MiB", 64 << 20, true}, {"1GiB", 1 << 30, true}, {"512KiB", 512 << 10, true},
		{"10MB", 10_000_000, true}, {"7B", 7, true}, {"", 0, false}, {"-1", 0, false}, {"12XB", 0, false},
		{"99999999999GiB", 0, false},
	} {
		t.Run("size "+tt.in, func(t *testing.T) {
			got, err := ParseSize(tt.in)
			if tt.ok != (err == nil) || got != tt.want {
				t.Errorf("ParseSize(%q) = %d, %v; want %d (ok=%v)", tt.in, got, err, tt.want, tt.ok)
			}
		})
	}
}

func BenchmarkBuildLarge(b *testing.B) {
	const size = 64 << 20
	for _, c := range []Compression{CompressionNone, CompressionGzip, CompressionZstd} {
		b.Run(string(c), func(b *testing.B) {
			b.SetBytes(size)
			dir := b.TempDir()
			for b.Loop() {
				img, err := BuildLarge(WithSize(size), WithCompression(c), WithTempDir(dir))
				if err != nil {
					b.Fatal(err)
				}
				img.Close()
			}
		})
	}
}
