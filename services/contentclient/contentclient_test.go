package contentclient

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	api "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/flotilla/flotilla/services/config"
	"github.com/flotilla/flotilla/services/dial"
	"github.com/flotilla/flotilla/services/namespace"
	"github.com/flotilla/flotilla/services/server"
)

// stored is what the fake keeps of a committed blob.
type stored struct {
	data      []byte
	labels    map[string]string
	namespace string
	lease     string
}

// fakeContent is an in-memory Content service with just enough of Info,
// Read and Write for the client: one ingest per Write stream, where a
// message at offset 0 starts over and any other must continue where the
// ingest is; COMMIT checks total and expected; an existing digest is
// AlreadyExists. Blobs are kept per namespace.
type fakeContent struct {
	api.UnimplementedContentServer
	mu      sync.Mutex
	blobs   map[string]stored // namespace "/" digest
	commits int
	largest int // most data one Write message carried
}

func (f *fakeContent) lookup(ctx context.Context, dgst string) (stored, error) {
	ns, err := namespace.Required(ctx)
	if err != nil {
		return stored{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	b, ok := f.blobs[ns+"/"+dgst]
	if !ok {
		return stored{}, fmt.Errorf("content %s: %w", dgst, errdefs.ErrNotFound)
	}
	return b, nil
}

func (f *fakeContent) Info(ctx context.Context, req *api.InfoRequest) (*api.InfoResponse, error) {
	b, err := f.lookup(ctx, req.GetDigest())
	if err != nil {
		return nil, err
	}
	return &api.InfoResponse{Info: &api.Info{Digest: req.GetDigest(), Size: int64(len(b.data)), Labels: b.labels}}, nil
}

// Read answers in 1000-byte messages, so a read spans several.
func (f *fakeContent) Read(req *api.ReadContentRequest, stream api.Content_ReadServer) error {
	b, err := f.lookup(stream.Context(), req.GetDigest())
	if err != nil {
		return err
	}
	end := int64(len(b.data))
	if req.GetSize() > 0 {
		end = min(end, req.GetOffset()+req.GetSize())
	}
	for off := req.GetOffset(); off < end; off += 1000 {
		if err := stream.Send(&api.ReadContentResponse{Offset: off, Data: b.data[off:min(end, off+1000)]}); err != nil {
			return err
		}
	}
	return nil
}

func (f *fakeContent) Write(stream api.Content_WriteServer) error {
	ctx := stream.Context()
	ns, err := namespace.Required(ctx)
	if err != nil {
		return err
	}
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
		switch {
		case req.GetRef() == "":
			return fmt.Errorf("no ref: %w", errdefs.ErrInvalidArgument)
		case req.GetOffset() == 0:
			data = nil
		case req.GetOffset() != int64(len(data)):
			return fmt.Errorf("offset %d, at %d: %w", req.GetOffset(), len(data), errdefs.ErrOutOfRange)
		}
		data = append(data, req.GetData()...)
		f.mu.Lock()
		f.largest = max(f.largest, len(req.GetData()))
		f.mu.Unlock()
		if req.GetAction() == api.WriteAction_COMMIT {
			dgst := digest.FromBytes(data)
			if req.GetTotal() != int64(len(data)) || req.GetExpected() != dgst.String() {
				return fmt.Errorf("commit %d bytes %s, expected %d %s: %w",
					len(data), dgst, req.GetTotal(), req.GetExpected(), errdefs.ErrFailedPrecondition)
			}
			f.mu.Lock()
			f.commits++
			key := ns + "/" + dgst.String()
			_, exists := f.blobs[key]
			if !exists {
				f.blobs[key] = stored{data: data, labels: req.GetLabels(), namespace: ns, lease: lease}
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

// serve runs fake on a unix socket with the kit's server and returns a
// Client over a dial.Dial connection to it.
func serve(t *testing.T, fake *fakeContent) *Client {
	t.Helper()
	// Not t.TempDir: a unix socket path must stay short.
	dir, err := os.MkdirTemp("", "cc")
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
	return New(conn)
}

func newFake() *fakeContent { return &fakeContent{blobs: map[string]stored{}} }

// testRoundTrip holds the cases any Content service must pass, the fake
// or a real contentd.
func testRoundTrip(t *testing.T, c *Client, ctx context.Context) {
	data := make([]byte, 3*ChunkSize+123)
	rand.Read(data)
	dg := digest.FromBytes(data)

	t.Run("a written and committed blob reads back whole and at offsets", func(t *testing.T) {
		w, err := c.Writer(ctx, "cctest-"+dg.Encoded())
		if err != nil {
			t.Fatal(err)
		}
		if n, err := w.Write(data); err != nil || n != len(data) {
			t.Fatalf("Write = %d, %v", n, err)
		}
		if err := w.Commit(ctx, int64(len(data)), dg, map[string]string{"containerd.io/gc.root": "x"}); err != nil && !errdefs.IsAlreadyExists(err) {
			t.Fatal(err)
		}
		ra, err := c.ReaderAt(ctx, ocispec.Descriptor{Digest: dg})
		if err != nil {
			t.Fatal(err)
		}
		defer ra.Close()
		if ra.Size() != int64(len(data)) {
			t.Fatalf("size %d", ra.Size())
		}
		got, err := io.ReadAll(io.NewSectionReader(ra, 0, ra.Size()))
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("read back differs (%v)", err)
		}
		p := make([]byte, 1000)
		if n, err := ra.ReadAt(p, int64(len(data))-500); n != 500 || err != io.EOF || !bytes.Equal(p[:n], data[len(data)-500:]) {
			t.Fatalf("ReadAt at the end = %d, %v", n, err)
		}
		if n, err := ra.ReadAt(p, int64(len(data))); n != 0 || err != io.EOF {
			t.Fatalf("ReadAt past the end = %d, %v", n, err)
		}
	})
	t.Run("Reader streams the blob in order across messages, in small reads too", func(t *testing.T) {
		r, err := c.Reader(ctx, dg)
		if err != nil {
			t.Fatal(err)
		}
		var got []byte
		p := make([]byte, 777) // not a divisor of any message size
		for {
			n, err := r.Read(p)
			got = append(got, p[:n]...)
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("Reader returned %d bytes that differ from the %d written", len(got), len(data))
		}
		// Closed halfway, it gives its message back and reads no more.
		r, err = c.Reader(ctx, dg)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(r, p); err != nil {
			t.Fatal(err)
		}
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("a commit with the wrong digest is FailedPrecondition", func(t *testing.T) {
		w, err := c.Writer(ctx, "cctest-wrong")
		if err != nil {
			t.Fatal(err)
		}
		w.Write([]byte("abc"))
		if err := w.Commit(ctx, 3, digest.FromString("abd"), nil); !errdefs.IsFailedPrecondition(err) {
			t.Fatalf("Commit = %v", err)
		}
	})
	t.Run("a missing blob is NotFound", func(t *testing.T) {
		if _, err := c.ReaderAt(ctx, ocispec.Descriptor{Digest: digest.FromString("missing")}); !errdefs.IsNotFound(err) {
			t.Fatalf("ReaderAt = %v", err)
		}
	})
}

func TestClient(t *testing.T) {
	fake := newFake()
	testRoundTrip(t, serve(t, fake), namespace.WithNamespace(context.Background(), "cctest"))
	t.Run("writes go out in messages of at most ChunkSize bytes", func(t *testing.T) {
		fake.mu.Lock()
		defer fake.mu.Unlock()
		if fake.largest != ChunkSize {
			t.Errorf("largest Write message %d bytes, want %d", fake.largest, ChunkSize)
		}
	})
}

// TestClientAgainstContentd runs the same cases against a real contentd
// at $FLOTILLA_CONTENTD (a socket path).
func TestClientAgainstContentd(t *testing.T) {
	addr := os.Getenv("FLOTILLA_CONTENTD")
	if addr == "" {
		t.Skip("FLOTILLA_CONTENTD is not set")
	}
	conn, err := dial.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	testRoundTrip(t, New(conn), namespace.WithNamespace(context.Background(), "cctest"))
}

func TestWriterCommit(t *testing.T) {
	tests := []struct {
		name     string
		size     int64
		expected func(data []byte) digest.Digest
		want     func(error) bool
	}{
		{"the right size and digest commits", 5, digest.FromBytes, func(err error) bool { return err == nil }},
		{"a wrong digest is FailedPrecondition", 5, func([]byte) digest.Digest { return digest.FromString("other") }, errdefs.IsFailedPrecondition},
		{"a size other than what was written is FailedPrecondition", 4, digest.FromBytes, errdefs.IsFailedPrecondition},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake := newFake()
			c := serve(t, fake)
			ctx := namespace.WithNamespace(context.Background(), "ns1")
			w, err := c.Writer(ctx, "ref")
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close()
			data := []byte("hello")
			if _, err := w.Write(data); err != nil {
				t.Fatal(err)
			}
			err = w.Commit(ctx, tt.size, tt.expected(data), nil)
			if !tt.want(err) {
				t.Fatalf("commit: %v", err)
			}
			fake.mu.Lock()
			defer fake.mu.Unlock()
			if stored := len(fake.blobs) == 1; stored != (err == nil) {
				t.Errorf("blob stored %v after commit error %v", stored, err)
			}
		})
	}

	t.Run("the blob lands under the caller's namespace and lease, with the labels", func(t *testing.T) {
		fake := newFake()
		c := serve(t, fake)
		ctx := namespace.WithLease(namespace.WithNamespace(context.Background(), "ns1"), "lease-1")
		w, err := c.Writer(ctx, "ref")
		if err != nil {
			t.Fatal(err)
		}
		w.Write([]byte("hello"))
		if err := w.Commit(ctx, 5, digest.FromString("hello"), map[string]string{"a": "b"}); err != nil {
			t.Fatal(err)
		}
		b, err := fake.lookup(ctx, digest.FromString("hello").String())
		if err != nil {
			t.Fatal(err)
		}
		if b.namespace != "ns1" || b.lease != "lease-1" || b.labels["a"] != "b" {
			t.Errorf("stored in namespace %q lease %q labels %v, want ns1, lease-1, a=b", b.namespace, b.lease, b.labels)
		}
	})

	t.Run("a blob already stored is AlreadyExists, returned as it is", func(t *testing.T) {
		fake := newFake()
		c := serve(t, fake)
		ctx := namespace.WithNamespace(context.Background(), "ns1")
		for i, want := range []func(error) bool{func(err error) bool { return err == nil }, errdefs.IsAlreadyExists} {
			w, err := c.Writer(ctx, "ref")
			if err != nil {
				t.Fatal(err)
			}
			w.Write([]byte("hello"))
			if err := w.Commit(ctx, 5, digest.FromString("hello"), nil); !want(err) {
				t.Fatalf("commit %d: %v", i, err)
			}
		}
		if fake.commits != 2 {
			t.Errorf("%d commits, want 2", fake.commits)
		}
	})

	t.Run("a Writer the store refuses from the start is an error", func(t *testing.T) {
		c := serve(t, newFake())
		// The fake requires a namespace: the first message fails.
		if _, err := c.Writer(context.Background(), "ref"); err == nil {
			t.Fatal("Writer without a namespace succeeded")
		}
	})
}
