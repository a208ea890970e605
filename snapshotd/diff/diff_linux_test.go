package diff

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"

	"github.com/flotilla/flotilla/snapshotd/diff/compression"
	"github.com/flotilla/flotilla/snapshotd/diff/content"
	lt "github.com/flotilla/flotilla/snapshotd/diff/internal/layertest"
)

// memStore is an in-process content store: the local implementation of
// content.Provider and content.Ingester.
type memStore struct {
	mu     sync.Mutex
	blobs  map[digest.Digest][]byte
	labels map[digest.Digest]map[string]string
}

func newMemStore() *memStore {
	return &memStore{blobs: map[digest.Digest][]byte{}, labels: map[digest.Digest]map[string]string{}}
}

func (s *memStore) put(data []byte) digest.Digest {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := digest.FromBytes(data)
	s.blobs[d] = data
	return d
}

type memReader struct{ *bytes.Reader }

func (memReader) Close() error { return nil }

func (s *memStore) ReaderAt(_ context.Context, desc ocispec.Descriptor) (content.ReaderAt, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.blobs[desc.Digest]
	if !ok {
		return nil, errdefs.ErrNotFound
	}
	return memReader{bytes.NewReader(b)}, nil
}

type memWriter struct {
	s   *memStore
	buf bytes.Buffer
}

func (s *memStore) Writer(context.Context, string) (content.Writer, error) {
	return &memWriter{s: s}, nil
}

func (w *memWriter) Write(p []byte) (int, error) { return w.buf.Write(p) }
func (w *memWriter) Close() error                { return nil }
func (w *memWriter) Commit(_ context.Context, size int64, expected digest.Digest, labels map[string]string) error {
	if int64(w.buf.Len()) != size || digest.FromBytes(w.buf.Bytes()) != expected {
		return errdefs.ErrFailedPrecondition
	}
	w.s.mu.Lock()
	defer w.s.mu.Unlock()
	if _, ok := w.s.blobs[expected]; ok {
		return errdefs.ErrAlreadyExists
	}
	w.s.blobs[expected] = bytes.Clone(w.buf.Bytes())
	w.s.labels[expected] = labels
	return nil
}

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: ownership, device nodes and mounts")
	}
}

func bind(dir string) []*types.Mount {
	return []*types.Mount{{Type: "bind", Source: dir, Options: []string{"rbind", "rw"}}}
}

// snapshot is a directory laid out as the overlayfs snapshotter lays out
// one: fs (its upper directory, or its whole tree when it has no parent)
// and work.
func snapshotDirs(t *testing.T, base, name string) (fs, work string) {
	t.Helper()
	fs, work = filepath.Join(base, name, "fs"), filepath.Join(base, name, "work")
	for _, d := range []string{fs, work} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return fs, work
}

func overlay(upper, work string, lowers ...string) []*types.Mount {
	opts := []string{"index=off", "lowerdir=" + strings.Join(lowers, ":")}
	if upper != "" {
		opts = append(opts, "upperdir="+upper, "workdir="+work)
	}
	return []*types.Mount{{Type: "overlay", Source: "overlay", Options: opts}}
}

// mountTree mounts ms read-only on a new directory for the rest of the test.
func mountTree(t *testing.T, ms []*types.Mount) string {
	t.Helper()
	dir := lt.TempDir(t, "mt-")
	_, lowers, _ := strings.Cut(ms[0].Options[1], "=")
	if err := unix.Mount("overlay", dir, "overlay", unix.MS_RDONLY, "lowerdir="+lowers); err != nil {
		t.Fatalf("mount: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}

func checkWhiteoutTree(t *testing.T, root string) {
	t.Helper()
	if d := lt.Diff(lt.WhiteoutExpected(), lt.Snapshot(t, root)); d != "" {
		t.Fatalf("tree differs:\n%s", d)
	}
	for _, pair := range lt.WhiteoutHardlinks {
		if !lt.SameInode(t, filepath.Join(root, pair[0]), filepath.Join(root, pair[1])) {
			t.Errorf("%s and %s are not one inode", pair[0], pair[1])
		}
	}
}

var compressions = []struct {
	name      string
	mediaType string
	compress  func(testing.TB, []byte) []byte
}{
	{"gzip", ocispec.MediaTypeImageLayerGzip, lt.Gzip},
	{"zstd", ocispec.MediaTypeImageLayerZstd, lt.Zstd},
	{"none", ocispec.MediaTypeImageLayer, func(_ testing.TB, b []byte) []byte { return b }},
	{"docker gzip", compression.DockerLayerGzip, lt.Gzip},
}

// layers stores the whiteout layers compressed as c and returns their
// descriptors and diff IDs.
func layers(t *testing.T, s *memStore, mediaType string, compress func(testing.TB, []byte) []byte) (descs []ocispec.Descriptor, diffIDs []digest.Digest) {
	for _, l := range lt.WhiteoutLayers() {
		tarData := lt.Tar(t, l...)
		blob := compress(t, tarData)
		descs = append(descs, ocispec.Descriptor{MediaType: mediaType, Digest: s.put(blob), Size: int64(len(blob))})
		diffIDs = append(diffIDs, digest.FromBytes(tarData))
	}
	return descs, diffIDs
}

func TestApply(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	for _, c := range compressions {
		t.Run(c.name+" layers onto a bind mount give the expected tree and diff IDs", func(t *testing.T) {
			s := newMemStore()
			d := New(s, s)
			descs, diffIDs := layers(t, s, c.mediaType, c.compress)
			root := lt.TempDir(t, "ap-")
			for i, desc := range descs {
				applied, err := d.Apply(ctx, desc, bind(root))
				if err != nil {
					t.Fatalf("layer %d: %v", i, err)
				}
				if applied.Digest != diffIDs[i] || applied.MediaType != ocispec.MediaTypeImageLayer || applied.Size == 0 {
					t.Errorf("layer %d applied as %+v, want diff ID %s", i, applied, diffIDs[i])
				}
			}
			checkWhiteoutTree(t, root)
		})
	}

	t.Run("layers onto overlay snapshots go to the upper directories and merge to the expected tree", func(t *testing.T) {
		s := newMemStore()
		d := New(s, s)
		descs, _ := layers(t, s, ocispec.MediaTypeImageLayerGzip, lt.Gzip)
		base := lt.TempDir(t, "os-")
		var lowers []string
		for i, desc := range descs {
			fs, work := snapshotDirs(t, base, string(rune('1'+i)))
			ms := bind(fs)
			if len(lowers) > 0 {
				ms = overlay(fs, work, lowers...)
			}
			if _, err := d.Apply(ctx, desc, ms, WithSyncFS()); err != nil {
				t.Fatalf("layer %d: %v", i, err)
			}
			lowers = append([]string{fs}, lowers...)
		}
		if len(lt.MountsUnder(base)) != 0 {
			t.Fatalf("mounts left: %v", lt.MountsUnder(base))
		}
		checkWhiteoutTree(t, mountTree(t, overlay("", "", lowers...)))
	})

	t.Run("a layer onto an overlay snapshot resolves its parents through the lower snapshots", func(t *testing.T) {
		s := newMemStore()
		d := New(s, s)
		base := lt.TempDir(t, "os-")
		put := func(data []byte) ocispec.Descriptor {
			return ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: s.put(data), Size: int64(len(data))}
		}
		lower, _ := snapshotDirs(t, base, "1")
		if _, err := d.Apply(ctx, put(lt.Tar(t, lt.Dir("run", 0o755), lt.Owned(lt.Dir("var", 0o750), 4, 4),
			lt.Symlink("var/run", "/run"))), bind(lower)); err != nil {
			t.Fatal(err)
		}
		upper, work := snapshotDirs(t, base, "2")
		if _, err := d.Apply(ctx, put(lt.Tar(t, lt.File("var/run/x", 0o644, "x"), lt.File("var/log/y", 0o644, "y"))),
			overlay(upper, work, lower)); err != nil {
			t.Fatal(err)
		}
		want := map[string]string{
			"run":       "dir 0755 0:0",
			"run/x":     "file 0644 0:0 x",
			"var":       "dir 0750 4:4",
			"var/run":   "symlink 0:0 -> /run",
			"var/log":   "dir 0755 0:0",
			"var/log/y": "file 0644 0:0 y",
		}
		if d := lt.Diff(want, lt.Snapshot(t, mountTree(t, overlay("", "", upper, lower)))); d != "" {
			t.Fatalf("merged tree differs:\n%s", d)
		}
	})

	t.Run("a list of mounts is mounted for the call and unmounted after", func(t *testing.T) {
		s := newMemStore()
		d := New(s, s)
		a, b := lt.TempDir(t, "ma-"), lt.TempDir(t, "mb-")
		os.Mkdir(filepath.Join(a, "sub"), 0o755)
		blob := lt.Tar(t, lt.File("top", 0o644, "top"), lt.File("sub/inner", 0o644, "inner"))
		desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: s.put(blob), Size: int64(len(blob))}
		ms := []*types.Mount{
			{Type: "bind", Source: a, Options: []string{"rbind"}},
			{Type: "bind", Source: b, Target: "sub", Options: []string{"rbind"}},
		}
		if _, err := d.Apply(ctx, desc, ms); err != nil {
			t.Fatal(err)
		}
		if got := lt.Snapshot(t, b); got["inner"] != "file 0644 0:0 inner" {
			t.Errorf("second mount holds %v", got)
		}
		if got := lt.Snapshot(t, a); got["top"] != "file 0644 0:0 top" {
			t.Errorf("first mount holds %v", got)
		}
		if m := lt.MountsUnder(a); len(m) != 0 {
			t.Errorf("mounts left: %v", m)
		}
	})
}

func TestApplyErrors(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	s := newMemStore()
	d := New(s, s)
	plain := lt.Tar(t, lt.File("f", 0o644, "f"))
	plainDesc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: s.put(plain), Size: int64(len(plain))}
	gz := lt.Gzip(t, plain)
	gzDesc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: s.put(gz), Size: int64(len(gz))}
	tampered := bytes.Clone(gz)
	tampered[len(tampered)-5] ^= 0xff // the gzip trailer's size field
	tamperedDigest := s.put(tampered)
	root := lt.TempDir(t, "er-")

	for _, c := range []struct {
		name   string
		desc   ocispec.Descriptor
		mounts []*types.Mount
		is     func(error) bool
	}{
		{"a gzip media type over a plain tar is InvalidArgument", ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: plainDesc.Digest}, bind(root), errdefs.IsInvalidArgument},
		{"a zstd media type over gzip data is InvalidArgument", ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerZstd, Digest: gzDesc.Digest}, bind(root), errdefs.IsInvalidArgument},
		{"a corrupt gzip trailer is InvalidArgument", ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: tamperedDigest}, bind(root), errdefs.IsInvalidArgument},
		{"a size other than the blob's is FailedPrecondition", ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: gzDesc.Digest, Size: gzDesc.Size + 1}, bind(root), errdefs.IsFailedPrecondition},
		{"a missing blob is NotFound", ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromString("nope")}, bind(root), errdefs.IsNotFound},
		{"an unknown media type is NotImplemented", ocispec.Descriptor{MediaType: "application/vnd.oci.image.layer.v1.tar+encrypted", Digest: gzDesc.Digest}, bind(root), errdefs.IsNotImplemented},
		{"a malformed digest is InvalidArgument", ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: "sha256:xyz"}, bind(root), errdefs.IsInvalidArgument},
		{"no mounts is InvalidArgument", gzDesc, nil, errdefs.IsInvalidArgument},
		{"a read-only bind mount is InvalidArgument", gzDesc, []*types.Mount{{Type: "bind", Source: root, Options: []string{"rbind", "ro"}}}, errdefs.IsInvalidArgument},
		{"an overlay without upper directory is InvalidArgument", gzDesc, overlay("", "", root, root), errdefs.IsInvalidArgument},
	} {
		t.Run(c.name, func(t *testing.T) {
			if _, err := d.Apply(ctx, c.desc, c.mounts); !c.is(err) {
				t.Fatalf("Apply = %v", err)
			}
		})
	}

	t.Run("content that does not digest to the descriptor is InvalidArgument", func(t *testing.T) {
		liar := &lyingStore{memStore: s, data: plain}
		_, err := New(liar, s).Apply(ctx, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: digest.FromString("other")}, bind(root))
		if !errdefs.IsInvalidArgument(err) {
			t.Fatalf("Apply = %v", err)
		}
	})
}

// lyingStore answers every read with the same data, whatever the digest.
type lyingStore struct {
	*memStore
	data []byte
}

func (l *lyingStore) ReaderAt(context.Context, ocispec.Descriptor) (content.ReaderAt, error) {
	return memReader{bytes.NewReader(l.data)}, nil
}

// blobTar decompresses a layer blob and lists its entry names.
func blobTar(t *testing.T, s *memStore, desc ocispec.Descriptor) (names []string, diffID digest.Digest) {
	t.Helper()
	c, err := compression.FromMediaType(desc.MediaType)
	if err != nil {
		t.Fatal(err)
	}
	rc, _, err := compression.Decompress(bytes.NewReader(s.blobs[desc.Digest]), c)
	if err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
	}
	return names, digest.FromBytes(data)
}

func TestCompareThenApplyReproducesTheTree(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	s := newMemStore()
	d := New(s, s)
	descs, _ := layers(t, s, ocispec.MediaTypeImageLayer, func(_ testing.TB, b []byte) []byte { return b })
	applyAll := func(t *testing.T, ms []*types.Mount, descs ...ocispec.Descriptor) {
		t.Helper()
		for i, desc := range descs {
			if _, err := d.Apply(ctx, desc, ms); err != nil {
				t.Fatalf("layer %d: %v", i, err)
			}
		}
	}
	// roundTrip applies the base layer and then the new one onto a fresh
	// directory and checks the result.
	roundTrip := func(t *testing.T, desc ocispec.Descriptor) {
		t.Helper()
		dir := lt.TempDir(t, "rt-")
		applyAll(t, bind(dir), descs[0], desc)
		checkWhiteoutTree(t, dir)
	}

	for _, c := range compressions[:3] {
		t.Run(c.name+" layer from two directories, compared file by file", func(t *testing.T) {
			lower, upper := lt.TempDir(t, "lo-"), lt.TempDir(t, "up-")
			applyAll(t, bind(lower), descs[0])
			applyAll(t, bind(upper), descs...)
			desc, err := d.Compare(ctx, bind(lower), bind(upper), WithMediaType(c.mediaType), WithLabels(map[string]string{"x": "y"}))
			if err != nil {
				t.Fatal(err)
			}
			if desc.MediaType != c.mediaType || s.blobs[desc.Digest] == nil || int64(len(s.blobs[desc.Digest])) != desc.Size {
				t.Fatalf("Compare returned %+v, not a stored blob", desc)
			}
			names, diffID := blobTar(t, s, desc)
			labels := s.labels[desc.Digest]
			if labels["x"] != "y" {
				t.Errorf("labels %v lack the requested ones", labels)
			}
			if want := diffID.String(); c.name != "none" && labels[UncompressedLabel] != want {
				t.Errorf("label %s = %q, want %s", UncompressedLabel, labels[UncompressedLabel], want)
			}
			for _, want := range []string{"data/.wh.a.txt", ".wh.gone", "opaque/.wh.old1", "bin/tool", "usr/bin/app-alias"} {
				if !strings.Contains(strings.Join(names, "\n")+"\n", want+"\n") {
					t.Errorf("layer lacks %s: %v", want, names)
				}
			}
			roundTrip(t, desc)
		})
	}

	t.Run("layer from an overlay stacked on its lower is its upper directory, with an opaque entry", func(t *testing.T) {
		base := lt.TempDir(t, "ol-")
		fs1, _ := snapshotDirs(t, base, "1")
		fs2, work2 := snapshotDirs(t, base, "2")
		applyAll(t, bind(fs1), descs[0])
		applyAll(t, overlay(fs2, work2, fs1), descs[1:]...)
		desc, err := d.Compare(ctx, bind(fs1), overlay(fs2, work2, fs1))
		if err != nil {
			t.Fatal(err)
		}
		names, _ := blobTar(t, s, desc)
		if !strings.Contains(strings.Join(names, "\n"), "opaque/.wh..wh..opq") {
			t.Errorf("layer has no opaque entry, so it was not read from the upper directory: %v", names)
		}
		roundTrip(t, desc)
	})

	t.Run("layer from an overlay over other lowers is compared through read-only mounts", func(t *testing.T) {
		base := lt.TempDir(t, "om-")
		fs1, _ := snapshotDirs(t, base, "1")
		fs2, work2 := snapshotDirs(t, base, "2")
		applyAll(t, bind(fs1), descs[0])
		applyAll(t, overlay(fs2, work2, fs1), descs[1:]...)
		other := lt.TempDir(t, "ot-")
		applyAll(t, bind(other), descs[0])
		desc, err := d.Compare(ctx, bind(other), overlay(fs2, work2, fs1))
		if err != nil {
			t.Fatal(err)
		}
		names, _ := blobTar(t, s, desc)
		if strings.Contains(strings.Join(names, "\n"), ".wh..wh..opq") {
			t.Errorf("layer has an opaque entry, so it was read from the upper directory: %v", names)
		}
		if m := lt.MountsUnder(os.TempDir()); len(m) != 0 {
			for _, p := range m {
				if strings.Contains(p, "flotilla-diff-") {
					t.Errorf("mount left: %s", p)
				}
			}
		}
		roundTrip(t, desc)
	})

	t.Run("the same comparison twice returns the stored blob", func(t *testing.T) {
		lower, upper := lt.TempDir(t, "lo-"), lt.TempDir(t, "up-")
		applyAll(t, bind(upper), descs[0])
		d1, err1 := d.Compare(ctx, bind(lower), bind(upper))
		d2, err2 := d.Compare(ctx, bind(lower), bind(upper))
		if err1 != nil || err2 != nil || d1.Digest != d2.Digest {
			t.Fatalf("Compare twice: %v %v, %v %v", d1, err1, d2, err2)
		}
	})

	t.Run("an unknown media type is NotImplemented", func(t *testing.T) {
		dir := lt.TempDir(t, "mt-")
		if _, err := d.Compare(ctx, nil, bind(dir), WithMediaType("text/plain")); !errdefs.IsNotImplemented(err) {
			t.Fatalf("Compare = %v", err)
		}
	})
}
