package store

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"

	"github.com/flotilla/flotilla/contentd/content"
	"github.com/flotilla/flotilla/contentd/metadata"
	"github.com/flotilla/flotilla/services/gc"
)

// Records calls fn, inside tx, with every blob namespace ns records.
func Records(tx *bolt.Tx, ns string, fn func(content.Info) error) error {
	b := metadata.StoreBucket(tx, ns, metadata.BucketContent)
	if b == nil {
		return nil
	}
	return b.ForEachBucket(func(k []byte) error {
		info, err := decodeRecord(digest.Digest(k), b.Bucket(k))
		if err != nil {
			return err
		}
		return fn(info)
	})
}

// IngestInfo is an ingest as garbage collection sees it.
type IngestInfo struct {
	Namespace, Ref string
	Updated        time.Time
	Size           int64  // bytes written so far
	Writing        bool   // a writer holds it
	Leased         bool   // it was started under a lease
	Expected       string // the digest the writer expects, if it said
}

// Ingests lists the ingests on disk; ones whose state cannot be read are
// left out (RemoveIdleIngests deals with what a crash left).
func (s *Store) Ingests() ([]IngestInfo, error) {
	entries, err := os.ReadDir(filepath.Join(s.root, "ingest"))
	if err != nil {
		return nil, fmt.Errorf("list ingests: %w", err)
	}
	var out []IngestInfo
	for _, e := range entries {
		dir := filepath.Join(s.root, "ingest", e.Name())
		st, err := readState(dir)
		if err != nil {
			continue
		}
		status, err := statusOf(dir, st)
		if err != nil {
			continue
		}
		s.mu.Lock()
		_, writing := s.locked[dir]
		s.mu.Unlock()
		out = append(out, IngestInfo{Namespace: st.Namespace, Ref: st.Ref, Updated: status.UpdatedAt, Size: status.Offset, Writing: writing, Leased: st.Lease != "", Expected: st.Expected.String()})
	}
	return out, nil
}

// RemoveIngests removes the ingests refs name that no writer holds; it
// returns those removed and the bytes they held.
func (s *Store) RemoveIngests(refs []gc.Ref) (removed []gc.Ref, bytes int64, err error) {
	var errs []error
	for _, r := range refs {
		dir := s.ingestDir(r.Namespace, r.ID)
		if s.lock(dir, r.ID) != nil {
			continue // a writer came back to it
		}
		size := int64(0)
		if st, err := s.status(r.Namespace, r.ID); err == nil {
			size = st.Offset
		}
		err := s.removeIngest(r.Namespace, r.ID, "")
		s.unlock(dir)
		switch {
		case err == nil:
			removed = append(removed, r)
			bytes += size
		case !errdefs.IsNotFound(err):
			errs = append(errs, err)
		}
	}
	return removed, bytes, errors.Join(errs...)
}

// RemoveBlobs drops the namespace records refs name, in one transaction,
// and removes from disk each blob no namespace records any more. It
// returns the records removed and the bytes freed on disk.
func (s *Store) RemoveBlobs(refs []gc.Ref) (removed []gc.Ref, bytes int64, err error) {
	s.disk.Lock()
	defer s.disk.Unlock()
	var orphans []digest.Digest
	err = s.db.Update(func(tx *bolt.Tx) error {
		candidates := map[digest.Digest]bool{}
		for _, r := range refs {
			b := metadata.StoreBucket(tx, r.Namespace, metadata.BucketContent)
			if b == nil || b.Bucket([]byte(r.ID)) == nil {
				continue
			}
			if err := b.DeleteBucket([]byte(r.ID)); err != nil {
				return fmt.Errorf("remove content %s in %s: %w", r.ID, r.Namespace, err)
			}
			removed = append(removed, r)
			candidates[digest.Digest(r.ID)] = true
		}
		for dgst := range candidates {
			if !heldAnywhere(tx, dgst) {
				orphans = append(orphans, dgst)
			}
		}
		return nil
	})
	if err != nil {
		return nil, 0, err
	}
	var errs []error
	for _, dgst := range orphans {
		if dgst.Validate() != nil {
			continue
		}
		path := s.blobPath(dgst)
		fi, err := os.Stat(path)
		if err != nil {
			continue
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove blob %s: %w", dgst, err))
			continue
		}
		bytes += fi.Size()
	}
	return removed, bytes, errors.Join(errs...)
}

// RemoveUnrecordedBlobs removes the blob files no namespace records: what
// a crash left between placing a blob and recording it, or between
// dropping its last record and removing it. It returns how many went and
// the bytes freed. A commit places and records under s.disk, which this
// holds, so no blob being committed is taken.
func (s *Store) RemoveUnrecordedBlobs() (count int, bytes int64, err error) {
	s.disk.Lock()
	defer s.disk.Unlock()
	type file struct {
		path string
		dgst digest.Digest
		size int64
	}
	var files []file
	algs, err := os.ReadDir(filepath.Join(s.root, "blobs"))
	if err != nil {
		return 0, 0, fmt.Errorf("list blobs: %w", err)
	}
	for _, alg := range algs {
		entries, err := os.ReadDir(filepath.Join(s.root, "blobs", alg.Name()))
		if err != nil {
			continue
		}
		for _, e := range entries {
			dgst := digest.NewDigestFromEncoded(digest.Algorithm(alg.Name()), e.Name())
			if dgst.Validate() != nil {
				continue
			}
			fi, err := e.Info()
			if err != nil || !fi.Mode().IsRegular() {
				continue
			}
			files = append(files, file{path: filepath.Join(s.root, "blobs", alg.Name(), e.Name()), dgst: dgst, size: fi.Size()})
		}
	}
	// One pass over every namespace's records, not one lookup per file.
	recorded := map[digest.Digest]bool{}
	err = s.db.View(func(tx *bolt.Tx) error {
		return metadata.Namespaces(tx).ForEachBucket(func(ns []byte) error {
			b := metadata.StoreBucket(tx, string(ns), metadata.BucketContent)
			if b == nil {
				return nil
			}
			return b.ForEachBucket(func(k []byte) error {
				recorded[digest.Digest(k)] = true
				return nil
			})
		})
	})
	if err != nil {
		return 0, 0, err
	}
	var orphans []file
	for _, f := range files {
		if !recorded[f.dgst] {
			orphans = append(orphans, f)
		}
	}
	var errs []error
	for _, f := range orphans {
		if err := os.Remove(f.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
			continue
		}
		count++
		bytes += f.size
	}
	return count, bytes, errors.Join(errs...)
}
