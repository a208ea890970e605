// Package mount mounts the containerd mount lists (types.Mount) that the
// diff service is handed, for as long as one operation needs them.
package mount

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// Overlay reads an overlay mount's directories: its upper directory ("" for
// a read-only overlay) and its lower ones, topmost first. ok is false for
// any other mount.
func Overlay(m *types.Mount) (upper string, lowers []string, ok bool) {
	if m == nil || m.GetType() != "overlay" {
		return "", nil, false
	}
	for _, o := range m.GetOptions() {
		switch k, v, _ := strings.Cut(o, "="); k {
		case "upperdir":
			upper = v
		case "lowerdir":
			lowers = strings.Split(v, ":")
		}
	}
	return upper, lowers, true
}

// Bind tells whether m is a bind mount, and whether it is read-only.
func Bind(m *types.Mount) (bind, readonly bool) {
	if m == nil {
		return false, false
	}
	bind = m.GetType() == "bind" || m.GetType() == "rbind"
	for _, o := range m.GetOptions() {
		switch o {
		case "bind", "rbind":
			bind = true
		case "ro":
			readonly = true
		}
	}
	return bind, readonly
}

// ReadOnly returns ms changed to mount read-only: "ro" on every mount, and
// an overlay's upper directory turned into its topmost lower one (without
// a work directory), so a mount in use elsewhere can be looked at while it
// stays mounted.
func ReadOnly(ms []*types.Mount) []*types.Mount {
	out := make([]*types.Mount, 0, len(ms))
	for _, m := range ms {
		var opts []string
		if upper, lowers, ok := Overlay(m); ok {
			if upper != "" {
				lowers = append([]string{upper}, lowers...)
			}
			for _, o := range m.GetOptions() {
				k, _, _ := strings.Cut(o, "=")
				if k != "upperdir" && k != "workdir" && k != "lowerdir" && o != "rw" {
					opts = append(opts, o)
				}
			}
			opts = append(opts, "lowerdir="+strings.Join(lowers, ":"))
		} else {
			for _, o := range m.GetOptions() {
				if o != "rw" {
					opts = append(opts, o)
				}
			}
		}
		if !slices.Contains(opts, "ro") {
			opts = append(opts, "ro")
		}
		out = append(out, &types.Mount{Type: m.GetType(), Source: m.GetSource(), Target: m.GetTarget(), Options: opts})
	}
	return out
}

// WithTempMount mounts ms, in order, on a new private directory, calls fn
// with it, and unmounts and removes the directory whatever fn returns.
func WithTempMount(ctx context.Context, ms []*types.Mount, fn func(root string) error) (err error) {
	dir, err := os.MkdirTemp("", "flotilla-diff-")
	if err != nil {
		return fmt.Errorf("temporary mount point: %w", err)
	}
	mounted, err := All(ms, dir)
	defer func() {
		if uerr := unmountAll(mounted); uerr != nil {
			err = errors.Join(err, uerr)
			return // never remove a directory something may still be mounted on
		}
		os.Remove(dir)
	}()
	if err != nil {
		return err
	}
	return fn(dir)
}

// All mounts ms on target in order (a mount with a Target goes on that
// path beneath target) and returns the mount points, in mount order; if
// one fails, it unmounts what it mounted and returns the error.
func All(ms []*types.Mount, target string) ([]string, error) {
	var mounted []string
	for _, m := range ms {
		t := target
		if sub := m.GetTarget(); sub != "" {
			t = filepath.Join(target, filepath.Clean("/"+sub))
		}
		if err := Mount(m, t); err != nil {
			return nil, errors.Join(err, unmountAll(mounted))
		}
		mounted = append(mounted, t)
	}
	return mounted, nil
}

// unmountAll unmounts mount points in the reverse of their mount order.
func unmountAll(mounted []string) error {
	var errs []error
	for i := len(mounted) - 1; i >= 0; i-- {
		errs = append(errs, Unmount(mounted[i]))
	}
	return errors.Join(errs...)
}

type flag struct {
	clear bool
	flag  uintptr
}

var flags = map[string]flag{
	"async":         {true, unix.MS_SYNCHRONOUS},
	"atime":         {true, unix.MS_NOATIME},
	"bind":          {false, unix.MS_BIND},
	"defaults":      {false, 0},
	"dev":           {true, unix.MS_NODEV},
	"diratime":      {true, unix.MS_NODIRATIME},
	"dirsync":       {false, unix.MS_DIRSYNC},
	"exec":          {true, unix.MS_NOEXEC},
	"noatime":       {false, unix.MS_NOATIME},
	"nodev":         {false, unix.MS_NODEV},
	"nodiratime":    {false, unix.MS_NODIRATIME},
	"noexec":        {false, unix.MS_NOEXEC},
	"norelatime":    {true, unix.MS_RELATIME},
	"nostrictatime": {true, unix.MS_STRICTATIME},
	"nosuid":        {false, unix.MS_NOSUID},
	"rbind":         {false, unix.MS_BIND | unix.MS_REC},
	"relatime":      {false, unix.MS_RELATIME},
	"remount":       {false, unix.MS_REMOUNT},
	"ro":            {false, unix.MS_RDONLY},
	"rw":            {true, unix.MS_RDONLY},
	"strictatime":   {false, unix.MS_STRICTATIME},
	"suid":          {true, unix.MS_NOSUID},
	"sync":          {false, unix.MS_SYNCHRONOUS},
}

var propagation = map[string]uintptr{
	"private": unix.MS_PRIVATE, "rprivate": unix.MS_PRIVATE | unix.MS_REC,
	"shared": unix.MS_SHARED, "rshared": unix.MS_SHARED | unix.MS_REC,
	"slave": unix.MS_SLAVE, "rslave": unix.MS_SLAVE | unix.MS_REC,
	"unbindable": unix.MS_UNBINDABLE, "runbindable": unix.MS_UNBINDABLE | unix.MS_REC,
}

func parseOptions(opts []string) (flagsOut, prop uintptr, data []string) {
	for _, o := range opts {
		if f, ok := flags[o]; ok {
			if f.clear {
				flagsOut &^= f.flag
			} else {
				flagsOut |= f.flag
			}
			continue
		}
		if p, ok := propagation[o]; ok {
			prop |= p
			continue
		}
		data = append(data, o)
	}
	return flagsOut, prop, data
}

// Mount mounts m on target. A read-only bind mount is a bind mount
// remounted read-only, as the kernel wants it. An overlay whose options do
// not fit in the one page mount(2) takes is mounted with fsopen(2), one
// lower directory at a time.
func Mount(m *types.Mount, target string) error {
	fl, prop, data := parseOptions(m.GetOptions())
	typ := m.GetType()
	joined := strings.Join(data, ",")
	var err error
	if typ == "overlay" && len(joined) >= os.Getpagesize()-1 {
		err = mountOverlayFS(target, fl, data)
	} else {
		err = unix.Mount(m.GetSource(), target, typ, fl&^unix.MS_RDONLY|onlyIfNotBind(fl), joined)
		if err == nil && fl&unix.MS_BIND != 0 && fl&^(unix.MS_BIND|unix.MS_REC) != 0 {
			err = unix.Mount("", target, "", fl|unix.MS_REMOUNT, "")
			if err != nil {
				unix.Unmount(target, unix.MNT_DETACH)
			}
		}
	}
	if err != nil {
		return fmt.Errorf("mount %s (%s) on %s: %w", m.GetSource(), typ, target, mountErr(err))
	}
	if prop != 0 {
		if err := unix.Mount("", target, "", prop, ""); err != nil {
			Unmount(target)
			return fmt.Errorf("mount propagation of %s: %w", target, err)
		}
	}
	return nil
}

// onlyIfNotBind keeps MS_RDONLY for a first mount unless it is a bind
// mount, which ignores it and needs a remount.
func onlyIfNotBind(fl uintptr) uintptr {
	if fl&unix.MS_BIND != 0 {
		return 0
	}
	return fl & unix.MS_RDONLY
}

func mountErr(err error) error {
	switch {
	case errors.Is(err, unix.ENOENT):
		return errors.Join(err, errdefs.ErrNotFound)
	case errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOTDIR):
		return errors.Join(err, errdefs.ErrInvalidArgument)
	}
	return err
}

func mountOverlayFS(target string, fl uintptr, data []string) error {
	fsfd, err := unix.Fsopen("overlay", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return fmt.Errorf("fsopen overlay: %w", err)
	}
	defer unix.Close(fsfd)
	for _, o := range data {
		k, v, hasValue := strings.Cut(o, "=")
		switch {
		case k == "lowerdir":
			for _, l := range strings.Split(v, ":") {
				if err := unix.FsconfigSetString(fsfd, "lowerdir+", l); err != nil {
					return fmt.Errorf("overlay lowerdir+ %s: %w", l, err)
				}
			}
		case hasValue:
			err = unix.FsconfigSetString(fsfd, k, v)
		default:
			err = unix.FsconfigSetFlag(fsfd, k)
		}
		if err != nil {
			return fmt.Errorf("overlay option %s: %w", o, err)
		}
	}
	if err := unix.FsconfigCreate(fsfd); err != nil {
		return fmt.Errorf("overlay create: %w", err)
	}
	var attr int
	for f, a := range map[uintptr]int{unix.MS_RDONLY: unix.MOUNT_ATTR_RDONLY, unix.MS_NOSUID: unix.MOUNT_ATTR_NOSUID, unix.MS_NODEV: unix.MOUNT_ATTR_NODEV, unix.MS_NOEXEC: unix.MOUNT_ATTR_NOEXEC} {
		if fl&f != 0 {
			attr |= a
		}
	}
	mfd, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, attr)
	if err != nil {
		return fmt.Errorf("fsmount overlay: %w", err)
	}
	defer unix.Close(mfd)
	if err := unix.MoveMount(mfd, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("move_mount overlay: %w", err)
	}
	return nil
}

// Unmount unmounts target, retrying while it is busy and detaching it
// lazily as a last resort. A target with nothing mounted is no error.
func Unmount(target string) error {
	for range 50 {
		err := unix.Unmount(target, 0)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOENT):
			return nil // not a mount point (any more)
		case errors.Is(err, unix.EBUSY):
			time.Sleep(20 * time.Millisecond)
			continue
		}
		return fmt.Errorf("unmount %s: %w", target, err)
	}
	if err := unix.Unmount(target, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("unmount %s: %w", target, err)
	}
	return nil
}
