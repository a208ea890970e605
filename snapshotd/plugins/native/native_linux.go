// Package native is the copy-based snapshotter: every snapshot is a complete
// directory tree, made by copying its parent's, and mounted with a bind
// mount. It works on any filesystem, at the price of disk and time.
//
// Layout under root: metadata.db and snapshots/<id>/fs.
package native

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/errdefs"

	"github.com/flotilla/flotilla/services/filters"
	"github.com/flotilla/flotilla/snapshotd/plugins/fsutil"
	"github.com/flotilla/flotilla/snapshotd/plugins/metastore"
	"github.com/flotilla/flotilla/snapshotd/snapshotter"
)

// Snapshotter is the native backend.
type Snapshotter struct {
	root string
	ms   *metastore.Store
}

var _ snapshotter.Snapshotter = (*Snapshotter)(nil)

// New opens the native snapshotter kept under root.
func New(root string) (*Snapshotter, error) {
	dir := filepath.Join(root, "snapshots")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("native: %w", err)
	}
	ms, err := metastore.Open(filepath.Join(root, "metadata.db"))
	if err != nil {
		return nil, fmt.Errorf("native: %w", err)
	}
	ids, err := ms.IDs()
	if err == nil {
		var entries []os.DirEntry
		entries, err = os.ReadDir(dir)
		for _, e := range entries {
			if !ids[e.Name()] && err == nil {
				err = os.RemoveAll(filepath.Join(dir, e.Name()))
			}
		}
	}
	if err != nil {
		ms.Close()
		return nil, fmt.Errorf("native: remove orphaned snapshots: %w", err)
	}
	return &Snapshotter{root: root, ms: ms}, nil
}

func (s *Snapshotter) dir(id string) string { return filepath.Join(s.root, "snapshots", id) }
func (s *Snapshotter) fs(id string) string  { return filepath.Join(s.dir(id), "fs") }

// Stat implements snapshotter.Snapshotter.
func (s *Snapshotter) Stat(ctx context.Context, key string) (snapshotter.Info, error) {
	_, in, _, err := s.ms.Info(key)
	return in, err
}

// Update implements snapshotter.Snapshotter.
func (s *Snapshotter) Update(ctx context.Context, info snapshotter.Info, fieldpaths ...string) (snapshotter.Info, error) {
	return s.ms.Update(info, fieldpaths...)
}

// Usage implements snapshotter.Snapshotter. A native snapshot holds its
// parents' content too, so its usage is that of the whole tree.
func (s *Snapshotter) Usage(ctx context.Context, key string) (snapshotter.Usage, error) {
	id, in, u, err := s.ms.Info(key)
	if err != nil {
		return snapshotter.Usage{}, err
	}
	if in.Kind == snapshotter.KindCommitted {
		return u, nil
	}
	return fsutil.Usage(ctx, s.fs(id))
}

// Mounts implements snapshotter.Snapshotter.
func (s *Snapshotter) Mounts(ctx context.Context, key string) ([]snapshotter.Mount, error) {
	snap, err := s.ms.Snapshot(key)
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
	return []snapshotter.Mount{{Type: "bind", Source: s.fs(snap.ID), Options: []string{mode, "rbind"}}}
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
	snap, err := s.ms.Create(key, parent, kind, opts, func(snap metastore.Snapshot) error {
		dir := s.dir(snap.ID)
		if err := os.RemoveAll(dir); err != nil {
			return err
		}
		return os.MkdirAll(filepath.Join(dir, "fs"), 0o755)
	})
	if err != nil {
		return nil, err
	}
	if len(snap.ParentIDs) > 0 {
		if err := fsutil.CopyTree(ctx, s.fs(snap.ID), s.fs(snap.ParentIDs[0])); err != nil {
			if rerr := s.Remove(context.WithoutCancel(ctx), key); rerr != nil {
				err = errors.Join(err, rerr)
			}
			return nil, fmt.Errorf("create snapshot %q: %w", key, err)
		}
	}
	return s.mounts(snap), nil
}

// Commit implements snapshotter.Snapshotter.
func (s *Snapshotter) Commit(ctx context.Context, name, key string, opts ...snapshotter.Opt) error {
	id, in, _, err := s.ms.Info(key)
	if err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	if in.Kind != snapshotter.KindActive {
		return fmt.Errorf("commit %q: snapshot is %s, not active: %w", key, in.Kind, errdefs.ErrFailedPrecondition)
	}
	u, err := fsutil.Usage(ctx, s.fs(id))
	if err != nil {
		return fmt.Errorf("commit %q: %w", key, err)
	}
	return s.ms.Commit(name, key, u, opts)
}

// Remove implements snapshotter.Snapshotter.
func (s *Snapshotter) Remove(ctx context.Context, key string) error {
	var trash string
	err := s.ms.Remove(key, func(id string) error {
		trash = filepath.Join(s.root, "snapshots", "rm-"+id)
		if err := os.Rename(s.dir(id), trash); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove %q: %w", key, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return os.RemoveAll(trash)
}

// Walk implements snapshotter.Snapshotter.
func (s *Snapshotter) Walk(ctx context.Context, fn snapshotter.WalkFunc, exprs ...string) error {
	f, err := filters.ParseAll(exprs...)
	if err != nil {
		return err
	}
	infos, err := s.ms.List(f)
	if err != nil {
		return err
	}
	for _, in := range infos {
		if err := fn(ctx, in); err != nil {
			return err
		}
	}
	return nil
}

// Close implements snapshotter.Snapshotter.
func (s *Snapshotter) Close() error { return s.ms.Close() }
