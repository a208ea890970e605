package content

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"os"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/flotilla/flotilla/services/dial"
	"github.com/flotilla/flotilla/services/namespace"
)

// TestRemoteAgainstContentd runs against a real contentd at
// $FLOTILLA_CONTENTD (a socket path); the diff service's tests cover the
// protocol with an in-process fake.
func TestRemoteAgainstContentd(t *testing.T) {
	addr := os.Getenv("FLOTILLA_CONTENTD")
	if addr == "" {
		t.Skip("FLOTILLA_CONTENTD is not set")
	}
	conn, err := dial.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	r := NewRemote(conn)
	ctx := namespace.WithNamespace(context.Background(), "difftest")
	data := make([]byte, 3<<20+123)
	rand.Read(data)
	dg := digest.FromBytes(data)

	t.Run("a written and committed blob reads back whole and at offsets", func(t *testing.T) {
		w, err := r.Writer(ctx, "difftest-"+dg.Encoded())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(data); err != nil {
			t.Fatal(err)
		}
		if err := w.Commit(ctx, int64(len(data)), dg, map[string]string{"containerd.io/gc.root": "x"}); err != nil && !errdefs.IsAlreadyExists(err) {
			t.Fatal(err)
		}
		ra, err := r.ReaderAt(ctx, ocispec.Descriptor{Digest: dg})
		if err != nil {
			t.Fatal(err)
		}
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
	})
	t.Run("a commit with the wrong digest is FailedPrecondition", func(t *testing.T) {
		w, err := r.Writer(ctx, "difftest-wrong")
		if err != nil {
			t.Fatal(err)
		}
		w.Write([]byte("abc"))
		if err := w.Commit(ctx, 3, digest.FromString("abd"), nil); !errdefs.IsFailedPrecondition(err) {
			t.Fatalf("Commit = %v", err)
		}
	})
	t.Run("a missing blob is NotFound", func(t *testing.T) {
		if _, err := r.ReaderAt(ctx, ocispec.Descriptor{Digest: digest.FromString("missing")}); !errdefs.IsNotFound(err) {
			t.Fatalf("ReaderAt = %v", err)
		}
	})
}
