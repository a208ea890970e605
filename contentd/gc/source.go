package gc

import (
	"context"
	"errors"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/flotilla/flotilla/contentd/content"
	contentstore "github.com/flotilla/flotilla/contentd/content/store"
	"github.com/flotilla/flotilla/contentd/images"
	"github.com/flotilla/flotilla/contentd/leases"
	"github.com/flotilla/flotilla/contentd/metadata"
	"github.com/flotilla/flotilla/services/gc"
)

// Source is contentd's own part in a collection: images, leases, blob
// records and ingests.
type Source struct {
	db      *bolt.DB
	content *contentstore.Store
	// ingestIdle is how long an ingest no lease holds stays a root after
	// its last write (0: for ever).
	ingestIdle time.Duration
	now        func() time.Time

	// unrecorded counts the blob files the last Mark removed, reported by
	// the next Remove; the collector runs one collection at a time.
	unrecorded gc.Removed
}

var _ gc.Source = (*Source)(nil)

// NewSource returns contentd's Source over its metadata database and
// content store.
func NewSource(db *bolt.DB, content *contentstore.Store, ingestIdle time.Duration) *Source {
	return &Source{db: db, content: content, ingestIdle: ingestIdle, now: time.Now}
}

// Mark implements gc.Source. Roots, as containerd has them: images (unless
// their containerd.io/gc.expire passed), leases (likewise), blobs labelled
// containerd.io/gc.root, and, Flotilla's own: ingests a writer holds, and
// ingests started without a lease that were written within the idle limit.
func (s *Source) Mark(ctx context.Context, fn func(gc.Graph) error) error {
	now := s.now()
	// Blob files no namespace records (a crash between placing a blob and
	// recording it, or between its last record and the file) are no
	// object of the collection: they go now, under the store's own disk
	// lock, rather than while the collection holds every store's writers.
	n, bytes, err := s.content.RemoveUnrecordedBlobs()
	if err != nil {
		return err
	}
	s.unrecorded = gc.Removed{Kind: gc.KindContent, Count: int64(n), Bytes: bytes}
	var g gc.Graph
	leased := map[gc.Ref]bool{}
	err = s.db.View(func(tx *bolt.Tx) error {
		return metadata.Namespaces(tx).ForEachBucket(func(k []byte) error {
			ns := string(k)
			err := images.ForEach(tx, ns, func(img images.Image) error {
				ref := gc.Image(ns, img.Name)
				g.Objects = append(g.Objects, gc.Object{Ref: ref, Root: !gc.Expired(img.Labels, now)})
				g.Edges = append(g.Edges, gc.Edge{From: ref, To: gc.Content(ns, img.Target.Digest.String()), Essential: true})
				g.Edges = labelEdges(g.Edges, ref, img.Labels)
				return nil
			})
			if err != nil {
				return err
			}
			err = leases.ForEach(tx, ns, func(l leases.Lease, held []leases.Resource) error {
				ref := gc.Lease(ns, l.ID)
				_, flat := l.Labels[gc.LabelFlat]
				g.Objects = append(g.Objects, gc.Object{Ref: ref, Root: !gc.Expired(l.Labels, now), Flat: flat})
				for _, r := range held {
					if to, ok := r.Ref(ns); ok {
						g.Edges = append(g.Edges, gc.Edge{From: ref, To: to})
						leased[to] = true
					}
				}
				return nil
			})
			if err != nil {
				return err
			}
			return contentstore.Records(tx, ns, func(info content.Info) error {
				ref := gc.Content(ns, info.Digest.String())
				g.Objects = append(g.Objects, gc.Object{Ref: ref, Root: gc.IsRoot(info.Labels), Size: info.Size})
				g.Edges = labelEdges(g.Edges, ref, info.Labels)
				return nil
			})
		})
	})
	if err != nil {
		return err
	}
	ingests, err := s.content.Ingests()
	if err != nil {
		return err
	}
	for _, in := range ingests {
		ref := gc.Ingest(in.Namespace, in.Ref)
		// As in containerd: an ingest started under a lease lives while a
		// lease holds it; one started without lives until it goes idle.
		recent := s.ingestIdle <= 0 || now.Sub(in.Updated) < s.ingestIdle
		unleased := !in.Leased && !leased[ref]
		g.Objects = append(g.Objects, gc.Object{Ref: ref, Root: in.Writing || (unleased && recent), Size: in.Size})
		if in.Expected != "" {
			// As containerd: a live ingest keeps the blob it is to become.
			g.Edges = append(g.Edges, gc.Edge{From: ref, To: gc.Content(in.Namespace, in.Expected)})
		}
	}
	return fn(g)
}

// labelEdges appends the references the labels of from make, as
// containerd reads them on content and images: gc.ref.* from it,
// gc.bref.* to it, gc.cond.snapshot* from it while their condition holds.
func labelEdges(edges []gc.Edge, from gc.Ref, labels map[string]string) []gc.Edge {
	for _, to := range gc.LabelRefs(from.Namespace, labels) {
		edges = append(edges, gc.Edge{From: from, To: to})
	}
	for _, parent := range gc.LabelBackRefs(from.Namespace, labels) {
		edges = append(edges, gc.Edge{From: parent, To: from})
	}
	return append(edges, gc.LabelConditionalRefs(from, labels)...)
}

// Remove implements gc.Source.
func (s *Source) Remove(ctx context.Context, refs []gc.Ref) ([]gc.Removed, error) {
	byKind := map[string][]gc.Ref{}
	for _, r := range refs {
		byKind[r.Kind] = append(byKind[r.Kind], r)
	}
	var out []gc.Removed
	var errs []error
	// Records first, in one transaction: images and leases.
	removedRecords := map[string][]gc.Ref{}
	err := s.removeRecords(byKind, removedRecords)
	if err != nil {
		errs = append(errs, err)
	} else {
		for _, kind := range []string{gc.KindImage, gc.KindLease} {
			if refs := removedRecords[kind]; len(refs) > 0 {
				out = append(out, gc.Removed{Kind: kind, Count: int64(len(refs)), Refs: refs})
			}
		}
	}
	if refs := byKind[gc.KindContent]; len(refs) > 0 {
		removed, bytes, err := s.content.RemoveBlobs(refs)
		errs = append(errs, err)
		if len(removed) > 0 {
			out = append(out, gc.Removed{Kind: gc.KindContent, Count: int64(len(removed)), Bytes: bytes, Refs: removed})
		}
	}
	if refs := byKind[gc.KindIngest]; len(refs) > 0 {
		removed, bytes, err := s.content.RemoveIngests(refs)
		errs = append(errs, err)
		if len(removed) > 0 {
			out = append(out, gc.Removed{Kind: gc.KindIngest, Count: int64(len(removed)), Bytes: bytes, Refs: removed})
		}
	}
	// Blob files no record named when marking (see Mark).
	if s.unrecorded.Count > 0 {
		out = append(out, s.unrecorded)
		s.unrecorded = gc.Removed{}
	}
	return out, errors.Join(errs...)
}

// removeRecords removes the images and leases byKind names, in one
// transaction (none when there are none), into removed by kind.
func (s *Source) removeRecords(byKind map[string][]gc.Ref, removed map[string][]gc.Ref) error {
	if len(byKind[gc.KindImage]) == 0 && len(byKind[gc.KindLease]) == 0 {
		return nil
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		for _, r := range byKind[gc.KindImage] {
			ok, err := images.DeleteRecord(tx, r.Namespace, r.ID)
			if err != nil {
				return err
			}
			if ok {
				removed[gc.KindImage] = append(removed[gc.KindImage], r)
			}
		}
		for _, r := range byKind[gc.KindLease] {
			ok, err := leases.DeleteRecord(tx, r.Namespace, r.ID)
			if err != nil {
				return err
			}
			if ok {
				removed[gc.KindLease] = append(removed[gc.KindLease], r)
			}
		}
		return nil
	})
}
