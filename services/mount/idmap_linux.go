package mount

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// ID-mapped mounts: containerd's overlay snapshotter, given a snapshot with
// the labels containerd.io/snapshot/uidmapping and gidmapping, hands out its
// mounts with the options "uidmap=C:H:S[,C:H:S…]" and "gidmap=…". Each
// lower directory of such an overlay (the source of such a bind mount) is
// mounted through an ID mapping (mount_setattr MOUNT_ATTR_IDMAP, Linux
// 5.19+ for overlay), so the files an image holds as root are the mapped
// root's in the container, without a chown.

// idMapOptions takes uidmap= and gidmap= out of a mount's data options.
func idMapOptions(data []string) (uidmap, gidmap string, rest []string) {
	for _, o := range data {
		switch {
		case strings.HasPrefix(o, "uidmap="):
			uidmap = strings.TrimPrefix(o, "uidmap=")
		case strings.HasPrefix(o, "gidmap="):
			gidmap = strings.TrimPrefix(o, "gidmap=")
		default:
			rest = append(rest, o)
		}
	}
	return uidmap, gidmap, rest
}

// ParseIDMap parses "C:H:S[,C:H:S…]" (container ID, host ID, size).
func ParseIDMap(s string) ([]syscall.SysProcIDMap, error) {
	var out []syscall.SysProcIDMap
	for _, part := range strings.Split(s, ",") {
		f := strings.Split(part, ":")
		if len(f) != 3 {
			return nil, fmt.Errorf("id mapping %q: want container:host:size: %w", part, errdefs.ErrInvalidArgument)
		}
		var v [3]int
		for i := range f {
			n, err := strconv.ParseUint(f[i], 10, 32)
			if err != nil {
				return nil, fmt.Errorf("id mapping %q: %v: %w", part, err, errdefs.ErrInvalidArgument)
			}
			v[i] = int(n)
		}
		if v[2] == 0 {
			return nil, fmt.Errorf("id mapping %q: empty range: %w", part, errdefs.ErrInvalidArgument)
		}
		out = append(out, syscall.SysProcIDMap{ContainerID: v[0], HostID: v[1], Size: v[2]})
	}
	return out, nil
}

// usernsFD opens a new user namespace with the given mappings: that of a
// child stopped before it runs anything (ptrace stops it at its exec), and
// killed once the namespace is open.
func usernsFD(uidmap, gidmap string) (int, error) {
	uids, err := ParseIDMap(uidmap)
	if err != nil {
		return -1, err
	}
	gids, err := ParseIDMap(gidmap)
	if err != nil {
		return -1, err
	}
	cmd := exec.Command("/proc/self/exe")
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  unix.CLONE_NEWUSER,
		UidMappings: uids,
		GidMappings: gids,
		Ptrace:      true,
		Pdeathsig:   unix.SIGKILL,
	}
	if err := cmd.Start(); err != nil {
		return -1, fmt.Errorf("user namespace for %s/%s: %w", uidmap, gidmap, err)
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait() // a process's own reaper (the shim's) may reap it first
	}()
	fd, err := unix.Open(fmt.Sprintf("/proc/%d/ns/user", cmd.Process.Pid), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open user namespace: %w", err)
	}
	return fd, nil
}

// idMappedTree clones the tree at source, detached, seen through the user
// namespace userns.
func idMappedTree(source string, recursive bool, userns int) (int, error) {
	flags := unix.OPEN_TREE_CLONE | unix.OPEN_TREE_CLOEXEC
	if recursive {
		flags |= unix.AT_RECURSIVE
	}
	fd, err := unix.OpenTree(unix.AT_FDCWD, source, uint(flags))
	if err != nil {
		return -1, fmt.Errorf("open_tree %s: %w", source, err)
	}
	at := unix.AT_EMPTY_PATH
	if recursive {
		at |= unix.AT_RECURSIVE
	}
	attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_IDMAP, Userns_fd: uint64(userns)}
	if err := unix.MountSetattr(fd, "", uint(at), &attr); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("id-map %s: %w", source, err)
	}
	return fd, nil
}

// idMappedBind bind-mounts source on target through the ID mapping.
func idMappedBind(source, target string, recursive bool, userns int) error {
	fd, err := idMappedTree(source, recursive, userns)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.MoveMount(fd, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("move_mount to %s: %w", target, err)
	}
	return nil
}

// idMappedLowers mounts each lower directory of an overlay's lowerdir=
// option ID-mapped on a temporary directory and returns the data options
// with those directories as lowerdir; release unmounts and removes them
// (an overlay mounted on them keeps its own references).
func idMappedLowers(data []string, userns int) (_ []string, release func(), err error) {
	var dirs []string
	release = func() {
		for _, d := range dirs {
			_ = unix.Unmount(d, unix.MNT_DETACH)
			_ = os.Remove(d)
		}
	}
	defer func() {
		if err != nil {
			release()
		}
	}()
	out := make([]string, 0, len(data))
	for _, o := range data {
		v, ok := strings.CutPrefix(o, "lowerdir=")
		if !ok {
			out = append(out, o)
			continue
		}
		var mapped []string
		for _, lower := range strings.Split(v, ":") {
			dir, err := os.MkdirTemp("", "flotilla-idmapped-")
			if err != nil {
				return nil, nil, err
			}
			if err := idMappedBind(lower, dir, false, userns); err != nil {
				os.Remove(dir)
				return nil, nil, err
			}
			dirs = append(dirs, dir)
			mapped = append(mapped, dir)
		}
		out = append(out, "lowerdir="+strings.Join(mapped, ":"))
	}
	if len(dirs) == 0 {
		return nil, nil, errors.New("id-mapped overlay without lowerdir")
	}
	return out, release, nil
}

// IDMappedOverlaySupported reports whether the kernel can mount an overlay
// over ID-mapped lower directories (Linux 5.19+, as containerd checks it).
func IDMappedOverlaySupported() bool {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return false
	}
	var major, minor int
	if _, err := fmt.Sscanf(unix.ByteSliceToString(u.Release[:]), "%d.%d", &major, &minor); err != nil {
		return false
	}
	return major > 5 || major == 5 && minor >= 19
}
