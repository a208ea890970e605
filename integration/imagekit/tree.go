package imagekit

import (
	"archive/tar"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
)

// EntryType is the kind of a filesystem entry in a [Tree].
type EntryType string

// The entry types a Tree describes.
const (
	TypeDir     EntryType = "dir"
	TypeFile    EntryType = "file"
	TypeSymlink EntryType = "symlink"
	TypeOther   EntryType = "other" // device, fifo, socket: only reported by ScanTree
)

// Entry is one file, directory or symlink of a root filesystem.
type Entry struct {
	// Path is slash-separated and relative to the root ("etc/passwd"); the root itself is not
	// an entry.
	Path string
	Type EntryType
	// Mode holds the permission bits with fs.ModeSetuid, fs.ModeSetgid and fs.ModeSticky;
	// it is not compared for symlinks.
	Mode     fs.FileMode
	UID, GID int
	// Content is a regular file's content.
	Content string
	// Target is a symlink's target, as written.
	Target string
	// LinkGroup is non-empty for regular files that are hardlinks of one inode: every entry
	// with the same LinkGroup is the same inode, and that inode has no other names.
	LinkGroup string
}

// Tree is a whole root filesystem, in any order.
type Tree []Entry

// Lookup returns the entry at path.
func (t Tree) Lookup(path string) (Entry, bool) {
	for _, e := range t {
		if e.Path == path {
			return e, true
		}
	}
	return Entry{}, false
}

// Check compares the directory root with t and reports every difference: a missing, extra or
// different entry (type, mode, owner, content, symlink target) or hardlinks that are not the
// expected ones. A nil error means root holds exactly t.
func (t Tree) Check(root string) error {
	actual, err := ScanTree(root)
	if err != nil {
		return err
	}
	return t.Compare(actual)
}

// Compare reports every difference between t (expected) and actual, as [Tree.Check] does.
// LinkGroup names need not match; the sets of paths sharing an inode must.
func (t Tree) Compare(actual Tree) error {
	var errs []error
	got := make(map[string]Entry, len(actual))
	for _, e := range actual {
		got[e.Path] = e
	}
	want := make(map[string]Entry, len(t))
	for _, e := range t {
		want[e.Path] = e
	}
	for _, w := range t {
		g, ok := got[w.Path]
		if !ok {
			errs = append(errs, fmt.Errorf("%s: missing (want %s)", w.Path, w.Type))
			continue
		}
		if g.Type != w.Type {
			errs = append(errs, fmt.Errorf("%s: is a %s, want a %s", w.Path, g.Type, w.Type))
			continue
		}
		if w.Type != TypeSymlink && g.Mode != w.Mode {
			errs = append(errs, fmt.Errorf("%s: mode %v, want %v", w.Path, g.Mode, w.Mode))
		}
		if g.UID != w.UID || g.GID != w.GID {
			errs = append(errs, fmt.Errorf("%s: owner %d:%d, want %d:%d", w.Path, g.UID, g.GID, w.UID, w.GID))
		}
		switch w.Type {
		case TypeFile:
			if g.Content != w.Content {
				errs = append(errs, fmt.Errorf("%s: content %s, want %s", w.Path, abbrev(g.Content), abbrev(w.Content)))
			}
		case TypeSymlink:
			if g.Target != w.Target {
				errs = append(errs, fmt.Errorf("%s: symlink to %q, want %q", w.Path, g.Target, w.Target))
			}
		}
	}
	for _, g := range actual {
		if _, ok := want[g.Path]; !ok {
			errs = append(errs, fmt.Errorf("%s: unexpected %s", g.Path, g.Type))
		}
	}
	wantLinks, gotLinks := linkSets(t), linkSets(actual)
	for path, w := range wantLinks {
		if g := gotLinks[path]; g != w {
			errs = append(errs, fmt.Errorf("%s: hardlinked with [%s], want [%s]", path, g, w))
		}
	}
	for path, g := range gotLinks {
		if _, ok := wantLinks[path]; !ok {
			if _, known := want[path]; known {
				errs = append(errs, fmt.Errorf("%s: hardlinked with [%s], want no other name", path, g))
			}
		}
	}
	return errors.Join(errs...)
}

// linkSets maps each path in a link group to the sorted, comma-joined members of its group.
func linkSets(t Tree) map[string]string {
	groups := map[string][]string{}
	for _, e := range t {
		if e.LinkGroup != "" {
			groups[e.LinkGroup] = append(groups[e.LinkGroup], e.Path)
		}
	}
	sets := map[string]string{}
	for _, members := range groups {
		slices.Sort(members)
		joined := strings.Join(members, ",")
		for _, m := range members {
			sets[m] = joined
		}
	}
	return sets
}

func abbrev(s string) string {
	if len(s) > 40 {
		return fmt.Sprintf("%q... (%d bytes)", s[:40], len(s))
	}
	return fmt.Sprintf("%q", s)
}

// ScanTree reads the directory root into a Tree: every entry below it with its type, mode,
// owner, content and symlink target. Regular files whose inode has more than one link get a
// LinkGroup naming the inode; a link count higher than the names found below root (a hardlink
// to a file outside) gets a group of its own with an "outside" suffix, so that it never
// matches an expectation.
func ScanTree(root string) (Tree, error) {
	var tree Tree
	type inode struct{ dev, ino uint64 }
	names := map[inode][]int{}
	nlinks := map[inode]uint64{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if path == root {
			return nil
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		e := Entry{Path: filepath.ToSlash(rel), Mode: info.Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)}
		if st, ok := info.Sys().(*syscall.Stat_t); ok {
			e.UID, e.GID = int(st.Uid), int(st.Gid)
			if info.Mode().IsRegular() && st.Nlink > 1 {
				in := inode{uint64(st.Dev), uint64(st.Ino)}
				names[in] = append(names[in], len(tree))
				nlinks[in] = uint64(st.Nlink)
			}
		}
		switch {
		case info.IsDir():
			e.Type = TypeDir
		case info.Mode().IsRegular():
			e.Type = TypeFile
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			e.Content = string(data)
		case info.Mode()&fs.ModeSymlink != 0:
			e.Type = TypeSymlink
			e.Mode = 0
			if e.Target, err = os.Readlink(path); err != nil {
				return err
			}
		default:
			e.Type = TypeOther
		}
		tree = append(tree, e)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("scan %s: %w", root, err)
	}
	for in, idx := range names {
		group := fmt.Sprintf("inode-%d-%d", in.dev, in.ino)
		if uint64(len(idx)) != nlinks[in] {
			group += "-outside"
		}
		for _, i := range idx {
			tree[i].LinkGroup = group
		}
	}
	return tree, nil
}

// treeOf describes the root filesystem a single layer of entries without whiteouts makes.
func treeOf(entries []entry) Tree {
	var t Tree
	index := map[string]int{}
	for _, e := range entries {
		h := e.hdr
		p := strings.TrimSuffix(h.Name, "/")
		te := Entry{Path: p, Mode: tarMode(h.Mode), UID: h.Uid, GID: h.Gid}
		switch h.Typeflag {
		case tar.TypeDir:
			te.Type = TypeDir
		case tar.TypeReg:
			te.Type = TypeFile
			te.Content = string(e.body)
		case tar.TypeSymlink:
			te.Type, te.Mode, te.Target = TypeSymlink, 0, h.Linkname
		case tar.TypeLink:
			src := t[index[h.Linkname]]
			if src.LinkGroup == "" {
				src.LinkGroup = src.Path
				t[index[h.Linkname]] = src
			}
			te = src
			te.Path = p
		}
		index[p] = len(t)
		t = append(t, te)
	}
	return t
}

// tarMode converts a tar header's mode to an fs.FileMode with permission and special bits.
func tarMode(m int64) fs.FileMode {
	mode := fs.FileMode(m) & fs.ModePerm
	if m&0o4000 != 0 {
		mode |= fs.ModeSetuid
	}
	if m&0o2000 != 0 {
		mode |= fs.ModeSetgid
	}
	if m&0o1000 != 0 {
		mode |= fs.ModeSticky
	}
	return mode
}
