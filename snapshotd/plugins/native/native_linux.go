// Package native is the copy-based snapshotter: every snapshot is a complete
// directory tree, made by copying its parent's, and mounted with a bind
// mount. It works on any filesystem, at the price of disk and time.
//
// Layout under root: metadata.db and snapshots/<id>/fs (see snapdir). As a
// native snapshot holds its parents' content too, the usage of an active one
// is that of the whole tree.
package native

import (
	"context"
	"errors"
	"fmt"

	"github.com/flotilla/flotilla/snapshotd/plugins/fsutil"
	"github.com/flotilla/flotilla/snapshotd/plugins/metastore"
	"github.com/flotilla/flotilla/snapshotd/plugins/snapdir"
	"github.com/flotilla/flotilla/snapshotd/snapshotter"
)

// Snapshotter is the native backend.
type Snapshotter struct {
	*snapdir.Dirs
}

var _ snapshotter.Snapshotter = (*Snapshotter)(nil)

// New opens the native snapshotter kept under root.
func New(root string) (*Snapshotter, error) {
	d, err := snapdir.Open(root)
	if err != nil {
		return nil, fmt.Errorf("native: %w", err)
	}
	return &Snapshotter{Dirs: d}, nil
}

// Mounts implements snapshotter.Snapshotter.
func (s *Snapshotter) Mounts(ctx context.Context, key string) ([]snapshotter.Mount, error) {
	snap, err := s.MS.Snapshot(key)
	if err != nil {
		return nil, fmt.Errorf("mounts: %w", err)
	}
	return s.mounts(snap), nil
}

func (s *Snapshotter) mounts(snap metastore.Snapshot) []snapshotter.Mount {
	mode := "rw"
	if snap.Kind == snapshotter.KindView {
		mode = "ro"
	}
	return []snapshotter.Mount{{Type: "bind", Source: s.FS(snap.ID), Options: []string{mode, "rbind"}}}
}

// Prepare implements snapshotter.Snapshotter.
func (s *Snapshotter) Prepare(ctx context.Context, key, parent string, opts ...snapshotter.Opt) ([]snapshotter.Mount, error) {
	return s.create(ctx, snapshotter.KindActive, key, parent, opts)
}

// View implements snapshotter.Snapshotter.
func (s *Snapshotter) View(ctx context.Context, key, parent string, opts ...snapshotter.Opt) ([]snapshotter.Mount, error) {
	return s.create(ctx, snapshotter.KindView, key, parent, opts)
}

// create records the snapshot with an empty directory, then copies the
// parent's tree into it outside the database transaction so that a large
// copy does not hold up other calls; a failed copy removes the snapshot.
func (s *Snapshotter) create(ctx context.Context, kind snapshotter.Kind, key, parent string, opts []snapshotter.Opt) ([]snapshotter.Mount, error) {
	snap, err := s.MS.Create(key, parent, kind, opts, func(snap metastore.Snapshot) error {
		return s.MakeDir(snap.ID)
	})
	if err != nil {
		return nil, err
	}
	if len(snap.ParentIDs) > 0 {
		if err := fsutil.CopyTree(ctx, s.FS(snap.ID), s.FS(snap.ParentIDs[0])); err != nil {
			if rerr := s.Remove(context.WithoutCancel(ctx), key); rerr != nil {
				err = errors.Join(err, rerr)
			}
			return nil, fmt.Errorf("create snapshot %q: %w", key, err)
		}
	}
	return s.mounts(snap), nil
}
