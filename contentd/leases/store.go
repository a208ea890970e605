// Package leases keeps contentd's leases — named holds that keep content,
// ingests, snapshots and other resources from being collected while a
// client works with them — in the metadata database, and serves them as
// containerd's Leases API.
package leases

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	digest "github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"

	"github.com/flotilla/flotilla/contentd/metadata"
	"github.com/flotilla/flotilla/services/filters"
	"github.com/flotilla/flotilla/services/gc"
	"github.com/flotilla/flotilla/services/namespace"
)

// LabelExpire is containerd's label giving the time (RFC 3339) after which a
// lease may be removed; `ctr leases create --expires 1h` sets it.
const LabelExpire = "containerd.io/gc.expire"

// Lease is a lease and its labels.
type Lease struct {
	ID        string
	CreatedAt time.Time
	Labels    map[string]string
}

// Resource is something a lease holds. Type is containerd's: "content" (ID
// a digest), "ingests" (ID an ingest ref), "snapshots/<snapshotter>" (ID a
// snapshot key); other types are kept as given for other services' use.
type Resource struct {
	ID   string
	Type string
}

// Store keeps leases in the namespace carried by each call's context; a
// context without one is InvalidArgument.
type Store interface {
	// Create creates lease id, or a lease with a generated ID when id is
	// empty; AlreadyExists if it exists. As in containerd, any other ID is
	// accepted: clients generate IDs (ctr's hold base64 such as
	// "289428163-DZc-") that break the identifier rules. A LabelExpire
	// label must be an RFC 3339 time.
	Create(ctx context.Context, id string, labels map[string]string) (Lease, error)
	// Delete removes lease id and what it holds; NotFound if it does not exist.
	Delete(ctx context.Context, id string) error
	// List returns the leases matching any of filters (containerd's
	// syntax over id, labels.KEY and created_at), sorted by ID.
	List(ctx context.Context, filters ...string) ([]Lease, error)
	// AddResource records that lease id holds r; NotFound if the lease does
	// not exist, InvalidArgument if r is malformed. Adding twice is no error.
	AddResource(ctx context.Context, id string, r Resource) error
	// DeleteResource forgets that lease id holds r; NotFound if the lease
	// does not exist. Forgetting what it does not hold is no error.
	DeleteResource(ctx context.Context, id string, r Resource) error
	// ListResources returns what lease id holds, sorted by type then ID;
	// NotFound if the lease does not exist.
	ListResources(ctx context.Context, id string) ([]Resource, error)
}

// BoltStore is the Store kept in contentd's metadata database.
type BoltStore struct {
	db      *bolt.DB
	tracker *gc.Tracker // nil outside garbage collection
}

var _ Store = (*BoltStore)(nil)

// NewStore returns the Store kept in db, a database opened by metadata.Open.
func NewStore(db *bolt.DB) *BoltStore { return &BoltStore{db: db} }

// SetTracker makes the store report its writes to t, the tracker of
// contentd's garbage collection. Call it before the store is used.
func (s *BoltStore) SetTracker(t *gc.Tracker) { s.tracker = t }

// Ref names resource r of namespace ns for garbage collection; false for a
// type collection does not know.
func (r Resource) Ref(ns string) (gc.Ref, bool) {
	switch typ, sn, _ := strings.Cut(r.Type, "/"); typ {
	case metadata.ResourceContent:
		return gc.Content(ns, r.ID), true
	case metadata.ResourceIngest:
		return gc.Ingest(ns, r.ID), true
	case metadata.ResourceImage:
		return gc.Image(ns, r.ID), true
	case "snapshots":
		if sn != "" {
			return gc.Snapshot(ns, sn, r.ID), true
		}
	}
	return gc.Ref{}, false
}

// ForEach calls fn, inside tx, with every lease of namespace ns and what
// it holds.
func ForEach(tx *bolt.Tx, ns string, fn func(Lease, []Resource) error) error {
	b := metadata.StoreBucket(tx, ns, metadata.BucketLeases)
	if b == nil {
		return nil
	}
	return b.ForEachBucket(func(id []byte) error {
		lb := b.Bucket(id)
		l, err := read(lb, string(id))
		if err != nil {
			return err
		}
		var held []Resource
		if rb := lb.Bucket(metadata.BucketResources); rb != nil {
			rb.ForEachBucket(func(typ []byte) error {
				return rb.Bucket(typ).ForEach(func(rid, _ []byte) error {
					held = append(held, Resource{ID: string(rid), Type: string(typ)})
					return nil
				})
			})
		}
		return fn(l, held)
	})
}

// DeleteRecord removes lease id of namespace ns inside tx; it reports
// whether there was one.
func DeleteRecord(tx *bolt.Tx, ns, id string) (bool, error) {
	b := metadata.StoreBucket(tx, ns, metadata.BucketLeases)
	if b == nil || b.Bucket([]byte(id)) == nil {
		return false, nil
	}
	return true, b.DeleteBucket([]byte(id))
}

// Create implements Store.
func (s *BoltStore) Create(ctx context.Context, id string, labels map[string]string) (Lease, error) {
	ns, err := namespace.Required(ctx)
	if err != nil {
		return Lease{}, err
	}
	if id == "" {
		id = newID()
	}
	if err := metadata.ValidateLabels(labels); err != nil {
		return Lease{}, fmt.Errorf("lease %q: %w", id, err)
	}
	if v, ok := labels[LabelExpire]; ok && v != "" {
		if _, err := time.Parse(time.RFC3339, v); err != nil {
			return Lease{}, fmt.Errorf("lease %q: label %s=%q is not an RFC 3339 time: %w", id, LabelExpire, v, errdefs.ErrInvalidArgument)
		}
	}
	done := s.tracker.Write(gc.Lease(ns, id))
	defer done()
	var out Lease
	err = s.db.Update(func(tx *bolt.Tx) error {
		b, err := metadata.CreateStoreBucket(tx, ns, metadata.BucketLeases)
		if err != nil {
			return err
		}
		if b.Bucket([]byte(id)) != nil {
			return fmt.Errorf("lease %q: %w", id, errdefs.ErrAlreadyExists)
		}
		lb, err := b.CreateBucket([]byte(id))
		if err != nil {
			return err
		}
		if err := metadata.PutTime(lb, metadata.KeyCreated, time.Now().UTC()); err != nil {
			return err
		}
		if err := metadata.WriteLabels(lb, metadata.BucketLabels, labels); err != nil {
			return err
		}
		out, err = read(lb, id)
		return err
	})
	return out, err
}

// Delete implements Store.
func (s *BoltStore) Delete(ctx context.Context, id string) error {
	ns, err := namespace.Required(ctx)
	if err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		b := metadata.StoreBucket(tx, ns, metadata.BucketLeases)
		if b == nil || id == "" || b.Bucket([]byte(id)) == nil {
			return fmt.Errorf("lease %q: %w", id, errdefs.ErrNotFound)
		}
		return b.DeleteBucket([]byte(id))
	})
}

// List implements Store.
func (s *BoltStore) List(ctx context.Context, fs ...string) ([]Lease, error) {
	ns, err := namespace.Required(ctx)
	if err != nil {
		return nil, err
	}
	f, err := filters.ParseAll(fs...)
	if err != nil {
		return nil, err
	}
	var out []Lease
	err = s.db.View(func(tx *bolt.Tx) error {
		b := metadata.StoreBucket(tx, ns, metadata.BucketLeases)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			if v != nil {
				return nil
			}
			l, err := read(b.Bucket(k), string(k))
			if err != nil {
				return err
			}
			if f.Match(adaptor(l)) {
				out = append(out, l)
			}
			return nil
		})
	})
	return out, err
}

// AddResource implements Store.
func (s *BoltStore) AddResource(ctx context.Context, id string, r Resource) error {
	ns, err := namespace.Required(ctx)
	if err != nil {
		return err
	}
	if r, err = validateResource(r); err != nil {
		return fmt.Errorf("lease %q: %w", id, err)
	}
	touched := []gc.Ref{gc.Lease(ns, id)}
	if ref, ok := r.Ref(ns); ok {
		touched = append(touched, ref)
	}
	done := s.tracker.Write(touched...)
	defer done()
	return s.db.Update(func(tx *bolt.Tx) error {
		return metadata.AddLeaseResource(tx, ns, id, r.Type, r.ID)
	})
}

// DeleteResource implements Store.
func (s *BoltStore) DeleteResource(ctx context.Context, id string, r Resource) error {
	ns, err := namespace.Required(ctx)
	if err != nil {
		return err
	}
	if r, err = validateResource(r); err != nil {
		return fmt.Errorf("lease %q: %w", id, err)
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		return metadata.RemoveLeaseResource(tx, ns, id, r.Type, r.ID)
	})
}

// ListResources implements Store.
func (s *BoltStore) ListResources(ctx context.Context, id string) ([]Resource, error) {
	ns, err := namespace.Required(ctx)
	if err != nil {
		return nil, err
	}
	var out []Resource
	err = s.db.View(func(tx *bolt.Tx) error {
		b := metadata.StoreBucket(tx, ns, metadata.BucketLeases)
		var lb *bolt.Bucket
		if b != nil && id != "" {
			lb = b.Bucket([]byte(id))
		}
		if lb == nil {
			return fmt.Errorf("lease %q: %w", id, errdefs.ErrNotFound)
		}
		rb := lb.Bucket(metadata.BucketResources)
		if rb == nil {
			return nil
		}
		return rb.ForEach(func(typ, v []byte) error {
			kb := rb.Bucket(typ)
			if v != nil || kb == nil {
				return nil
			}
			return kb.ForEach(func(rid, _ []byte) error {
				out = append(out, Resource{ID: string(rid), Type: string(typ)})
				return nil
			})
		})
	})
	return out, err
}

// DeleteExpired removes, in every namespace, the leases whose LabelExpire
// time is before now, and returns them as namespace → IDs. It stands in for
// the expiry half of containerd's garbage collector.
func (s *BoltStore) DeleteExpired(now time.Time) (map[string][]string, error) {
	deleted := map[string][]string{}
	err := s.db.Update(func(tx *bolt.Tx) error {
		return metadata.Namespaces(tx).ForEach(func(ns, v []byte) error {
			if v != nil {
				return nil
			}
			b := metadata.StoreBucket(tx, string(ns), metadata.BucketLeases)
			if b == nil {
				return nil
			}
			var expired [][]byte
			b.ForEach(func(id, v []byte) error {
				if lb := b.Bucket(id); v == nil && lb != nil && isExpired(lb, now) {
					expired = append(expired, id)
				}
				return nil
			})
			for _, id := range expired {
				if err := b.DeleteBucket(id); err != nil {
					return err
				}
				deleted[string(ns)] = append(deleted[string(ns)], string(id))
			}
			return nil
		})
	})
	return deleted, err
}

func isExpired(lb *bolt.Bucket, now time.Time) bool {
	lab := lb.Bucket(metadata.BucketLabels)
	if lab == nil {
		return false
	}
	v := lab.Get([]byte(LabelExpire))
	if v == nil {
		return false
	}
	t, err := time.Parse(time.RFC3339, string(v))
	return err == nil && t.Before(now)
}

// validateResource checks r as containerd does for the types it knows and
// returns it normalized (a content digest in canonical form).
func validateResource(r Resource) (Resource, error) {
	if r.ID == "" || r.Type == "" {
		return r, fmt.Errorf("resource needs an ID and a type, got id %q type %q: %w", r.ID, r.Type, errdefs.ErrInvalidArgument)
	}
	parts := strings.Split(r.Type, "/")
	switch parts[0] {
	case metadata.ResourceContent:
		if len(parts) != 1 {
			return r, fmt.Errorf("invalid resource type %q: %w", r.Type, errdefs.ErrInvalidArgument)
		}
		d, err := digest.Parse(r.ID)
		if err != nil {
			return r, fmt.Errorf("content resource %q: %v: %w", r.ID, err, errdefs.ErrInvalidArgument)
		}
		r.ID = d.String()
	case metadata.ResourceIngest:
		if len(parts) != 1 {
			return r, fmt.Errorf("invalid resource type %q: %w", r.Type, errdefs.ErrInvalidArgument)
		}
	case "snapshots":
		if len(parts) != 2 || parts[1] == "" {
			return r, fmt.Errorf("invalid resource type %q: want snapshots/<snapshotter>: %w", r.Type, errdefs.ErrInvalidArgument)
		}
	}
	return r, nil
}

func read(lb *bolt.Bucket, id string) (Lease, error) {
	created, err := metadata.GetTime(lb, metadata.KeyCreated)
	if err != nil {
		return Lease{}, fmt.Errorf("lease %q: %w", id, err)
	}
	labels := metadata.ReadLabels(lb.Bucket(metadata.BucketLabels))
	return Lease{ID: id, CreatedAt: created, Labels: labels}, nil
}

// newID returns a fresh lease ID: the time in nanoseconds and random bits,
// unique without a lookup and sorted roughly by creation.
func newID() string {
	var b [4]byte
	rand.Read(b[:])
	return strconv.FormatInt(time.Now().UnixNano(), 10) + "-" + hex.EncodeToString(b[:])
}

// adaptor exposes a lease to filters with containerd's field names.
func adaptor(l Lease) filters.Adaptor {
	return filters.AdapterFunc(func(path []string) (string, bool) {
		if len(path) == 0 {
			return "", false
		}
		switch path[0] {
		case "id":
			return l.ID, len(path) == 1
		case "created_at":
			return l.CreatedAt.Format(time.RFC3339Nano), len(path) == 1
		case "labels":
			return metadata.MapField(l.Labels, path[1:])
		}
		return "", false
	})
}
