package checkpoint

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/flotilla/flotilla/services/namespace"
)

// blob is what the fake store keeps of a committed blob.
type blob struct {
	data      []byte
	namespace string
	lease     string
}

// memIngester keeps blobs in memory, with the contract of Ingester: Commit
// checks size and digest (FailedPrecondition) and answers AlreadyExists for
// a digest it has. What crosses the wire to contentd is tested with the
// real client in services/contentclient.
type memIngester struct {
	mu      sync.Mutex
	blobs   map[digest.Digest]blob
	commits int
}

func (m *memIngester) Writer(ctx context.Context, ref string) (Writer, error) {
	if ref == "" {
		return nil, fmt.Errorf("no ref: %w", errdefs.ErrInvalidArgument)
	}
	ns, _ := namespace.FromContext(ctx)
	lease, _ := namespace.LeaseFromContext(ctx)
	return &memWriter{m: m, ns: ns, lease: lease}, nil
}

type memWriter struct {
	m         *memIngester
	ns, lease string
	data      bytes.Buffer
}

func (w *memWriter) Write(p []byte) (int, error) { return w.data.Write(p) }

func (w *memWriter) Commit(_ context.Context, size int64, expected digest.Digest) error {
	data := w.data.Bytes()
	dgst := digest.FromBytes(data)
	if size != int64(len(data)) || expected != dgst {
		return fmt.Errorf("commit %d bytes %s, expected %d %s: %w", len(data), dgst, size, expected, errdefs.ErrFailedPrecondition)
	}
	w.m.mu.Lock()
	defer w.m.mu.Unlock()
	w.m.commits++
	if _, exists := w.m.blobs[dgst]; exists {
		return fmt.Errorf("content %s: %w", dgst, errdefs.ErrAlreadyExists)
	}
	w.m.blobs[dgst] = blob{data: data, namespace: w.ns, lease: w.lease}
	return nil
}

func (w *memWriter) Close() error { return nil }

func (m *memIngester) blob(t *testing.T, dgst string) blob {
	t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	b, ok := m.blobs[digest.Digest(dgst)]
	if !ok {
		t.Fatalf("no blob %s in the store", dgst)
	}
	return b
}

// criuDir makes a directory shaped like a CRIU image directory.
func criuDir(t *testing.T, files map[string][]byte) string {
	t.Helper()
	dir := t.TempDir()
	for name, data := range files {
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// untar returns the tar's entries: name to content ("" for directories),
// and their names in archive order.
func untar(t *testing.T, data []byte) (map[string]string, []string) {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(data))
	entries := map[string]string{}
	var order []string
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return entries, order
		}
		if err != nil {
			t.Fatalf("read tar: %v", err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if hdr.Typeflag == tar.TypeSymlink {
			b = []byte("-> " + hdr.Linkname)
		}
		entries[hdr.Name] = string(b)
		order = append(order, hdr.Name)
	}
}

func testSpec() *anypb.Any {
	return &anypb.Any{
		TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Spec",
		Value:   []byte(`{"ociVersion":"1.1.0","process":{"args":["sleep","inf"]}}`),
	}
}

func TestStore(t *testing.T) {
	big := bytes.Repeat([]byte("pages "), chunkSize/3) // two chunks and a bit
	files := map[string][]byte{
		"inventory.img":   []byte("inventory"),
		"pages-1.img":     big,
		"dump.log":        []byte("Dumping finished successfully\n"),
		"sub/core-42.img": []byte("core"),
	}

	t.Run("stores the image directory as a tar and the spec, under the caller's namespace and lease", func(t *testing.T) {
		fake := &memIngester{blobs: map[digest.Digest]blob{}}
		dir := criuDir(t, files)
		ctx := namespace.WithLease(namespace.WithNamespace(context.Background(), "ns1"), "lease-1")

		descs, err := Store(ctx, fake, "checkpoint-c1", dir, testSpec())
		if err != nil {
			t.Fatal(err)
		}
		if len(descs) != 2 {
			t.Fatalf("got %d descriptors, want 2", len(descs))
		}
		image, config := descs[0], descs[1]

		if image.MediaType != MediaTypeCheckpoint {
			t.Errorf("image media type %q, want %q", image.MediaType, MediaTypeCheckpoint)
		}
		b := fake.blob(t, image.Digest)
		if got := digest.FromBytes(b.data).String(); got != image.Digest || int64(len(b.data)) != image.Size {
			t.Errorf("image descriptor %s/%d, stored blob %s/%d", image.Digest, image.Size, got, len(b.data))
		}
		if b.namespace != "ns1" || b.lease != "lease-1" {
			t.Errorf("image stored in namespace %q lease %q, want ns1 lease-1", b.namespace, b.lease)
		}
		entries, order := untar(t, b.data)
		want := map[string]string{"sub/": ""}
		for name, data := range files {
			want[name] = string(data)
		}
		if len(entries) != len(want) {
			t.Errorf("tar has entries %q, want %d", order, len(want))
		}
		for name, data := range want {
			if got, ok := entries[name]; !ok || got != data {
				t.Errorf("tar entry %q: present %v, content matches %v", name, ok, got == data)
			}
		}
		if strings.Join(order, " ") != "dump.log inventory.img pages-1.img sub/ sub/core-42.img" {
			t.Errorf("tar order %q, want lexical with directories first", order)
		}

		if config.MediaType != MediaTypeConfig {
			t.Errorf("config media type %q, want %q", config.MediaType, MediaTypeConfig)
		}
		cb := fake.blob(t, config.Digest)
		if digest.FromBytes(cb.data).String() != config.Digest || int64(len(cb.data)) != config.Size {
			t.Errorf("config descriptor %s/%d does not match its blob", config.Digest, config.Size)
		}
		var spec anypb.Any
		if err := proto.Unmarshal(cb.data, &spec); err != nil {
			t.Fatalf("config blob is not a protobuf Any: %v", err)
		}
		if !proto.Equal(&spec, testSpec()) {
			t.Errorf("config blob holds %v, want the container's spec", &spec)
		}
		if cb.lease != "lease-1" {
			t.Errorf("config stored under lease %q, want lease-1", cb.lease)
		}
		for _, d := range descs {
			if d.Annotations == nil || len(d.Annotations) != 0 {
				t.Errorf("descriptor %s annotations %v, want empty", d.MediaType, d.Annotations)
			}
		}
	})

	t.Run("storing content that is already there succeeds with the same descriptors", func(t *testing.T) {
		fake := &memIngester{blobs: map[digest.Digest]blob{}}
		dir := criuDir(t, map[string][]byte{"inventory.img": []byte("x")})
		ctx := namespace.WithNamespace(context.Background(), "ns1")
		first, err := Store(ctx, fake, "a", dir, testSpec())
		if err != nil {
			t.Fatal(err)
		}
		second, err := Store(ctx, fake, "b", dir, testSpec())
		if err != nil {
			t.Fatalf("second store: %v", err)
		}
		for i := range first {
			if !proto.Equal(first[i], second[i]) {
				t.Errorf("descriptor %d: first %v, second %v", i, first[i], second[i])
			}
		}
		fake.mu.Lock()
		defer fake.mu.Unlock()
		if fake.commits != 4 || len(fake.blobs) != 2 {
			t.Errorf("%d commits and %d blobs, want 4 commits of 2 blobs", fake.commits, len(fake.blobs))
		}
	})

	t.Run("a missing image directory is an error and stores nothing", func(t *testing.T) {
		fake := &memIngester{blobs: map[digest.Digest]blob{}}
		ctx := namespace.WithNamespace(context.Background(), "ns1")
		if _, err := Store(ctx, fake, "a", filepath.Join(t.TempDir(), "gone"), testSpec()); err == nil {
			t.Fatal("store of a missing directory succeeded")
		}
		fake.mu.Lock()
		defer fake.mu.Unlock()
		if len(fake.blobs) != 0 {
			t.Errorf("%d blobs stored, want none", len(fake.blobs))
		}
	})

	t.Run("a container without a spec is InvalidArgument", func(t *testing.T) {
		fake := &memIngester{blobs: map[digest.Digest]blob{}}
		ctx := namespace.WithNamespace(context.Background(), "ns1")
		if _, err := Store(ctx, fake, "a", criuDir(t, nil), nil); !errdefs.IsInvalidArgument(err) {
			t.Fatalf("got %v, want InvalidArgument", err)
		}
	})
}

func TestWriteTar(t *testing.T) {
	t.Run("symbolic links are archived as links", func(t *testing.T) {
		dir := criuDir(t, map[string][]byte{"a.img": []byte("a")})
		if err := os.Symlink("a.img", filepath.Join(dir, "link")); err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		if err := WriteTar(&buf, dir); err != nil {
			t.Fatal(err)
		}
		entries, _ := untar(t, buf.Bytes())
		if entries["link"] != "-> a.img" || entries["a.img"] != "a" {
			t.Errorf("entries %q", entries)
		}
	})
	t.Run("a socket cannot be archived", func(t *testing.T) {
		dir, err := os.MkdirTemp("", "ckpt")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(dir)
		l, err := net.Listen("unix", filepath.Join(dir, "s"))
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		if err := WriteTar(io.Discard, dir); !errdefs.IsInvalidArgument(err) {
			t.Fatalf("got %v, want InvalidArgument", err)
		}
	})
}
