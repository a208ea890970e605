// Package mount mounts a container's root filesystem from containerd's mount
// descriptions (containerd.types.Mount: type, source, fstab-style options)
// and unmounts it again.
package mount

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// flag is what an fstab option does to the mount flags: set or clear bits.
type flag struct {
	clear bool
	bits  uintptr
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
	"mand":          {false, unix.MS_MANDLOCK},
	"noatime":       {false, unix.MS_NOATIME},
	"nodev":         {false, unix.MS_NODEV},
	"nodiratime":    {false, unix.MS_NODIRATIME},
	"noexec":        {false, unix.MS_NOEXEC},
	"nomand":        {true, unix.MS_MANDLOCK},
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

// ParseOptions splits fstab-style options into mount flags and the data
// string handed to the filesystem (everything that is not a flag, such as
// overlay's lowerdir=…).
func ParseOptions(options []string) (uintptr, string) {
	var bits uintptr
	var data []string
	for _, o := range options {
		if f, ok := flags[o]; ok {
			if f.clear {
				bits &^= f.bits
			} else {
				bits |= f.bits
			}
			continue
		}
		data = append(data, o)
	}
	return bits, strings.Join(data, ",")
}

// All mounts every m onto target, in order (later ones stack on earlier
// ones). Supported types are bind mounts (type "bind" or a "bind"/"rbind"
// option) and any filesystem the kernel knows by type, overlay included. On
// failure the mounts already made are undone.
func All(mounts []*types.Mount, target string) (err error) {
	for i, m := range mounts {
		if err := one(m, target); err != nil {
			if i > 0 {
				_ = Unmount(target)
			}
			return err
		}
	}
	return nil
}

func one(m *types.Mount, target string) error {
	bits, data := ParseOptions(m.GetOptions())
	typ := m.GetType()
	if typ == "bind" || typ == "rbind" {
		bits |= unix.MS_BIND
		if typ == "rbind" {
			bits |= unix.MS_REC
		}
		typ = ""
	}
	if typ == "" && bits&unix.MS_BIND == 0 {
		return fmt.Errorf("mount %q: no type: %w", m.GetSource(), errdefs.ErrInvalidArgument)
	}
	if bits&unix.MS_BIND != 0 {
		if _, err := os.Stat(m.GetSource()); err != nil {
			return fmt.Errorf("bind mount source %q: %w", m.GetSource(), errdefs.ErrNotFound)
		}
	}
	// A bind mount ignores MS_RDONLY (and the other per-mount flags) on the
	// first call; they take effect by remounting the new mount.
	first := bits
	if bits&unix.MS_BIND != 0 {
		first = bits &^ (unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC)
	}
	if err := unix.Mount(m.GetSource(), target, typ, first, data); err != nil {
		return classify(fmt.Errorf("mount %s %q on %s (options %q): %w", orBind(typ), m.GetSource(), target, data, err), err)
	}
	if first != bits {
		remount := unix.MS_REMOUNT | unix.MS_BIND | (bits &^ (unix.MS_REC | unix.MS_BIND))
		if err := unix.Mount("", target, "", remount, ""); err != nil {
			_ = unix.Unmount(target, unix.MNT_DETACH)
			return fmt.Errorf("remount %s with %v: %w", target, m.GetOptions(), err)
		}
	}
	return nil
}

func orBind(typ string) string {
	if typ == "" {
		return "bind"
	}
	return typ
}

func classify(wrapped, err error) error {
	switch {
	case errors.Is(err, unix.ENOENT):
		return fmt.Errorf("%w: %w", wrapped, errdefs.ErrNotFound)
	case errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENODEV), errors.Is(err, unix.ENOTDIR):
		return fmt.Errorf("%w: %w", wrapped, errdefs.ErrInvalidArgument)
	}
	return wrapped
}

// Unmount removes every mount stacked on target. A target that is not a
// mount point (or does not exist) is not an error. A busy mount is retried
// for a short while, then detached.
func Unmount(target string) error {
	for i := 0; ; i++ {
		err := unix.Unmount(target, 0)
		switch {
		case err == nil:
			continue // another mount may be stacked below
		case errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOENT):
			return nil
		case errors.Is(err, unix.EBUSY) && i < 50:
			time.Sleep(20 * time.Millisecond)
		case errors.Is(err, unix.EBUSY):
			if err := unix.Unmount(target, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
				return fmt.Errorf("unmount %s: %w", target, err)
			}
		default:
			return fmt.Errorf("unmount %s: %w", target, err)
		}
	}
}

// IsMountPoint reports whether target is the mount point of a mount in the
// calling process's mount namespace.
func IsMountPoint(target string) (bool, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		fields := strings.Fields(line)
		if len(fields) > 4 && unescape(fields[4]) == target {
			return true, nil
		}
	}
	return false, nil
}

// unescape undoes mountinfo's octal escapes (\040 for a space, …).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			var v int
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &v); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
