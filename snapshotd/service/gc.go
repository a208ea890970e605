package service

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	bolt "go.etcd.io/bbolt"

	"github.com/flotilla/flotilla/services/gc"
	"github.com/flotilla/flotilla/services/namespace"
	"github.com/flotilla/flotilla/snapshotd/snapshotter"
)

// LeaseHolds records which lease each snapshot was made under. Leases live
// in contentd; a snapshot prepared, viewed or committed under one is held
// by it, as containerd's metadata store adds it to the lease. The record is
// written before the backend makes the snapshot, so a crash leaves at worst
// a record of a snapshot that is not there, which is harmless: the hold
// counts only while contentd still has the lease.
//
// Layout: holds/<namespace>/<lease>/<snapshotter>/<key> → "".
type LeaseHolds struct {
	db *bolt.DB
}

var bucketHolds = []byte("holds")

// OpenLeaseHolds opens (creating) the record at path.
func OpenLeaseHolds(path string) (*LeaseHolds, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o711); err != nil {
		return nil, err
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("open lease holds %s: %w", path, err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucketHolds)
		return err
	}); err != nil {
		db.Close()
		return nil, err
	}
	return &LeaseHolds{db: db}, nil
}

// Close closes the record.
func (h *LeaseHolds) Close() error { return h.db.Close() }

// Add records that lease holds snapshot key of snapshotter sn in ns.
func (h *LeaseHolds) Add(ns, lease, sn, key string) error {
	return h.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketHolds)
		for _, name := range []string{ns, lease, sn} {
			var err error
			if b, err = b.CreateBucketIfNotExists([]byte(name)); err != nil {
				return err
			}
		}
		return b.Put([]byte(key), nil)
	})
}

// ForEach calls fn with every hold.
func (h *LeaseHolds) ForEach(fn func(lease, snapshot gc.Ref)) error {
	return h.db.View(func(tx *bolt.Tx) error {
		nsb := tx.Bucket(bucketHolds)
		return nsb.ForEachBucket(func(ns []byte) error {
			lb := nsb.Bucket(ns)
			return lb.ForEachBucket(func(lease []byte) error {
				sb := lb.Bucket(lease)
				return sb.ForEachBucket(func(sn []byte) error {
					return sb.Bucket(sn).ForEach(func(key, _ []byte) error {
						fn(gc.Lease(string(ns), string(lease)), gc.Snapshot(string(ns), string(sn), string(key)))
						return nil
					})
				})
			})
		})
	})
}

// Forget drops every hold of the snapshots named and every hold by the
// leases named, and returns how many holds it dropped.
func (h *LeaseHolds) Forget(refs []gc.Ref) (int, error) {
	gone := map[gc.Ref]bool{}
	for _, r := range refs {
		gone[r] = true
	}
	dropped := 0
	err := h.db.Update(func(tx *bolt.Tx) error {
		nsb := tx.Bucket(bucketHolds)
		var emptyNS [][]byte
		err := nsb.ForEachBucket(func(ns []byte) error {
			lb := nsb.Bucket(ns)
			var goneLeases [][]byte
			err := lb.ForEachBucket(func(lease []byte) error {
				if gone[gc.Lease(string(ns), string(lease))] {
					goneLeases = append(goneLeases, lease)
					return nil
				}
				sb := lb.Bucket(lease)
				return sb.ForEachBucket(func(sn []byte) error {
					kb := sb.Bucket(sn)
					var drop [][]byte
					kb.ForEach(func(key, _ []byte) error {
						if gone[gc.Snapshot(string(ns), string(sn), string(key))] {
							drop = append(drop, key)
						}
						return nil
					})
					for _, k := range drop {
						if err := kb.Delete(k); err != nil {
							return err
						}
					}
					dropped += len(drop)
					return nil
				})
			})
			if err != nil {
				return err
			}
			for _, lease := range goneLeases {
				sb := lb.Bucket(lease)
				sb.ForEachBucket(func(sn []byte) error {
					dropped += sb.Bucket(sn).Stats().KeyN
					return nil
				})
				if err := lb.DeleteBucket(lease); err != nil {
					return err
				}
			}
			if k, _ := lb.Cursor().First(); k == nil {
				emptyNS = append(emptyNS, ns)
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, ns := range emptyNS {
			if err := nsb.DeleteBucket(ns); err != nil {
				return err
			}
		}
		return nil
	})
	return dropped, err
}

// SetGC makes the service report its writes and lookups to tracker, the
// tracker of the garbage collection contentd runs, and record in holds the
// lease each snapshot is made under. Call it before serving.
func (s *Snapshots) SetGC(tracker *gc.Tracker, holds *LeaseHolds) {
	s.tracker, s.holds = tracker, holds
}

// write enters a write of snapshot keys (client keys in c's namespace) and
// what labels reference; when hold is set, the snapshot made is held by the
// call's lease, if it has one.
func (s *Snapshots) write(ctx context.Context, c call, l map[string]string, hold bool, keys ...string) (func(), error) {
	refs := gc.LabelRefs(c.ns, l)
	if target := l[LabelSnapshotRef]; target != "" {
		// The client may go on to use the existing target instead.
		refs = append(refs, gc.Snapshot(c.ns, c.name, target))
	}
	for _, k := range keys {
		if k != "" {
			refs = append(refs, gc.Snapshot(c.ns, c.name, k))
		}
	}
	done := s.tracker.Write(refs...)
	if lease, ok := namespace.LeaseFromContext(ctx); ok && lease != "" && hold && s.holds != nil && len(keys) > 0 {
		if err := s.holds.Add(c.ns, lease, c.name, keys[0]); err != nil {
			done()
			return nil, fmt.Errorf("hold snapshot %q by lease %q: %w", keys[0], lease, err)
		}
	}
	return done, nil
}

// heldTarget returns err, the answer to a Prepare or View whose target
// (LabelSnapshotRef) exists. The client will use that target instead, as
// containerd's unpacker does, so when err is AlreadyExists the call's lease
// holds the target, as containerd's metadata store adds it to the lease.
func (s *Snapshots) heldTarget(ctx context.Context, c call, l map[string]string, err error) error {
	lease, ok := namespace.LeaseFromContext(ctx)
	if !errdefs.IsAlreadyExists(err) || !ok || lease == "" || s.holds == nil {
		return err
	}
	if herr := s.holds.Add(c.ns, lease, c.name, l[LabelSnapshotRef]); herr != nil {
		return fmt.Errorf("hold snapshot %q by lease %q: %w", l[LabelSnapshotRef], lease, herr)
	}
	return err
}

// touch records a lookup of key.
func (s *Snapshots) touch(c call, key string) {
	s.tracker.Touch(gc.Snapshot(c.ns, c.name, key))
}

// GCSource is snapshotd's part in garbage collection: every backend's
// snapshots, their parents and labels, and the leases they were made under.
type GCSource struct {
	backends Backends
	holds    *LeaseHolds

	// unmade are the snapshots the last Mark found holds of but no
	// snapshot: removed by a client, or a Prepare that failed or was in
	// flight. Remove drops the holds of those still missing then, when
	// writers are held. One collection runs at a time.
	unmade []gc.Ref
}

var _ gc.Source = (*GCSource)(nil)

// NewGCSource returns snapshotd's gc.Source over its backends and lease
// holds (nil: none).
func NewGCSource(backends Backends, holds *LeaseHolds) *GCSource {
	return &GCSource{backends: backends, holds: holds}
}

// Mark implements gc.Source. A snapshot is a root when labelled
// containerd.io/gc.root; it keeps its parent and what its gc.ref labels
// name alive, and lives while what its gc.bref labels name does.
func (g *GCSource) Mark(ctx context.Context, fn func(gc.Graph) error) error {
	walked := map[gc.Ref]bool{}
	for _, name := range g.backends.Names() {
		sn, err := g.backends.Get(name)
		if err != nil {
			return fmt.Errorf("snapshotter %q: %w", name, err)
		}
		var graph gc.Graph
		err = sn.Walk(ctx, func(_ context.Context, info snapshotter.Info) error {
			ns, key, ok := strings.Cut(info.Name, "/")
			if !ok {
				return nil
			}
			ref := gc.Snapshot(ns, name, key)
			walked[ref] = true
			graph.Objects = append(graph.Objects, gc.Object{Ref: ref, Root: gc.IsRoot(info.Labels), UsedAt: gc.UsedAt(info.Labels)})
			if _, parent, ok := strings.Cut(info.Parent, "/"); ok {
				graph.Edges = append(graph.Edges, gc.Edge{From: ref, To: gc.Snapshot(ns, name, parent), Essential: true})
			}
			for _, to := range gc.LabelRefs(ns, info.Labels) {
				graph.Edges = append(graph.Edges, gc.Edge{From: ref, To: to})
			}
			for _, parent := range gc.LabelBackRefs(ns, info.Labels) {
				graph.Edges = append(graph.Edges, gc.Edge{From: parent, To: ref})
			}
			return nil
		})
		if err != nil {
			// A backend that cannot be read fails the collection: its
			// snapshots might reference others'.
			return fmt.Errorf("snapshotter %q: walk snapshots: %w", name, err)
		}
		if err := fn(graph); err != nil {
			return err
		}
	}
	if g.holds == nil {
		return nil
	}
	var graph gc.Graph
	g.unmade = nil
	if err := g.holds.ForEach(func(lease, snapshot gc.Ref) {
		graph.Edges = append(graph.Edges, gc.Edge{From: lease, To: snapshot})
		if !walked[snapshot] {
			g.unmade = append(g.unmade, snapshot)
		}
	}); err != nil {
		return err
	}
	return fn(graph)
}

// Remove implements gc.Source: children before their parents, measuring
// each snapshot's own disk use first.
func (g *GCSource) Remove(ctx context.Context, refs []gc.Ref) ([]gc.Removed, error) {
	bySnapshotter := map[string][]gc.Ref{}
	for _, r := range refs {
		if r.Kind == gc.KindSnapshot {
			bySnapshotter[r.Snapshotter] = append(bySnapshotter[r.Snapshotter], r)
		}
	}
	var sum gc.Removed
	sum.Kind = gc.KindSnapshot
	var errs []error
	for name, pending := range bySnapshotter {
		sn, err := g.backends.Get(name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		// A parent cannot go before its children: pass after pass, remove
		// what has none left, until nothing more goes.
		for len(pending) > 0 {
			var next []gc.Ref
			var lastErr error
			for _, r := range pending {
				key := r.Namespace + "/" + r.ID
				usage, _ := sn.Usage(ctx, key)
				err := sn.Remove(ctx, key)
				switch {
				case err == nil:
					sum.Count++
					sum.Bytes += usage.Size
					sum.Refs = append(sum.Refs, r)
				case errdefs.IsNotFound(err):
				case errdefs.IsFailedPrecondition(err):
					next = append(next, r) // has children yet
					lastErr = err
				default:
					errs = append(errs, fmt.Errorf("snapshotter %q: remove %s: %w", name, key, err))
				}
			}
			if len(next) == len(pending) {
				errs = append(errs, fmt.Errorf("snapshotter %q: %d snapshots not removed: %w", name, len(next), lastErr))
				break
			}
			pending = next
		}
	}
	var out []gc.Removed
	if sum.Count > 0 {
		out = append(out, sum)
	}
	if g.holds != nil {
		// Holds that keep nothing: of the snapshots just removed, of
		// leases that are gone, and of snapshots that are not there.
		forget := append([]gc.Ref(nil), sum.Refs...)
		for _, r := range refs {
			if r.Kind == gc.KindLease {
				forget = append(forget, r)
			}
		}
		for _, r := range g.unmade {
			if sn, err := g.backends.Get(r.Snapshotter); err == nil {
				if _, err := sn.Stat(ctx, r.Namespace+"/"+r.ID); errdefs.IsNotFound(err) {
					forget = append(forget, r)
				}
			}
		}
		g.unmade = nil
		if len(forget) > 0 {
			n, err := g.holds.Forget(forget)
			errs = append(errs, err)
			if n > 0 {
				out = append(out, gc.Removed{Kind: gc.KindLeaseHold, Count: int64(n)})
			}
		}
	}
	return out, errors.Join(errs...)
}
