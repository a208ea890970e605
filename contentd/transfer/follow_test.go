package transfer

import (
	"bytes"
	"context"
	"errors"
	"io"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"github.com/flotilla/flotilla/contentd/content"
	"github.com/flotilla/flotilla/contentd/content/store"
	"github.com/flotilla/flotilla/contentd/metadata"
	"github.com/flotilla/flotilla/services/namespace"
)

func newTestStore(t *testing.T) content.Store {
	t.Helper()
	db, err := metadata.Open(filepath.Join(t.TempDir(), "meta.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	s, err := store.New(filepath.Join(t.TempDir(), "content"), db)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// fakeDownload writes data as a download would, in parts, telling f.
type fakeDownload struct {
	t    *testing.T
	f    *fetcher
	w    content.Writer
	dl   *download
	dgst digest.Digest
	size int64
}

func startFakeDownload(t *testing.T, ctx context.Context, f *fetcher, data []byte) *fakeDownload {
	t.Helper()
	dgst := digest.FromBytes(data)
	w, err := f.store.Writer(ctx, "fetch-"+dgst.String(), int64(len(data)), dgst)
	if err != nil {
		t.Fatal(err)
	}
	return &fakeDownload{t: t, f: f, w: w, dl: f.started(ctx, dgst, "fetch-"+dgst.String(), 0), dgst: dgst, size: int64(len(data))}
}

func (d *fakeDownload) write(p []byte) {
	d.t.Helper()
	if _, err := d.w.Write(p); err != nil {
		d.t.Fatal(err)
	}
	d.f.progressed(d.dl, d.w.Status().Offset)
}

func (d *fakeDownload) commit(ctx context.Context) {
	d.t.Helper()
	err := d.w.Commit(ctx, d.size, d.dgst, nil)
	d.f.ended(d.dgst, d.dl, err)
	if err != nil {
		d.t.Fatal(err)
	}
}

// readUntil reads from r until it has n bytes, failing after a while.
func readUntil(t *testing.T, r io.Reader, n int) []byte {
	t.Helper()
	got := make([]byte, n)
	done := make(chan error, 1)
	go func() { _, err := io.ReadFull(r, got); done <- err }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("no %d bytes from the follower", n)
	}
	return got
}

func TestFollow(t *testing.T) {
	ctx := namespace.WithNamespace(context.Background(), "ns")
	data := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	dgst := digest.FromBytes(data)

	t.Run("reads the bytes as they are written, then ends at the blob's end", func(t *testing.T) {
		f := newFetcher(newTestStore(t), 0, 0)
		defer f.want(ctx, dgst)()
		r, err := f.Follow(ctx, dgst, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		d := startFakeDownload(t, ctx, f, data)
		half := len(data) / 2
		d.write(data[:half])
		if got := readUntil(t, r, half); !bytes.Equal(got, data[:half]) {
			t.Fatal("first half differs")
		}
		d.write(data[half:])
		if got := readUntil(t, r, len(data)-half); !bytes.Equal(got, data[half:]) {
			t.Fatal("second half differs")
		}
		d.commit(ctx)
		if n, err := r.Read(make([]byte, 10)); n != 0 || err != io.EOF {
			t.Fatalf("after the end: %d, %v; want 0, EOF", n, err)
		}
	})

	t.Run("waits for a download that has not started, and reads from an offset", func(t *testing.T) {
		f := newFetcher(newTestStore(t), 0, 0)
		defer f.want(ctx, dgst)()
		r, err := f.Follow(ctx, dgst, 100)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		got := make(chan []byte, 1)
		go func() { b, _ := io.ReadAll(r); got <- b }()
		d := startFakeDownload(t, ctx, f, data)
		d.write(data)
		d.commit(ctx)
		select {
		case b := <-got:
			if !bytes.Equal(b, data[100:]) {
				t.Fatalf("read %d bytes, want the %d from offset 100", len(b), len(data)-100)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("follower did not end")
		}
	})

	t.Run("a failed download fails the reader", func(t *testing.T) {
		f := newFetcher(newTestStore(t), 0, 0)
		defer f.want(ctx, dgst)()
		r, err := f.Follow(ctx, dgst, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		d := startFakeDownload(t, ctx, f, data)
		d.write(data[:10])
		readUntil(t, r, 10)
		cause := errors.New("registry went away")
		d.w.Close()
		f.ended(dgst, d.dl, cause)
		if _, err := r.Read(make([]byte, 10)); !errors.Is(err, cause) {
			t.Fatalf("read after the failure: %v, want %v", err, cause)
		}
	})

	t.Run("a committed blob is read from the store", func(t *testing.T) {
		f := newFetcher(newTestStore(t), 0, 0)
		d := startFakeDownload(t, ctx, f, data)
		d.write(data)
		d.commit(ctx)
		r, err := f.Follow(ctx, dgst, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		if b, err := io.ReadAll(r); err != nil || !bytes.Equal(b, data) {
			t.Fatalf("read %d bytes, %v", len(b), err)
		}
	})

	t.Run("a blob nobody fetches for the namespace is NotFound", func(t *testing.T) {
		f := newFetcher(newTestStore(t), 0, 0)
		defer f.want(namespace.WithNamespace(ctx, "other"), dgst)()
		r, err := f.Follow(ctx, dgst, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		if _, err := r.Read(make([]byte, 10)); !errdefs.IsNotFound(err) {
			t.Fatalf("read: %v, want NotFound", err)
		}
	})
}
