// Package metastore keeps a snapshotter backend's records in bbolt: each
// snapshot's kind, parent, labels, times, usage once committed, and the
// numeric ID that names its directory. It enforces the Snapshotter
// contract's rules on keys, kinds and parents, so that every backend built on
// it answers with the same error kinds.
package metastore

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/containerd/errdefs"
	bolt "go.etcd.io/bbolt"

	"github.com/flotilla/flotilla/services/filters"
	"github.com/flotilla/flotilla/snapshotd/snapshotter"
)

var (
	bucketSnapshots = []byte("snapshots") // key -> record (JSON)
	bucketChildren  = []byte("children")  // parent "\x00" child -> nothing
)

// OpenTimeout bounds how long Open waits for another process (a previous
// instance of the backend that is still exiting) to release the database.
const OpenTimeout = 15 * time.Second

type record struct {
	ID      uint64            `json:"id"`
	Kind    snapshotter.Kind  `json:"kind"`
	Parent  string            `json:"parent,omitempty"`
	Labels  map[string]string `json:"labels,omitempty"`
	Created time.Time         `json:"created"`
	Updated time.Time         `json:"updated"`
	Size    int64             `json:"size,omitempty"`
	Inodes  int64             `json:"inodes,omitempty"`
}

// Snapshot is what a backend needs to build an active snapshot's or a
// view's mounts.
type Snapshot struct {
	ID   string
	Kind snapshotter.Kind
	// ParentIDs are the IDs of the parent chain, nearest parent first.
	ParentIDs []string
}

// Store is one backend's metadata database.
type Store struct {
	db *bolt.DB
}

// Open opens (creating it) the database at path.
func Open(path string) (*Store, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: OpenTimeout})
	if err != nil {
		return nil, fmt.Errorf("open snapshot metadata %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketSnapshots, bucketChildren} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("init snapshot metadata %s: %w", path, err)
	}
	return &Store{db: db}, nil
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

func get(tx *bolt.Tx, key string) (*record, error) {
	v := tx.Bucket(bucketSnapshots).Get([]byte(key))
	if v == nil {
		return nil, fmt.Errorf("snapshot %q: %w", key, errdefs.ErrNotFound)
	}
	var r record
	if err := json.Unmarshal(v, &r); err != nil {
		return nil, fmt.Errorf("snapshot %q: corrupt record: %v: %w", key, err, errdefs.ErrDataLoss)
	}
	return &r, nil
}

func put(tx *bolt.Tx, key string, r *record) error {
	v, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return tx.Bucket(bucketSnapshots).Put([]byte(key), v)
}

func childKey(parent, child string) []byte {
	return []byte(parent + "\x00" + child)
}

func info(key string, r *record) snapshotter.Info {
	return snapshotter.Info{
		Kind: r.Kind, Name: key, Parent: r.Parent, Labels: r.Labels,
		Created: r.Created, Updated: r.Updated,
	}
}

func idString(id uint64) string { return strconv.FormatUint(id, 10) }

// parentIDs follows the chain from parent up.
func parentIDs(tx *bolt.Tx, parent string) ([]string, error) {
	var ids []string
	for parent != "" {
		r, err := get(tx, parent)
		if err != nil {
			return nil, fmt.Errorf("parent chain broken: %w", err)
		}
		ids = append(ids, idString(r.ID))
		parent = r.Parent
	}
	return ids, nil
}

// Create records a new active snapshot or view key on parent and calls
// prepare with it before committing the record; an error from prepare (such
// as failing to create its directories) leaves no record behind.
func (s *Store) Create(key, parent string, kind snapshotter.Kind, opts []snapshotter.Opt, prepare func(Snapshot) error) (Snapshot, error) {
	if key == "" {
		return Snapshot{}, fmt.Errorf("snapshot key must not be empty: %w", errdefs.ErrInvalidArgument)
	}
	if kind != snapshotter.KindActive && kind != snapshotter.KindView {
		return Snapshot{}, fmt.Errorf("create %q: kind %s: %w", key, kind, errdefs.ErrInvalidArgument)
	}
	var base snapshotter.Info
	for _, o := range opts {
		if err := o(&base); err != nil {
			return Snapshot{}, err
		}
	}
	var snap Snapshot
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketSnapshots)
		if b.Get([]byte(key)) != nil {
			return fmt.Errorf("snapshot %q: %w", key, errdefs.ErrAlreadyExists)
		}
		if parent != "" {
			p, err := get(tx, parent)
			if err != nil {
				return fmt.Errorf("parent: %w", err)
			}
			if p.Kind != snapshotter.KindCommitted {
				return fmt.Errorf("parent %q is not a committed snapshot but %s: %w", parent, p.Kind, errdefs.ErrInvalidArgument)
			}
			ids, err := parentIDs(tx, parent)
			if err != nil {
				return err
			}
			snap.ParentIDs = ids
			if err := tx.Bucket(bucketChildren).Put(childKey(parent, key), nil); err != nil {
				return err
			}
		}
		id, err := b.NextSequence()
		if err != nil {
			return err
		}
		now := time.Now().UTC()
		r := &record{ID: id, Kind: kind, Parent: parent, Labels: base.Labels, Created: now, Updated: now}
		if err := put(tx, key, r); err != nil {
			return err
		}
		snap.ID = idString(id)
		snap.Kind = kind
		return prepare(snap)
	})
	if err != nil {
		return Snapshot{}, fmt.Errorf("create snapshot %q: %w", key, err)
	}
	return snap, nil
}

// Snapshot returns active snapshot or view key. NotFound if there is none,
// FailedPrecondition if it is committed.
func (s *Store) Snapshot(key string) (Snapshot, error) {
	var snap Snapshot
	err := s.db.View(func(tx *bolt.Tx) error {
		r, err := get(tx, key)
		if err != nil {
			return err
		}
		if r.Kind != snapshotter.KindActive && r.Kind != snapshotter.KindView {
			return fmt.Errorf("snapshot %q is %s, not active or a view: %w", key, r.Kind, errdefs.ErrFailedPrecondition)
		}
		ids, err := parentIDs(tx, r.Parent)
		if err != nil {
			return err
		}
		snap = Snapshot{ID: idString(r.ID), Kind: r.Kind, ParentIDs: ids}
		return nil
	})
	return snap, err
}

// Info returns snapshot key's ID, description and, if committed, its usage.
func (s *Store) Info(key string) (string, snapshotter.Info, snapshotter.Usage, error) {
	var (
		id string
		in snapshotter.Info
		u  snapshotter.Usage
	)
	err := s.db.View(func(tx *bolt.Tx) error {
		r, err := get(tx, key)
		if err != nil {
			return err
		}
		id, in, u = idString(r.ID), info(key, r), snapshotter.Usage{Size: r.Size, Inodes: r.Inodes}
		return nil
	})
	return id, in, u, err
}

// Update changes snapshot labels as snapshotter.Snapshotter.Update says.
func (s *Store) Update(update snapshotter.Info, fieldpaths ...string) (snapshotter.Info, error) {
	var out snapshotter.Info
	err := s.db.Update(func(tx *bolt.Tx) error {
		r, err := get(tx, update.Name)
		if err != nil {
			return err
		}
		out, err = snapshotter.ApplyUpdate(info(update.Name, r), update, time.Now().UTC(), fieldpaths...)
		if err != nil {
			return err
		}
		r.Labels, r.Updated = out.Labels, out.Updated
		return put(tx, update.Name, r)
	})
	return out, err
}

// Commit turns active snapshot key into committed snapshot name with the
// usage measured by the caller. It returns the snapshot's ID, which stays.
func (s *Store) Commit(name, key string, usage snapshotter.Usage, opts []snapshotter.Opt) error {
	if name == "" {
		return fmt.Errorf("commit %q: name must not be empty: %w", key, errdefs.ErrInvalidArgument)
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		r, err := get(tx, key)
		if err != nil {
			return fmt.Errorf("commit: %w", err)
		}
		if r.Kind != snapshotter.KindActive {
			return fmt.Errorf("commit %q: snapshot is %s, not active: %w", key, r.Kind, errdefs.ErrFailedPrecondition)
		}
		b := tx.Bucket(bucketSnapshots)
		if b.Get([]byte(name)) != nil {
			return fmt.Errorf("commit %q as %q: %w", key, name, errdefs.ErrAlreadyExists)
		}
		in := info(name, r)
		for _, o := range opts {
			if err := o(&in); err != nil {
				return err
			}
		}
		if err := b.Delete([]byte(key)); err != nil {
			return err
		}
		if r.Parent != "" {
			c := tx.Bucket(bucketChildren)
			if err := c.Delete(childKey(r.Parent, key)); err != nil {
				return err
			}
			if err := c.Put(childKey(r.Parent, name), nil); err != nil {
				return err
			}
		}
		r.Kind = snapshotter.KindCommitted
		r.Labels = in.Labels
		// The committed snapshot is a new one: created now, as in containerd.
		now := time.Now().UTC()
		r.Created, r.Updated = now, now
		r.Size, r.Inodes = usage.Size, usage.Inodes
		return put(tx, name, r)
	})
}

// Remove deletes snapshot key's record and calls remove with its ID before
// committing, so that a failure to move its data away keeps the record.
// FailedPrecondition if the snapshot has children.
func (s *Store) Remove(key string, remove func(id string) error) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		r, err := get(tx, key)
		if err != nil {
			return fmt.Errorf("remove: %w", err)
		}
		c := tx.Bucket(bucketChildren)
		prefix := []byte(key + "\x00")
		if k, _ := c.Cursor().Seek(prefix); k != nil && bytes.HasPrefix(k, prefix) {
			return fmt.Errorf("remove %q: it is the parent of %q: %w", key, string(k[len(prefix):]), errdefs.ErrFailedPrecondition)
		}
		if r.Parent != "" {
			if err := c.Delete(childKey(r.Parent, key)); err != nil {
				return err
			}
		}
		if err := tx.Bucket(bucketSnapshots).Delete([]byte(key)); err != nil {
			return err
		}
		return remove(idString(r.ID))
	})
}

// List returns every snapshot matching filter. It reads them all in one
// transaction and returns before the caller looks at them, so that a slow
// reader never holds the database.
func (s *Store) List(filter filters.Filter) ([]snapshotter.Info, error) {
	var out []snapshotter.Info
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketSnapshots).ForEach(func(k, v []byte) error {
			var r record
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("snapshot %q: corrupt record: %v: %w", k, err, errdefs.ErrDataLoss)
			}
			in := info(string(k), &r)
			if filter.Match(snapshotter.Fields(in)) {
				out = append(out, in)
			}
			return nil
		})
	})
	return out, err
}

// IDs returns the IDs of every recorded snapshot, for a backend to find
// directories no record owns.
func (s *Store) IDs() (map[string]bool, error) {
	ids := make(map[string]bool)
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketSnapshots).ForEach(func(_, v []byte) error {
			var r record
			if err := json.Unmarshal(v, &r); err != nil {
				return err
			}
			ids[idString(r.ID)] = true
			return nil
		})
	})
	return ids, err
}
