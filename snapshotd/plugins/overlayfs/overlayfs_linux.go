// Package overlayfs is the overlay snapshotter: each snapshot is a directory,
// an active snapshot's mounts stack its parents' directories as overlay
// lower layers under its own upper and work directories.
//
// Layout under root: metadata.db, and snapshots/<id>/fs (the snapshot's
// upper directory, its content alone) and snapshots/<id>/work for actives.
package overlayfs

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/flotilla/flotilla/services/filters"
	"github.com/flotilla/flotilla/snapshotd/plugins/fsutil"
	"github.com/flotilla/flotilla/snapshotd/plugins/metastore"
	"github.com/flotilla/flotilla/snapshotd/snapshotter"
)

// Snapshotter is the overlay backend.
type Snapshotter struct {
	root string
	ms   *metastore.Store
}

var _ snapshotter.Snapshotter = (*Snapshotter)(nil)

// New opens the overlay snapshotter kept under root. It fails, suggesting
// the native snapshotter, when the kernel or root's filesystem cannot do
// overlay mounts.
func New(root string) (*Snapshotter, error) {
	if err := os.MkdirAll(filepath.Join(root, "snapshots"), 0o700); err != nil {
		return nil, fmt.Errorf("overlayfs: %w", err)
	}
	if err := Supported(root); err != nil {
		return nil, err
	}
	ms, err := metastore.Open(filepath.Join(root, "metadata.db"))
	if err != nil {
		return nil, fmt.Errorf("overlayfs: %w", err)
	}
	s := &Snapshotter{root: root, ms: ms}
	if err := removeOrphans(filepath.Join(root, "snapshots"), ms); err != nil {
		ms.Close()
		return nil, fmt.Errorf("overlayfs: %w", err)
	}
	return s, nil
}

// Supported reports whether overlay mounts work with directories under root:
// the kernel must know the overlay filesystem and, when running as root, a
// trial mount with two lower layers must succeed.
func Supported(root string) error {
	known, err := kernelHasOverlay()
	if err != nil {
		return fmt.Errorf("overlayfs: %w", err)
	}
	if !known {
		return fmt.Errorf("overlayfs: the kernel has no overlay filesystem (not in /proc/filesystems; try `modprobe overlay`); "+
			"use the native snapshotter instead (ctr --snapshotter native): %w", errdefs.ErrNotImplemented)
	}
	if os.Geteuid() != 0 {
		return nil
	}
	dir, err := os.MkdirTemp(root, "overlay-check-")
	if err != nil {
		return fmt.Errorf("overlayfs: %w", err)
	}
	defer os.RemoveAll(dir)
	for _, d := range []string{"l1", "l2", "upper", "work", "merged"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o700); err != nil {
			return fmt.Errorf("overlayfs: %w", err)
		}
	}
	opts := fmt.Sprintf("lowerdir=%s:%s,upperdir=%s,workdir=%s",
		filepath.Join(dir, "l1"), filepath.Join(dir, "l2"), filepath.Join(dir, "upper"), filepath.Join(dir, "work"))
	merged := filepath.Join(dir, "merged")
	if err := unix.Mount("overlay", merged, "overlay", 0, opts); err != nil {
		return fmt.Errorf("overlayfs: a trial overlay mount under %s failed (%v); its filesystem cannot hold overlay layers: "+
			"use the native snapshotter instead (ctr --snapshotter native): %w", root, err, errdefs.ErrNotImplemented)
	}
	return unix.Unmount(merged, unix.MNT_DETACH)
}

func kernelHasOverlay() (bool, error) {
	f, err := os.Open("/proc/filesystems")
	if err != nil {
		return false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 0 && fields[len(fields)-1] == "overlay" {
			return true, nil
		}
	}
	return false, sc.Err()
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

// Usage implements snapshotter.Snapshotter.
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

// Prepare implements snapshotter.Snapshotter.
func (s *Snapshotter) Prepare(ctx context.Context, key, parent string, opts ...snapshotter.Opt) ([]snapshotter.Mount, error) {
	return s.create(snapshotter.KindActive, key, parent, opts)
}

// View implements snapshotter.Snapshotter.
func (s *Snapshotter) View(ctx context.Context, key, parent string, opts ...snapshotter.Opt) ([]snapshotter.Mount, error) {
	return s.create(snapshotter.KindView, key, parent, opts)
}

func (s *Snapshotter) create(kind snapshotter.Kind, key, parent string, opts []snapshotter.Opt) ([]snapshotter.Mount, error) {
	snap, err := s.ms.Create(key, parent, kind, opts, func(snap metastore.Snapshot) error {
		dir := s.dir(snap.ID)
		// A directory left by a crash between mkdir and commit is stale.
		if err := os.RemoveAll(dir); err != nil {
			return err
		}
		if err := os.MkdirAll(filepath.Join(dir, "fs"), 0o755); err != nil {
			return err
		}
		if kind == snapshotter.KindActive {
			if err := os.Mkdir(filepath.Join(dir, "work"), 0o700); err != nil {
				os.RemoveAll(dir)
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return s.mounts(snap), nil
}

// mounts follows containerd's overlay layout: a snapshot without parents is
// a bind mount of its directory; a view of one parent binds that parent
// read-only; otherwise an overlay whose lowerdirs are the parents, nearest
// first, with the snapshot's upper and work directories when active.
func (s *Snapshotter) mounts(snap metastore.Snapshot) []snapshotter.Mount {
	ro := snap.Kind == snapshotter.KindView
	if len(snap.ParentIDs) == 0 {
		return []snapshotter.Mount{bind(s.fs(snap.ID), ro)}
	}
	if ro && len(snap.ParentIDs) == 1 {
		return []snapshotter.Mount{bind(s.fs(snap.ParentIDs[0]), true)}
	}
	lowers := make([]string, len(snap.ParentIDs))
	for i, id := range snap.ParentIDs {
		lowers[i] = s.fs(id)
	}
	var options []string
	if !ro {
		options = append(options,
			"workdir="+filepath.Join(s.dir(snap.ID), "work"),
			"upperdir="+s.fs(snap.ID))
	}
	options = append(options, "lowerdir="+strings.Join(lowers, ":"))
	return []snapshotter.Mount{{Type: "overlay", Source: "overlay", Options: options}}
}

func bind(source string, ro bool) snapshotter.Mount {
	mode := "rw"
	if ro {
		mode = "ro"
	}
	return snapshotter.Mount{Type: "bind", Source: source, Options: []string{mode, "rbind"}}
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
	if err := s.ms.Commit(name, key, u, opts); err != nil {
		return err
	}
	// The work directory is of no use to a committed layer.
	os.RemoveAll(filepath.Join(s.dir(id), "work"))
	return nil
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
func (s *Snapshotter) Walk(ctx context.Context, fn snapshotter.WalkFunc, fs ...string) error {
	return walk(ctx, s.ms, fn, fs)
}

// Close implements snapshotter.Snapshotter.
func (s *Snapshotter) Close() error { return s.ms.Close() }

func walk(ctx context.Context, ms *metastore.Store, fn snapshotter.WalkFunc, exprs []string) error {
	f, err := filters.ParseAll(exprs...)
	if err != nil {
		return err
	}
	infos, err := ms.List(f)
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

// removeOrphans deletes snapshot directories that no record owns: those of
// a Remove or Prepare interrupted by a crash.
func removeOrphans(dir string, ms *metastore.Store) error {
	ids, err := ms.IDs()
	if err != nil {
		return err
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if !ids[e.Name()] {
			if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
	return nil
}
