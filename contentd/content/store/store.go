// Package store is contentd's content store: blobs on disk, stored once
// for all namespaces under <root>/blobs/<algorithm>/<hex>, and made visible
// per namespace by records in the metadata database (bbolt). Ingests live
// under <root>/ingest/<sha256 of namespace and ref>/ and survive restarts.
//
// A namespace's record of a blob is a bucket under its content bucket:
//
//	content/<digest>/
//	  size       uvarint
//	  createdat  time (MarshalBinary)
//	  updatedat  time
//	  labels/    key → value
package store

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"sort"
	"strings"
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

var (
	keySize    = []byte("size")
	keyCreated = []byte("createdat")
	keyUpdated = []byte("updatedat")
	keyLabels  = []byte("labels")
)

// Store implements content.Store. It is safe for concurrent use; one
// process at a time may use a root.
type Store struct {
	root string
	db   *bolt.DB

	// disk orders "is the blob on disk? then record it" (commit, shared
	// writers) against "no namespace holds it? then remove it" (Delete), so
	// a blob is never removed under a namespace that just recorded it.
	disk sync.Mutex

	mu     sync.Mutex
	locked map[string]time.Time // ingest key → since when a writer holds it

	// tracker records, for a garbage collection running, what writes and
	// lookups touch; nil outside any collection.
	tracker *gc.Tracker
}

var (
	_ content.Store        = (*Store)(nil)
	_ content.IngestReader = (*Store)(nil)
)

// New opens the store rooted at root (creating its directories) whose
// records live in db, a database opened by metadata.Open.
func New(root string, db *bolt.DB) (*Store, error) {
	// What an abort cut short is thrown away for good.
	if err := os.RemoveAll(filepath.Join(root, "trash")); err != nil {
		return nil, fmt.Errorf("content store: %w", err)
	}
	for _, dir := range []string{filepath.Join(root, "blobs"), filepath.Join(root, "ingest"), filepath.Join(root, "trash")} {
		if err := os.MkdirAll(dir, 0o711); err != nil {
			return nil, fmt.Errorf("content store: %w", err)
		}
	}
	return &Store{root: root, db: db, locked: map[string]time.Time{}}, nil
}

// SetTracker makes the store report its writes and lookups to t, the
// tracker of contentd's garbage collection. Call it before the store is used.
func (s *Store) SetTracker(t *gc.Tracker) { s.tracker = t }

// parseDigest validates a client's digest: InvalidArgument when malformed
// or of an algorithm this build cannot compute.
func parseDigest(dgst digest.Digest) (digest.Digest, error) {
	if err := dgst.Validate(); err != nil {
		return "", fmt.Errorf("digest %q: %v: %w", dgst, err, errdefs.ErrInvalidArgument)
	}
	return dgst, nil
}

func (s *Store) blobPath(dgst digest.Digest) string {
	return filepath.Join(s.root, "blobs", dgst.Algorithm().String(), dgst.Encoded())
}

// Info implements content.InfoProvider.
func (s *Store) Info(ctx context.Context, dgst digest.Digest) (content.Info, error) {
	ns, err := namespace.Required(ctx)
	if err != nil {
		return content.Info{}, err
	}
	if dgst, err = parseDigest(dgst); err != nil {
		return content.Info{}, err
	}
	// A client that learns a blob is there may go on to reference it.
	s.tracker.Touch(gc.Content(ns, dgst.String()))
	var info content.Info
	err = s.db.View(func(tx *bolt.Tx) error {
		info, err = readRecord(tx, ns, dgst)
		return err
	})
	return info, err
}

// Update implements content.Manager.
func (s *Store) Update(ctx context.Context, in content.Info, fieldpaths ...string) (content.Info, error) {
	ns, err := namespace.Required(ctx)
	if err != nil {
		return content.Info{}, err
	}
	dgst, err := parseDigest(in.Digest)
	if err != nil {
		return content.Info{}, err
	}
	done := s.tracker.Write(append(gc.LabelRefs(ns, in.Labels), gc.Content(ns, dgst.String()))...)
	defer done()
	var out content.Info
	err = s.db.Update(func(tx *bolt.Tx) error {
		cur, err := readRecord(tx, ns, dgst)
		if err != nil {
			return err
		}
		labels, err := applyPaths(cur.Labels, in.Labels, fieldpaths)
		if err != nil {
			return fmt.Errorf("update content %s: %w", dgst, err)
		}
		if err := metadata.ValidateLabels(labels); err != nil {
			return err
		}
		cur.Labels = labels
		cur.UpdatedAt = time.Now().UTC()
		b := metadata.StoreBucket(tx, ns, metadata.BucketContent).Bucket([]byte(dgst))
		if err := writeRecord(b, cur); err != nil {
			return err
		}
		out, err = readRecord(tx, ns, dgst)
		return err
	})
	return out, err
}

// applyPaths returns the labels an update leaves, as containerd computes them.
func applyPaths(current, given map[string]string, paths []string) (map[string]string, error) {
	if len(paths) == 0 {
		return maps.Clone(given), nil
	}
	labels := maps.Clone(current)
	if labels == nil {
		labels = map[string]string{}
	}
	for _, p := range paths {
		switch {
		case p == "labels":
			labels = maps.Clone(given)
			if labels == nil {
				labels = map[string]string{}
			}
		case strings.HasPrefix(p, "labels."):
			key := strings.TrimPrefix(p, "labels.")
			if v := given[key]; v != "" {
				labels[key] = v
			} else {
				delete(labels, key)
			}
		default:
			return nil, fmt.Errorf("cannot update field %q (only labels may change): %w", p, errdefs.ErrInvalidArgument)
		}
	}
	return labels, nil
}

// Walk implements content.Manager. fn runs outside any database
// transaction, so a slow consumer holds nothing.
func (s *Store) Walk(ctx context.Context, fn func(content.Info) error, fs ...string) error {
	ns, err := namespace.Required(ctx)
	if err != nil {
		return err
	}
	filter, err := filters.ParseAll(fs...)
	if err != nil {
		return err
	}
	var infos []content.Info
	err = s.db.View(func(tx *bolt.Tx) error {
		b := metadata.StoreBucket(tx, ns, metadata.BucketContent)
		if b == nil {
			return nil
		}
		return b.ForEachBucket(func(k []byte) error {
			info, err := decodeRecord(digest.Digest(k), b.Bucket(k))
			if err != nil {
				return err
			}
			if filter.Match(adaptInfo(info)) {
				infos = append(infos, info)
			}
			return nil
		})
	})
	if err != nil {
		return err
	}
	for _, info := range infos {
		if err := fn(info); err != nil {
			return err
		}
	}
	return nil
}

// adaptInfo exposes a blob to filters: digest, size and labels.KEY (a
// key holding dots may be written labels."a.b" or labels.a.b).
func adaptInfo(info content.Info) filters.Adaptor {
	return filters.AdapterFunc(func(path []string) (string, bool) {
		if len(path) == 0 {
			return "", false
		}
		switch path[0] {
		case "digest":
			return info.Digest.String(), len(path) == 1
		case "size":
			return fmt.Sprint(info.Size), len(path) == 1
		case "labels":
			if len(path) < 2 {
				return "", false
			}
			v, ok := info.Labels[strings.Join(path[1:], ".")]
			return v, ok
		}
		return "", false
	})
}

// Delete implements content.Manager.
func (s *Store) Delete(ctx context.Context, dgst digest.Digest) error {
	ns, err := namespace.Required(ctx)
	if err != nil {
		return err
	}
	if dgst, err = parseDigest(dgst); err != nil {
		return err
	}
	s.disk.Lock()
	defer s.disk.Unlock()
	var orphan bool
	err = s.db.Update(func(tx *bolt.Tx) error {
		b := metadata.StoreBucket(tx, ns, metadata.BucketContent)
		if b == nil || b.Bucket([]byte(dgst)) == nil {
			return fmt.Errorf("content %s: %w", dgst, errdefs.ErrNotFound)
		}
		if err := b.DeleteBucket([]byte(dgst)); err != nil {
			return err
		}
		orphan = !heldAnywhere(tx, dgst)
		return nil
	})
	if err != nil || !orphan {
		return err
	}
	// The record is gone for good; the bytes follow once nobody holds them.
	// Readers that opened the blob keep reading it.
	if err := os.Remove(s.blobPath(dgst)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove blob %s: %w", dgst, err)
	}
	return nil
}

// heldAnywhere reports whether any namespace records blob dgst.
func heldAnywhere(tx *bolt.Tx, dgst digest.Digest) bool {
	held := false
	metadata.Namespaces(tx).ForEachBucket(func(ns []byte) error {
		if b := metadata.StoreBucket(tx, string(ns), metadata.BucketContent); b != nil && b.Bucket([]byte(dgst)) != nil {
			held = true
			return errStop
		}
		return nil
	})
	return held
}

var errStop = errors.New("stop")

// ReaderAt implements content.Provider.
func (s *Store) ReaderAt(ctx context.Context, dgst digest.Digest) (content.ReaderAt, error) {
	info, err := s.Info(ctx, dgst)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(s.blobPath(info.Digest))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("content %s: recorded but missing on disk: %w", dgst, errdefs.ErrNotFound)
		}
		return nil, fmt.Errorf("open blob %s: %w", dgst, err)
	}
	return &reader{File: f, size: info.Size}, nil
}

type reader struct {
	*os.File
	size int64
}

func (r *reader) Size() int64 { return r.size }

// readRecord returns namespace ns's record of dgst, NotFound without one.
func readRecord(tx *bolt.Tx, ns string, dgst digest.Digest) (content.Info, error) {
	b := metadata.StoreBucket(tx, ns, metadata.BucketContent)
	if b != nil {
		b = b.Bucket([]byte(dgst))
	}
	if b == nil {
		return content.Info{}, fmt.Errorf("content %s: %w", dgst, errdefs.ErrNotFound)
	}
	return decodeRecord(dgst, b)
}

func decodeRecord(dgst digest.Digest, b *bolt.Bucket) (content.Info, error) {
	info := content.Info{Digest: dgst, Labels: metadata.ReadLabels(b.Bucket(keyLabels))}
	size, n := binary.Uvarint(b.Get(keySize))
	if n <= 0 {
		return content.Info{}, fmt.Errorf("content %s: corrupt size record", dgst)
	}
	info.Size = int64(size)
	var err error
	if info.CreatedAt, err = metadata.GetTime(b, keyCreated); err != nil {
		return content.Info{}, err
	}
	if info.UpdatedAt, err = metadata.GetTime(b, keyUpdated); err != nil {
		return content.Info{}, err
	}
	return info, nil
}

func writeRecord(b *bolt.Bucket, info content.Info) error {
	if err := b.Put(keySize, binary.AppendUvarint(nil, uint64(info.Size))); err != nil {
		return err
	}
	if err := metadata.PutTime(b, keyCreated, info.CreatedAt); err != nil {
		return err
	}
	if err := metadata.PutTime(b, keyUpdated, info.UpdatedAt); err != nil {
		return err
	}
	return metadata.WriteLabels(b, keyLabels, info.Labels)
}

// record makes blob info visible in namespace ns and, with a lease, holds
// it by that lease. It reports whether the namespace already recorded the
// blob, in which case the record is left as it was but the lease holds it
// all the same (as in containerd); the caller reports AlreadyExists after
// the transaction commits.
func record(tx *bolt.Tx, ns, lease string, info content.Info) (existed bool, err error) {
	if lease != "" {
		if err := metadata.AddLeaseResource(tx, ns, lease, metadata.ResourceContent, info.Digest.String()); err != nil {
			return false, err
		}
	}
	cb, err := metadata.CreateStoreBucket(tx, ns, metadata.BucketContent)
	if err != nil {
		return false, err
	}
	if cb.Bucket([]byte(info.Digest)) != nil {
		return true, nil
	}
	b, err := cb.CreateBucket([]byte(info.Digest))
	if err != nil {
		return false, err
	}
	return false, writeRecord(b, info)
}

// sortStatuses orders ingests by ref.
func sortStatuses(st []content.Status) {
	sort.Slice(st, func(i, j int) bool { return st[i].Ref < st[j].Ref })
}
