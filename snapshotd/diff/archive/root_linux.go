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
// from the root's descriptor so that no component — "..", an absolute or
// climbing symlink, a symlink swapped in by an earlier entry — can lead
// outside it: with openat2(RESOLVE_BENEATH) where the kernel has it,
// otherwise with a component-by-component walk that refuses the same paths.
type root struct {
	fd   int
	path string
	// beneath tells whether openat2 with RESOLVE_BENEATH is available.
	beneath bool

	// The parent directory of the last entry, kept open while entries of
	// the same directory follow one another; dropped whenever something is
	// removed or a symlink is created, since either can change what a path
	// resolves to.
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
		probe, err := unix.Openat2(fd, ".", &unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC, Resolve: unix.RESOLVE_BENEATH})
		if err == nil {
			unix.Close(probe)
			r.beneath = true
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

// errEscape is what resolving a path that leaves the root fails with.
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
// 0755, as a layer's parents would be. A path that leaves the root (through
// an absolute or climbing symlink) is an InvalidArgument error; a missing
// directory without create is ENOENT.
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

func (r *root) open(rel string, create bool) (int, error) {
	if !r.beneath {
		return r.walk(rel, create)
	}
	fd, err := r.openBeneath(rel)
	if err == nil || !create || !errors.Is(err, unix.ENOENT) {
		return fd, err
	}
	// Make the missing directories one at a time, each from the root.
	parts := strings.Split(rel, "/")
	for i := range parts {
		prefix := strings.Join(parts[:i+1], "/")
		fd, err := r.openBeneath(prefix)
		if err == nil {
			unix.Close(fd)
			continue
		}
		if !errors.Is(err, unix.ENOENT) {
			return -1, err
		}
		parent, err := r.openBeneath(strings.Join(parts[:i], "/"))
		if err != nil {
			return -1, err
		}
		err = unix.Mkdirat(parent, parts[i], 0o755)
		unix.Close(parent)
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return -1, fmt.Errorf("mkdir %s: %w", prefix, err)
		}
	}
	return r.openBeneath(rel)
}

func (r *root) openBeneath(rel string) (int, error) {
	if rel == "" {
		rel = "."
	}
	how := &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_MAGICLINKS,
	}
	for range 16 {
		fd, err := unix.Openat2(r.fd, rel, how)
		switch {
		case err == nil:
			return fd, nil
		case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EXDEV), errors.Is(err, unix.ELOOP):
			return -1, fmt.Errorf("resolve %q: %w", rel, errEscapeInvalid)
		case errors.Is(err, unix.ENOTDIR):
			return -1, fmt.Errorf("resolve %q: a component is not a directory: %w", rel, errdefs.ErrInvalidArgument)
		}
		return -1, fmt.Errorf("resolve %q: %w", rel, err)
	}
	return -1, fmt.Errorf("resolve %q: kernel kept asking to retry: %w", rel, errdefs.ErrUnavailable)
}

// walk resolves rel one component at a time without ever following a
// symlink in the kernel: a symlink's target is spliced into the remaining
// components, refused when absolute or when it climbs above the root.
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
			if len(stack) == 1 {
				return -1, fmt.Errorf("resolve %q: %w", rel, errEscapeInvalid)
			}
			unix.Close(cur)
			stack = stack[:len(stack)-1]
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
			if links++; links > 40 {
				return -1, fmt.Errorf("resolve %q: too many symlinks: %w", rel, errEscapeInvalid)
			}
			target, err := readlinkat(cur, c)
			if err != nil {
				return -1, err
			}
			if strings.HasPrefix(target, "/") {
				return -1, fmt.Errorf("resolve %q: absolute symlink %s -> %s: %w", rel, c, target, errEscapeInvalid)
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
