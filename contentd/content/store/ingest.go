package store

import (
	"context"
	"encoding"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"

	"github.com/flotilla/flotilla/contentd/content"
	"github.com/flotilla/flotilla/contentd/metadata"
	"github.com/flotilla/flotilla/services/filters"
	"github.com/flotilla/flotilla/services/gc"
	"github.com/flotilla/flotilla/services/namespace"
)

// An ingest directory holds:
//
//	state.json  what the ingest is (ingestState), written when it starts
//	data        the bytes written so far (after a crash, maybe more, which
//	            written says to ignore)
//	written     how many bytes of data are written and when they last
//	            changed: 8 bytes of offset then 8 bytes of Unix nanoseconds,
//	            big-endian, saved before each write is acknowledged. The time
//	            is the writer's clock, not the file's modification time, which
//	            the kernel keeps at a coarse tick and so can fall before the
//	            call that made it. Without it, all of data is written.
//	hashstate   the running hash as of the last clean Close: 8 bytes of
//	            offset, then the hash's binary state; resuming from it saves
//	            re-reading data (absent or stale → data is hashed again)
const (
	stateFile   = "state.json"
	dataFile    = "data"
	writtenFile = "written"
	hashFile    = "hashstate"
)

type ingestState struct {
	Namespace string           `json:"namespace"`
	Ref       string           `json:"ref"`
	Total     int64            `json:"total,omitempty"`
	Expected  digest.Digest    `json:"expected,omitempty"`
	Algorithm digest.Algorithm `json:"algorithm"`
	StartedAt time.Time        `json:"startedAt"`
	// Lease is the lease the ingest was started under, if any. As in
	// containerd, such an ingest lives only as long as a lease holds it;
	// one started without a lease lives until it goes idle.
	Lease string `json:"lease,omitempty"`
}

// copyBuffer is the buffer size for re-hashing an ingest's data.
const copyBuffer = 1 << 20

// ingestDir is where ingest ref of namespace ns lives. Namespaces cannot
// hold '/', so the hashed name is unique to the pair.
func (s *Store) ingestDir(ns, ref string) string {
	return filepath.Join(s.root, "ingest", digest.FromString(ns+"/"+ref).Encoded())
}

func readState(dir string) (ingestState, error) {
	var st ingestState
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("ingest state %s: %w", dir, err)
	}
	return st, nil
}

// writeState replaces the state file atomically.
func writeState(dir string, st ingestState) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, stateFile+".tmp")
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, stateFile))
}

// status reads ingest ref of namespace ns from disk.
func (s *Store) status(ns, ref string) (content.Status, error) {
	dir := s.ingestDir(ns, ref)
	st, err := readState(dir)
	if errors.Is(err, fs.ErrNotExist) || (err == nil && (st.Namespace != ns || st.Ref != ref)) {
		return content.Status{}, fmt.Errorf("ingest %q: %w", ref, errdefs.ErrNotFound)
	}
	if err != nil {
		return content.Status{}, err
	}
	return statusOf(dir, st)
}

func statusOf(dir string, st ingestState) (content.Status, error) {
	out := content.Status{
		Ref:       st.Ref,
		Total:     st.Total,
		Expected:  st.Expected,
		StartedAt: st.StartedAt,
		UpdatedAt: st.StartedAt,
	}
	m, err := readWritten(dir)
	switch {
	case err == nil:
		out.Offset = m.offset
		if !m.updated.IsZero() {
			out.UpdatedAt = m.updated
		}
	case !errors.Is(err, fs.ErrNotExist):
		return content.Status{}, err
	}
	return out, nil
}

// mark is what the written file says: how many bytes of data are written,
// and when they last changed (zero when it does not say).
type mark struct {
	offset  int64
	updated time.Time
}

// readWritten returns what dir's written file says, bounded by the data
// actually on disk.
func readWritten(dir string) (mark, error) {
	data, err := os.Stat(filepath.Join(dir, dataFile))
	if err != nil {
		return mark{}, err
	}
	f, err := os.Open(filepath.Join(dir, writtenFile))
	if errors.Is(err, fs.ErrNotExist) {
		return mark{offset: data.Size()}, nil
	}
	if err != nil {
		return mark{}, err
	}
	defer f.Close()
	m, ok, err := readMark(f)
	if err != nil || !ok {
		return mark{offset: data.Size()}, err
	}
	m.offset = min(m.offset, data.Size())
	return m, nil
}

// readMark reads the mark saved in a written file; ok is false when none
// was saved yet. A mark saved without its time (8 bytes) has a zero time.
func readMark(f *os.File) (m mark, ok bool, err error) {
	var b [16]byte
	n, err := f.ReadAt(b[:], 0)
	if errors.Is(err, io.EOF) {
		err = nil
	}
	if n < 8 {
		return mark{}, false, err
	}
	m.offset = int64(binary.BigEndian.Uint64(b[:8]))
	if n == 16 {
		if ns := int64(binary.BigEndian.Uint64(b[8:])); ns > 0 {
			m.updated = time.Unix(0, ns).UTC()
		}
	}
	return m, true, nil
}

// Status implements content.IngestManager.
func (s *Store) Status(ctx context.Context, ref string) (content.Status, error) {
	ns, err := namespace.Required(ctx)
	if err != nil {
		return content.Status{}, err
	}
	return s.status(ns, ref)
}

// ListStatuses implements content.IngestManager.
func (s *Store) ListStatuses(ctx context.Context, fs ...string) ([]content.Status, error) {
	ns, err := namespace.Required(ctx)
	if err != nil {
		return nil, err
	}
	filter, err := filters.ParseAll(fs...)
	if err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(filepath.Join(s.root, "ingest"))
	if err != nil {
		return nil, fmt.Errorf("list ingests: %w", err)
	}
	var out []content.Status
	for _, e := range entries {
		dir := filepath.Join(s.root, "ingest", e.Name())
		st, err := readState(dir)
		if err != nil || st.Namespace != ns {
			// Another namespace's, or one whose start a crash cut short
			// (it has no data yet): not an ingest to report.
			continue
		}
		ref := st.Ref
		if !filter.Match(filters.AdapterFunc(func(path []string) (string, bool) {
			if len(path) == 1 && path[0] == "ref" {
				return ref, true
			}
			return "", false
		})) {
			continue
		}
		status, err := statusOf(dir, st)
		if err != nil {
			continue // aborted meanwhile
		}
		out = append(out, status)
	}
	sortStatuses(out)
	return out, nil
}

// ReadIngest implements content.IngestReader.
func (s *Store) ReadIngest(ctx context.Context, ref string) (content.IngestData, error) {
	ns, err := namespace.Required(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := s.status(ns, ref); err != nil {
		return nil, err
	}
	f, err := os.Open(filepath.Join(s.ingestDir(ns, ref), dataFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("ingest %q: %w", ref, errdefs.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("read ingest %q: %w", ref, err)
	}
	return f, nil
}

// Abort implements content.IngestManager. As in containerd, an ingest that
// a writer holds is removed all the same; that writer's Commit then fails.
func (s *Store) Abort(ctx context.Context, ref string) error {
	ns, err := namespace.Required(ctx)
	if err != nil {
		return err
	}
	if _, err := s.status(ns, ref); err != nil {
		return err
	}
	lease, _ := namespace.LeaseFromContext(ctx)
	return s.removeIngest(ns, ref, lease)
}

// removeIngest removes ingest ref of namespace ns and its data, and drops
// it from lease (when set); NotFound when it is not there.
func (s *Store) removeIngest(ns, ref, lease string) error {
	// Out of the way in one step, then removed: a writer still holding the
	// ingest (its Close saves the hash state into the directory) cannot
	// put files back into a directory being removed, and a crash halfway
	// leaves nothing that looks like an ingest.
	dir := s.ingestDir(ns, ref)
	trash := filepath.Join(s.root, "trash", fmt.Sprintf("%s-%d", filepath.Base(dir), time.Now().UnixNano()))
	if err := os.Rename(dir, trash); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("ingest %q: %w", ref, errdefs.ErrNotFound)
		}
		return fmt.Errorf("remove ingest %q: %w", ref, err)
	}
	if err := os.RemoveAll(trash); err != nil {
		return fmt.Errorf("remove ingest %q: %w", ref, err)
	}
	if lease == "" {
		return nil
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		err := metadata.RemoveLeaseResource(tx, ns, lease, metadata.ResourceIngest, ref)
		if errdefs.IsNotFound(err) {
			return nil
		}
		return err
	})
}

// lock gives the caller ref's ingest, or Unavailable while a writer holds it.
func (s *Store) lock(key, ref string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if since, ok := s.locked[key]; ok {
		return fmt.Errorf("ref %s locked since %s: %w", ref, since.Format(time.RFC3339), errdefs.ErrUnavailable)
	}
	s.locked[key] = time.Now()
	return nil
}

func (s *Store) unlock(key string) {
	s.mu.Lock()
	delete(s.locked, key)
	s.mu.Unlock()
}

// Writer implements content.Ingester.
func (s *Store) Writer(ctx context.Context, ref string, total int64, expected digest.Digest) (content.Writer, error) {
	ns, err := namespace.Required(ctx)
	if err != nil {
		return nil, err
	}
	if ref == "" {
		return nil, fmt.Errorf("ref must not be empty: %w", errdefs.ErrInvalidArgument)
	}
	total = max(total, 0)
	lease, _ := namespace.LeaseFromContext(ctx)
	touched := []gc.Ref{gc.Ingest(ns, ref)}
	if expected != "" {
		touched = append(touched, gc.Content(ns, expected.String()))
	}
	done := s.tracker.Write(touched...)
	defer done()
	if expected != "" {
		if expected, err = parseDigest(expected); err != nil {
			return nil, err
		}
		if err := s.shareExisting(ns, lease, total, expected); err != nil {
			return nil, err
		}
	}
	dir := s.ingestDir(ns, ref)
	if err := s.lock(dir, ref); err != nil {
		return nil, err
	}
	w, err := s.open(ns, ref, lease, dir, total, expected)
	if err != nil {
		s.unlock(dir)
		return nil, err
	}
	w.lease = lease
	if lease != "" {
		err := s.db.Update(func(tx *bolt.Tx) error {
			return metadata.AddLeaseResource(tx, ns, lease, metadata.ResourceIngest, ref)
		})
		if err != nil {
			w.Close()
			return nil, fmt.Errorf("lease ingest %q: %w", ref, err)
		}
	}
	return w, nil
}

// shareExisting fails with AlreadyExists when namespace ns has blob dgst,
// or when it can have it at once because the blob is on disk for another
// namespace (then it records it). Either way a lease holds the blob.
func (s *Store) shareExisting(ns, lease string, total int64, dgst digest.Digest) error {
	var inNamespace bool
	if err := s.db.View(func(tx *bolt.Tx) error {
		_, err := readRecord(tx, ns, dgst)
		inNamespace = err == nil
		return nil
	}); err != nil {
		return err
	}
	exists := fmt.Errorf("content %s: %w", dgst, errdefs.ErrAlreadyExists)
	if inNamespace && lease == "" {
		return exists
	}

	s.disk.Lock()
	defer s.disk.Unlock()
	fi, err := os.Stat(s.blobPath(dgst))
	if err != nil || (total > 0 && total != fi.Size()) {
		if inNamespace {
			fi = nil // recorded: record() will not need the size
		} else {
			return nil // nothing to share: write it
		}
	}
	now := time.Now().UTC()
	info := content.Info{Digest: dgst, CreatedAt: now, UpdatedAt: now}
	if fi != nil {
		info.Size = fi.Size()
	}
	if err := s.db.Update(func(tx *bolt.Tx) error {
		_, err := record(tx, ns, lease, info)
		return err
	}); err != nil {
		return err
	}
	return exists
}

// open creates ingest ref or resumes it, returning its writer positioned at
// the end of what was written.
func (s *Store) open(ns, ref, lease, dir string, total int64, expected digest.Digest) (*writer, error) {
	st, err := readState(dir)
	switch {
	case err == nil:
		if st.Namespace != ns || st.Ref != ref {
			return nil, fmt.Errorf("ingest %s holds %s/%s, not %s/%s", dir, st.Namespace, st.Ref, ns, ref)
		}
		if total > 0 && st.Total > 0 && total != st.Total {
			return nil, fmt.Errorf("ingest %q: total %d differs from the %d it started with: %w",
				ref, total, st.Total, errdefs.ErrFailedPrecondition)
		}
		if (total > 0 && st.Total == 0) || (expected != "" && expected != st.Expected) {
			st.Total = max(st.Total, total)
			if expected != "" {
				st.Expected = expected
			}
			if err := writeState(dir, st); err != nil {
				return nil, err
			}
		}
	case errors.Is(err, fs.ErrNotExist):
		st = ingestState{Namespace: ns, Ref: ref, Total: total, Expected: expected,
			Algorithm: digest.Canonical, StartedAt: time.Now().UTC(), Lease: lease}
		if expected != "" {
			st.Algorithm = expected.Algorithm()
		}
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, err
		}
		if err := writeState(dir, st); err != nil {
			return nil, err
		}
	default:
		return nil, err
	}
	if !st.Algorithm.Available() {
		return nil, fmt.Errorf("ingest %q: digest algorithm %q unavailable", ref, st.Algorithm)
	}

	f, err := os.OpenFile(filepath.Join(dir, dataFile), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open ingest %q: %w", ref, err)
	}
	mark, err := os.OpenFile(filepath.Join(dir, writtenFile), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open ingest %q: %w", ref, err)
	}
	w := &writer{s: s, dir: dir, f: f, mark: mark, alg: st.Algorithm}
	if err := w.resume(st.Total, st.StartedAt); err != nil {
		if w.h != nil {
			w.h.Stop()
		}
		f.Close()
		mark.Close()
		return nil, fmt.Errorf("resume ingest %q: %w", ref, err)
	}
	w.status, err = statusOf(dir, st)
	if err != nil {
		w.h.Stop()
		f.Close()
		mark.Close()
		return nil, err
	}
	w.ns, w.ref = ns, ref
	return w, nil
}

// writer implements content.Writer over an ingest directory it has locked.
type writer struct {
	s       *Store
	ns, ref string
	lease   string
	dir     string
	f       *os.File
	// mark is the written file, saying how much of f is written and when.
	mark    *os.File
	markBuf [16]byte
	alg     digest.Algorithm
	h       *behind
	// flushed is the offset up to which writeback has been started.
	flushed int64
	status  content.Status
	// closed is set once the files are closed; unlocked once the ref is
	// given back. Commit keeps the ref after closing the files, until the
	// ingest is gone.
	closed, unlocked bool
}

// resume finds how much data is written, saves that in the written file,
// and sets the running hash to cover it: from the saved hash state when it
// matches, else by reading the data once. total is the size expected, 0 if
// unknown; started is when the ingest started, its update time until a
// write says otherwise.
func (w *writer) resume(total int64, started time.Time) error {
	fi, err := w.f.Stat()
	if err != nil {
		return err
	}
	size, updated := fi.Size(), started
	if saved, ok, err := readMark(w.mark); err != nil {
		return err
	} else if ok {
		size = min(saved.offset, size)
		if !saved.updated.IsZero() {
			updated = saved.updated
		}
	}
	if err := w.saveMark(size, updated); err != nil {
		return err
	}
	h := w.alg.Hash()
	w.h = newBehind(h, w.f)
	saved, err := os.ReadFile(filepath.Join(w.dir, hashFile))
	// Whatever happens next changes the data, so the saved state is stale.
	os.Remove(filepath.Join(w.dir, hashFile))
	if err == nil && len(saved) > 8 && int64(binary.BigEndian.Uint64(saved)) == size {
		if u, ok := h.(encoding.BinaryUnmarshaler); ok && u.UnmarshalBinary(saved[8:]) == nil {
			return nil
		}
		h.Reset()
	}
	if size == 0 {
		return nil
	}
	if _, err := io.CopyBuffer(h, io.NewSectionReader(w.f, 0, size), make([]byte, copyBuffer)); err != nil {
		return err
	}
	return nil
}

// saveMark records in the written file that offset bytes of data are
// written, last changed at updated.
func (w *writer) saveMark(offset int64, updated time.Time) error {
	binary.BigEndian.PutUint64(w.markBuf[:8], uint64(offset))
	binary.BigEndian.PutUint64(w.markBuf[8:], uint64(updated.UnixNano()))
	_, err := w.mark.WriteAt(w.markBuf[:], 0)
	return err
}

// Buffers a Write copies the caller's bytes into, to be hashed behind the
// acknowledgement: small writes (io.Copy's 32 KiB and less) take small
// buffers, larger ones are copied a MiB at a time.
const (
	smallCopy = 64 << 10
	largeCopy = 1 << 20
)

var (
	smallBuffers = sync.Pool{New: func() any { b := make([]byte, smallCopy); return &b }}
	largeBuffers = sync.Pool{New: func() any { b := make([]byte, largeCopy); return &b }}
)

// Write implements content.Writer. The bytes are in the file, and the
// written file says so, before Write returns: what is acknowledged survives
// contentd's death. As io.Writer requires, p is not kept: the part of the
// work done behind the acknowledgement (hashing) works on a copy, so the
// caller may reuse p at once (io.CopyBuffer does).
func (w *writer) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		pool := &largeBuffers
		if len(p) <= smallCopy {
			pool = &smallBuffers
		}
		bp := pool.Get().(*[]byte)
		k := copy(*bp, p)
		n, err := w.WriteOwned((*bp)[:k], func() { pool.Put(bp) })
		written += n
		if err != nil {
			return written, err
		}
		p = p[k:]
	}
	return written, nil
}

// WriteOwned is Write for a p that stays the caller's until the writer
// calls release (when non-nil), once it is done with p: a buffer the
// message arrived in can be hashed where it is, rather than copied out.
// The caller must not change p until then.
func (w *writer) WriteOwned(p []byte, release func()) (int, error) {
	if w.closed {
		if release != nil {
			release()
		}
		return 0, fmt.Errorf("write to closed writer of %q: %w", w.ref, errdefs.ErrFailedPrecondition)
	}
	n, err := w.f.WriteAt(p, w.status.Offset)
	now := time.Now().UTC()
	if n > 0 {
		if err := w.saveMark(w.status.Offset+int64(n), now); err != nil {
			if release != nil {
				release()
			}
			return 0, fmt.Errorf("write ingest %q: %w", w.ref, err)
		}
		w.status.UpdatedAt = now
	}
	w.status.Offset += int64(n)
	c := chunk{p: p[:n], end: w.status.Offset, release: release}
	if w.status.Offset-w.flushed >= writebackEvery {
		c.flushFrom, c.flushTo = w.flushed, w.status.Offset
		w.flushed = w.status.Offset
	}
	w.h.add(c)
	if err != nil {
		return n, fmt.Errorf("write ingest %q: %w", w.ref, err)
	}
	return n, nil
}

// Status implements content.Writer.
func (w *writer) Status() content.Status { return w.status }

// Digest implements content.Writer.
func (w *writer) Digest() digest.Digest { return digest.NewDigest(w.alg, w.h.Hash()) }

// Truncate implements content.Writer.
func (w *writer) Truncate(size int64) error {
	if size != 0 {
		return fmt.Errorf("truncate ingest %q to %d: only 0 is supported: %w", w.ref, size, errdefs.ErrInvalidArgument)
	}
	if w.closed {
		return fmt.Errorf("truncate closed writer of %q: %w", w.ref, errdefs.ErrFailedPrecondition)
	}
	w.h.Hash().Reset()
	now := time.Now().UTC()
	if err := w.saveMark(0, now); err != nil {
		return err
	}
	if err := w.f.Truncate(0); err != nil {
		return err
	}
	w.flushed = 0
	w.status.Offset = 0
	w.status.UpdatedAt = now
	return nil
}

// Close implements content.Writer: it drops what lies past the data
// acknowledged and saves the running hash so a later writer resumes without
// re-reading the data.
func (w *writer) Close() error {
	if w.closed {
		return nil
	}
	h := w.h.Hash()
	w.f.Truncate(w.status.Offset) // best effort: resuming skips the rest anyway
	if m, ok := h.(encoding.BinaryMarshaler); ok {
		if state, err := m.MarshalBinary(); err == nil {
			saved := binary.BigEndian.AppendUint64(nil, uint64(w.status.Offset))
			// Best effort: a missing or stale state only costs a re-read.
			os.WriteFile(filepath.Join(w.dir, hashFile), append(saved, state...), 0o644)
		}
	}
	err := w.closeFiles()
	w.unlock()
	return err
}

// closeFiles stops the hasher and closes the ingest's files; the ref stays
// locked.
func (w *writer) closeFiles() error {
	if w.closed {
		return nil
	}
	w.closed = true
	w.h.Stop()
	return errors.Join(w.f.Close(), w.mark.Close())
}

// unlock gives the ref back, once.
func (w *writer) unlock() {
	if !w.unlocked {
		w.unlocked = true
		w.s.unlock(w.dir)
	}
}

// Commit implements content.Writer. The ref stays locked until the ingest
// is gone, as containerd holds it: a writer that opens the ref meanwhile
// is told it is locked, rather than resuming an ingest being moved away.
func (w *writer) Commit(ctx context.Context, size int64, expected digest.Digest, labels map[string]string) error {
	if w.closed {
		return fmt.Errorf("commit %q on a closed writer: %w", w.ref, errdefs.ErrFailedPrecondition)
	}
	if err := metadata.ValidateLabels(labels); err != nil {
		w.Close() // nothing is wrong with the data: keep it for another try
		return fmt.Errorf("commit %q: %w", w.ref, err)
	}
	defer w.unlock()
	if err := w.verify(size, expected); err != nil {
		// The ingest stays, as containerd keeps it: a writer opened on the
		// ref again resumes it, and may commit it with other expectations
		// or truncate it (containerd's CommitErrorState).
		w.closeFiles()
		return err
	}
	dgst := w.Digest()
	if err := w.f.Truncate(w.status.Offset); err != nil {
		w.closeFiles()
		return fmt.Errorf("commit %q: drop what lies past the data: %w", w.ref, err)
	}
	if err := w.f.Sync(); err != nil {
		w.closeFiles()
		return fmt.Errorf("commit %q: sync: %w", w.ref, err)
	}
	if err := w.closeFiles(); err != nil {
		return fmt.Errorf("commit %q: %w", w.ref, err)
	}

	s := w.s
	done := s.tracker.Write(append(gc.LabelRefs(w.ns, labels), gc.Content(w.ns, dgst.String()), gc.Ingest(w.ns, w.ref))...)
	defer done()
	s.disk.Lock()
	defer s.disk.Unlock()
	if err := s.place(w.dir, dgst); err != nil {
		return fmt.Errorf("commit %q: %w", w.ref, err)
	}
	now := time.Now().UTC()
	info := content.Info{Digest: dgst, Size: w.status.Offset, CreatedAt: now, UpdatedAt: now, Labels: labels}
	var existed bool
	err := s.db.Update(func(tx *bolt.Tx) error {
		var err error
		if existed, err = record(tx, w.ns, w.lease, info); err != nil {
			return err
		}
		if w.lease != "" {
			return metadata.RemoveLeaseResource(tx, w.ns, w.lease, metadata.ResourceIngest, w.ref)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("commit %q: record %s: %w", w.ref, dgst, err)
	}
	if err := os.RemoveAll(w.dir); err != nil {
		return fmt.Errorf("commit %q: remove the ingest: %w", w.ref, err)
	}
	if existed {
		return fmt.Errorf("content %s: %w", dgst, errdefs.ErrAlreadyExists)
	}
	return nil
}

// Detach lets the ingest outlive the lease it was started under: from now
// on it lives as one started without a lease, until it goes idle. A
// server-side pull that fails midway detaches what it fetched, so that the
// next pull resumes it although the client has dropped its lease by then.
// (containerd collects such an ingest with the lease, and its retry
// downloads every byte again.)
func (w *writer) Detach() error {
	if w.lease == "" || w.closed {
		return nil
	}
	st, err := readState(w.dir)
	if err != nil {
		return fmt.Errorf("detach ingest %q: %w", w.ref, err)
	}
	st.Lease = ""
	if err := writeState(w.dir, st); err != nil {
		return fmt.Errorf("detach ingest %q: %w", w.ref, err)
	}
	lease := w.lease
	w.lease = ""
	err = w.s.db.Update(func(tx *bolt.Tx) error {
		err := metadata.RemoveLeaseResource(tx, w.ns, lease, metadata.ResourceIngest, w.ref)
		if errdefs.IsNotFound(err) {
			return nil // the lease went first
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("detach ingest %q from lease %q: %w", w.ref, lease, err)
	}
	return nil
}

// verify checks the written bytes against the size and digest a commit
// expects.
func (w *writer) verify(size int64, expected digest.Digest) error {
	if size > 0 && size != w.status.Offset {
		return fmt.Errorf("commit %q: unexpected commit size %d, expected %d: %w",
			w.ref, w.status.Offset, size, errdefs.ErrFailedPrecondition)
	}
	if dgst := w.Digest(); expected != "" && expected != dgst {
		return fmt.Errorf("commit %q: unexpected commit digest %s, expected %s: %w",
			w.ref, dgst, expected, errdefs.ErrFailedPrecondition)
	}
	return nil
}

// place moves the verified data of ingest dir into the blob store as dgst;
// when the blob is already there (the same bytes, committed by someone
// else) the data is simply dropped. The caller holds s.disk.
func (s *Store) place(dir string, dgst digest.Digest) error {
	target := s.blobPath(dgst)
	if _, err := os.Stat(target); err == nil {
		return nil
	}
	parent := filepath.Dir(target)
	if err := os.MkdirAll(parent, 0o711); err != nil {
		return err
	}
	if err := os.Rename(filepath.Join(dir, dataFile), target); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("ingest was aborted: %w", errdefs.ErrNotFound)
		}
		return err
	}
	if err := os.Chmod(target, 0o444); err != nil {
		return err
	}
	// Make the rename durable before any namespace records the blob.
	d, err := os.Open(parent)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// DefaultIngestIdle is how long an ingest may go without a write before
// RemoveIdleIngests takes it, when neither a writer nor a lease holds it.
// containerd gives an ingest without a lease 24 hours (its metadata store
// sets the ingest's expiry so, and garbage collection removes it after);
// Flotilla counts them from the last write rather than the start, so a
// long, slow download that keeps writing is never cut short.
const DefaultIngestIdle = 24 * time.Hour

// RemoveIdleIngests removes, in every namespace, the ingests last written
// before now minus idle that no writer and no lease holds, and what a crash
// left of ingests that never started; it returns the refs removed, by
// namespace. A writer opening such an ingest meanwhile either finds it
// locked (and retries) or finds it gone and starts over.
func (s *Store) RemoveIdleIngests(now time.Time, idle time.Duration) (map[string][]string, error) {
	entries, err := os.ReadDir(filepath.Join(s.root, "ingest"))
	if err != nil {
		return nil, fmt.Errorf("list ingests: %w", err)
	}
	removed := map[string][]string{}
	var errs []error
	for _, e := range entries {
		dir := filepath.Join(s.root, "ingest", e.Name())
		if err := s.lock(dir, e.Name()); err != nil {
			continue // a writer holds it: not idle
		}
		ns, ref, err := s.removeIfIdle(dir, now.Add(-idle))
		s.unlock(dir)
		if err != nil {
			errs = append(errs, err)
		} else if ref != "" {
			removed[ns] = append(removed[ns], ref)
		}
	}
	return removed, errors.Join(errs...)
}

// removeIfIdle removes the ingest in dir, which the caller has locked, if
// its last write is before cutoff and no lease holds it. It returns the
// namespace and ref removed, empty when it was kept.
func (s *Store) removeIfIdle(dir string, cutoff time.Time) (ns, ref string, err error) {
	st, err := readState(dir)
	if errors.Is(err, fs.ErrNotExist) {
		// A start cut short by a crash, before its state was written.
		fi, err := os.Stat(dir)
		if err != nil || !fi.ModTime().Before(cutoff) {
			return "", "", nil
		}
		return "", "", os.RemoveAll(dir)
	}
	if err != nil {
		return "", "", err
	}
	status, err := statusOf(dir, st)
	if err != nil || !status.UpdatedAt.Before(cutoff) {
		return "", "", err
	}
	var leased bool
	s.db.View(func(tx *bolt.Tx) error {
		leased = metadata.LeaseHolds(tx, st.Namespace, metadata.ResourceIngest, st.Ref)
		return nil
	})
	if leased {
		return "", "", nil
	}
	if err := s.removeIngest(st.Namespace, st.Ref, ""); err != nil && !errdefs.IsNotFound(err) {
		return "", "", err
	}
	return st.Namespace, st.Ref, nil
}
