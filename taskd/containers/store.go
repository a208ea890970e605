// Package containers keeps container records — what a container is made of
// (its OCI runtime spec, runtime, image, snapshot, labels, extensions) — and
// serves them as containerd's Containers API. A record says nothing about
// whether the container runs: that is the task's business (package tasks).
package containers

import (
	"context"
	"fmt"
	"strings"
	"time"

	api "github.com/containerd/containerd/api/services/containers/v1"
	"github.com/containerd/errdefs"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/flotilla/flotilla/services/filters"
	"github.com/flotilla/flotilla/services/gc"
	"github.com/flotilla/flotilla/services/identifiers"
	"github.com/flotilla/flotilla/services/labels"
	"github.com/flotilla/flotilla/services/namespace"
	"github.com/flotilla/flotilla/taskd/metadata"
)

// MaxLabelSize bounds a label's key and value together, as in containerd.
const MaxLabelSize = labels.MaxSize

// Store keeps the container records of every namespace; each method works in
// the namespace carried by ctx and fails with InvalidArgument without one.
// Records are containerd's wire type, kept as given: the spec and extension
// Anys are stored byte for byte.
type Store interface {
	// Get returns the container id, or NotFound.
	Get(ctx context.Context, id string) (*api.Container, error)
	// List returns the containers matching any of the filters (containerd's
	// filter syntax over id, image, runtime.name, snapshotter, labels.KEY),
	// all of them with none, ordered by id.
	List(ctx context.Context, filters ...string) ([]*api.Container, error)
	// Create stores a new container, stamping its creation and update times.
	// It fails with InvalidArgument when the record breaks containerd's rules
	// (identifier, runtime name and spec required, label sizes, snapshot key
	// without snapshotter) and with AlreadyExists when the id is taken.
	Create(ctx context.Context, c *api.Container) (*api.Container, error)
	// Update changes the fields of container c.ID named by fieldpaths
	// (labels, labels.KEY, extensions, extensions.KEY, spec, image,
	// snapshotkey), or with none replaces labels, extensions, spec, image and
	// snapshot key and fails with InvalidArgument if c's runtime name or
	// snapshotter differ (they cannot change). A label or extension set to
	// the empty value is removed. Unknown paths are InvalidArgument; a
	// missing container is NotFound.
	Update(ctx context.Context, c *api.Container, fieldpaths ...string) (*api.Container, error)
	// Delete removes the container id, or fails with NotFound.
	Delete(ctx context.Context, id string) error
}

// BoltStore is the Store in taskd's metadata database.
type BoltStore struct {
	db      *bolt.DB
	now     func() time.Time
	tracker *gc.Tracker // nil outside garbage collection
}

// SetTracker makes the store report its writes and lookups to t, the
// tracker of contentd's garbage collection. Call it before the store is used.
func (s *BoltStore) SetTracker(t *gc.Tracker) { s.tracker = t }

// references names what container c keeps alive: its snapshot, its image
// and what its labels reference.
func references(ns string, c *api.Container) []gc.Ref {
	refs := gc.LabelRefs(ns, c.GetLabels())
	if c.GetSnapshotKey() != "" && c.GetSnapshotter() != "" {
		refs = append(refs, gc.Snapshot(ns, c.GetSnapshotter(), c.GetSnapshotKey()))
	}
	if c.GetImage() != "" {
		refs = append(refs, gc.Image(ns, c.GetImage()))
	}
	return refs
}

// GCSource is taskd's part in garbage collection: containers are roots,
// and keep their snapshot and what their labels name alive. taskd never
// removes a container for the collector.
type GCSource struct{ store *BoltStore }

// NewGCSource returns taskd's gc.Source over store.
func NewGCSource(store *BoltStore) *GCSource { return &GCSource{store: store} }

// Mark implements gc.Source.
func (g *GCSource) Mark(ctx context.Context, fn func(gc.Graph) error) error {
	var graph gc.Graph
	err := g.store.db.View(func(tx *bolt.Tx) error {
		return metadata.ForEachNamespace(tx, func(ns string, b *bolt.Bucket) error {
			cb := b.Bucket(metadata.BucketContainers)
			if cb == nil {
				return nil
			}
			return cb.ForEach(func(k, _ []byte) error {
				c, err := read(cb, ns, string(k))
				if err != nil {
					return err
				}
				ref := gc.Container(ns, c.GetID())
				graph.Objects = append(graph.Objects, gc.Object{Ref: ref, Root: true})
				// As containerd: its snapshot and gc.ref labels, not its
				// image (an image is a root until it expires or goes).
				for _, to := range gc.LabelRefs(ns, c.GetLabels()) {
					graph.Edges = append(graph.Edges, gc.Edge{From: ref, To: to})
				}
				if c.GetSnapshotKey() != "" && c.GetSnapshotter() != "" {
					graph.Edges = append(graph.Edges, gc.Edge{From: ref, To: gc.Snapshot(ns, c.GetSnapshotter(), c.GetSnapshotKey())})
				}
				for _, parent := range gc.LabelBackRefs(ns, c.GetLabels()) {
					graph.Edges = append(graph.Edges, gc.Edge{From: parent, To: ref})
				}
				return nil
			})
		})
	})
	if err != nil {
		return err
	}
	return fn(graph)
}

// Remove implements gc.Source; containers are roots, so nothing is asked.
func (g *GCSource) Remove(context.Context, []gc.Ref) ([]gc.Removed, error) { return nil, nil }

// NewStore returns the container store kept in db (see package metadata).
func NewStore(db *bolt.DB) *BoltStore {
	return &BoltStore{db: db, now: func() time.Time { return time.Now().UTC() }}
}

// Get implements Store.
func (s *BoltStore) Get(ctx context.Context, id string) (*api.Container, error) {
	ns, err := namespace.Required(ctx)
	if err != nil {
		return nil, err
	}
	if id == "" {
		return nil, fmt.Errorf("container id is required: %w", errdefs.ErrInvalidArgument)
	}
	var c *api.Container
	err = s.db.View(func(tx *bolt.Tx) error {
		var err error
		c, err = read(metadata.StoreBucket(tx, ns, metadata.BucketContainers), ns, id)
		return err
	})
	return c, err
}

// List implements Store.
func (s *BoltStore) List(ctx context.Context, fs ...string) ([]*api.Container, error) {
	ns, err := namespace.Required(ctx)
	if err != nil {
		return nil, err
	}
	filter, err := filters.ParseAll(fs...)
	if err != nil {
		return nil, err
	}
	var out []*api.Container
	err = s.db.View(func(tx *bolt.Tx) error {
		b := metadata.StoreBucket(tx, ns, metadata.BucketContainers)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			var c api.Container
			if err := proto.Unmarshal(v, &c); err != nil {
				return fmt.Errorf("container %q in namespace %q: decode: %w", k, ns, err)
			}
			if filter.Match(Fields(&c)) {
				out = append(out, &c)
			}
			return nil
		})
	})
	return out, err
}

// Create implements Store.
func (s *BoltStore) Create(ctx context.Context, c *api.Container) (*api.Container, error) {
	ns, err := namespace.Required(ctx)
	if err != nil {
		return nil, err
	}
	rec := proto.Clone(c).(*api.Container)
	if err := Validate(rec); err != nil {
		return nil, err
	}
	now := timestamppb.New(s.now())
	rec.CreatedAt, rec.UpdatedAt = now, now
	dropEmpty(rec)
	done := s.tracker.Write(append(references(ns, rec), gc.Container(ns, rec.GetID()))...)
	defer done()
	err = s.db.Update(func(tx *bolt.Tx) error {
		b, err := metadata.CreateStoreBucket(tx, ns, metadata.BucketContainers)
		if err != nil {
			return err
		}
		if b.Get([]byte(rec.ID)) != nil {
			return fmt.Errorf("container %q in namespace %q: %w", rec.ID, ns, errdefs.ErrAlreadyExists)
		}
		return write(b, rec)
	})
	if err != nil {
		return nil, err
	}
	return rec, nil
}

// Update implements Store.
func (s *BoltStore) Update(ctx context.Context, c *api.Container, fieldpaths ...string) (*api.Container, error) {
	ns, err := namespace.Required(ctx)
	if err != nil {
		return nil, err
	}
	if c.GetID() == "" {
		return nil, fmt.Errorf("container id is required: %w", errdefs.ErrInvalidArgument)
	}
	// What the update may reference is in c.
	done := s.tracker.Write(append(references(ns, c), gc.Container(ns, c.GetID()))...)
	defer done()
	var updated *api.Container
	err = s.db.Update(func(tx *bolt.Tx) error {
		b := metadata.StoreBucket(tx, ns, metadata.BucketContainers)
		cur, err := read(b, ns, c.ID)
		if err != nil {
			return err
		}
		if err := applyUpdate(cur, c, fieldpaths); err != nil {
			return fmt.Errorf("update container %q: %w", c.ID, err)
		}
		if err := Validate(cur); err != nil {
			return err
		}
		cur.UpdatedAt = timestamppb.New(s.now())
		dropEmpty(cur)
		updated = cur
		return write(b, cur)
	})
	if err != nil {
		return nil, err
	}
	return updated, nil
}

// Delete implements Store.
func (s *BoltStore) Delete(ctx context.Context, id string) error {
	ns, err := namespace.Required(ctx)
	if err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		b := metadata.StoreBucket(tx, ns, metadata.BucketContainers)
		if b == nil || b.Get([]byte(id)) == nil {
			return fmt.Errorf("container %q in namespace %q: %w", id, ns, errdefs.ErrNotFound)
		}
		return b.Delete([]byte(id))
	})
}

// Validate checks a container record with containerd's rules.
func Validate(c *api.Container) error {
	if err := identifiers.Validate(c.GetID()); err != nil {
		return fmt.Errorf("container id: %w", err)
	}
	if err := labels.ValidateAll(c.GetLabels()); err != nil {
		return fmt.Errorf("container %q: %w", c.ID, err)
	}
	for k := range c.GetExtensions() {
		if k == "" {
			return fmt.Errorf("container %q: extension keys must not be empty: %w", c.ID, errdefs.ErrInvalidArgument)
		}
	}
	if c.GetRuntime().GetName() == "" {
		return fmt.Errorf("container %q: runtime name must be set: %w", c.ID, errdefs.ErrInvalidArgument)
	}
	if c.GetSpec() == nil {
		return fmt.Errorf("container %q: spec must be set: %w", c.ID, errdefs.ErrInvalidArgument)
	}
	if c.GetSnapshotKey() != "" && c.GetSnapshotter() == "" {
		return fmt.Errorf("container %q: snapshotter must be set with a snapshot key: %w", c.ID, errdefs.ErrInvalidArgument)
	}
	return nil
}

// applyUpdate copies into cur the fields of in named by fieldpaths.
func applyUpdate(cur, in *api.Container, fieldpaths []string) error {
	if len(fieldpaths) == 0 {
		if in.GetSnapshotter() != cur.GetSnapshotter() {
			return fmt.Errorf("snapshotter cannot change: %w", errdefs.ErrInvalidArgument)
		}
		if in.GetRuntime().GetName() != cur.GetRuntime().GetName() {
			return fmt.Errorf("runtime name cannot change: %w", errdefs.ErrInvalidArgument)
		}
		fieldpaths = []string{"labels", "extensions", "spec", "image", "snapshotkey"}
	}
	for _, path := range fieldpaths {
		if key, ok := strings.CutPrefix(path, "labels."); ok {
			if cur.Labels == nil {
				cur.Labels = map[string]string{}
			}
			cur.Labels[key] = in.GetLabels()[key]
			continue
		}
		if key, ok := strings.CutPrefix(path, "extensions."); ok {
			if cur.Extensions == nil {
				cur.Extensions = map[string]*anypb.Any{}
			}
			cur.Extensions[key] = in.GetExtensions()[key]
			continue
		}
		switch path {
		case "labels":
			cur.Labels = in.GetLabels()
		case "extensions":
			cur.Extensions = in.GetExtensions()
		case "spec":
			cur.Spec = in.GetSpec()
		case "image":
			cur.Image = in.GetImage()
		case "snapshotkey":
			cur.SnapshotKey = in.GetSnapshotKey()
		default:
			return fmt.Errorf("field %q cannot be updated: %w", path, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}

// dropEmpty removes labels with empty values and nil extensions, which is how
// a client deletes one.
func dropEmpty(c *api.Container) {
	for k, v := range c.Labels {
		if v == "" {
			delete(c.Labels, k)
		}
	}
	for k, v := range c.Extensions {
		if v == nil {
			delete(c.Extensions, k)
		}
	}
}

func read(b *bolt.Bucket, ns, id string) (*api.Container, error) {
	var v []byte
	if b != nil {
		v = b.Get([]byte(id))
	}
	if v == nil {
		return nil, fmt.Errorf("container %q in namespace %q: %w", id, ns, errdefs.ErrNotFound)
	}
	var c api.Container
	if err := proto.Unmarshal(v, &c); err != nil {
		return nil, fmt.Errorf("container %q in namespace %q: decode: %w", id, ns, err)
	}
	return &c, nil
}

func write(b *bolt.Bucket, c *api.Container) error {
	v, err := proto.MarshalOptions{Deterministic: true}.Marshal(c)
	if err != nil {
		return fmt.Errorf("container %q: encode: %w", c.ID, err)
	}
	return b.Put([]byte(c.ID), v)
}

// Fields exposes a container to filters: id, image, runtime.name,
// snapshotter, snapshotkey and labels.KEY (a key holding dots may be written
// labels."a.b" or labels.a.b).
func Fields(c *api.Container) filters.Adaptor {
	return filters.AdapterFunc(func(path []string) (string, bool) {
		if len(path) == 0 {
			return "", false
		}
		switch path[0] {
		case "id":
			return c.ID, c.ID != ""
		case "image":
			return c.Image, c.Image != ""
		case "snapshotter":
			return c.Snapshotter, c.Snapshotter != ""
		case "snapshotkey":
			return c.SnapshotKey, c.SnapshotKey != ""
		case "runtime":
			if len(path) == 2 && path[1] == "name" {
				n := c.GetRuntime().GetName()
				return n, n != ""
			}
		case "labels":
			if len(path) < 2 {
				return "", false
			}
			v, ok := c.Labels[strings.Join(path[1:], ".")]
			return v, ok
		}
		return "", false
	})
}

// Holdings names every namespace holding at least one container, for
// Flotilla's Holdings API (package services/holdings): in containerd a
// container's namespace is a namespace, so contentd lists these too.
func (s *BoltStore) Holdings(context.Context) (map[string][]string, error) {
	held := map[string][]string{}
	err := s.db.View(func(tx *bolt.Tx) error {
		return metadata.ForEachNamespace(tx, func(ns string, b *bolt.Bucket) error {
			if c := b.Bucket(metadata.BucketContainers); c != nil {
				if k, _ := c.Cursor().First(); k != nil {
					held[ns] = []string{"containers"}
				}
			}
			return nil
		})
	})
	return held, err
}
