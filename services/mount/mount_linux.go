// Package mount mounts containerd mount descriptions (containerd.types.Mount:
// a type, a source and fstab-style options) onto a target and unmounts them
// again. It is what snapshotd (which prepares mounts and applies diffs onto
// them) and taskd's shim (which mounts a container's root filesystem) share.
//
// Supported are bind mounts (type "bind"/"rbind" or a "bind"/"rbind"
// option; read-only and the other per-mount flags take effect by a remount,
// as the kernel wants it), overlay mounts, including those whose options do
// not fit in the one page mount(2) takes (mounted with fsopen(2), one lower
// directory at a time, on Linux 6.8+; on older kernels, such as Debian 12's
// 6.1, with the lower directories named relative to their common parent, as
// containerd does), and any other filesystem the kernel knows by type. Bind
// and overlay mounts with containerd's uidmap= and gidmap= options are
// ID-mapped (see idmap_linux.go).
//
// Errors are wrapped with the mount they concern and classified with errdefs:
// a missing source or target is NotFound, an option or type the kernel
// refuses is InvalidArgument.
package mount

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
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

var propagation = map[string]uintptr{
	"private": unix.MS_PRIVATE, "rprivate": unix.MS_PRIVATE | unix.MS_REC,
	"shared": unix.MS_SHARED, "rshared": unix.MS_SHARED | unix.MS_REC,
	"slave": unix.MS_SLAVE, "rslave": unix.MS_SLAVE | unix.MS_REC,
	"unbindable": unix.MS_UNBINDABLE, "runbindable": unix.MS_UNBINDABLE | unix.MS_REC,
}

// ParseOptions splits fstab-style options into mount(2) flags, the
// propagation to set once mounted (0 for none), and the filesystem's own
// options (everything else, such as overlay's lowerdir=…), in order. A
// later option overrides an earlier one ("ro", then "rw", is read-write).
func ParseOptions(options []string) (flagBits, prop uintptr, data []string) {
	for _, o := range options {
		if f, ok := flags[o]; ok {
			if f.clear {
				flagBits &^= f.bits
			} else {
				flagBits |= f.bits
			}
			continue
		}
		if p, ok := propagation[o]; ok {
			prop |= p
			continue
		}
		data = append(data, o)
	}
	return flagBits, prop, data
}

// perMount are the flags a new bind mount ignores and a remount applies.
const perMount = unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC |
	unix.MS_NOATIME | unix.MS_NODIRATIME | unix.MS_RELATIME | unix.MS_STRICTATIME

// Mount mounts m on target, which must exist. It ignores m's Target (see
// All). If the mount is made but a later step (a read-only remount, the
// propagation) fails, the mount is undone.
func Mount(m *types.Mount, target string) error {
	bits, prop, data := ParseOptions(m.GetOptions())
	typ := m.GetType()
	if typ == "bind" || typ == "rbind" {
		bits |= unix.MS_BIND
		if typ == "rbind" {
			bits |= unix.MS_REC
		}
		typ = ""
	}
	bind := bits&unix.MS_BIND != 0
	if typ == "" && !bind && bits&unix.MS_REMOUNT == 0 {
		return fmt.Errorf("mount %q on %s: no type: %w", m.GetSource(), target, errdefs.ErrInvalidArgument)
	}
	if bind && bits&unix.MS_REMOUNT == 0 {
		if _, err := os.Stat(m.GetSource()); err != nil {
			return fmt.Errorf("bind mount source %q: %w", m.GetSource(), errdefs.ErrNotFound)
		}
	}
	what := fmt.Sprintf("mount %s %q on %s", orBind(typ), m.GetSource(), target)
	userns := -1
	if uidmap, gidmap, rest := idMapOptions(data); uidmap != "" || gidmap != "" {
		if uidmap == "" || gidmap == "" || (typ != "overlay" && !bind) || bits&unix.MS_REMOUNT != 0 {
			return fmt.Errorf("%s: uidmap and gidmap go together, on a new bind or overlay mount: %w", what, errdefs.ErrInvalidArgument)
		}
		fd, err := usernsFD(uidmap, gidmap)
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		defer unix.Close(fd)
		userns, data = fd, rest
		if typ == "overlay" {
			mapped, release, err := idMappedLowers(data, userns)
			if err != nil {
				return classify(fmt.Errorf("%s: %w", what, err), err)
			}
			defer release()
			data = mapped
		}
	}
	joined := strings.Join(data, ",")
	switch {
	case typ == "overlay" && len(joined) >= os.Getpagesize()-1:
		err := overlayFS(target, bits, data)
		if errors.Is(err, errNoLowerdirPlus) {
			err = overlayRelative(target, bits, data)
		}
		if err != nil {
			return classify(fmt.Errorf("%s: %w", what, err), err)
		}
	case bind && bits&unix.MS_REMOUNT == 0:
		// A new bind mount ignores the per-mount flags; they take effect
		// by remounting it.
		if userns >= 0 {
			if err := idMappedBind(m.GetSource(), target, bits&unix.MS_REC != 0, userns); err != nil {
				return classify(fmt.Errorf("%s: %w", what, err), err)
			}
		} else if err := unix.Mount(m.GetSource(), target, "", bits&(unix.MS_BIND|unix.MS_REC), joined); err != nil {
			return classify(fmt.Errorf("%s: %w", what, err), err)
		}
		if bits&perMount != 0 {
			remount := unix.MS_REMOUNT | unix.MS_BIND | bits&perMount
			if err := unix.Mount("", target, "", remount, ""); err != nil {
				_ = unix.Unmount(target, unix.MNT_DETACH)
				return classify(fmt.Errorf("remount %s with %q: %w", target, m.GetOptions(), err), err)
			}
		}
	default:
		if err := unix.Mount(m.GetSource(), target, typ, bits, joined); err != nil {
			return classify(fmt.Errorf("%s (options %q): %w", what, joined, err), err)
		}
	}
	if prop != 0 {
		if err := unix.Mount("", target, "", prop, ""); err != nil {
			_ = unix.Unmount(target, unix.MNT_DETACH)
			return classify(fmt.Errorf("mount propagation of %s: %w", target, err), err)
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

// classify adds the errdefs kind of the system error err to wrapped.
func classify(wrapped, err error) error {
	switch {
	case errors.Is(err, unix.ENOENT):
		return fmt.Errorf("%w: %w", wrapped, errdefs.ErrNotFound)
	case errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENODEV), errors.Is(err, unix.ENOTDIR):
		return fmt.Errorf("%w: %w", wrapped, errdefs.ErrInvalidArgument)
	}
	return wrapped
}

// errNoLowerdirPlus says the kernel cannot take lower directories one by
// one ("lowerdir+" came with Linux 6.8; fsopen itself with 5.2).
var errNoLowerdirPlus = errors.New("overlay lowerdir+ not supported by this kernel")

// forceRelative, set by tests, makes long overlays take the path of kernels
// without lowerdir+.
var forceRelative bool

// overlayFS mounts an overlay through the new mount API, which takes each
// option on its own and each lower directory as its own "lowerdir+". On a
// kernel without either it fails with errNoLowerdirPlus.
func overlayFS(target string, bits uintptr, data []string) error {
	if forceRelative {
		return errNoLowerdirPlus
	}
	fsfd, err := unix.Fsopen("overlay", unix.FSOPEN_CLOEXEC)
	if errors.Is(err, unix.ENOSYS) {
		return fmt.Errorf("fsopen: %w: %w", err, errNoLowerdirPlus)
	}
	if err != nil {
		return fmt.Errorf("fsopen: %w", err)
	}
	defer unix.Close(fsfd)
	for _, o := range data {
		k, v, hasValue := strings.Cut(o, "=")
		switch {
		case k == "lowerdir":
			for i, l := range strings.Split(v, ":") {
				if err := unix.FsconfigSetString(fsfd, "lowerdir+", l); err != nil {
					if i == 0 && errors.Is(err, unix.EINVAL) {
						// The option itself is unknown: the kernel
						// predates it.
						return fmt.Errorf("lowerdir+ %s: %w: %w", l, err, errNoLowerdirPlus)
					}
					return fmt.Errorf("lowerdir+ %s: %w", l, err)
				}
			}
		case hasValue:
			err = unix.FsconfigSetString(fsfd, k, v)
		default:
			err = unix.FsconfigSetFlag(fsfd, k)
		}
		if err != nil {
			return fmt.Errorf("option %s: %w", o, err)
		}
	}
	if err := unix.FsconfigCreate(fsfd); err != nil {
		return fmt.Errorf("fsconfig create: %w", err)
	}
	var attr int
	for f, a := range map[uintptr]int{
		unix.MS_RDONLY: unix.MOUNT_ATTR_RDONLY, unix.MS_NOSUID: unix.MOUNT_ATTR_NOSUID,
		unix.MS_NODEV: unix.MOUNT_ATTR_NODEV, unix.MS_NOEXEC: unix.MOUNT_ATTR_NOEXEC,
	} {
		if bits&f != 0 {
			attr |= a
		}
	}
	mfd, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, attr)
	if err != nil {
		return fmt.Errorf("fsmount: %w", err)
	}
	defer unix.Close(mfd)
	if err := unix.MoveMount(mfd, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("move_mount: %w", err)
	}
	return nil
}

// overlayRelative mounts an overlay whose options are too long for one page
// on a kernel without lowerdir+: the lower directories are named relative
// to their common parent, from a thread whose working directory is that
// parent (containerd shortens long lowerdir options the same way). The
// thread gets a working directory of its own (unshare CLONE_FS), so the
// process's is untouched; it is never handed back to the Go scheduler and
// ends with its goroutine.
func overlayRelative(target string, bits uintptr, data []string) error {
	target, err := filepath.Abs(target)
	if err != nil {
		return err
	}
	opts := slices.Clone(data)
	var common string
	for i, o := range opts {
		v, ok := strings.CutPrefix(o, "lowerdir=")
		if !ok {
			continue
		}
		lowers := strings.Split(v, ":")
		common = commonParent(lowers)
		for j, l := range lowers {
			rel, err := filepath.Rel(common, l)
			if err != nil {
				return err
			}
			lowers[j] = rel
		}
		opts[i] = "lowerdir=" + strings.Join(lowers, ":")
	}
	joined := strings.Join(opts, ",")
	if common == "" || len(joined) >= os.Getpagesize()-1 {
		return fmt.Errorf("overlay options of %d bytes do not fit in a page, even with lower directories relative to their parent, and this kernel has no lowerdir+: %w",
			len(joined), unix.EINVAL)
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread's cwd is its own
		if err := unix.Unshare(unix.CLONE_FS); err != nil {
			errc <- fmt.Errorf("unshare the working directory: %w", err)
			return
		}
		if err := unix.Chdir(common); err != nil {
			errc <- fmt.Errorf("chdir %s: %w", common, err)
			return
		}
		if err := unix.Mount("overlay", target, "overlay", bits, joined); err != nil {
			errc <- fmt.Errorf("mount from %s (options %q): %w", common, joined, err)
			return
		}
		errc <- nil
	}()
	return <-errc
}

// commonParent is the longest directory that holds every one of paths
// (absolute, cleaned); "/" at worst, "" if a path is relative.
func commonParent(paths []string) string {
	var common []string
	for i, p := range paths {
		if !filepath.IsAbs(p) {
			return ""
		}
		dir := strings.Split(filepath.Dir(filepath.Clean(p)), "/")
		if i == 0 {
			common = dir
			continue
		}
		n := 0
		for n < len(common) && n < len(dir) && common[n] == dir[n] {
			n++
		}
		common = common[:n]
	}
	if len(common) <= 1 {
		return "/"
	}
	return strings.Join(common, "/")
}

// All mounts ms on target in order: later mounts stack on earlier ones, and
// a mount with a Target goes on that path beneath target, resolved as if
// target were the root (see Beneath). If one fails, All unmounts what it
// mounted and returns the error. UnmountAll(ms, target) undoes it.
func All(ms []*types.Mount, target string) error {
	_, err := AllPoints(ms, target)
	return err
}

// AllPoints is All, returning the mount points in mount order, for
// UnmountPoints to undo.
func AllPoints(ms []*types.Mount, target string) ([]string, error) {
	var mounted []string
	for _, m := range ms {
		t, err := point(m, target)
		if err == nil {
			err = Mount(m, t)
		}
		if err != nil {
			return nil, errors.Join(err, UnmountPoints(mounted))
		}
		mounted = append(mounted, t)
	}
	return mounted, nil
}

// UnmountAll undoes All(ms, target): it unmounts the mount points of ms in
// the reverse of their mount order. A Target that no longer resolves is
// skipped.
func UnmountAll(ms []*types.Mount, target string) error {
	var mounted []string
	for _, m := range ms {
		if t, err := point(m, target); err == nil {
			mounted = append(mounted, t)
		}
	}
	return UnmountPoints(mounted)
}

// point is where All mounts m.
func point(m *types.Mount, target string) (string, error) {
	if sub := m.GetTarget(); sub != "" {
		return Beneath(target, sub)
	}
	return target, nil
}

// Beneath resolves path sub inside directory root as if root were "/":
// ".." stops at root and symbolic links, absolute or relative, resolve
// inside it (openat2 RESOLVE_IN_ROOT, as the layer applier resolves paths),
// so no symlink in a container's image can send a mount onto the host. It
// returns the path with every link resolved, or NotFound when it does not
// exist.
func Beneath(root, sub string) (string, error) {
	rootFD, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", classify(fmt.Errorf("open root %s: %w", root, err), err)
	}
	defer unix.Close(rootFD)
	rel := strings.TrimPrefix(filepath.Clean("/"+sub), "/")
	if rel == "" {
		return root, nil
	}
	fd, err := unix.Openat2(rootFD, rel, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return "", classify(fmt.Errorf("mount target %s beneath %s: %w", sub, root, err), err)
	}
	defer unix.Close(fd)
	real, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
	if err != nil {
		return "", fmt.Errorf("mount target %s beneath %s: %w", sub, root, err)
	}
	realRoot, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", rootFD))
	if err != nil {
		return "", fmt.Errorf("mount target %s beneath %s: %w", sub, root, err)
	}
	// The kernel kept it inside; say so loudly if it ever did not.
	if real != realRoot && !strings.HasPrefix(real, strings.TrimSuffix(realRoot, "/")+"/") {
		return "", fmt.Errorf("mount target %s resolves to %s, outside %s: %w", sub, real, root, errdefs.ErrInvalidArgument)
	}
	return real, nil
}

// UnmountPoints unmounts the mount points All mounted, in reverse order.
func UnmountPoints(mounted []string) error {
	var errs []error
	for i := len(mounted) - 1; i >= 0; i-- {
		errs = append(errs, Unmount(mounted[i]))
	}
	return errors.Join(errs...)
}

// Unmount removes every mount stacked on target. A target that is not a
// mount point (or does not exist) is no error. A busy mount is retried for
// about a second, then detached lazily, to go once it is no longer used.
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

// UnmountBeneath unmounts every mount on root and beneath it, the most
// recent first: what a process that is gone left mounted there.
func UnmountBeneath(root string) error {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return fmt.Errorf("unmount beneath %s: %w", root, err)
	}
	root = filepath.Clean(root)
	if r, err := filepath.EvalSymlinks(root); err == nil {
		root = r // mountinfo has the real path
	}
	var points []string
	for _, line := range strings.Split(string(data), "\n") {
		fields := strings.Fields(line)
		if len(fields) > 4 {
			if p := unescape(fields[4]); p == root || strings.HasPrefix(p, root+"/") {
				points = append(points, p)
			}
		}
	}
	return errors.Join(UnmountPoints(points), Unmount(root))
}

// IsMountPoint reports whether target is the mount point of a mount in the
// calling process's mount namespace.
func IsMountPoint(target string) (bool, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false, fmt.Errorf("is %s a mount point: %w", target, err)
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
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
