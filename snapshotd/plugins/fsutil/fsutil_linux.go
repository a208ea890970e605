// Package fsutil holds the filesystem work snapshotter backends share:
// copying a tree with everything a root filesystem carries, and measuring
// the disk a tree uses.
package fsutil

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/flotilla/flotilla/snapshotd/snapshotter"
)

// Usage returns the disk used by the tree at root: allocated blocks and
// distinct inodes, each hard-linked inode counted once.
func Usage(ctx context.Context, root string) (snapshotter.Usage, error) {
	type inode struct{ dev, ino uint64 }
	seen := make(map[inode]struct{})
	var u snapshotter.Usage
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(path, &st); err != nil {
			return &fs.PathError{Op: "lstat", Path: path, Err: err}
		}
		k := inode{uint64(st.Dev), st.Ino}
		if _, ok := seen[k]; ok {
			return nil
		}
		seen[k] = struct{}{}
		u.Inodes++
		u.Size += st.Blocks * 512
		return nil
	})
	if err != nil {
		return snapshotter.Usage{}, fmt.Errorf("disk usage of %s: %w", root, err)
	}
	return u, nil
}

// CopyTree copies the content of directory src into the existing directory
// dst: regular files, directories, symlinks, hard links (kept as links
// within dst), device nodes, fifos and sockets, with their owners, modes,
// extended attributes and modification times.
func CopyTree(ctx context.Context, dst, src string) error {
	c := copier{links: make(map[uint64]string)}
	if err := c.copyDir(ctx, dst, src, true); err != nil {
		return fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	return nil
}

type copier struct {
	links map[uint64]string // inode of a multiply linked file -> its copy
}

func (c *copier) copyDir(ctx context.Context, dst, src string, exists bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	var st unix.Stat_t
	if err := unix.Lstat(src, &st); err != nil {
		return &fs.PathError{Op: "lstat", Path: src, Err: err}
	}
	if !exists {
		if err := os.Mkdir(dst, 0o700); err != nil {
			return err
		}
	}
	entries, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	for _, e := range entries {
		s, d := filepath.Join(src, e.Name()), filepath.Join(dst, e.Name())
		if e.IsDir() {
			if err := c.copyDir(ctx, d, s, false); err != nil {
				return err
			}
			continue
		}
		if err := c.copyEntry(d, s); err != nil {
			return err
		}
	}
	// Metadata last: a read-only directory must first be written into.
	return copyMeta(dst, src, &st)
}

func (c *copier) copyEntry(dst, src string) error {
	var st unix.Stat_t
	if err := unix.Lstat(src, &st); err != nil {
		return &fs.PathError{Op: "lstat", Path: src, Err: err}
	}
	if st.Nlink > 1 && st.Mode&unix.S_IFMT != unix.S_IFDIR {
		if first, ok := c.links[st.Ino]; ok {
			return os.Link(first, dst)
		}
		c.links[st.Ino] = dst
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		if err := copyFile(dst, src); err != nil {
			return err
		}
	case unix.S_IFLNK:
		target, err := os.Readlink(src)
		if err != nil {
			return err
		}
		if err := os.Symlink(target, dst); err != nil {
			return err
		}
	case unix.S_IFCHR, unix.S_IFBLK, unix.S_IFIFO, unix.S_IFSOCK:
		if err := unix.Mknod(dst, st.Mode, int(st.Rdev)); err != nil {
			return &fs.PathError{Op: "mknod", Path: dst, Err: err}
		}
	default:
		return fmt.Errorf("%s: unsupported file type %#o", src, st.Mode&unix.S_IFMT)
	}
	return copyMeta(dst, src, &st)
}

func copyFile(dst, src string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s: %w", src, err)
	}
	return out.Close()
}

// copyMeta gives dst src's owner, extended attributes, mode and times.
func copyMeta(dst, src string, st *unix.Stat_t) error {
	if err := unix.Lchown(dst, int(st.Uid), int(st.Gid)); err != nil {
		return &fs.PathError{Op: "lchown", Path: dst, Err: err}
	}
	if err := copyXattrs(dst, src); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFLNK {
		// Chmod after chown: chown clears setuid and setgid bits.
		if err := unix.Chmod(dst, st.Mode&07777); err != nil {
			return &fs.PathError{Op: "chmod", Path: dst, Err: err}
		}
	}
	ts := []unix.Timespec{st.Atim, st.Mtim}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, dst, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &fs.PathError{Op: "utimes", Path: dst, Err: err}
	}
	return nil
}

func copyXattrs(dst, src string) error {
	size, err := unix.Llistxattr(src, nil)
	if err != nil {
		if errors.Is(err, unix.ENOTSUP) {
			return nil
		}
		return &fs.PathError{Op: "llistxattr", Path: src, Err: err}
	}
	if size == 0 {
		return nil
	}
	buf := make([]byte, size)
	n, err := unix.Llistxattr(src, buf)
	if err != nil {
		return &fs.PathError{Op: "llistxattr", Path: src, Err: err}
	}
	for _, name := range splitNull(buf[:n]) {
		vsize, err := unix.Lgetxattr(src, name, nil)
		if err != nil {
			return &fs.PathError{Op: "lgetxattr " + name, Path: src, Err: err}
		}
		val := make([]byte, vsize)
		vn, err := unix.Lgetxattr(src, name, val)
		if err != nil {
			return &fs.PathError{Op: "lgetxattr " + name, Path: src, Err: err}
		}
		if err := unix.Lsetxattr(dst, name, val[:vn], 0); err != nil {
			return &fs.PathError{Op: "lsetxattr " + name, Path: dst, Err: err}
		}
	}
	return nil
}

func splitNull(b []byte) []string {
	var out []string
	start := 0
	for i, c := range b {
		if c == 0 {
			if i > start {
				out = append(out, string(b[start:i]))
			}
			start = i + 1
		}
	}
	return out
}
