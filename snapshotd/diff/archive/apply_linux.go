package archive

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// ApplyOption changes how Apply extracts a layer.
type ApplyOption func(*applyOptions)

type applyOptions struct {
	overlay     bool
	lowers      []string
	maxFileSize int64
	streamSize  int64
}

// WithOverlayWhiteouts says the root is an overlay upper directory: a
// whiteout becomes an overlay whiteout (a 0/0 character device) and an
// opaque directory gets trusted.overlay.opaque=y, instead of removing what
// lower layers have.
func WithOverlayWhiteouts() ApplyOption {
	return func(o *applyOptions) { o.overlay = true }
}

// WithOverlayLowers says the root is the upper directory of an overlay
// over lowers (topmost first), as WithOverlayWhiteouts does, and has parent
// directories resolved through the merged view: a symlink or a directory a
// lower layer has and the upper lacks is seen where overlayfs will show it
// (a whiteout or opaque directory in the upper hides it), a lower symlink
// is followed in the root, and a lower directory the upper needs is made
// there with the lower one's mode, owner and times. Lower directories are
// never written.
func WithOverlayLowers(lowers ...string) ApplyOption {
	return func(o *applyOptions) {
		o.overlay = true
		o.lowers = append([]string(nil), lowers...)
	}
}

// WithMaxFileSize refuses regular files larger than n bytes
// (DefaultMaxFileSize without this option).
func WithMaxFileSize(n int64) ApplyOption {
	return func(o *applyOptions) { o.maxFileSize = n }
}

// WithStreamSize tells Apply the tar stream is n bytes long, so an entry
// claiming more than what is left is refused before anything is written.
func WithStreamSize(n int64) ApplyOption {
	return func(o *applyOptions) { o.streamSize = n }
}

// Apply extracts the tar stream r beneath dir and returns once the tar's
// end is read (r may hold padding after it).
//
// Entries are regular files, directories, symlinks, hardlinks, character
// and block devices and FIFOs, with their owner, mode (setuid, setgid and
// sticky included), xattrs (PAX SCHILY.xattr records, except overlayfs's
// own) and times; directories get their times after their children. An
// entry replaces what is at its name, except that a directory entry over a
// directory only updates its metadata. OCI whiteouts (.wh.NAME,
// .wh..wh..opq) remove what lower layers had, or become overlay whiteouts
// with WithOverlayWhiteouts.
//
// Every name is resolved in dir as if dir were "/", the way the container
// will see it (with WithOverlayLowers, in the overlay's merged view). A
// symlink that was there before this layer (a lower layer's) is followed
// with absolute targets taken from dir and ".." stopping at dir (openat2's
// RESOLVE_IN_ROOT), so a write through a lower "var/run -> /run" lands at
// dir/run, never on the host. An entry, whiteout or hardlink target whose
// path passes through a symlink this layer created is refused: no honest
// tar holds entries beneath its own symlinks. An entry name or hardlink
// name that is absolute or climbs out with "..", a hardlink to something
// that is not beneath dir, an unknown entry type and a file larger than
// the limit or than what is left of the stream are InvalidArgument errors
// too; entries before the refused one stay applied. Nothing outside dir is
// touched. A file whose body is cut short is removed.
func Apply(ctx context.Context, dir string, r io.Reader, opts ...ApplyOption) error {
	o := applyOptions{maxFileSize: DefaultMaxFileSize}
	for _, opt := range opts {
		opt(&o)
	}
	rt, err := openRoot(dir, o.lowers, o.overlay)
	if err != nil {
		return err
	}
	defer rt.close()
	cr := &countingReader{r: r}
	a := &applier{
		root:    rt,
		opts:    o,
		tr:      tar.NewReader(cr),
		counted: cr,
		written: map[string]struct{}{},
		buf:     make([]byte, 128<<10),
	}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := a.tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return Classify(fmt.Errorf("read tar: %w", err))
		}
		if err := a.entry(hdr); err != nil {
			return err
		}
	}
	return a.setDirTimes()
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

type applier struct {
	root    *root
	opts    applyOptions
	tr      *tar.Reader
	counted *countingReader
	// written holds the paths (resolved in the root) this layer created,
	// which an opaque whiteout in the same layer keeps.
	written  map[string]struct{}
	dirTimes []dirTime
	buf      []byte
}

type dirTime struct {
	name         string
	atime, mtime time.Time
}

func (a *applier) entry(hdr *tar.Header) error {
	name, err := cleanName(hdr.Name)
	if err != nil {
		return err
	}
	if name == "." {
		// The root's own entry ("./"): the root is the mount's, not the layer's.
		return nil
	}
	dir, base := path.Dir(name), path.Base(name)
	if strings.HasPrefix(base, WhiteoutPrefix) {
		return a.whiteout(dir, base)
	}

	// Everything that can refuse the entry is checked before anything is
	// removed to make room for it.
	var linkDir, linkBase string
	switch hdr.Typeflag {
	case tar.TypeReg, tar.TypeGNUSparse:
		if hdr.Size < 0 || hdr.Size > a.opts.maxFileSize {
			return fmt.Errorf("entry %q: size %d over the limit of %d: %w", hdr.Name, hdr.Size, a.opts.maxFileSize, errdefs.ErrInvalidArgument)
		}
		if a.opts.streamSize > 0 && hdr.Size > a.opts.streamSize-a.counted.n {
			return fmt.Errorf("entry %q: size %d larger than the %d bytes left in the layer: %w", hdr.Name, hdr.Size, a.opts.streamSize-a.counted.n, errdefs.ErrInvalidArgument)
		}
	case tar.TypeLink:
		target, err := cleanName(hdr.Linkname)
		if err != nil {
			return fmt.Errorf("hardlink %q: %w", hdr.Name, err)
		}
		if target == "." {
			return fmt.Errorf("hardlink %q to the root: %w", hdr.Name, errdefs.ErrInvalidArgument)
		}
		if target == name {
			return nil
		}
		linkDir, linkBase = path.Dir(target), path.Base(target)
	case tar.TypeDir, tar.TypeSymlink, tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
	default:
		return fmt.Errorf("entry %q: unsupported type %q: %w", hdr.Name, hdr.Typeflag, errdefs.ErrInvalidArgument)
	}

	pfd, canon, err := a.root.dir(dir, true)
	if err != nil {
		return fmt.Errorf("entry %q: %w", hdr.Name, err)
	}
	var st unix.Stat_t
	switch err := unix.Fstatat(pfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); {
	case err == nil:
		if st.Mode&unix.S_IFMT == unix.S_IFDIR && hdr.Typeflag == tar.TypeDir {
			break
		}
		if err := a.removeAt(pfd, base); err != nil {
			return fmt.Errorf("entry %q: replace: %w", hdr.Name, err)
		}
		if pfd, canon, err = a.root.dir(dir, true); err != nil {
			return fmt.Errorf("entry %q: %w", hdr.Name, err)
		}
	case !errors.Is(err, unix.ENOENT):
		return fmt.Errorf("entry %q: %w", hdr.Name, err)
	}

	switch hdr.Typeflag {
	case tar.TypeReg, tar.TypeGNUSparse:
		err = a.file(pfd, base, hdr)
	case tar.TypeDir:
		err = a.dir(pfd, base, path.Join(canon, base), hdr)
	case tar.TypeSymlink:
		err = a.symlink(pfd, base, canon, hdr)
	case tar.TypeLink:
		err = a.hardlink(pfd, base, linkDir, linkBase)
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		err = a.node(pfd, base, hdr)
	}
	if err != nil {
		return fmt.Errorf("entry %q: %w", hdr.Name, err)
	}
	a.written[path.Join(canon, base)] = struct{}{}
	return nil
}

// onlyWriter hides os.File's ReadFrom so the copy uses the applier's buffer.
type onlyWriter struct{ io.Writer }

func (a *applier) file(pfd int, base string, hdr *tar.Header) error {
	fd, err := unix.Openat(pfd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("create: %w", err)
	}
	f := os.NewFile(uintptr(fd), base)
	n, err := io.CopyBuffer(onlyWriter{f}, a.tr, a.buf)
	if err == nil && n != hdr.Size {
		err = fmt.Errorf("body is %d bytes, header says %d: %w", n, hdr.Size, errdefs.ErrInvalidArgument)
	}
	if err == nil {
		err = errors.Join(
			unix.Fchown(fd, hdr.Uid, hdr.Gid),
			unix.Fchmod(fd, uint32(hdr.Mode&0o7777)),
			a.xattrs(hdr, func(k string, v []byte) error { return unix.Fsetxattr(fd, k, v, 0) }),
		)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		unix.Unlinkat(pfd, base, 0)
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("body cut short (header says %d bytes): %w", hdr.Size, errdefs.ErrInvalidArgument)
		}
		return Classify(err)
	}
	return a.times(pfd, base, hdr)
}

func (a *applier) dir(pfd int, base, name string, hdr *tar.Header) error {
	if err := unix.Mkdirat(pfd, base, 0o700); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("mkdir: %w", err)
	}
	fd, err := unix.Openat(pfd, base, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open dir: %w", err)
	}
	defer unix.Close(fd)
	if err := errors.Join(
		unix.Fchown(fd, hdr.Uid, hdr.Gid),
		unix.Fchmod(fd, uint32(hdr.Mode&0o7777)),
		a.xattrs(hdr, func(k string, v []byte) error { return unix.Fsetxattr(fd, k, v, 0) }),
	); err != nil {
		return err
	}
	a.dirTimes = append(a.dirTimes, dirTime{name: name, atime: accessTime(hdr), mtime: hdr.ModTime})
	return nil
}

func (a *applier) symlink(pfd int, base, canon string, hdr *tar.Header) error {
	if err := unix.Symlinkat(hdr.Linkname, pfd, base); err != nil {
		return fmt.Errorf("symlink: %w", err)
	}
	if err := a.root.noteSymlink(pfd, base, canon); err != nil {
		return err
	}
	if err := errors.Join(
		unix.Fchownat(pfd, base, hdr.Uid, hdr.Gid, unix.AT_SYMLINK_NOFOLLOW),
		a.xattrs(hdr, func(k string, v []byte) error { return unix.Lsetxattr(procPath(pfd, base), k, v, 0) }),
	); err != nil {
		return err
	}
	return a.times(pfd, base, hdr)
}

// hardlink links base to an existing non-directory beneath the root. The
// link's own metadata is its target's.
func (a *applier) hardlink(pfd int, base, linkDir, linkBase string) error {
	tfd, _, err := a.root.open(linkDir, false)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("hardlink target %s: %w", path.Join(linkDir, linkBase), errdefs.ErrInvalidArgument)
		}
		return err
	}
	defer unix.Close(tfd)
	var st unix.Stat_t
	if err := unix.Fstatat(tfd, linkBase, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("hardlink target %s: %v: %w", path.Join(linkDir, linkBase), err, errdefs.ErrInvalidArgument)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return fmt.Errorf("hardlink to directory %s: %w", path.Join(linkDir, linkBase), errdefs.ErrInvalidArgument)
	}
	if err := unix.Linkat(tfd, linkBase, pfd, base, 0); err != nil {
		return fmt.Errorf("link: %w", err)
	}
	return nil
}

func (a *applier) node(pfd int, base string, hdr *tar.Header) error {
	mode := uint32(hdr.Mode & 0o7777)
	switch hdr.Typeflag {
	case tar.TypeChar:
		mode |= unix.S_IFCHR
	case tar.TypeBlock:
		mode |= unix.S_IFBLK
	case tar.TypeFifo:
		mode |= unix.S_IFIFO
	}
	dev := unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor))
	if err := unix.Mknodat(pfd, base, mode, int(dev)); err != nil {
		return fmt.Errorf("mknod: %w", err)
	}
	// The node was just made by us, so it is no symlink to follow.
	if err := errors.Join(
		unix.Fchownat(pfd, base, hdr.Uid, hdr.Gid, unix.AT_SYMLINK_NOFOLLOW),
		unix.Fchmodat(pfd, base, uint32(hdr.Mode&0o7777), 0),
		a.xattrs(hdr, func(k string, v []byte) error { return unix.Lsetxattr(procPath(pfd, base), k, v, 0) }),
	); err != nil {
		return err
	}
	return a.times(pfd, base, hdr)
}

// xattrs sets the entry's extended attributes with set, skipping
// overlayfs's own and those the filesystem does not support.
func (a *applier) xattrs(hdr *tar.Header, set func(string, []byte) error) error {
	for k, v := range hdr.PAXRecords {
		name, ok := strings.CutPrefix(k, paxXattr)
		if !ok || strings.HasPrefix(name, overlayXattrPrefix) {
			continue
		}
		if err := set(name, []byte(v)); err != nil {
			if errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EOPNOTSUPP) {
				continue
			}
			return fmt.Errorf("xattr %s: %w", name, err)
		}
	}
	return nil
}

func (a *applier) times(pfd int, base string, hdr *tar.Header) error {
	return utimes(pfd, base, accessTime(hdr), hdr.ModTime)
}

func utimes(pfd int, base string, atime, mtime time.Time) error {
	ts := []unix.Timespec{timespec(atime), timespec(mtime)}
	if err := unix.UtimesNanoAt(pfd, base, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("set times: %w", err)
	}
	return nil
}

func timespec(t time.Time) unix.Timespec {
	return unix.Timespec{Sec: t.Unix(), Nsec: int64(t.Nanosecond())}
}

func accessTime(hdr *tar.Header) time.Time {
	if hdr.AccessTime.IsZero() {
		return hdr.ModTime
	}
	return hdr.AccessTime
}

// setDirTimes gives directories their times once nothing more is written
// in them, deepest last-written first, and then those of the parents
// copied up from lower directories.
func (a *applier) setDirTimes() error {
	// Parents copied up come last so they are done first: a directory
	// entry of the layer for the same path gets the last word.
	all := append(a.dirTimes[:len(a.dirTimes):len(a.dirTimes)], a.root.parentTimes...)
	for i := len(all) - 1; i >= 0; i-- {
		d := all[i]
		pfd, _, err := a.root.dir(path.Dir(d.name), false)
		var created *createdSymlinkError
		if errors.Is(err, unix.ENOENT) || errors.Is(err, errNotDir) || errors.As(err, &created) {
			continue // removed or replaced by a later entry
		}
		if err != nil {
			return fmt.Errorf("directory %q: %w", d.name, err)
		}
		if err := utimes(pfd, path.Base(d.name), d.atime, d.mtime); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("directory %q: %w", d.name, err)
		}
	}
	return nil
}

// whiteout applies .wh.NAME or .wh..wh..opq in dir.
func (a *applier) whiteout(dir, base string) error {
	if base == OpaqueWhiteout {
		return a.opaque(dir)
	}
	target := strings.TrimPrefix(base, WhiteoutPrefix)
	if target == "" || target == "." || target == ".." {
		return fmt.Errorf("whiteout %q in %q: %w", base, dir, errdefs.ErrInvalidArgument)
	}
	pfd, _, err := a.root.dir(dir, a.opts.overlay)
	if errors.Is(err, unix.ENOENT) {
		return nil // nothing there to delete
	}
	if err != nil {
		return fmt.Errorf("whiteout %s: %w", path.Join(dir, target), err)
	}
	if err := a.removeAt(pfd, target); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("whiteout %s: %w", path.Join(dir, target), err)
	}
	if !a.opts.overlay {
		return nil
	}
	if pfd, _, err = a.root.dir(dir, true); err != nil {
		return fmt.Errorf("whiteout %s: %w", path.Join(dir, target), err)
	}
	if err := unix.Mknodat(pfd, target, unix.S_IFCHR, 0); err != nil {
		return fmt.Errorf("whiteout %s: overlay whiteout: %w", path.Join(dir, target), err)
	}
	return nil
}

// opaque hides what lower layers have in dir: with the overlay opaque
// xattr, or by removing every child this layer did not write.
func (a *applier) opaque(dir string) error {
	pfd, canon, err := a.root.dir(dir, a.opts.overlay)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("opaque %s: %w", dir, err)
	}
	fd, err := unix.Openat(pfd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opaque %s: %w", dir, err)
	}
	f := os.NewFile(uintptr(fd), dir)
	defer f.Close()
	if a.opts.overlay {
		if err := unix.Fsetxattr(fd, overlayOpaqueXattr, []byte("y"), 0); err != nil {
			return fmt.Errorf("opaque %s: %w", dir, err)
		}
		return nil
	}
	names, err := f.Readdirnames(-1)
	if err != nil {
		return fmt.Errorf("opaque %s: %w", dir, err)
	}
	for _, n := range names {
		if _, ok := a.written[path.Join(canon, n)]; ok {
			continue
		}
		if err := a.removeAt(fd, n); err != nil {
			return fmt.Errorf("opaque %s: %w", dir, err)
		}
	}
	return nil
}

// removeAt removes name in directory pfd, with its subtree if it is a
// directory, without following symlinks. It drops the root's cached
// directory, which the removal may have changed the meaning of.
func (a *applier) removeAt(pfd int, name string) error {
	err := removeAllAt(pfd, name)
	a.root.dropCache()
	return err
}

func removeAllAt(pfd int, name string) error {
	err := unix.Unlinkat(pfd, name, 0)
	if err == nil || !(errors.Is(err, unix.EISDIR) || errors.Is(err, unix.EPERM)) {
		return err
	}
	fd, err := unix.Openat(pfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	for {
		names, err := f.Readdirnames(1024)
		for _, n := range names {
			if err := removeAllAt(fd, n); err != nil && !errors.Is(err, unix.ENOENT) {
				return err
			}
		}
		if errors.Is(err, io.EOF) || len(names) == 0 {
			break
		}
		if err != nil {
			return err
		}
	}
	return unix.Unlinkat(pfd, name, unix.AT_REMOVEDIR)
}

// procPath names name in directory fd through /proc, for the calls that
// have no *at form; its final component is not followed by l* calls.
func procPath(fd int, name string) string {
	return fmt.Sprintf("/proc/self/fd/%d/%s", fd, name)
}
