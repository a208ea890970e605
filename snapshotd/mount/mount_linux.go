// Package mount applies the mounts a snapshotter returns: bind mounts and
// overlay mounts, including overlays whose lower directories do not fit in
// the one page mount(2) takes for options.
package mount

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/flotilla/flotilla/snapshotd/snapshotter"
)

// All mounts ms, in order, at target (each at its Target below target).
// On failure, what it mounted is unmounted again.
func All(ms []snapshotter.Mount, target string) error {
	var done []string
	for _, m := range ms {
		dst := target
		if m.Target != "" {
			dst = filepath.Join(target, m.Target)
		}
		if err := One(m, dst); err != nil {
			for j := len(done) - 1; j >= 0; j-- {
				Unmount(done[j])
			}
			return err
		}
		done = append(done, dst)
	}
	return nil
}

// One mounts m at target.
func One(m snapshotter.Mount, target string) error {
	flags, data := parseOptions(m.Options)
	switch {
	case m.Type == "bind" || flags&unix.MS_BIND != 0:
		if err := unix.Mount(m.Source, target, "", uintptr(flags&(unix.MS_BIND|unix.MS_REC)|unix.MS_BIND), ""); err != nil {
			return &os.PathError{Op: "bind mount " + m.Source, Path: target, Err: err}
		}
		if flags&unix.MS_RDONLY != 0 {
			if err := unix.Mount("", target, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY, ""); err != nil {
				unix.Unmount(target, unix.MNT_DETACH)
				return &os.PathError{Op: "remount read-only", Path: target, Err: err}
			}
		}
		return nil
	case m.Type == "overlay" && len(data) >= os.Getpagesize():
		return overlayLong(target, flags, data)
	default:
		if err := unix.Mount(m.Source, target, m.Type, uintptr(flags), data); err != nil {
			return &os.PathError{Op: "mount " + m.Type + " " + data, Path: target, Err: err}
		}
		return nil
	}
}

// Unmount unmounts target, lazily so that a busy mount goes once unused.
func Unmount(target string) error {
	if err := unix.Unmount(target, unix.MNT_DETACH); err != nil {
		return &os.PathError{Op: "unmount", Path: target, Err: err}
	}
	return nil
}

func parseOptions(options []string) (int, string) {
	var flags int
	var data []string
	for _, o := range options {
		switch o {
		case "ro":
			flags |= unix.MS_RDONLY
		case "rw":
			flags &^= unix.MS_RDONLY
		case "bind":
			flags |= unix.MS_BIND
		case "rbind":
			flags |= unix.MS_BIND | unix.MS_REC
		case "nosuid":
			flags |= unix.MS_NOSUID
		case "nodev":
			flags |= unix.MS_NODEV
		case "noexec":
			flags |= unix.MS_NOEXEC
		default:
			data = append(data, o)
		}
	}
	return flags, strings.Join(data, ",")
}

// overlayLong mounts an overlay through the new mount API (fsopen), which
// takes each lower directory on its own ("lowerdir+", Linux 6.8).
func overlayLong(target string, flags int, data string) error {
	fd, err := unix.Fsopen("overlay", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return fmt.Errorf("overlay at %s: fsopen: %w", target, err)
	}
	defer unix.Close(fd)
	for _, opt := range strings.Split(data, ",") {
		key, value, _ := strings.Cut(opt, "=")
		if key == "lowerdir" {
			for _, dir := range strings.Split(value, ":") {
				if err := unix.FsconfigSetString(fd, "lowerdir+", dir); err != nil {
					return fmt.Errorf("overlay at %s: lowerdir+ %s: %w", target, dir, err)
				}
			}
			continue
		}
		if err := unix.FsconfigSetString(fd, key, value); err != nil {
			return fmt.Errorf("overlay at %s: option %s: %w", target, key, err)
		}
	}
	if err := unix.FsconfigCreate(fd); err != nil {
		return fmt.Errorf("overlay at %s: create: %w", target, err)
	}
	attrs := 0
	if flags&unix.MS_RDONLY != 0 {
		attrs |= unix.MOUNT_ATTR_RDONLY
	}
	mfd, err := unix.Fsmount(fd, unix.FSMOUNT_CLOEXEC, attrs)
	if err != nil {
		return fmt.Errorf("overlay at %s: fsmount: %w", target, err)
	}
	defer unix.Close(mfd)
	if err := unix.MoveMount(mfd, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("overlay at %s: move_mount: %w", target, err)
	}
	return nil
}
