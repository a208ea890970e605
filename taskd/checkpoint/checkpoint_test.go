package checkpoint

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	api "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/flotilla/flotilla/services/config"
	"github.com/flotilla/flotilla/services/dial"
	"github.com/flotilla/flotilla/services/namespace"
	"github.com/flotilla/flotilla/services/server"
)

// blob is what the fake store keeps of a committed blob.
type blob struct {
	data      []byte
	namespace string
	lease     string
}

// fakeContent is an in-memory Content service implementing just enough of
// Write: one ingest per stream, WRITE appends at the current offset,
// COMMIT checks total and expected, and an existing digest is
// AlreadyExists.
type fakeContent struct {
	api.UnimplementedContentServer
	mu      sync.Mutex
	blobs   map[digest.Digest]blob
	commits int
}

func (f *fakeContent) Write(stream api.Content_WriteServer) error {
	ctx := stream.Context()
	ns, _ := namespace.FromContext(ctx)
	lease, _ := namespace.LeaseFromContext(ctx)
	var data []byte
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if req.GetRef() == "" {
			return fmt.Errorf("no ref: %w", errdefs.ErrInvalidArgument)
		}
		if req.GetOffset() != int64(len(data)) && req.GetOffset() != 0 {
			return fmt.Errorf("offset %d, at %d: %w", req.GetOffset(), len(data), errdefs.ErrOutOfRange)
		}
		if req.GetOffset() == 0 {
			data = nil
		}
		data = append(data, req.GetData()...)
		if req.GetAction() == api.WriteAction_COMMIT {
			dgst := digest.FromBytes(data)
			if req.GetTotal() != int64(len(data)) || req.GetExpected() != dgst.String() {
				return fmt.Errorf("commit %d bytes %s, expected %d %s: %w",
					len(data), dgst, req.GetTotal(), req.GetExpected(), errdefs.ErrFailedPrecondition)
			}
			f.mu.Lock()
			f.commits++
			_, exists := f.blobs[dgst]
			if !exists {
				f.blobs[dgst] = blob{data: data, namespace: ns, lease: lease}
			}
			f.mu.Unlock()
			if exists {
				return fmt.Errorf("content %s: %w", dgst, errdefs.ErrAlreadyExists)
			}
		}
		if err := stream.Send(&api.WriteContentResponse{Action: req.GetAction(), Offset: int64(len(data))}); err != nil {
			return err
		}
	}
}

func (f *fakeContent) blob(t *testing.T, dgst string) blob {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	b, ok := f.blobs[digest.Digest(dgst)]
	if !ok {
		t.Fatalf("no blob %s in the store", dgst)
	}
	return b
}

// serve runs fake on a unix socket with the kit's server and returns a
// Remote over a dial.Dial connection to it.
func serve(t *testing.T, fake *fakeContent) *Remote {
	t.Helper()
	dir, err := os.MkdirTemp("", "ckpt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "c.sock")
	srv := server.New("test", config.Common{Address: sock, ShutdownTimeout: config.Duration(time.Second)},
		slog.New(slog.DiscardHandler))
	api.RegisterContentServer(srv.GRPC(), fake)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	for i := 0; ; i++ {
		c, err := net.Dial("unix", sock)
		if err == nil {
			c.Close()
			break
		}
		if i == 500 {
			t.Fatalf("nothing serves on %s: %v", sock, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	conn, err := dial.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return NewRemote(conn)
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
		fake := &fakeContent{blobs: map[digest.Digest]blob{}}
		remote := serve(t, fake)
		dir := criuDir(t, files)
		ctx := namespace.WithLease(namespace.WithNamespace(context.Background(), "ns1"), "lease-1")

		descs, err := Store(ctx, remote, "checkpoint-c1", dir, testSpec())
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
		fake := &fakeContent{blobs: map[digest.Digest]blob{}}
		remote := serve(t, fake)
		dir := criuDir(t, map[string][]byte{"inventory.img": []byte("x")})
		ctx := namespace.WithNamespace(context.Background(), "ns1")
		first, err := Store(ctx, remote, "a", dir, testSpec())
		if err != nil {
			t.Fatal(err)
		}
		second, err := Store(ctx, remote, "b", dir, testSpec())
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
		fake := &fakeContent{blobs: map[digest.Digest]blob{}}
		remote := serve(t, fake)
		ctx := namespace.WithNamespace(context.Background(), "ns1")
		if _, err := Store(ctx, remote, "a", filepath.Join(t.TempDir(), "gone"), testSpec()); err == nil {
			t.Fatal("store of a missing directory succeeded")
		}
		fake.mu.Lock()
		defer fake.mu.Unlock()
		if len(fake.blobs) != 0 {
			t.Errorf("%d blobs stored, want none", len(fake.blobs))
		}
	})

	t.Run("a container without a spec is InvalidArgument", func(t *testing.T) {
		fake := &fakeContent{blobs: map[digest.Digest]blob{}}
		remote := serve(t, fake)
		ctx := namespace.WithNamespace(context.Background(), "ns1")
		if _, err := Store(ctx, remote, "a", criuDir(t, nil), nil); !errdefs.IsInvalidArgument(err) {
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
