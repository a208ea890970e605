package archive

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// WriteOption changes how a layer's tar is written.
type WriteOption func(*writeOptions)

type writeOptions struct {
	epoch *time.Time
}

// WithSourceDateEpoch clamps every entry's modification time to t, for
// reproducible layers (https://reproducible-builds.org/docs/source-date-epoch/).
func WithSourceDateEpoch(t time.Time) WriteOption {
	return func(o *writeOptions) { o.epoch = &t }
}

// ErrOverlayFeature is what WriteOverlayUpper fails with when the upper
// directory uses overlayfs features (redirected directories, metacopy)
// that only a comparison of the merged trees can turn into a layer.
var ErrOverlayFeature = fmt.Errorf("upper directory uses redirect_dir or metacopy: %w", errdefs.ErrNotImplemented)

// WriteDiff writes to w, as a tar, the changes that turn the tree at lower
// into the tree at upper ("" for lower means an empty tree): entries added
// or changed in upper (with their parent directories), and a .wh. whiteout
// for each name only lower has. A regular file is changed when its mode,
// owner, size or modification time differ, or, when the times carry no
// nanoseconds to trust, its content; a directory when its mode or owner
// differ. Names sharing an inode in upper are written as hardlinks.
func WriteDiff(ctx context.Context, w io.Writer, lower, upper string, opts ...WriteOption) error {
	cw := newChangeWriter(w, upper, opts)
	if err := cw.diffDir(ctx, lower, "."); err != nil {
		return err
	}
	return cw.close()
}

// WriteOverlayUpper writes to w, as a tar, the layer an overlay upper
// directory holds: its entries as they are, overlay whiteouts (0/0
// character devices) as .wh. whiteouts and opaque directories with a
// .wh..wh..opq entry. It fails with ErrOverlayFeature when the upper
// directory needs the lower ones to be understood.
func WriteOverlayUpper(ctx context.Context, w io.Writer, upper string, opts ...WriteOption) error {
	cw := newChangeWriter(w, upper, opts)
	cw.overlay = true
	if err := cw.upperDir(ctx, "."); err != nil {
		return err
	}
	return cw.close()
}

type inode struct{ dev, ino uint64 }

type changeWriter struct {
	tw      *tar.Writer
	upper   string
	opts    writeOptions
	overlay bool
	// dirs holds the directories already written, so each changed entry's
	// parents are written once, before it.
	dirs   map[string]bool
	inodes map[inode]string
	buf    []byte
}

func newChangeWriter(w io.Writer, upper string, opts []WriteOption) *changeWriter {
	var o writeOptions
	for _, opt := range opts {
		opt(&o)
	}
	return &changeWriter{
		tw:     tar.NewWriter(w),
		upper:  upper,
		opts:   o,
		dirs:   map[string]bool{".": true},
		inodes: map[inode]string{},
		buf:    make([]byte, 128<<10),
	}
}

func (c *changeWriter) close() error {
	if err := c.tw.Close(); err != nil {
		return fmt.Errorf("finish tar: %w", err)
	}
	return nil
}

func readDirNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, err
	}
	slices.Sort(names)
	return names, nil
}

// diffDir compares directory rel of upper with the same directory of
// lower ("" when lower has no directory there).
func (c *changeWriter) diffDir(ctx context.Context, lower, rel string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	upperNames, err := readDirNames(filepath.Join(c.upper, rel))
	if err != nil {
		return fmt.Errorf("read %s: %w", rel, err)
	}
	var lowerNames []string
	if lower != "" {
		if lowerNames, err = readDirNames(filepath.Join(lower, rel)); err != nil {
			return fmt.Errorf("read lower %s: %w", rel, err)
		}
	}
	i, j := 0, 0
	for i < len(upperNames) || j < len(lowerNames) {
		var name string
		inUpper, inLower := false, false
		switch {
		case j >= len(lowerNames) || (i < len(upperNames) && upperNames[i] < lowerNames[j]):
			name, inUpper = upperNames[i], true
			i++
		case i >= len(upperNames) || lowerNames[j] < upperNames[i]:
			name, inLower = lowerNames[j], true
			j++
		default:
			name, inUpper, inLower = upperNames[i], true, true
			i++
			j++
		}
		p := path.Join(rel, name)
		if !inUpper {
			if err := c.whiteout(p); err != nil {
				return err
			}
			continue
		}
		ufi, err := os.Lstat(filepath.Join(c.upper, p))
		if err != nil {
			return fmt.Errorf("stat %s: %w", p, err)
		}
		var lfi fs.FileInfo
		if inLower {
			if lfi, err = os.Lstat(filepath.Join(lower, p)); err != nil {
				return fmt.Errorf("stat lower %s: %w", p, err)
			}
		}
		if ufi.IsDir() {
			lowerDir := lfi != nil && lfi.IsDir()
			if !lowerDir || !sameMeta(lfi, ufi) {
				if err := c.add(p, ufi); err != nil {
					return err
				}
			}
			next := ""
			if lowerDir {
				next = lower
			}
			if err := c.diffDir(ctx, next, p); err != nil {
				return err
			}
			continue
		}
		same := false
		if lfi != nil {
			if same, err = sameFile(filepath.Join(lower, p), filepath.Join(c.upper, p), lfi, ufi); err != nil {
				return err
			}
		}
		if !same {
			if err := c.add(p, ufi); err != nil {
				return err
			}
		}
	}
	return nil
}

func statT(fi fs.FileInfo) *syscall.Stat_t {
	st, _ := fi.Sys().(*syscall.Stat_t)
	if st == nil {
		return &syscall.Stat_t{}
	}
	return st
}

// sameMeta compares what a directory entry carries besides times: type,
// permission bits, owner and device number.
func sameMeta(a, b fs.FileInfo) bool {
	sa, sb := statT(a), statT(b)
	return a.Mode() == b.Mode() && sa.Uid == sb.Uid && sa.Gid == sb.Gid && sa.Rdev == sb.Rdev
}

// sameFile tells whether two non-directories are the same as a layer sees
// them, as containerd's continuity does.
func sameFile(lp, up string, l, u fs.FileInfo) (bool, error) {
	if !sameMeta(l, u) {
		return false, nil
	}
	switch {
	case l.Mode()&fs.ModeSymlink != 0:
		lt, err1 := os.Readlink(lp)
		ut, err2 := os.Readlink(up)
		if err := errors.Join(err1, err2); err != nil {
			return false, err
		}
		return lt == ut, nil
	case !l.Mode().IsRegular():
		return true, nil
	}
	if l.Size() != u.Size() {
		return false, nil
	}
	lm, um := statT(l).Mtim, statT(u).Mtim
	if lm != um {
		return false, nil
	}
	if lm.Nsec != 0 {
		return true, nil
	}
	return sameContent(lp, up)
}

func sameContent(a, b string) (bool, error) {
	fa, err := os.Open(a)
	if err != nil {
		return false, err
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return false, err
	}
	defer fb.Close()
	ba, bb := make([]byte, 64<<10), make([]byte, 64<<10)
	for {
		na, ea := io.ReadFull(fa, ba)
		nb, eb := io.ReadFull(fb, bb)
		if na != nb || !bytes.Equal(ba[:na], bb[:nb]) {
			return false, nil
		}
		if ea != nil || eb != nil {
			if (ea == io.EOF || ea == io.ErrUnexpectedEOF) && (eb == io.EOF || eb == io.ErrUnexpectedEOF) {
				return true, nil
			}
			return false, errors.Join(ea, eb)
		}
	}
}

// upperDir writes directory rel of an overlay upper directory.
func (c *changeWriter) upperDir(ctx context.Context, rel string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	names, err := readDirNames(filepath.Join(c.upper, rel))
	if err != nil {
		return fmt.Errorf("read %s: %w", rel, err)
	}
	for _, name := range names {
		p := path.Join(rel, name)
		abs := filepath.Join(c.upper, p)
		fi, err := os.Lstat(abs)
		if err != nil {
			return fmt.Errorf("stat %s: %w", p, err)
		}
		if fi.Mode()&fs.ModeCharDevice != 0 && fi.Mode()&fs.ModeDevice != 0 && statT(fi).Rdev == 0 {
			if err := c.whiteout(p); err != nil {
				return err
			}
			continue
		}
		if err := c.add(p, fi); err != nil {
			return err
		}
		if !fi.IsDir() {
			continue
		}
		if v, err := getxattr(abs, overlayOpaqueXattr); err == nil && string(v) == "y" {
			if err := c.tw.WriteHeader(c.markerHeader(path.Join(p, OpaqueWhiteout))); err != nil {
				return fmt.Errorf("write %s: %w", p, err)
			}
		}
		if err := c.upperDir(ctx, p); err != nil {
			return err
		}
	}
	return nil
}

// markerHeader is the header of a whiteout entry: an empty file dated the
// epoch, as containerd writes them.
func (c *changeWriter) markerHeader(name string) *tar.Header {
	return &tar.Header{Typeflag: tar.TypeReg, Name: name, ModTime: time.Unix(0, 0), Format: tar.FormatPAX}
}

func (c *changeWriter) whiteout(p string) error {
	if err := c.parents(p); err != nil {
		return err
	}
	name := path.Join(path.Dir(p), WhiteoutPrefix+path.Base(p))
	if err := c.tw.WriteHeader(c.markerHeader(name)); err != nil {
		return fmt.Errorf("write whiteout %s: %w", p, err)
	}
	return nil
}

// parents writes the directories above p that are not written yet.
func (c *changeWriter) parents(p string) error {
	var missing []string
	for d := path.Dir(p); !c.dirs[d]; d = path.Dir(d) {
		missing = append(missing, d)
	}
	for i := len(missing) - 1; i >= 0; i-- {
		fi, err := os.Lstat(filepath.Join(c.upper, missing[i]))
		if err != nil {
			return fmt.Errorf("stat %s: %w", missing[i], err)
		}
		if err := c.write(missing[i], fi); err != nil {
			return err
		}
	}
	return nil
}

// add writes entry p of upper after its parents.
func (c *changeWriter) add(p string, fi fs.FileInfo) error {
	if err := c.parents(p); err != nil {
		return err
	}
	return c.write(p, fi)
}

func (c *changeWriter) write(p string, fi fs.FileInfo) error {
	abs := filepath.Join(c.upper, p)
	hdr, err := c.header(abs, p, fi)
	if err != nil {
		return err
	}
	if fi.IsDir() {
		c.dirs[p] = true
	}
	if err := c.tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	if hdr.Typeflag != tar.TypeReg || hdr.Size == 0 {
		return nil
	}
	f, err := os.Open(abs)
	if err != nil {
		return fmt.Errorf("open %s: %w", p, err)
	}
	defer f.Close()
	n, err := io.CopyBuffer(c.tw, io.LimitReader(onlyReader{f}, hdr.Size), c.buf)
	if err == nil && n != hdr.Size {
		err = fmt.Errorf("file shrank from %d to %d bytes while being read: %w", hdr.Size, n, errdefs.ErrAborted)
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	return nil
}

// onlyReader hides os.File's WriteTo so the copy uses the writer's buffer.
type onlyReader struct{ io.Reader }

func (c *changeWriter) header(abs, p string, fi fs.FileInfo) (*tar.Header, error) {
	var link string
	if fi.Mode()&fs.ModeSymlink != 0 {
		var err error
		if link, err = os.Readlink(abs); err != nil {
			return nil, fmt.Errorf("readlink %s: %w", p, err)
		}
	}
	hdr, err := tar.FileInfoHeader(fi, link)
	if err != nil {
		return nil, fmt.Errorf("header of %s: %w", p, err)
	}
	st := statT(fi)
	hdr.Name = p
	if fi.IsDir() {
		hdr.Name += "/"
	}
	hdr.Uid, hdr.Gid = int(st.Uid), int(st.Gid)
	hdr.Uname, hdr.Gname = "", ""
	hdr.AccessTime, hdr.ChangeTime = time.Time{}, time.Time{}
	hdr.ModTime = time.Unix(st.Mtim.Sec, st.Mtim.Nsec)
	if c.opts.epoch != nil && hdr.ModTime.After(*c.opts.epoch) {
		hdr.ModTime = *c.opts.epoch
	}
	hdr.Format = tar.FormatPAX
	if fi.Mode().IsRegular() && st.Nlink > 1 {
		id := inode{dev: st.Dev, ino: st.Ino}
		if first, ok := c.inodes[id]; ok {
			hdr.Typeflag, hdr.Linkname, hdr.Size = tar.TypeLink, first, 0
		} else {
			c.inodes[id] = p
		}
	}
	names, err := listxattr(abs)
	if err != nil {
		return nil, fmt.Errorf("xattrs of %s: %w", p, err)
	}
	for _, name := range names {
		if strings.HasPrefix(name, overlayXattrPrefix) {
			if c.overlay && (name == overlayXattrPrefix+"redirect" || name == overlayXattrPrefix+"metacopy") {
				return nil, fmt.Errorf("%s: %w", p, ErrOverlayFeature)
			}
			continue
		}
		v, err := getxattr(abs, name)
		if err != nil {
			return nil, fmt.Errorf("xattr %s of %s: %w", name, p, err)
		}
		if hdr.PAXRecords == nil {
			hdr.PAXRecords = map[string]string{}
		}
		hdr.PAXRecords[paxXattr+name] = string(v)
	}
	return hdr, nil
}

func listxattr(p string) ([]string, error) {
	buf := make([]byte, 1024)
	for {
		n, err := unix.Llistxattr(p, buf)
		if errors.Is(err, unix.ERANGE) {
			buf = make([]byte, len(buf)*4)
			continue
		}
		if errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EOPNOTSUPP) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		var names []string
		for _, s := range strings.Split(string(buf[:n]), "\x00") {
			if s != "" {
				names = append(names, s)
			}
		}
		slices.Sort(names)
		return names, nil
	}
}

func getxattr(p, name string) ([]byte, error) {
	buf := make([]byte, 256)
	for {
		n, err := unix.Lgetxattr(p, name, buf)
		if errors.Is(err, unix.ERANGE) {
			buf = make([]byte, len(buf)*4)
			continue
		}
		if err != nil {
			return nil, err
		}
		return buf[:n], nil
	}
}
