package archive

import (
	"errors"
	"fmt"
	"path"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// root is a directory the applier writes beneath, seen as the container
// will see it. Every path is resolved from the root's descriptor as if the
// root were "/", so that no component can lead outside it: an absolute
// symlink is taken relative to the root and ".." stops at the root (what
// openat2's RESOLVE_IN_ROOT does), by a component-by-component walk that
// never follows a symlink in the kernel.
//
// Two rules decide which symlinks a resolution may pass through:
//
//   - A symlink this layer created (earlier in the same tar stream) is never
//     followed: the entry is refused with InvalidArgument. A tar of a real
//     filesystem never holds entries beneath a symlink it also holds (tar
//     walkers do not follow symlinks), so only a crafted layer asks for it.
//     Created symlinks are known by inode, so a hard link to one counts too,
//     and one a later entry replaced with a directory no longer does.
//   - A symlink that was there before (a lower layer's) is followed inside
//     the root, as containerd does: a lower "var/run -> /run" with this
//     layer writing "var/run/x" lands at <root>/run/x.
//
// The root may be an overlay upper directory with lower directories
// (topmost first): then a path is resolved in the merged view overlayfs will
// show — the upper's entry first, else the topmost lower's, with whiteouts
// and opaque directories hiding what is below them — so that a lower
// symlink parent is followed rather than hidden by a new upper directory.
// Lower directories are only ever looked at; a directory the merged view
// has but the upper lacks is made in the upper with the lower one's mode,
// owner and times, as overlayfs's copy-up would.
//
// Where the kernel has openat2, a path made of directories only in the
// written-to directory is opened in one call (RESOLVE_BENEATH with
// RESOLVE_NO_SYMLINKS, which gives the same answer as the walk); anything
// else takes the walk.
type root struct {
	// layers are descriptors (O_PATH) of the directory written to, then of
	// the lower directories, topmost first.
	layers []int
	// overlay says character devices 0/0 are whiteouts and
	// trusted.overlay.opaque hides lower directories.
	overlay bool
	// fast tells whether openat2 is available.
	fast bool
	// created holds the symlinks this Apply made, by inode, with the path
	// each was made at.
	created map[fileID]string
	// parentTimes collects the times of directories copied up from a lower
	// directory, for the applier to restore once their children are written.
	parentTimes []dirTime

	// The parent directory of the last entry, kept open while entries of
	// the same directory follow one another; dropped whenever something is
	// removed or replaced, since that can change what a path resolves to.
	cacheDir   string
	cacheCanon string
	cacheFD    int
}

type fileID struct{ dev, ino uint64 }

// forceWalk makes openRoot skip openat2; tests set it to cover kernels
// without it.
var forceWalk = false

// openRoot opens dir for writing beneath it. lowers, topmost first, are the
// lower directories of an overlay whose upper directory is dir; overlay
// says dir is an overlay upper directory (always so with lowers).
func openRoot(dir string, lowers []string, overlay bool) (*root, error) {
	r := &root{overlay: overlay || len(lowers) > 0, created: map[fileID]string{}, cacheFD: -1}
	for _, d := range append([]string{dir}, lowers...) {
		fd, err := unix.Open(d, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			r.close()
			return nil, fmt.Errorf("open root %s: %w", d, err)
		}
		r.layers = append(r.layers, fd)
	}
	if !forceWalk {
		probe, err := unix.Openat2(r.layers[0], ".", &unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC, Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS})
		if err == nil {
			unix.Close(probe)
			r.fast = true
		}
	}
	return r, nil
}

func (r *root) close() {
	r.dropCache()
	for _, fd := range r.layers {
		unix.Close(fd)
	}
	r.layers = nil
}

func (r *root) dropCache() {
	if r.cacheFD >= 0 {
		unix.Close(r.cacheFD)
	}
	r.cacheDir, r.cacheCanon, r.cacheFD = "", "", -1
}

var (
	// errEscape is what an entry whose own name leaves the root fails with.
	errEscape        = errors.New("path escapes the root")
	errEscapeInvalid = fmt.Errorf("%w: %w", errEscape, errdefs.ErrInvalidArgument)
	// errNotDir is what a path through something that is neither a
	// directory nor a symlink fails with.
	errNotDir = fmt.Errorf("a component is not a directory: %w", errdefs.ErrInvalidArgument)
)

// createdSymlinkError is what a path through a symlink this layer created
// fails with: an InvalidArgument error.
type createdSymlinkError struct{ symlink string }

func (e *createdSymlinkError) Error() string {
	return fmt.Sprintf("passes through symlink %s created by this layer: %v", e.symlink, errdefs.ErrInvalidArgument)
}

func (e *createdSymlinkError) Unwrap() error { return errdefs.ErrInvalidArgument }

// cleanName turns a tar entry name into a clean path relative to the root,
// or refuses it: absolute names and names that climb out of the root with
// ".." are InvalidArgument errors. The root itself is ".".
func cleanName(name string) (string, error) {
	if name == "" {
		return "", fmt.Errorf("empty entry name: %w", errdefs.ErrInvalidArgument)
	}
	if strings.HasPrefix(name, "/") {
		return "", fmt.Errorf("entry %q: absolute path: %w", name, errdefs.ErrInvalidArgument)
	}
	if strings.IndexByte(name, 0) >= 0 {
		return "", fmt.Errorf("entry %q: NUL in name: %w", name, errdefs.ErrInvalidArgument)
	}
	p := path.Clean(name)
	if p == ".." || strings.HasPrefix(p, "../") {
		return "", fmt.Errorf("entry %q: %w", name, errEscapeInvalid)
	}
	return p, nil
}

// dir returns a descriptor (O_PATH) of directory rel in the directory
// written to, which the caller must not close, and the path it resolved to
// ("." for the root). With create, missing directories on the way are made
// (see root), including the targets of dangling symlinks on the way.
// Passing through a symlink this layer created (createdSymlinkError), too
// many symlinks, or a component that is neither a directory nor a symlink
// (errNotDir) is an InvalidArgument error; a missing directory without
// create is ENOENT.
func (r *root) dir(rel string, create bool) (int, string, error) {
	if rel == r.cacheDir && r.cacheFD >= 0 {
		return r.cacheFD, r.cacheCanon, nil
	}
	fd, canon, err := r.open(rel, create)
	if err != nil {
		return -1, "", err
	}
	r.dropCache()
	r.cacheDir, r.cacheCanon, r.cacheFD = rel, canon, fd
	return fd, canon, nil
}

// open is dir without the cache: the caller closes the descriptor.
func (r *root) open(rel string, create bool) (int, string, error) {
	if rel == "" {
		rel = "."
	}
	if r.fast {
		how := &unix.OpenHow{
			Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
			Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
		}
		for range 16 {
			fd, err := unix.Openat2(r.layers[0], rel, how)
			if err == nil {
				return fd, path.Clean(rel), nil
			}
			if !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EINTR) {
				break
			}
		}
		// A symlink, a missing directory or something else on the way:
		// the walk knows what to do with each.
	}
	return r.walk(rel, create)
}

// noteSymlink records that this layer created the symlink name in
// directory pfd, which resolved to canon.
func (r *root) noteSymlink(pfd int, name, canon string) error {
	var st unix.Stat_t
	if err := unix.Fstatat(pfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("stat new symlink: %w", err)
	}
	r.created[fileID{st.Dev, st.Ino}] = path.Join(canon, name)
	return nil
}

// maxSymlinks is how many symlinks one resolution follows, as Linux's
// path walk allows.
const maxSymlinks = 40

// frame is one directory of a walk: its name, and a descriptor of it in
// each layer where it is part of the merged directory (-1 elsewhere). A
// directory only lower layers have gets its upper copy when something is
// to be made beneath it (copyUp), like the topmost lower one.
type frame struct {
	name string
	fds  []int
	like unix.Stat_t
}

// walk resolves rel one component at a time in the merged view of the
// layers without ever following a symlink in the kernel: a symlink's
// target is spliced into the remaining components, an absolute one from
// the root again, and ".." at the root stays at the root. With create, a
// directory missing from the directory written to is made there.
func (r *root) walk(rel string, create bool) (fd int, canon string, err error) {
	stack := []frame{r.rootFrame()}
	defer func() {
		for i, f := range stack {
			if i > 0 {
				closeAll(f.fds)
			}
		}
	}()
	fail := func(err error) (int, string, error) {
		return -1, "", fmt.Errorf("resolve %q: %w", rel, err)
	}
	todo := strings.Split(rel, "/")
	links := 0
	for len(todo) > 0 {
		c := todo[0]
		todo = todo[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			if len(stack) > 1 {
				closeAll(stack[len(stack)-1].fds)
				stack = stack[:len(stack)-1]
			}
			continue
		}
		cur := stack[len(stack)-1]
		at := canonPath(stack, c)
		layer, st, whitedOut, err := r.lookup(cur, c)
		if err != nil {
			return fail(err)
		}
		switch {
		case layer < 0:
			if !create {
				return fail(unix.ENOENT)
			}
			if err := r.copyUp(stack); err != nil {
				return fail(err)
			}
			fd, err := r.mkdirUpper(stack[len(stack)-1].fds[0], c, at, whitedOut, nil)
			if err != nil {
				return fail(err)
			}
			next := frame{name: c, fds: make([]int, len(cur.fds))}
			for i := range next.fds {
				next.fds[i] = -1
			}
			next.fds[0] = fd
			stack = append(stack, next)
		case st.Mode&unix.S_IFMT == unix.S_IFLNK:
			if layer == 0 {
				if _, ok := r.created[fileID{st.Dev, st.Ino}]; ok {
					return fail(&createdSymlinkError{symlink: at})
				}
			}
			if links++; links > maxSymlinks {
				return fail(fmt.Errorf("too many symlinks: %w", errdefs.ErrInvalidArgument))
			}
			target, err := readlinkat(cur.fds[layer], c)
			if err != nil {
				return fail(err)
			}
			if strings.HasPrefix(target, "/") {
				for _, f := range stack[1:] {
					closeAll(f.fds)
				}
				stack = stack[:1]
			}
			todo = append(strings.Split(target, "/"), todo...)
		case st.Mode&unix.S_IFMT == unix.S_IFDIR:
			next, err := r.descend(cur, c, layer)
			if err != nil {
				return fail(err)
			}
			next.like = st
			stack = append(stack, next)
		default:
			return fail(fmt.Errorf("%s: %w", at, errNotDir))
		}
	}
	if create {
		if err := r.copyUp(stack); err != nil {
			return fail(err)
		}
	}
	top := &stack[len(stack)-1]
	canon = canonPath(stack, "")
	if len(stack) == 1 {
		fd, err := unix.Openat(r.layers[0], ".", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fail(err)
		}
		return fd, canon, nil
	}
	if top.fds[0] < 0 {
		// Only lower directories have it: nothing of the upper's is there.
		return fail(unix.ENOENT)
	}
	fd, top.fds[0] = top.fds[0], -1
	return fd, canon, nil
}

// copyUp makes the directories of the walk's stack that only lower layers
// have in the upper directory, like the lower ones; the lower directories
// still show through them.
func (r *root) copyUp(stack []frame) error {
	for i := 1; i < len(stack); i++ {
		if stack[i].fds[0] >= 0 {
			continue
		}
		fd, err := r.mkdirUpper(stack[i-1].fds[0], stack[i].name, canonPath(stack[:i+1], ""), false, &stack[i].like)
		if err != nil {
			return err
		}
		stack[i].fds[0] = fd
	}
	return nil
}

// rootFrame is the root's frame, with the lower roots hidden where an upper
// root is opaque. Its descriptors are the root's own: not to be closed.
func (r *root) rootFrame() frame {
	fds := append([]int(nil), r.layers...)
	for i, fd := range fds {
		if r.opaque(fd) {
			for j := i + 1; j < len(fds); j++ {
				fds[j] = -1
			}
			break
		}
	}
	return frame{fds: fds}
}

// lookup finds what the merged directory cur shows at name: the topmost
// layer holding it and its stat, or layer -1 when nothing is there (with
// whitedOut when the upper holds a whiteout for it).
func (r *root) lookup(cur frame, name string) (layer int, st unix.Stat_t, whitedOut bool, err error) {
	for i, fd := range cur.fds {
		if fd < 0 {
			continue
		}
		err := unix.Fstatat(fd, name, &st, unix.AT_SYMLINK_NOFOLLOW)
		if errors.Is(err, unix.ENOENT) {
			continue
		}
		if err != nil {
			return -1, st, false, fmt.Errorf("stat %s: %w", name, err)
		}
		if r.isWhiteout(&st) {
			return -1, st, i == 0, nil
		}
		return i, st, false, nil
	}
	return -1, st, false, nil
}

// descend opens the merged directory name in cur, which is a directory in
// layer from (the topmost that has it): the layers from there down that
// hold a directory of that name, down to the first opaque one or the first
// that holds something else or a whiteout.
func (r *root) descend(cur frame, name string, from int) (frame, error) {
	next := frame{name: name, fds: make([]int, len(cur.fds))}
	for i := range next.fds {
		next.fds[i] = -1
	}
	for i := from; i < len(cur.fds); i++ {
		if cur.fds[i] < 0 {
			continue
		}
		var st unix.Stat_t
		err := unix.Fstatat(cur.fds[i], name, &st, unix.AT_SYMLINK_NOFOLLOW)
		if errors.Is(err, unix.ENOENT) {
			continue
		}
		if err != nil {
			closeAll(next.fds)
			return frame{}, fmt.Errorf("stat %s: %w", name, err)
		}
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			break // a whiteout or a non-directory hides what is below
		}
		fd, err := unix.Openat(cur.fds[i], name, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			closeAll(next.fds)
			return frame{}, fmt.Errorf("open %s: %w", name, err)
		}
		next.fds[i] = fd
		if r.opaque(fd) {
			break
		}
	}
	return next, nil
}

// mkdirUpper makes directory name in the upper directory pfd, at is its
// path in the root, and returns a descriptor (O_PATH) of it. With like (a
// lower layer's directory) it gets like's mode and owner, and like's times
// once the applier is done; otherwise it is made with mode 0755, as a
// layer's parents are (and as mkdir does, a setgid parent's group). One made over the upper's whiteout is opaque, so what the
// whiteout hid stays hidden.
func (r *root) mkdirUpper(pfd int, name, at string, overWhiteout bool, like *unix.Stat_t) (int, error) {
	if pfd < 0 {
		return -1, fmt.Errorf("mkdir %s: parent missing from the upper directory: %w", at, errdefs.ErrInternal)
	}
	if overWhiteout {
		if err := unix.Unlinkat(pfd, name, 0); err != nil {
			return -1, fmt.Errorf("replace whiteout %s: %w", at, err)
		}
		r.dropCache()
	}
	if like == nil && !overWhiteout {
		if err := unix.Mkdirat(pfd, name, 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
			return -1, fmt.Errorf("mkdir %s: %w", at, err)
		}
		return openDirPath(pfd, name, at)
	}
	if err := unix.Mkdirat(pfd, name, 0o700); err != nil && !errors.Is(err, unix.EEXIST) {
		return -1, fmt.Errorf("mkdir %s: %w", at, err)
	}
	fd, err := unix.Openat(pfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open %s: %w", at, err)
	}
	defer unix.Close(fd)
	mode := uint32(0o755)
	var meta []error
	if like != nil {
		mode = like.Mode & 0o7777
		meta = append(meta, unix.Fchown(fd, int(like.Uid), int(like.Gid)))
		r.parentTimes = append(r.parentTimes, dirTime{name: at,
			atime: time.Unix(like.Atim.Unix()), mtime: time.Unix(like.Mtim.Unix())})
	}
	// After the owner: chown clears setuid and setgid bits.
	meta = append(meta, unix.Fchmod(fd, mode))
	if overWhiteout {
		meta = append(meta, unix.Fsetxattr(fd, overlayOpaqueXattr, []byte("y"), 0))
	}
	if err := errors.Join(meta...); err != nil {
		return -1, fmt.Errorf("mkdir %s: %w", at, err)
	}
	return openDirPath(pfd, name, at)
}

func openDirPath(pfd int, name, at string) (int, error) {
	fd, err := unix.Openat(pfd, name, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open %s: %w", at, err)
	}
	return fd, nil
}

// isWhiteout tells whether st is an overlay whiteout, in an overlay.
func (r *root) isWhiteout(st *unix.Stat_t) bool {
	return r.overlay && st.Mode&unix.S_IFMT == unix.S_IFCHR && st.Rdev == 0
}

// opaque tells whether directory fd hides the lower layers' directory of
// the same path, in an overlay.
func (r *root) opaque(fd int) bool {
	if !r.overlay || fd < 0 || len(r.layers) < 2 {
		return false
	}
	buf := make([]byte, 4)
	n, err := unix.Getxattr(fmt.Sprintf("/proc/self/fd/%d", fd), overlayOpaqueXattr, buf)
	return err == nil && n == 1 && buf[0] == 'y'
}

// canonPath is the path in the root of the walk's current directory, with
// name after it when not empty ("." for the root itself).
func canonPath(stack []frame, name string) string {
	parts := make([]string, 0, len(stack))
	for _, f := range stack[1:] {
		parts = append(parts, f.name)
	}
	if name != "" {
		parts = append(parts, name)
	}
	if len(parts) == 0 {
		return "."
	}
	return strings.Join(parts, "/")
}

func closeAll(fds []int) {
	for i, fd := range fds {
		if fd >= 0 {
			unix.Close(fd)
			fds[i] = -1
		}
	}
}

func readlinkat(dirfd int, name string) (string, error) {
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		n, err := unix.Readlinkat(dirfd, name, buf)
		if err != nil {
			return "", fmt.Errorf("readlink %s: %w", name, err)
		}
		if n < size {
			return string(buf[:n]), nil
		}
	}
}
