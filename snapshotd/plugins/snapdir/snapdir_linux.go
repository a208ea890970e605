// Package snapdir is what the directory-per-snapshot backends (native,
// overlayfs) share: the layout under their root — metadata.db, a metastore,
// and snapshots/<id>/fs, each snapshot's tree — and the Snapshotter methods
// that depend on that layout alone.
//
// A backend embeds *Dirs and adds Mounts, Prepare and View, which are where
// backends differ.
package snapdir

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

// Dirs is a backend's root: its metastore and its snapshots' directories.
// Its methods implement those of snapshotter.Snapshotter they are named for.
type Dirs struct {
	root string
	// MS holds the backend's snapshot records.
	MS *metastore.Store
}

// Open opens the layout under root, creating it as needed, and deletes the
// snapshot directories that no record owns: those of a Remove or Prepare
// interrupted by a crash.
func Open(root string) (*Dirs, error) {
	if err := os.MkdirAll(filepath.Join(root, "snapshots"), 0o700); err != nil {
		return nil, err
	}
	ms, err := metastore.Open(filepath.Join(root, "metadata.db"))
	if err != nil {
		return nil, err
	}
	d := &Dirs{root: root, MS: ms}
	if err := d.removeOrphans(); err != nil {
		ms.Close()
		return nil, fmt.Errorf("remove orphaned snapshots: %w", err)
	}
	return d, nil
}

func (d *Dirs) removeOrphans() error {
	ids, err := d.MS.IDs()
	if err != nil {
		return err
	}
	entries, err := os.ReadDir(filepath.Join(d.root, "snapshots"))
	if err != nil {
		return err
	}
	for _, e := range entries {
		if !ids[e.Name()] {
			if err := os.RemoveAll(d.Dir(e.Name())); err != nil {
				return err
			}
		}
	}
	return nil
}

// Dir is the directory of snapshot id.
func (d *Dirs) Dir(id string) string { return filepath.Join(d.root, "snapshots", id) }

// FS is the tree of snapshot id, inside its Dir.
func (d *Dirs) FS(id string) string { return filepath.Join(d.Dir(id), "fs") }

// MakeDir gives snapshot id a fresh Dir with an empty FS, first removing
// whatever a crash between mkdir and commit may have left there.
func (d *Dirs) MakeDir(id string) error {
	dir := d.Dir(id)
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	return os.MkdirAll(filepath.Join(dir, "fs"), 0o755)
}

// Stat implements snapshotter.Snapshotter.
func (d *Dirs) Stat(ctx context.Context, key string) (snapshotter.Info, error) {
	_, in, _, err := d.MS.Info(key)
	return in, err
}

// Update implements snapshotter.Snapshotter.
func (d *Dirs) Update(ctx context.Context, info snapshotter.Info, fieldpaths ...string) (snapshotter.Info, error) {
	return d.MS.Update(info, fieldpaths...)
}

// Usage implements snapshotter.Snapshotter: a committed snapshot's usage is
// the one recorded when it was committed; that of an active snapshot or a
// view is measured on its FS now.
func (d *Dirs) Usage(ctx context.Context, key string) (snapshotter.Usage, error) {
	id, in, u, err := d.MS.Info(key)
	if err != nil {
		return snapshotter.Usage{}, err
	}
	if in.Kind == snapshotter.KindCommitted {
		return u, nil
	}
	return fsutil.Usage(ctx, d.FS(id))
}

// Commit implements snapshotter.Snapshotter, recording the usage of the
// active snapshot's FS as the committed snapshot's.
func (d *Dirs) Commit(ctx context.Context, name, key string, opts ...snapshotter.Opt) error {
	_, err := d.CommitID(ctx, name, key, opts...)
	return err
}

// CommitID is Commit, returning the ID of the committed snapshot for a
// backend that tidies its directory afterwards.
func (d *Dirs) CommitID(ctx context.Context, name, key string, opts ...snapshotter.Opt) (string, error) {
	id, in, _, err := d.MS.Info(key)
	if err != nil {
		return "", fmt.Errorf("commit: %w", err)
	}
	if in.Kind != snapshotter.KindActive {
		return "", fmt.Errorf("commit %q: snapshot is %s, not active: %w", key, in.Kind, errdefs.ErrFailedPrecondition)
	}
	u, err := fsutil.Usage(ctx, d.FS(id))
	if err != nil {
		return "", fmt.Errorf("commit %q: %w", key, err)
	}
	return id, d.MS.Commit(name, key, u, opts)
}

// Remove implements snapshotter.Snapshotter. The snapshot's directory is
// renamed aside while the record is deleted and removed after, so that a
// crash leaves an orphan for Open to clear rather than a half-deleted tree.
func (d *Dirs) Remove(ctx context.Context, key string) error {
	var trash string
	err := d.MS.Remove(key, func(id string) error {
		trash = filepath.Join(d.root, "snapshots", "rm-"+id)
		if err := os.Rename(d.Dir(id), trash); err != nil && !errors.Is(err, os.ErrNotExist) {
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
func (d *Dirs) Walk(ctx context.Context, fn snapshotter.WalkFunc, exprs ...string) error {
	f, err := filters.ParseAll(exprs...)
	if err != nil {
		return err
	}
	infos, err := d.MS.List(f)
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
func (d *Dirs) Close() error { return d.MS.Close() }
