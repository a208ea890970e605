package handoff

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"github.com/flotilla/flotilla/contentd/content/store"
	"github.com/flotilla/flotilla/contentd/metadata"
	"github.com/flotilla/flotilla/services/contentclient"
	"github.com/flotilla/flotilla/services/namespace"
	"github.com/flotilla/flotilla/services/server"
)

// tailFunc is a Tailer of one test's making.
type tailFunc func(ctx context.Context, dgst digest.Digest, fn func(src io.ReaderAt, limit int64, whole bool) error) error

func (f tailFunc) Tail(ctx context.Context, dgst digest.Digest, fn func(src io.ReaderAt, limit int64, whole bool) error) error {
	return f(ctx, dgst, fn)
}

// serve starts a handoff server of a real content store with tailer, and
// returns the store and a client of the server.
func serve(t *testing.T, tailer Tailer) (*store.Store, *contentclient.Handoff, *Server) {
	t.Helper()
	dir := t.TempDir()
	db, err := metadata.Open(filepath.Join(dir, "meta.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	st, err := store.New(filepath.Join(dir, "content"), db)
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "contentd.sock"+contentclient.HandoffSuffix)
	l, err := server.ListenSeqpacket(sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(st, tailer, nil)
	go srv.Serve(l)
	t.Cleanup(func() { l.Close(); srv.Stop() })
	return st, contentclient.NewHandoff(sock), srv
}

func commit(t *testing.T, ctx context.Context, st *store.Store, data []byte) digest.Digest {
	t.Helper()
	dgst := digest.FromBytes(data)
	w, err := st.Writer(ctx, "ref-"+dgst.Encoded()[:8], int64(len(data)), dgst)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(ctx, int64(len(data)), dgst, nil); err != nil {
		t.Fatal(err)
	}
	return dgst
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func TestHandoffOfACommittedBlob(t *testing.T) {
	ctx := namespace.WithNamespace(context.Background(), "ns1")
	st, h, _ := serve(t, nil)
	data := randomBytes(3<<20 + 17)
	dgst := commit(t, ctx, st, data)

	rc, err := h.Open(ctx, dgst)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read %d bytes (%v), want the %d committed", len(got), err, len(data))
	}

	// Visible only in its namespace, as through Content.Read.
	other := namespace.WithNamespace(context.Background(), "ns2")
	if _, err := h.Open(other, dgst); !errdefs.IsNotFound(err) {
		t.Errorf("open in another namespace: %v, want NotFound", err)
	}
	if _, err := h.Open(ctx, digest.FromString("absent")); !errdefs.IsNotFound(err) {
		t.Errorf("open of a missing blob: %v, want NotFound", err)
	}
	if _, err := h.Open(ctx, digest.Digest("sha256:nothex")); !errdefs.IsInvalidArgument(err) {
		t.Errorf("open of a malformed digest: %v, want InvalidArgument", err)
	}
	if _, err := h.Open(namespace.WithNamespace(context.Background(), "bad/ns"), dgst); !errdefs.IsInvalidArgument(err) {
		t.Errorf("open in an invalid namespace: %v, want InvalidArgument", err)
	}
}

func TestHandoffWithoutAServerSaysSo(t *testing.T) {
	ctx := namespace.WithNamespace(context.Background(), "ns1")
	h := contentclient.NewHandoff(filepath.Join(t.TempDir(), "none.sock.handoff"))
	if _, err := h.Open(ctx, digest.FromString("x")); !errors.Is(err, contentclient.ErrNoHandoff) {
		t.Fatalf("open with nothing serving: %v, want ErrNoHandoff", err)
	}
}

// TestHandoffFollowsAGrowingBlob hands over a blob as a download would: the
// bytes arrive in steps in one file, then a second download's file takes
// over (a retry), then the blob is whole.
func TestHandoffFollowsAGrowingBlob(t *testing.T) {
	data := randomBytes(1 << 20)
	dir := t.TempDir()
	first, second := filepath.Join(dir, "first"), filepath.Join(dir, "second")
	if err := os.WriteFile(first, data[:600<<10], 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(second, data, 0o600); err != nil {
		t.Fatal(err)
	}
	step := make(chan struct{})
	tailer := tailFunc(func(ctx context.Context, dgst digest.Digest, fn func(io.ReaderAt, int64, bool) error) error {
		if dgst != digest.FromBytes(data) {
			return fmt.Errorf("tail %s: %w", dgst, errdefs.ErrNotFound)
		}
		f1, _ := os.Open(first)
		defer f1.Close()
		f2, _ := os.Open(second)
		defer f2.Close()
		for _, s := range []struct {
			src   io.ReaderAt
			limit int64
			whole bool
		}{{f1, 100 << 10, false}, {f1, 600 << 10, false}, {f2, 900 << 10, false}, {f2, 1 << 20, true}} {
			select {
			case <-step: // the reader has caught up
			case <-ctx.Done():
				return ctx.Err()
			}
			if err := fn(s.src, s.limit, s.whole); err != nil {
				return err
			}
		}
		return nil
	})
	_, h, _ := serve(t, tailer)
	ctx := contentclient.WithFollow(namespace.WithNamespace(context.Background(), "ns1"))

	opened := make(chan io.ReadCloser, 1)
	go func() {
		rc, err := h.Open(ctx, digest.FromBytes(data))
		if err != nil {
			t.Error(err)
			close(opened)
			return
		}
		opened <- rc
	}()
	step <- struct{}{}
	rc, ok := <-opened
	if !ok {
		return
	}
	defer rc.Close()
	var got bytes.Buffer
	buf := make([]byte, 64<<10)
	for _, upto := range []int{100 << 10, 600 << 10, 900 << 10, 1 << 20} {
		for got.Len() < upto {
			n, err := rc.Read(buf)
			if err != nil {
				t.Fatalf("read at %d: %v", got.Len(), err)
			}
			got.Write(buf[:n])
		}
		if got.Len() != upto {
			t.Fatalf("read %d bytes, past the %d handed over", got.Len(), upto)
		}
		if upto < 1<<20 {
			step <- struct{}{}
		}
	}
	if n, err := rc.Read(buf); n != 0 || err != io.EOF {
		t.Fatalf("after the whole blob: %d, %v; want EOF", n, err)
	}
	if !bytes.Equal(got.Bytes(), data) {
		t.Fatal("bytes read differ from the blob's")
	}
}

// TestHandoffEndsWithTheDownload: a download that fails fails the reader
// with its kind; a reader that goes away ends the server's read.
func TestHandoffEndsWithTheDownload(t *testing.T) {
	dir := t.TempDir()
	part := filepath.Join(dir, "part")
	os.WriteFile(part, randomBytes(1000), 0o600)
	fail := make(chan struct{})
	ended := make(chan error, 1)
	var calls atomic.Int32
	tailer := tailFunc(func(ctx context.Context, dgst digest.Digest, fn func(io.ReaderAt, int64, bool) error) error {
		f, _ := os.Open(part)
		defer f.Close()
		if err := fn(f, 1000, false); err != nil {
			return err
		}
		if calls.Add(1) == 1 {
			<-fail
			return fmt.Errorf("registry sent wrong bytes: %w", errdefs.ErrFailedPrecondition)
		}
		<-ctx.Done()
		ended <- ctx.Err()
		return ctx.Err()
	})
	_, h, _ := serve(t, tailer)
	ctx := contentclient.WithFollow(namespace.WithNamespace(context.Background(), "ns1"))

	rc, err := h.Open(ctx, digest.FromString("blob"))
	if err != nil {
		t.Fatal(err)
	}
	close(fail)
	_, err = io.ReadAll(rc)
	rc.Close()
	if !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("read of a failed download: %v, want FailedPrecondition", err)
	}

	rc, err = h.Open(ctx, digest.FromString("blob"))
	if err != nil {
		t.Fatal(err)
	}
	rc.Close()
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Fatal("the server kept tailing after the reader closed")
	}
}
