package archive

import (
	"errors"
	"fmt"
	"path"
	"strings"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// root is a directory the applier writes beneath. Every path is resolved
// from the root's descriptor as if the root were "/" — the way the
// container will see it — so that no component can lead outside it: an
// absolute symlink is taken relative to the root and ".." stops at the
// root (openat2's RESOLVE_IN_ROOT). The kernel does it where it has
// openat2, otherwise a component-by-component walk that never follows a
// symlink in the kernel gives the same answers.
//
// Resolving in the root rather than refusing every symlink that points
// outside keeps real images working: a lower layer's "var/run -> /run"
// with an upper layer writing "var/run/x" lands at <root>/run/x, as it
// does with containerd. A layer's own entry names and hardlink names are
// refused when absolute or climbing (cleanName): those say outright that
// the layer aims outside.
type root struct {
	fd   int
	path string
	// inRoot tells whether openat2 with RESOLVE_IN_ROOT is available.
	inRoot bool

	// The parent directory of the last entry, kept open while entries of
	// the same directory follow one another; dropped whenever something is
	// removed, since a removal can change what a path resolves to.
	cacheDir string
	cacheFD  int
}

// forceWalk makes openRoot use the userspace walk; tests set it to cover
// kernels without openat2.
var forceWalk = false

func openRoot(dir string) (*root, error) {
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open root %s: %w", dir, err)
	}
	r := &root{fd: fd, path: dir, cacheFD: -1}
	if !forceWalk {
		probe, err := unix.Openat2(fd, ".", &unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC, Resolve: unix.RESOLVE_IN_ROOT})
		if err == nil {
			unix.Close(probe)
			r.inRoot = true
		}
	}
	return r, nil
}

func (r *root) close() {
	r.dropCache()
	unix.Close(r.fd)
}

func (r *root) dropCache() {
	if r.cacheFD >= 0 {
		unix.Close(r.cacheFD)
	}
	r.cacheDir, r.cacheFD = "", -1
}

// errEscape is what an entry whose own name leaves the root fails with.
var errEscape = errors.New("path escapes the root")

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

var errEscapeInvalid = fmt.Errorf("%w: %w", errEscape, errdefs.ErrInvalidArgument)

// dir returns a descriptor (O_PATH) of directory rel, which the caller must
// not close. With create, missing directories on the way are made with mode
// 0755, as a layer's parents would be, including the targets of dangling
// symlinks on the way. Symlinks are resolved in the root (see root). Too
// many symlinks, or a component that is not a directory, is an
// InvalidArgument error; a missing directory without create is ENOENT.
func (r *root) dir(rel string, create bool) (int, error) {
	if rel == r.cacheDir && r.cacheFD >= 0 {
		return r.cacheFD, nil
	}
	fd, err := r.open(rel, create)
	if err != nil {
		return -1, err
	}
	r.dropCache()
	r.cacheDir, r.cacheFD = rel, fd
	return fd, nil
}

// open is dir without the cache: the caller closes the descriptor.
func (r *root) open(rel string, create bool) (int, error) {
	if !r.inRoot {
		return r.walk(rel, create)
	}
	fd, err := r.openInRoot(rel)
	if err == nil || !create || !errors.Is(err, unix.ENOENT) {
		return fd, err
	}
	// Something on the way is missing, perhaps behind a dangling symlink:
	// the walk makes each missing directory where the path leads.
	return r.walk(rel, true)
}

func (r *root) openInRoot(rel string) (int, error) {
	if rel == "" {
		rel = "."
	}
	how := &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	}
	for range 16 {
		fd, err := unix.Openat2(r.fd, rel, how)
		switch {
		case err == nil:
			return fd, nil
		case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.ELOOP):
			return -1, fmt.Errorf("resolve %q: too many symlinks: %w", rel, errdefs.ErrInvalidArgument)
		case errors.Is(err, unix.EXDEV):
			return -1, fmt.Errorf("resolve %q: %w", rel, errEscapeInvalid)
		case errors.Is(err, unix.ENOTDIR):
			return -1, fmt.Errorf("resolve %q: a component is not a directory: %w", rel, errdefs.ErrInvalidArgument)
		}
		return -1, fmt.Errorf("resolve %q: %w", rel, err)
	}
	return -1, fmt.Errorf("resolve %q: kernel kept asking to retry: %w", rel, errdefs.ErrUnavailable)
}

// maxSymlinks is how many symlinks one resolution follows, as Linux's
// path walk allows.
const maxSymlinks = 40

// walk resolves rel one component at a time without ever following a
// symlink in the kernel: a symlink's target is spliced into the remaining
// components, an absolute one from the root again, and ".." at the root
// stays at the root. With create, a missing directory is made.
func (r *root) walk(rel string, create bool) (fd int, err error) {
	start, err := unix.Openat(r.fd, ".", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	// stack holds a descriptor per resolved directory, the root first, so
	// that ".." steps back without looking up "..".
	stack := []int{start}
	defer func() {
		keep := -1
		if err == nil {
			keep = len(stack) - 1
		}
		for i, fd := range stack {
			if i != keep {
				unix.Close(fd)
			}
		}
	}()
	todo := splitPath(rel)
	links := 0
	for len(todo) > 0 {
		c := todo[0]
		todo = todo[1:]
		cur := stack[len(stack)-1]
		switch c {
		case "", ".":
			continue
		case "..":
			if len(stack) > 1 {
				unix.Close(cur)
				stack = stack[:len(stack)-1]
			}
			continue
		}
		var st unix.Stat_t
		err := unix.Fstatat(cur, c, &st, unix.AT_SYMLINK_NOFOLLOW)
		if errors.Is(err, unix.ENOENT) && create {
			if err := unix.Mkdirat(cur, c, 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
				return -1, fmt.Errorf("resolve %q: mkdir %s: %w", rel, c, err)
			}
			err = unix.Fstatat(cur, c, &st, unix.AT_SYMLINK_NOFOLLOW)
		}
		if err != nil {
			return -1, fmt.Errorf("resolve %q: %w", rel, err)
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFLNK:
			if links++; links > maxSymlinks {
				return -1, fmt.Errorf("resolve %q: too many symlinks: %w", rel, errdefs.ErrInvalidArgument)
			}
			target, err := readlinkat(cur, c)
			if err != nil {
				return -1, err
			}
			if strings.HasPrefix(target, "/") {
				for _, fd := range stack[1:] {
					unix.Close(fd)
				}
				stack = stack[:1]
			}
			todo = append(splitPath(target), todo...)
		case unix.S_IFDIR:
			next, err := unix.Openat(cur, c, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			if err != nil {
				return -1, fmt.Errorf("resolve %q: %w", rel, err)
			}
			stack = append(stack, next)
		default:
			return -1, fmt.Errorf("resolve %q: %s is not a directory: %w", rel, c, errdefs.ErrInvalidArgument)
		}
	}
	return stack[len(stack)-1], nil
}

func splitPath(p string) []string {
	return strings.Split(p, "/")
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
