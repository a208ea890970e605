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
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/flotilla/flotilla/services/mount"
	"github.com/flotilla/flotilla/snapshotd/plugins/metastore"
	"github.com/flotilla/flotilla/snapshotd/plugins/snapdir"
	"github.com/flotilla/flotilla/snapshotd/snapshotter"
)

// Snapshotter is the overlay backend.
type Snapshotter struct {
	*snapdir.Dirs
}

var _ snapshotter.Snapshotter = (*Snapshotter)(nil)

// New opens the overlay snapshotter kept under root. It fails, suggesting
// the native snapshotter, when the kernel or root's filesystem cannot do
// overlay mounts.
func New(root string) (*Snapshotter, error) {
	// Supported's trial mount needs root to exist.
	if err := os.MkdirAll(filepath.Join(root, "snapshots"), 0o700); err != nil {
		return nil, fmt.Errorf("overlayfs: %w", err)
	}
	if err := Supported(root); err != nil {
		return nil, err
	}
	d, err := snapdir.Open(root)
	if err != nil {
		return nil, fmt.Errorf("overlayfs: %w", err)
	}
	return &Snapshotter{Dirs: d}, nil
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

// Mounts implements snapshotter.Snapshotter.
func (s *Snapshotter) Mounts(ctx context.Context, key string) ([]snapshotter.Mount, error) {
	snap, err := s.MS.Snapshot(key)
	if err != nil {
		return nil, fmt.Errorf("mounts: %w", err)
	}
	_, info, _, err := s.MS.Info(key)
	if err != nil {
		return nil, fmt.Errorf("mounts: %w", err)
	}
	return s.mounts(snap, info.Labels), nil
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
	var info snapshotter.Info
	for _, o := range opts {
		if err := o(&info); err != nil {
			return nil, err
		}
	}
	mapped, uid, gid, err := mappedRoot(info.Labels)
	if err != nil {
		return nil, err
	}
	snap, err := s.MS.Create(key, parent, kind, opts, func(snap metastore.Snapshot) error {
		if err := s.MakeDir(snap.ID); err != nil {
			return err
		}
		var err error
		if mapped {
			err = os.Lchown(s.FS(snap.ID), uid, gid)
		} else {
			err = ownLikeParent(s.FS(snap.ID), snap.ParentIDs, s.FS)
		}
		if err != nil {
			os.RemoveAll(s.Dir(snap.ID))
			return err
		}
		if kind == snapshotter.KindActive {
			if err := os.Mkdir(filepath.Join(s.Dir(snap.ID), "work"), 0o700); err != nil {
				os.RemoveAll(s.Dir(snap.ID))
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return s.mounts(snap, info.Labels), nil
}

// Labels with which containerd's clients (WithRemapperLabels,
// WithUserNSRemapperLabels) ask for an ID-mapped snapshot: mappings
// "C:H:S[,C:H:S…]" of container IDs to host IDs.
const (
	LabelUIDMapping = "containerd.io/snapshot/uidmapping"
	LabelGIDMapping = "containerd.io/snapshot/gidmapping"
)

// mappedRoot is the host UID and GID of the container's root in the
// snapshot's ID-mapping labels; mapped is false without them.
func mappedRoot(labels map[string]string) (mapped bool, uid, gid int, err error) {
	uidmap, gidmap := labels[LabelUIDMapping], labels[LabelGIDMapping]
	if uidmap == "" && gidmap == "" {
		return false, 0, 0, nil
	}
	if uidmap == "" || gidmap == "" {
		return false, 0, 0, fmt.Errorf("labels %s and %s go together: %w", LabelUIDMapping, LabelGIDMapping, errdefs.ErrInvalidArgument)
	}
	host := func(name, v string) (int, error) {
		ms, err := mount.ParseIDMap(v)
		if err != nil {
			return 0, fmt.Errorf("label %s: %w", name, err)
		}
		for _, m := range ms {
			if m.ContainerID <= 0 && 0 < m.ContainerID+m.Size {
				return m.HostID - m.ContainerID, nil
			}
		}
		return 0, fmt.Errorf("label %s=%q maps no root: %w", name, v, errdefs.ErrInvalidArgument)
	}
	if uid, err = host(LabelUIDMapping, uidmap); err != nil {
		return false, 0, 0, err
	}
	if gid, err = host(LabelGIDMapping, gidmap); err != nil {
		return false, 0, 0, err
	}
	return true, uid, gid, nil
}

// ownLikeParent gives a new snapshot's upper directory the owner of its
// parent's, as containerd's overlay snapshotter does: the root of the
// overlay is the upper directory, so over a remapped (chowned) parent a
// user-namespaced container's root owns its "/" and can create in it.
func ownLikeParent(upper string, parentIDs []string, fs func(string) string) error {
	if len(parentIDs) == 0 {
		return nil
	}
	var st unix.Stat_t
	if err := unix.Stat(fs(parentIDs[0]), &st); err != nil {
		return fmt.Errorf("parent of %s: %w", upper, err)
	}
	if err := os.Lchown(upper, int(st.Uid), int(st.Gid)); err != nil {
		return fmt.Errorf("own %s like its parent: %w", upper, err)
	}
	return nil
}

// mounts follows containerd's overlay layout: a snapshot without parents is
// a bind mount of its directory; a view of one parent binds that parent
// read-only; otherwise an overlay whose lowerdirs are the parents, nearest
// first, with the snapshot's upper and work directories when active.
//
// A snapshot with ID-mapping labels gets containerd's uidmap= and gidmap=
// options on its mounts, so that the lower directories are mounted
// ID-mapped (services/mount does it) and the image's root files are the
// mapped root's, without a chown.
func (s *Snapshotter) mounts(snap metastore.Snapshot, labels map[string]string) []snapshotter.Mount {
	var idmap []string
	if labels[LabelUIDMapping] != "" && labels[LabelGIDMapping] != "" {
		idmap = []string{"uidmap=" + labels[LabelUIDMapping], "gidmap=" + labels[LabelGIDMapping]}
	}
	ro := snap.Kind == snapshotter.KindView
	if len(snap.ParentIDs) == 0 {
		return []snapshotter.Mount{withOptions(bind(s.FS(snap.ID), ro), idmap)}
	}
	if ro && len(snap.ParentIDs) == 1 {
		return []snapshotter.Mount{withOptions(bind(s.FS(snap.ParentIDs[0]), true), idmap)}
	}
	lowers := make([]string, len(snap.ParentIDs))
	for i, id := range snap.ParentIDs {
		lowers[i] = s.FS(id)
	}
	options := append([]string(nil), idmap...)
	if !ro {
		options = append(options,
			"workdir="+filepath.Join(s.Dir(snap.ID), "work"),
			"upperdir="+s.FS(snap.ID))
	}
	options = append(options, "lowerdir="+strings.Join(lowers, ":"))
	return []snapshotter.Mount{{Type: "overlay", Source: "overlay", Options: options}}
}

func withOptions(m snapshotter.Mount, options []string) snapshotter.Mount {
	m.Options = append(append([]string(nil), options...), m.Options...)
	return m
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
	id, err := s.CommitID(ctx, name, key, opts...)
	if err != nil {
		return err
	}
	// The work directory is of no use to a committed layer.
	os.RemoveAll(filepath.Join(s.Dir(id), "work"))
	return nil
}
