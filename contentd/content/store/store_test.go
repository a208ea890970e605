package store

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"

	"github.com/flotilla/flotilla/contentd/content"
	"github.com/flotilla/flotilla/contentd/metadata"
	"github.com/flotilla/flotilla/services/namespace"
)

type env struct {
	root string
	db   *bolt.DB
	s    *Store
}

func newEnv(t *testing.T) *env {
	t.Helper()
	dir := t.TempDir()
	db, err := metadata.Open(filepath.Join(dir, "meta.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	e := &env{root: filepath.Join(dir, "content"), db: db}
	e.reopen(t)
	return e
}

// reopen gives a fresh Store on the same root and database, as a restarted
// contentd would have.
func (e *env) reopen(t *testing.T) {
	t.Helper()
	s, err := New(e.root, e.db)
	if err != nil {
		t.Fatal(err)
	}
	e.s = s
}

func (e *env) blobOnDisk(dgst digest.Digest) bool {
	if dgst == "" {
		return false
	}
	_, err := os.Stat(e.s.blobPath(dgst))
	return err == nil
}

func nsCtx(ns string) context.Context {
	return namespace.WithNamespace(context.Background(), ns)
}

// ingest writes data under ref in one go and commits it.
func ingest(ctx context.Context, s content.Store, ref string, data []byte, expected digest.Digest, labels map[string]string) error {
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

func readAll(t *testing.T, ctx context.Context, s content.Store, dgst digest.Digest) []byte {
	t.Helper()
	ra, err := s.ReaderAt(ctx, dgst)
	if err != nil {
		t.Fatalf("ReaderAt(%s): %v", dgst, err)
	}
	defer ra.Close()
	b, err := io.ReadAll(io.NewSectionReader(ra, 0, ra.Size()))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func wantKind(t *testing.T, err error, kind error) {
	t.Helper()
	if !errors.Is(err, kind) {
		t.Fatalf("error = %v, want kind %v", err, kind)
	}
}

func TestCommit(t *testing.T) {
	data := []byte("hello, flotilla")
	good := digest.FromBytes(data)
	tests := []struct {
		name     string
		write    []byte
		size     int64
		expected digest.Digest
		wantErr  error
	}{
		{name: "commit with right size and digest makes a readable blob", write: data, size: int64(len(data)), expected: good},
		{name: "commit without expectations takes the computed digest", write: data},
		{name: "commit with wrong digest is FailedPrecondition and leaves no blob", write: data, size: int64(len(data)),
			expected: digest.FromString("something else"), wantErr: errdefs.ErrFailedPrecondition},
		{name: "short write is FailedPrecondition", write: data[:5], size: int64(len(data)), expected: good,
			wantErr: errdefs.ErrFailedPrecondition},
		{name: "long write is FailedPrecondition", write: append(bytes.Clone(data), '!'), size: int64(len(data)),
			wantErr: errdefs.ErrFailedPrecondition},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			ctx := nsCtx("a")
			w, err := e.s.Writer(ctx, "ref", tt.size, tt.expected)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := w.Write(tt.write); err != nil {
				t.Fatal(err)
			}
			err = w.Commit(ctx, tt.size, tt.expected, map[string]string{"k": "v"})
			if tt.wantErr != nil {
				wantKind(t, err, tt.wantErr)
				actual := digest.FromBytes(tt.write)
				if _, err := e.s.Info(ctx, actual); !errdefs.IsNotFound(err) {
					t.Errorf("Info after failed commit: %v, want NotFound", err)
				}
				if e.blobOnDisk(actual) || e.blobOnDisk(tt.expected) {
					t.Error("a blob reached the disk")
				}
				// The ingest stays, as in containerd: a writer opened on
				// the ref resumes it and may commit it as what it is.
				st, err := e.s.Status(ctx, "ref")
				if err != nil || st.Offset != int64(len(tt.write)) {
					t.Fatalf("Status after failed commit: %+v, %v; want the ingest at %d", st, err, len(tt.write))
				}
				w, err := e.s.Writer(ctx, "ref", 0, "")
				if err != nil {
					t.Fatalf("reopen: %v", err)
				}
				if err := w.Commit(ctx, int64(len(tt.write)), "", nil); err != nil {
					t.Fatalf("commit of the resumed ingest as written: %v", err)
				}
				if _, err := e.s.Info(ctx, actual); err != nil {
					t.Errorf("Info after the second commit: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Commit: %v", err)
			}
			info, err := e.s.Info(ctx, good)
			if err != nil {
				t.Fatal(err)
			}
			if info.Size != int64(len(data)) || info.Labels["k"] != "v" || info.CreatedAt.IsZero() {
				t.Errorf("Info = %+v", info)
			}
			if got := readAll(t, ctx, e.s, good); !bytes.Equal(got, data) {
				t.Errorf("read %q, want %q", got, data)
			}
			if _, err := e.s.Status(ctx, "ref"); !errdefs.IsNotFound(err) {
				t.Errorf("Status after commit: %v, want NotFound", err)
			}
			if err := w.Close(); err != nil {
				t.Errorf("Close after Commit: %v", err)
			}
		})
	}
}

func TestResume(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789abcdef"), 1<<12) // 64 KiB
	dgst := digest.FromBytes(data)
	half := len(data) / 2
	tests := []struct {
		name string
		// interrupt ends the first writer and may restart the store.
		interrupt func(t *testing.T, e *env, w content.Writer)
	}{
		{"resumes after the writer is closed", func(t *testing.T, e *env, w content.Writer) { w.Close() }},
		{"resumes after a restart from the saved hash", func(t *testing.T, e *env, w content.Writer) {
			w.Close()
			e.reopen(t)
		}},
		{"resumes after a crash by hashing the data again", func(t *testing.T, e *env, w content.Writer) {
			// A crash: the writer never closes, and no hash state is saved.
			e.reopen(t)
		}},
		{"rehashes when the saved hash does not match the data", func(t *testing.T, e *env, w content.Writer) {
			w.Close()
			dir := e.s.ingestDir("a", "ref")
			saved, _ := os.ReadFile(filepath.Join(dir, hashFile))
			saved[7]-- // claims a shorter offset than the data has
			os.WriteFile(filepath.Join(dir, hashFile), saved, 0o644)
			e.reopen(t)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			ctx := nsCtx("a")
			w, err := e.s.Writer(ctx, "ref", int64(len(data)), dgst)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := w.Write(data[:half]); err != nil {
				t.Fatal(err)
			}
			tt.interrupt(t, e, w)

			st, err := e.s.Status(ctx, "ref")
			if err != nil || st.Offset != int64(half) || st.Total != int64(len(data)) || st.Expected != dgst {
				t.Fatalf("Status = %+v, %v; want offset %d", st, err, half)
			}
			w2, err := e.s.Writer(ctx, "ref", int64(len(data)), dgst)
			if err != nil {
				t.Fatal(err)
			}
			if got := w2.Status().Offset; got != int64(half) {
				t.Fatalf("resumed at %d, want %d", got, half)
			}
			if got, want := w2.Digest(), digest.FromBytes(data[:half]); got != want {
				t.Fatalf("resumed digest %s, want %s", got, want)
			}
			if _, err := w2.Write(data[half:]); err != nil {
				t.Fatal(err)
			}
			if err := w2.Commit(ctx, int64(len(data)), dgst, nil); err != nil {
				t.Fatal(err)
			}
			if got := readAll(t, ctx, e.s, dgst); !bytes.Equal(got, data) {
				t.Error("blob differs from what was written")
			}
		})
	}
}

// TestBytesPastTheMarkNeverCount checks that bytes in an ingest's data file
// past the last acknowledged write (a write cut short by a crash before its
// mark was saved) never count as written: not in Status, not after a
// crash, not in the committed blob; and that a clean Close drops them.
func TestBytesPastTheMarkNeverCount(t *testing.T) {
	data := make([]byte, 7<<20)
	for i := range data {
		data[i] = byte(i*7 + i>>12)
	}
	dgst := digest.FromBytes(data)
	first := 5 << 20
	dataSize := func(t *testing.T, e *env) int64 {
		fi, err := os.Stat(filepath.Join(e.s.ingestDir("a", "ref"), dataFile))
		if err != nil {
			t.Fatal(err)
		}
		return fi.Size()
	}
	for _, crash := range []bool{false, true} {
		name := map[bool]string{false: "a clean close drops them", true: "a crash leaves them, unread"}[crash]
		t.Run(name, func(t *testing.T) {
			e := newEnv(t)
			ctx := nsCtx("a")
			w, err := e.s.Writer(ctx, "ref", 0, "")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := w.Write(data[:first]); err != nil {
				t.Fatal(err)
			}
			w.Digest() // waits for the work behind the write
			// A write the crash cut short: its bytes reached the file, its
			// mark did not.
			f, err := os.OpenFile(filepath.Join(e.s.ingestDir("a", "ref"), dataFile), os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteAt(bytes.Repeat([]byte{0xee}, 1<<20), int64(first)); err != nil {
				t.Fatal(err)
			}
			f.Close()
			if crash {
				e.reopen(t) // the writer never closes
			} else {
				w.Close()
				if got := dataSize(t, e); got != int64(first) {
					t.Fatalf("data is %d bytes after Close, want the %d written", got, first)
				}
			}
			if st, err := e.s.Status(ctx, "ref"); err != nil || st.Offset != int64(first) {
				t.Fatalf("Status = %+v, %v; want offset %d", st, err, first)
			}
			w2, err := e.s.Writer(ctx, "ref", 0, "")
			if err != nil {
				t.Fatal(err)
			}
			if got := w2.Status().Offset; got != int64(first) {
				t.Fatalf("resumed at %d, want %d", got, first)
			}
			if _, err := w2.Write(data[first:]); err != nil {
				t.Fatal(err)
			}
			if err := w2.Commit(ctx, int64(len(data)), dgst, nil); err != nil {
				t.Fatal(err)
			}
			info, err := e.s.Info(ctx, dgst)
			if err != nil || info.Size != int64(len(data)) {
				t.Fatalf("Info = %+v, %v; want %d bytes", info, err, len(data))
			}
			fi, err := os.Stat(e.s.blobPath(dgst))
			if err != nil || fi.Size() != int64(len(data)) {
				t.Fatalf("blob on disk: %v, %v; want %d bytes", fi, err, len(data))
			}
			if got := readAll(t, ctx, e.s, dgst); !bytes.Equal(got, data) {
				t.Error("blob differs from what was written")
			}
		})
	}
}

func TestTruncateResetsTheIngest(t *testing.T) {
	e := newEnv(t)
	ctx := nsCtx("a")
	w, err := e.s.Writer(ctx, "ref", 0, "")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	w.Write([]byte("garbage"))
	wantKind(t, w.Truncate(3), errdefs.ErrInvalidArgument)
	if err := w.Truncate(0); err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("good"))
	if err := w.Commit(ctx, 4, digest.FromString("good"), nil); err != nil {
		t.Fatal(err)
	}
}

func TestOneWriterPerRef(t *testing.T) {
	e := newEnv(t)
	a, b := nsCtx("a"), nsCtx("b")
	w, err := e.s.Writer(a, "ref", 0, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Run("second writer on a held ref is Unavailable", func(t *testing.T) {
		_, err := e.s.Writer(a, "ref", 0, "")
		wantKind(t, err, errdefs.ErrUnavailable)
	})
	t.Run("the same ref in another namespace is another ingest", func(t *testing.T) {
		w2, err := e.s.Writer(b, "ref", 0, "")
		if err != nil {
			t.Fatal(err)
		}
		w2.Close()
	})
	t.Run("the ref is free again once the writer closes", func(t *testing.T) {
		w.Close()
		w2, err := e.s.Writer(a, "ref", 0, "")
		if err != nil {
			t.Fatal(err)
		}
		w2.Close()
	})
}

func TestAlreadyExists(t *testing.T) {
	data := []byte("shared bytes")
	dgst := digest.FromBytes(data)
	e := newEnv(t)
	a, b, c := nsCtx("a"), nsCtx("b"), nsCtx("c")
	if err := ingest(a, e.s, "ref", data, dgst, nil); err != nil {
		t.Fatal(err)
	}

	t.Run("writer expecting a blob the namespace has is AlreadyExists", func(t *testing.T) {
		_, err := e.s.Writer(a, "again", 0, dgst)
		wantKind(t, err, errdefs.ErrAlreadyExists)
	})
	t.Run("commit of a blob the namespace has is AlreadyExists and drops the ingest", func(t *testing.T) {
		err := ingest(a, e.s, "again", data, "", nil)
		wantKind(t, err, errdefs.ErrAlreadyExists)
		if _, err := e.s.Status(a, "again"); !errdefs.IsNotFound(err) {
			t.Errorf("ingest left behind: %v", err)
		}
	})
	t.Run("a blob of another namespace is NotFound", func(t *testing.T) {
		_, err := e.s.Info(b, dgst)
		wantKind(t, err, errdefs.ErrNotFound)
		_, err = e.s.ReaderAt(b, dgst)
		wantKind(t, err, errdefs.ErrNotFound)
	})
	t.Run("expecting a blob on disk records it in the namespace at once", func(t *testing.T) {
		_, err := e.s.Writer(b, "ref", int64(len(data)), dgst)
		wantKind(t, err, errdefs.ErrAlreadyExists)
		if got := readAll(t, b, e.s, dgst); !bytes.Equal(got, data) {
			t.Error("shared blob differs")
		}
	})
	t.Run("committing bytes on disk for another namespace records them", func(t *testing.T) {
		if err := ingest(c, e.s, "ref", data, "", nil); err != nil {
			t.Fatal(err)
		}
		if _, err := e.s.Info(c, dgst); err != nil {
			t.Fatal(err)
		}
	})
}

func TestUpdateLabels(t *testing.T) {
	data := []byte("labelled")
	dgst := digest.FromBytes(data)
	tests := []struct {
		name    string
		labels  map[string]string
		paths   []string
		want    map[string]string
		wantErr error
	}{
		{name: "no paths replaces every label", labels: map[string]string{"x": "1"}, want: map[string]string{"x": "1"}},
		{name: "path labels replaces every label", labels: map[string]string{"x": "1"}, paths: []string{"labels"}, want: map[string]string{"x": "1"}},
		{name: "labels.KEY sets one label", labels: map[string]string{"b": "3", "x": "9"}, paths: []string{"labels.b"},
			want: map[string]string{"a": "1", "b": "3"}},
		{name: "labels.KEY with a dotted key", labels: map[string]string{"containerd.io/gc.ref.content.l.0": "sha256:x"},
			paths: []string{"labels.containerd.io/gc.ref.content.l.0"},
			want:  map[string]string{"a": "1", "b": "2", "containerd.io/gc.ref.content.l.0": "sha256:x"}},
		{name: "labels.KEY absent from the update deletes it", paths: []string{"labels.a"}, want: map[string]string{"b": "2"}},
		{name: "an immutable field is InvalidArgument", paths: []string{"size"}, wantErr: errdefs.ErrInvalidArgument},
		{name: "an oversized label is InvalidArgument", labels: map[string]string{"big": string(make([]byte, 5000))},
			wantErr: errdefs.ErrInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			ctx := nsCtx("a")
			if err := ingest(ctx, e.s, "ref", data, dgst, map[string]string{"a": "1", "b": "2"}); err != nil {
				t.Fatal(err)
			}
			before, _ := e.s.Info(ctx, dgst)
			info, err := e.s.Update(ctx, content.Info{Digest: dgst, Labels: tt.labels}, tt.paths...)
			if tt.wantErr != nil {
				wantKind(t, err, tt.wantErr)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !equalLabels(info.Labels, tt.want) {
				t.Errorf("labels = %v, want %v", info.Labels, tt.want)
			}
			if info.Size != int64(len(data)) || !info.UpdatedAt.After(before.UpdatedAt) || !info.CreatedAt.Equal(before.CreatedAt) {
				t.Errorf("Info = %+v, before %+v", info, before)
			}
			if stored, _ := e.s.Info(ctx, dgst); !equalLabels(stored.Labels, tt.want) {
				t.Errorf("stored labels = %v", stored.Labels)
			}
		})
	}
	t.Run("update of a blob the namespace lacks is NotFound", func(t *testing.T) {
		e := newEnv(t)
		_, err := e.s.Update(nsCtx("a"), content.Info{Digest: dgst})
		wantKind(t, err, errdefs.ErrNotFound)
	})
}

func equalLabels(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func TestWalkFilters(t *testing.T) {
	e := newEnv(t)
	ctx := nsCtx("a")
	blobs := map[string]map[string]string{
		"one":   {"kind": "layer", "containerd.io/distribution.source.docker.io": "library/busybox"},
		"two":   {"kind": "config"},
		"three": nil,
	}
	dgsts := map[string]digest.Digest{}
	for name, labels := range blobs {
		dgsts[name] = digest.FromString(name)
		if err := ingest(ctx, e.s, name, []byte(name), "", labels); err != nil {
			t.Fatal(err)
		}
	}
	ingest(nsCtx("other"), e.s, "x", []byte("four"), "", nil)

	tests := []struct {
		name    string
		filters []string
		want    []string
	}{
		{"no filter lists the namespace's blobs", nil, []string{"one", "two", "three"}},
		{"label equality", []string{"labels.kind==layer"}, []string{"one"}},
		{"label presence", []string{"labels.kind"}, []string{"one", "two"}},
		{"quoted dotted label key", []string{`labels."containerd.io/distribution.source.docker.io"~=busybox`}, []string{"one"}},
		{"digest equality", []string{"digest==" + dgsts["two"].String()}, []string{"two"}},
		{"size", []string{"size==5"}, []string{"three"}},
		{"several filters are ORed", []string{"labels.kind==config", "size==3"}, []string{"one", "two"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := map[digest.Digest]bool{}
			if err := e.s.Walk(ctx, func(info content.Info) error {
				got[info.Digest] = true
				return nil
			}, tt.filters...); err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %d blobs, want %v", len(got), tt.want)
			}
			for _, name := range tt.want {
				if !got[dgsts[name]] {
					t.Errorf("missing %s", name)
				}
			}
		})
	}
	t.Run("a bad filter is InvalidArgument", func(t *testing.T) {
		wantKind(t, e.s.Walk(ctx, func(content.Info) error { return nil }, "labels.=="), errdefs.ErrInvalidArgument)
	})
}

func TestDelete(t *testing.T) {
	data := []byte("to delete")
	dgst := digest.FromBytes(data)
	e := newEnv(t)
	a, b := nsCtx("a"), nsCtx("b")
	for _, ctx := range []context.Context{a, b} {
		if err := ingest(ctx, e.s, "ref", data, "", nil); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("delete in one namespace keeps the bytes for the other", func(t *testing.T) {
		if err := e.s.Delete(a, dgst); err != nil {
			t.Fatal(err)
		}
		if _, err := e.s.Info(a, dgst); !errdefs.IsNotFound(err) {
			t.Errorf("Info after delete: %v", err)
		}
		if got := readAll(t, b, e.s, dgst); !bytes.Equal(got, data) {
			t.Error("other namespace lost its blob")
		}
	})
	t.Run("deleting a blob the namespace lacks is NotFound", func(t *testing.T) {
		wantKind(t, e.s.Delete(a, dgst), errdefs.ErrNotFound)
	})
	t.Run("the last delete removes the bytes", func(t *testing.T) {
		if err := e.s.Delete(b, dgst); err != nil {
			t.Fatal(err)
		}
		if e.blobOnDisk(dgst) {
			t.Error("blob still on disk")
		}
	})
}

func TestIngestManagement(t *testing.T) {
	e := newEnv(t)
	a := nsCtx("a")
	for _, ref := range []string{"layer-1", "layer-2", "config"} {
		w, err := e.s.Writer(a, ref, 10, "")
		if err != nil {
			t.Fatal(err)
		}
		w.Write([]byte(ref))
		w.Close()
	}
	w, _ := e.s.Writer(nsCtx("b"), "layer-9", 0, "")
	w.Close()

	t.Run("ListStatuses filters by ref within the namespace", func(t *testing.T) {
		sts, err := e.s.ListStatuses(a, "ref~=^layer-")
		if err != nil {
			t.Fatal(err)
		}
		if len(sts) != 2 || sts[0].Ref != "layer-1" || sts[1].Ref != "layer-2" || sts[0].Offset != 7 || sts[0].Total != 10 {
			t.Fatalf("statuses = %+v", sts)
		}
	})
	t.Run("Abort removes the ingest", func(t *testing.T) {
		if err := e.s.Abort(a, "config"); err != nil {
			t.Fatal(err)
		}
		_, err := e.s.Status(a, "config")
		wantKind(t, err, errdefs.ErrNotFound)
		wantKind(t, e.s.Abort(a, "config"), errdefs.ErrNotFound)
	})
	t.Run("Abort racing the writer's Close always removes the ingest", func(t *testing.T) {
		// The writer's Close saves its hash state into the ingest directory
		// while Abort removes it: Abort must neither fail nor leave the
		// ingest half there.
		for i := range 50 {
			w, err := e.s.Writer(a, "raced", 0, "")
			if err != nil {
				t.Fatal(err)
			}
			w.Write([]byte("some data"))
			closed := make(chan struct{})
			go func() { w.Close(); close(closed) }()
			if err := e.s.Abort(a, "raced"); err != nil {
				t.Fatalf("round %d: Abort: %v", i, err)
			}
			<-closed
			if _, err := e.s.Status(a, "raced"); !errdefs.IsNotFound(err) {
				t.Fatalf("round %d: after Abort, Status = %v, want NotFound", i, err)
			}
			if _, err := os.Stat(e.s.ingestDir("a", "raced")); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("round %d: the ingest directory is back: %v", i, err)
			}
		}
	})
	t.Run("Status of another namespace's ingest is NotFound", func(t *testing.T) {
		_, err := e.s.Status(a, "layer-9")
		wantKind(t, err, errdefs.ErrNotFound)
	})
	t.Run("a call without namespace is FailedPrecondition", func(t *testing.T) {
		_, err := e.s.Status(context.Background(), "layer-1")
		wantKind(t, err, errdefs.ErrFailedPrecondition)
	})
	t.Run("a different total than the ingest started with is FailedPrecondition", func(t *testing.T) {
		_, err := e.s.Writer(a, "layer-1", 11, "")
		wantKind(t, err, errdefs.ErrFailedPrecondition)
	})
}

func TestLeases(t *testing.T) {
	e := newEnv(t)
	ctx := namespace.WithLease(nsCtx("a"), "pull")
	if err := e.db.Update(func(tx *bolt.Tx) error {
		b, err := metadata.CreateStoreBucket(tx, "a", metadata.BucketLeases)
		if err != nil {
			return err
		}
		_, err = b.CreateBucket([]byte("pull"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	resources := func(kind string) []string {
		var ids []string
		e.db.View(func(tx *bolt.Tx) error {
			b := metadata.StoreBucket(tx, "a", metadata.BucketLeases).Bucket([]byte("pull")).Bucket(metadata.BucketResources)
			if b != nil && b.Bucket([]byte(kind)) != nil {
				b.Bucket([]byte(kind)).ForEach(func(k, _ []byte) error { ids = append(ids, string(k)); return nil })
			}
			return nil
		})
		return ids
	}

	w, err := e.s.Writer(ctx, "ref", 0, "")
	if err != nil {
		t.Fatal(err)
	}
	if got := resources(metadata.ResourceIngest); len(got) != 1 || got[0] != "ref" {
		t.Errorf("while writing, lease holds ingests %v", got)
	}
	w.Write([]byte("leased"))
	if err := w.Commit(ctx, 0, "", nil); err != nil {
		t.Fatal(err)
	}
	if got := resources(metadata.ResourceIngest); len(got) != 0 {
		t.Errorf("after commit, lease holds ingests %v", got)
	}
	if got := resources(metadata.ResourceContent); len(got) != 1 || got[0] != digest.FromString("leased").String() {
		t.Errorf("after commit, lease holds content %v", got)
	}
	t.Run("a detached ingest outlives its lease and resumes", func(t *testing.T) {
		w, err := e.s.Writer(ctx, "partial", 0, "")
		if err != nil {
			t.Fatal(err)
		}
		w.Write([]byte("half"))
		if err := w.(interface{ Detach() error }).Detach(); err != nil {
			t.Fatal(err)
		}
		w.Close()
		if got := resources(metadata.ResourceIngest); len(got) != 0 {
			t.Errorf("after detach, lease holds ingests %v", got)
		}
		ingests, err := e.s.Ingests()
		if err != nil {
			t.Fatal(err)
		}
		for _, in := range ingests {
			if in.Ref == "partial" && in.Leased {
				t.Errorf("detached ingest still counts as leased: %+v", in)
			}
		}
		w, err = e.s.Writer(nsCtx("a"), "partial", 0, "")
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		if off := w.Status().Offset; off != 4 {
			t.Errorf("resumed at %d, want 4", off)
		}
	})
	t.Run("a lease that does not exist is NotFound", func(t *testing.T) {
		_, err := e.s.Writer(namespace.WithLease(nsCtx("a"), "nope"), "ref2", 0, "")
		wantKind(t, err, errdefs.ErrNotFound)
		if _, err := e.s.Writer(nsCtx("a"), "ref2", 0, ""); err != nil {
			t.Errorf("ref stayed locked: %v", err)
		}
	})
}

func TestRemoveIdleIngests(t *testing.T) {
	e := newEnv(t)
	ctx := nsCtx("a")
	open := func(ref string, ctx context.Context) content.Writer {
		t.Helper()
		w, err := e.s.Writer(ctx, ref, 0, "")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write([]byte(ref)); err != nil {
			t.Fatal(err)
		}
		return w
	}
	open("idle", ctx).Close()
	held := open("held", ctx)
	defer held.Close()
	if err := e.db.Update(func(tx *bolt.Tx) error {
		_, _, err := metadata.CreateNamespace(tx, "a")
		if err != nil {
			return err
		}
		b, err := metadata.CreateStoreBucket(tx, "a", metadata.BucketLeases)
		if err != nil {
			return err
		}
		_, err = b.CreateBucket([]byte("lease"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	open("leased", namespace.WithLease(ctx, "lease")).Close()
	recent := time.Now()

	t.Run("nothing goes before the limit", func(t *testing.T) {
		removed, err := e.s.RemoveIdleIngests(recent, time.Hour)
		if err != nil || len(removed) != 0 {
			t.Fatalf("removed %v, %v", removed, err)
		}
	})
	t.Run("past the limit, only what no writer and no lease holds goes", func(t *testing.T) {
		removed, err := e.s.RemoveIdleIngests(recent.Add(2*time.Hour), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if got := removed["a"]; len(got) != 1 || got[0] != "idle" {
			t.Fatalf("removed %v, want [idle]", removed)
		}
		if _, err := e.s.Status(ctx, "idle"); !errdefs.IsNotFound(err) {
			t.Errorf("idle ingest still there: %v", err)
		}
		for _, ref := range []string{"held", "leased"} {
			if _, err := e.s.Status(ctx, ref); err != nil {
				t.Errorf("%s: %v", ref, err)
			}
		}
	})
}
