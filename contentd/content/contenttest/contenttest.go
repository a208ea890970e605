// Package contenttest is the conformance suite of content.Store: every
// store, whether the one on disk, the Content service reached over gRPC or
// a remote client, must pass it, so that a defect in the contract is caught
// wherever it shows. It follows the cases of containerd's content test
// suite, with Flotilla's contract where the two differ (a commit of wrong
// bytes removes them, see content.Writer).
//
// Run(t, newStore) runs every case on a fresh store from newStore, which
// must clean up after itself (t.Cleanup). Contexts carry a namespace of
// their own per case, set with services/namespace.
package contenttest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"github.com/flotilla/flotilla/contentd/content"
	"github.com/flotilla/flotilla/services/namespace"
)

// Options tunes the suite to a store.
type Options struct {
	// Rounds is how often the cases that race two writers repeat; 0 means
	// 100.
	Rounds int
}

// Run runs the whole suite against stores made by newStore.
func Run(t *testing.T, newStore func(t *testing.T) content.Store, opts ...Options) {
	var o Options
	if len(opts) > 0 {
		o = opts[0]
	}
	if o.Rounds == 0 {
		o.Rounds = 100
	}
	cases := []struct {
		name string
		fn   func(t *testing.T, ctx context.Context, s content.Store, o Options)
	}{
		{"write and commit make a blob readable at any offset", checkWriteCommitRead},
		{"write does not keep the caller's buffer", checkBufferReuse},
		{"commit without an expected digest names the blob by its bytes", checkDigestOfBytes},
		{"status times fall within the calls that set them", checkStatusTimes},
		{"a closed ingest resumes where it stopped, times kept", checkResume},
		{"abort removes the ingest and a new writer starts at zero", checkAbort},
		{"commit with wrong size fails and keeps the ingest for a retry", checkWrongSize},
		{"commit with wrong digest fails and keeps the ingest for a retry", checkWrongDigest},
		{"commit of a blob the namespace has is AlreadyExists", checkCommitExists},
		{"a held ref is Unavailable to a second writer", checkRefLocked},
		{"a second writer on a ref just committed never sees the old ingest", checkCommitRace},
		{"concurrent writers on distinct refs all commit", checkConcurrentRefs},
		{"labels are validated, updated and filtered", checkLabels},
		{"walk lists the namespace's blobs with filters", checkWalk},
		{"list statuses filters by ref", checkListStatuses},
		{"blobs are visible per namespace", checkNamespaces},
		{"delete removes the blob", checkDelete},
		{"truncate to zero starts the ingest over", checkTruncate},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := newStore(t)
			ns := fmt.Sprintf("ct-%d", rand.Uint32())
			c.fn(t, namespace.WithNamespace(context.Background(), ns), s, o)
		})
	}
}

func blob(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rand.Uint32())
	}
	return b
}

func wantKind(t *testing.T, what string, err, kind error) {
	t.Helper()
	if !errors.Is(err, kind) {
		t.Fatalf("%s: error %v, want kind %v", what, err, kind)
	}
}

// write writes data under ref in one Write and commits it.
func write(ctx context.Context, s content.Store, ref string, data []byte, expected digest.Digest, labels map[string]string) error {
	w, err := s.Writer(ctx, ref, int64(len(data)), expected)
	if err != nil {
		return err
	}
	defer w.Close()
	if _, err := w.Write(data); err != nil {
		return err
	}
	return w.Commit(ctx, int64(len(data)), expected, labels)
}

func mustWrite(t *testing.T, ctx context.Context, s content.Store, ref string, data []byte, labels map[string]string) digest.Digest {
	t.Helper()
	dgst := digest.FromBytes(data)
	if err := write(ctx, s, ref, data, dgst, labels); err != nil {
		t.Fatalf("write %s: %v", ref, err)
	}
	return dgst
}

func readAt(t *testing.T, ctx context.Context, s content.Store, dgst digest.Digest, off, n int64) []byte {
	t.Helper()
	ra, err := s.ReaderAt(ctx, dgst)
	if err != nil {
		t.Fatalf("ReaderAt %s: %v", dgst, err)
	}
	defer ra.Close()
	p := make([]byte, n)
	k, err := ra.ReadAt(p, off)
	if err != nil && !(errors.Is(err, io.EOF) && int64(k) == n) {
		t.Fatalf("ReadAt(%d, %d) of %s: %d bytes, %v", off, n, dgst, k, err)
	}
	return p[:k]
}

func checkWriteCommitRead(t *testing.T, ctx context.Context, s content.Store, o Options) {
	data := blob(3<<20 + 17)
	labels := map[string]string{"containerd.io/gc.root": "now"}
	before := time.Now()
	dgst := mustWrite(t, ctx, s, "blob", data, labels)
	after := time.Now()
	info, err := s.Info(ctx, dgst)
	if err != nil {
		t.Fatal(err)
	}
	if info.Digest != dgst || info.Size != int64(len(data)) || info.Labels["containerd.io/gc.root"] != "now" {
		t.Errorf("Info = %+v", info)
	}
	if info.CreatedAt.Before(before) || info.CreatedAt.After(after) {
		t.Errorf("CreatedAt %s outside the commit's window [%s, %s]", info.CreatedAt, before, after)
	}
	ra, err := s.ReaderAt(ctx, dgst)
	if err != nil {
		t.Fatal(err)
	}
	if ra.Size() != int64(len(data)) {
		t.Errorf("reader size %d, want %d", ra.Size(), len(data))
	}
	ra.Close()
	for _, r := range []struct{ off, n int64 }{{0, 10}, {1 << 20, 1<<20 + 5}, {int64(len(data)) - 3, 3}, {0, int64(len(data))}} {
		if got := readAt(t, ctx, s, dgst, r.off, r.n); !bytes.Equal(got, data[r.off:r.off+r.n]) {
			t.Errorf("ReadAt(%d, %d) differs from what was written", r.off, r.n)
		}
	}
	if _, err := s.Status(ctx, "blob"); !errdefs.IsNotFound(err) {
		t.Errorf("Status after commit: %v, want NotFound", err)
	}
}

// checkBufferReuse writes the way io.CopyBuffer does, one buffer for every
// chunk, and overwrites the buffer as soon as each Write returns: what is
// hashed and stored must be what was written.
func checkBufferReuse(t *testing.T, ctx context.Context, s content.Store, o Options) {
	for _, size := range []int{32, 64 << 10, 1 << 20} {
		t.Run(fmt.Sprintf("buffer of %d bytes", size), func(t *testing.T) {
			data := blob(min(4<<20, 256*size) + 3)
			dgst := digest.FromBytes(data)
			w, err := s.Writer(ctx, fmt.Sprintf("reuse-%d", size), int64(len(data)), dgst)
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close()
			buf := make([]byte, size)
			for off := 0; off < len(data); {
				n := copy(buf, data[off:])
				if _, err := w.Write(buf[:n]); err != nil {
					t.Fatal(err)
				}
				for i := range buf {
					buf[i] = 0xa5
				}
				off += n
			}
			if got := w.Digest(); got != dgst {
				t.Fatalf("Digest %s, want %s", got, dgst)
			}
			if err := w.Commit(ctx, int64(len(data)), dgst, nil); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func checkDigestOfBytes(t *testing.T, ctx context.Context, s content.Store, o Options) {
	data := blob(1<<20 + 11)
	w, err := s.Writer(ctx, "nodigest", 0, "")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	buf := make([]byte, 512)
	if _, err := io.CopyBuffer(w, bytes.NewReader(data), buf); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(ctx, 0, "", nil); err != nil {
		t.Fatal(err)
	}
	dgst := digest.FromBytes(data)
	info, err := s.Info(ctx, dgst)
	if err != nil {
		t.Fatalf("blob not stored under the digest of its bytes: %v", err)
	}
	if info.Size != int64(len(data)) {
		t.Errorf("size %d, want %d", info.Size, len(data))
	}
	if got := readAt(t, ctx, s, dgst, 0, int64(len(data))); digest.FromBytes(got) != dgst {
		t.Error("blob's bytes do not hash to its name")
	}
}

// window is a span of time a call ran in.
type window struct{ from, to time.Time }

func (w window) has(t time.Time) bool { return !t.Before(w.from) && !t.After(w.to) }

func checkTimes(t *testing.T, what string, st content.Status, started, updated window) {
	t.Helper()
	if !started.has(st.StartedAt) {
		t.Errorf("%s: StartedAt %s outside [%s, %s]", what, st.StartedAt.Format(time.RFC3339Nano),
			started.from.Format(time.RFC3339Nano), started.to.Format(time.RFC3339Nano))
	}
	if !updated.has(st.UpdatedAt) {
		t.Errorf("%s: UpdatedAt %s outside [%s, %s]", what, st.UpdatedAt.Format(time.RFC3339Nano),
			updated.from.Format(time.RFC3339Nano), updated.to.Format(time.RFC3339Nano))
	}
}

// checkStatusTimes is containerd's UpdateStatus case: the start and each
// update are stamped within the call that made them, for the writer's
// Status and the store's alike.
func checkStatusTimes(t *testing.T, ctx context.Context, s content.Store, o Options) {
	data := blob(256)
	dgst := digest.FromBytes(data)
	start := window{from: time.Now()}
	w, err := s.Writer(ctx, "times", 256, dgst)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	start.to = time.Now()
	checkTimes(t, "new writer", w.Status(), start, start)
	st, err := s.Status(ctx, "times")
	if err != nil {
		t.Fatal(err)
	}
	checkTimes(t, "store status of a new ingest", st, start, start)
	for _, part := range [][]byte{data[:64], data[64:192], data[192:]} {
		upd := window{from: time.Now()}
		if _, err := w.Write(part); err != nil {
			t.Fatal(err)
		}
		upd.to = time.Now()
		st := w.Status()
		checkTimes(t, "writer after a write", st, start, upd)
		if st.Total != 256 || st.Ref != "times" {
			t.Errorf("writer status %+v", st)
		}
		if st, err := s.Status(ctx, "times"); err != nil {
			t.Fatal(err)
		} else {
			checkTimes(t, "store after a write", st, start, upd)
			if st.Total != 256 || st.Expected != dgst || st.Offset != w.Status().Offset {
				t.Errorf("store status %+v", st)
			}
		}
	}
	if err := w.Commit(ctx, 256, dgst, nil); err != nil {
		t.Fatal(err)
	}
}

// checkResume is containerd's Resume case.
func checkResume(t *testing.T, ctx context.Context, s content.Store, o Options) {
	data := blob(256)
	dgst := digest.FromBytes(data)
	start := window{from: time.Now()}
	w, err := s.Writer(ctx, "resume", 256, dgst)
	if err != nil {
		t.Fatal(err)
	}
	start.to = time.Now()
	upd := window{from: time.Now()}
	if _, err := w.Write(data[:128]); err != nil {
		t.Fatal(err)
	}
	upd.to = time.Now()
	checkTimes(t, "first writer", w.Status(), start, upd)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}

	w, err = s.Writer(ctx, "resume", 256, dgst)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	st := w.Status()
	if st.Offset != 128 || st.Total != 256 {
		t.Fatalf("resumed status %+v, want offset 128 of 256", st)
	}
	checkTimes(t, "resumed writer", st, start, upd)
	if got, want := w.Digest(), digest.FromBytes(data[:128]); got != want {
		t.Fatalf("resumed digest %s, want %s", got, want)
	}
	upd = window{from: time.Now()}
	if _, err := w.Write(data[128:]); err != nil {
		t.Fatal(err)
	}
	upd.to = time.Now()
	checkTimes(t, "resumed writer after a write", w.Status(), start, upd)
	if err := w.Commit(ctx, 256, dgst, nil); err != nil {
		t.Fatal(err)
	}
	if got := readAt(t, ctx, s, dgst, 0, 256); !bytes.Equal(got, data) {
		t.Error("resumed blob differs from what was written")
	}
}

func checkAbort(t *testing.T, ctx context.Context, s content.Store, o Options) {
	w, err := s.Writer(ctx, "abort", 0, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(blob(100)); err != nil {
		t.Fatal(err)
	}
	w.Close()
	if err := s.Abort(ctx, "abort"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Status(ctx, "abort"); !errdefs.IsNotFound(err) {
		t.Errorf("Status after Abort: %v, want NotFound", err)
	}
	wantKind(t, "second Abort", s.Abort(ctx, "abort"), errdefs.ErrNotFound)
	w, err = s.Writer(ctx, "abort", 0, "")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if off := w.Status().Offset; off != 0 {
		t.Errorf("writer after Abort at offset %d, want 0", off)
	}
}

// checkRetryResumes checks that, after a failed commit of written bytes,
// ref keeps its ingest, as containerd's store does (its CommitErrorState
// case): a writer opened on ref resumes at written, and after Truncate(0)
// a retry with the right bytes commits.
func checkRetryResumes(t *testing.T, ctx context.Context, s content.Store, ref string, written int, data []byte) {
	t.Helper()
	if st, err := s.Status(ctx, ref); err != nil || st.Offset != int64(written) {
		t.Errorf("Status after a failed commit: %+v, %v; want the ingest at offset %d", st, err, written)
	}
	w, err := s.Writer(ctx, ref, 0, "")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if off := w.Status().Offset; off != int64(written) {
		t.Fatalf("retry resumes at offset %d, want %d", off, written)
	}
	if err := w.Truncate(0); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(ctx, int64(len(data)), digest.FromBytes(data), nil); err != nil {
		t.Fatalf("retry: %v", err)
	}
}

func checkWrongSize(t *testing.T, ctx context.Context, s content.Store, o Options) {
	data := blob(1000)
	for _, size := range []int64{999, 1001} {
		ref := fmt.Sprintf("size-%d", size)
		w, err := s.Writer(ctx, ref, 0, "")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(data); err != nil {
			t.Fatal(err)
		}
		err = w.Commit(ctx, size, "", nil)
		w.Close()
		wantKind(t, fmt.Sprintf("commit of 1000 bytes as %d", size), err, errdefs.ErrFailedPrecondition)
		if _, err := s.Info(ctx, digest.FromBytes(data)); !errdefs.IsNotFound(err) {
			t.Errorf("Info after failed commit: %v, want NotFound", err)
		}
		checkRetryResumes(t, ctx, s, ref, len(data), blob(300))
	}
}

func checkWrongDigest(t *testing.T, ctx context.Context, s content.Store, o Options) {
	good := blob(4096)
	bad := blob(4096)
	dgst := digest.FromBytes(good)
	w, err := s.Writer(ctx, "digest", int64(len(good)), dgst)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(bad); err != nil {
		t.Fatal(err)
	}
	err = w.Commit(ctx, int64(len(good)), dgst, nil)
	w.Close()
	wantKind(t, "commit of wrong bytes", err, errdefs.ErrFailedPrecondition)
	for _, d := range []digest.Digest{dgst, digest.FromBytes(bad)} {
		if _, err := s.Info(ctx, d); !errdefs.IsNotFound(err) {
			t.Errorf("Info(%s) after failed commit: %v, want NotFound", d, err)
		}
	}
	checkRetryResumes(t, ctx, s, "digest", len(bad), good)
}

func checkCommitExists(t *testing.T, ctx context.Context, s content.Store, o Options) {
	data := blob(256)
	dgst := mustWrite(t, ctx, s, "first", data, nil)
	t.Run("writer expecting it", func(t *testing.T) {
		w, err := s.Writer(ctx, "second", 256, dgst)
		if err == nil {
			w.Close()
		}
		wantKind(t, "Writer", err, errdefs.ErrAlreadyExists)
	})
	for _, expected := range []digest.Digest{dgst, ""} {
		t.Run(fmt.Sprintf("commit expecting %q", expected), func(t *testing.T) {
			w, err := s.Writer(ctx, "third", 0, "")
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close()
			if _, err := w.Write(data); err != nil {
				t.Fatal(err)
			}
			wantKind(t, "Commit", w.Commit(ctx, 256, expected, nil), errdefs.ErrAlreadyExists)
			if _, err := s.Status(ctx, "third"); !errdefs.IsNotFound(err) {
				t.Errorf("ingest left behind: %v", err)
			}
		})
	}
}

func checkRefLocked(t *testing.T, ctx context.Context, s content.Store, o Options) {
	w, err := s.Writer(ctx, "locked", 0, "")
	if err != nil {
		t.Fatal(err)
	}
	w2, err := s.Writer(ctx, "locked", 0, "")
	if err == nil {
		w2.Close()
	}
	wantKind(t, "second writer", err, errdefs.ErrUnavailable)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	w2, err = s.Writer(ctx, "locked", 0, "")
	if err != nil {
		t.Fatalf("writer after the holder closed: %v", err)
	}
	w2.Close()
}

// checkCommitRace races a second writer on a ref against the commit of the
// first: the second must either be told the ref is locked, or get a fresh
// ingest; it must never resume the ingest being committed and then find
// it gone.
func checkCommitRace(t *testing.T, ctx context.Context, s content.Store, o Options) {
	for i := range o.Rounds {
		first, second := blob(1024), blob(2048)
		w, err := s.Writer(ctx, "race", 0, "")
		if err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		if _, err := w.Write(first); err != nil {
			t.Fatal(err)
		}
		started := make(chan struct{})
		done := make(chan error, 1)
		go func() {
			close(started)
			for {
				w2, err := s.Writer(ctx, "race", 0, "")
				if errdefs.IsUnavailable(err) {
					continue
				}
				if err != nil {
					done <- fmt.Errorf("open: %w", err)
					return
				}
				defer w2.Close()
				if err := w2.Truncate(0); err != nil {
					done <- fmt.Errorf("truncate: %w", err)
					return
				}
				if _, err := w2.Write(second); err != nil {
					done <- fmt.Errorf("write: %w", err)
					return
				}
				done <- w2.Commit(ctx, int64(len(second)), digest.FromBytes(second), nil)
				return
			}
		}()
		<-started
		if err := w.Commit(ctx, int64(len(first)), digest.FromBytes(first), nil); err != nil {
			t.Fatalf("round %d: first commit: %v", i, err)
		}
		if err := <-done; err != nil {
			t.Fatalf("round %d: second writer on the ref: %v", i, err)
		}
	}
}

func checkConcurrentRefs(t *testing.T, ctx context.Context, s content.Store, o Options) {
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			data := blob(256<<10 + i)
			if err := write(ctx, s, fmt.Sprintf("conc-%d", i), data, digest.FromBytes(data), nil); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func checkLabels(t *testing.T, ctx context.Context, s content.Store, o Options) {
	data := blob(64)
	dgst := digest.FromBytes(data)
	t.Run("commit with an empty label key is InvalidArgument", func(t *testing.T) {
		err := write(ctx, s, "badlabel", data, dgst, map[string]string{"": "v"})
		wantKind(t, "Commit", err, errdefs.ErrInvalidArgument)
		s.Abort(ctx, "badlabel")
	})
	t.Run("commit with a label over 4096 bytes is InvalidArgument", func(t *testing.T) {
		err := write(ctx, s, "biglabel", data, dgst, map[string]string{"k": strings.Repeat("v", 4096)})
		wantKind(t, "Commit", err, errdefs.ErrInvalidArgument)
		s.Abort(ctx, "biglabel")
	})
	mustWrite(t, ctx, s, "labelled", data, map[string]string{"a": "1", "b": "2"})
	tests := []struct {
		name   string
		in     map[string]string
		paths  []string
		want   map[string]string
		errKnd error
	}{
		{"no paths replaces every label", map[string]string{"c": "3"}, nil, map[string]string{"c": "3"}, nil},
		{"labels.KEY sets one", map[string]string{"d": "4"}, []string{"labels.d"}, map[string]string{"c": "3", "d": "4"}, nil},
		{"labels.KEY with no value removes it", nil, []string{"labels.c"}, map[string]string{"d": "4"}, nil},
		{"another field is InvalidArgument", nil, []string{"size"}, nil, errdefs.ErrInvalidArgument},
		{"an oversized label is InvalidArgument", map[string]string{"big": strings.Repeat("x", 5000)}, []string{"labels.big"}, nil, errdefs.ErrInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := time.Now()
			info, err := s.Update(ctx, content.Info{Digest: dgst, Labels: tt.in}, tt.paths...)
			if tt.errKnd != nil {
				wantKind(t, "Update", err, tt.errKnd)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !sameLabels(info.Labels, tt.want) {
				t.Errorf("labels %v, want %v", info.Labels, tt.want)
			}
			if info.UpdatedAt.Before(before) {
				t.Errorf("UpdatedAt %s before the update at %s", info.UpdatedAt, before)
			}
			got, err := s.Info(ctx, dgst)
			if err != nil || !sameLabels(got.Labels, tt.want) {
				t.Errorf("Info after Update: %v, %v", got.Labels, err)
			}
		})
	}
	_, err := s.Update(ctx, content.Info{Digest: digest.FromString("absent")})
	wantKind(t, "Update of an absent blob", err, errdefs.ErrNotFound)
}

func sameLabels(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func checkWalk(t *testing.T, ctx context.Context, s content.Store, o Options) {
	a := mustWrite(t, ctx, s, "a", blob(10), map[string]string{"kind": "layer"})
	b := mustWrite(t, ctx, s, "b", blob(20), map[string]string{"kind": "config"})
	walk := func(filters ...string) map[digest.Digest]bool {
		t.Helper()
		got := map[digest.Digest]bool{}
		if err := s.Walk(ctx, func(info content.Info) error {
			got[info.Digest] = true
			return nil
		}, filters...); err != nil {
			t.Fatalf("Walk(%q): %v", filters, err)
		}
		return got
	}
	if got := walk(); !got[a] || !got[b] || len(got) != 2 {
		t.Errorf("Walk() = %v, want both blobs", got)
	}
	if got := walk("labels.kind==layer"); !got[a] || len(got) != 1 {
		t.Errorf("Walk(labels.kind==layer) = %v", got)
	}
	if got := walk("digest==" + b.String()); !got[b] || len(got) != 1 {
		t.Errorf("Walk(digest==b) = %v", got)
	}
	if got := walk("labels.kind==layer", "labels.kind==config"); len(got) != 2 {
		t.Errorf("Walk(either filter) = %v", got)
	}
}

func checkListStatuses(t *testing.T, ctx context.Context, s content.Store, o Options) {
	for _, ref := range []string{"pull-1", "pull-2", "push-1"} {
		w, err := s.Writer(ctx, ref, 0, "")
		if err != nil {
			t.Fatal(err)
		}
		w.Write([]byte(ref))
		w.Close()
	}
	all, err := s.ListStatuses(ctx)
	if err != nil || len(all) != 3 {
		t.Fatalf("ListStatuses() = %v, %v; want 3", all, err)
	}
	got, err := s.ListStatuses(ctx, "ref~=^pull-")
	if err != nil || len(got) != 2 || got[0].Ref != "pull-1" || got[1].Ref != "pull-2" {
		t.Errorf("ListStatuses(ref~=^pull-) = %+v, %v", got, err)
	}
	for _, st := range all {
		if st.Offset != int64(len(st.Ref)) {
			t.Errorf("status %s at offset %d, want %d", st.Ref, st.Offset, len(st.Ref))
		}
	}
}

func checkNamespaces(t *testing.T, ctx context.Context, s content.Store, o Options) {
	dgst := mustWrite(t, ctx, s, "mine", blob(50), nil)
	other := namespace.WithNamespace(context.Background(), fmt.Sprintf("ct-other-%d", rand.Uint32()))
	if _, err := s.Info(other, dgst); !errdefs.IsNotFound(err) {
		t.Errorf("Info in another namespace: %v, want NotFound", err)
	}
	if _, err := s.ReaderAt(other, dgst); !errdefs.IsNotFound(err) {
		t.Errorf("ReaderAt in another namespace: %v, want NotFound", err)
	}
	if _, err := s.Status(other, "mine"); !errdefs.IsNotFound(err) {
		t.Errorf("Status in another namespace: %v, want NotFound", err)
	}
}

func checkDelete(t *testing.T, ctx context.Context, s content.Store, o Options) {
	dgst := mustWrite(t, ctx, s, "del", blob(77), nil)
	if err := s.Delete(ctx, dgst); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Info(ctx, dgst); !errdefs.IsNotFound(err) {
		t.Errorf("Info after Delete: %v, want NotFound", err)
	}
	wantKind(t, "second Delete", s.Delete(ctx, dgst), errdefs.ErrNotFound)
}

func checkTruncate(t *testing.T, ctx context.Context, s content.Store, o Options) {
	w, err := s.Writer(ctx, "trunc", 0, "")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := w.Write([]byte("garbage")); err != nil {
		t.Fatal(err)
	}
	if err := w.Truncate(0); err != nil {
		t.Fatal(err)
	}
	if off := w.Status().Offset; off != 0 {
		t.Fatalf("offset after Truncate(0) = %d", off)
	}
	good := []byte("good bytes")
	if _, err := w.Write(good); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(ctx, int64(len(good)), digest.FromBytes(good), nil); err != nil {
		t.Fatal(err)
	}
}
