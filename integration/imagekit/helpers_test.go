package imagekit

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// decompress returns the uncompressed reader of a layer blob according to its media type.
func decompress(t testing.TB, mediaType string, r io.Reader) io.Reader {
	t.Helper()
	switch {
	case strings.HasSuffix(mediaType, "gzip"):
		zr, err := gzip.NewReader(r)
		if err != nil {
			t.Fatalf("gzip layer: %v", err)
		}
		return zr
	case strings.HasSuffix(mediaType, "zstd"):
		zr, err := zstd.NewReader(r)
		if err != nil {
			t.Fatalf("zstd layer: %v", err)
		}
		t.Cleanup(zr.Close)
		return zr
	case mediaType == ocispec.MediaTypeImageLayer || mediaType == MediaTypeDockerLayer:
		return r
	}
	t.Fatalf("unexpected layer media type %q", mediaType)
	return nil
}

// layoutChecker verifies an OCI image layout directory from index.json down: every blob's
// size and digest, every manifest's and index's children, every config's diff IDs against
// the uncompressed layers.
type layoutChecker struct {
	t       testing.TB
	dir     string
	visited map[digest.Digest]ocispec.Descriptor
}

func checkLayout(t testing.TB, dir string) (ocispec.Index, map[digest.Digest]ocispec.Descriptor) {
	t.Helper()
	c := &layoutChecker{t: t, dir: dir, visited: map[digest.Digest]ocispec.Descriptor{}}
	layout, err := os.ReadFile(filepath.Join(dir, "oci-layout"))
	if err != nil {
		t.Fatal(err)
	}
	var l ocispec.ImageLayout
	if err := json.Unmarshal(layout, &l); err != nil || l.Version != ocispec.ImageLayoutVersion {
		t.Fatalf("oci-layout %s: %v", layout, err)
	}
	var index ocispec.Index
	data, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &index); err != nil {
		t.Fatal(err)
	}
	for _, d := range index.Manifests {
		c.descriptor(d)
	}
	entries, err := os.ReadDir(filepath.Join(dir, "blobs", "sha256"))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != len(c.visited) {
		t.Errorf("layout has %d blobs, %d are reachable from index.json", len(entries), len(c.visited))
	}
	return index, c.visited
}

// blob reads a blob, checking its size and digest against the descriptor.
func (c *layoutChecker) blob(d ocispec.Descriptor) []byte {
	c.t.Helper()
	data, err := os.ReadFile(filepath.Join(c.dir, "blobs", d.Digest.Algorithm().String(), d.Digest.Encoded()))
	if err != nil {
		c.t.Fatalf("blob %s (%s): %v", d.Digest, d.MediaType, err)
	}
	if int64(len(data)) != d.Size {
		c.t.Errorf("blob %s: %d bytes, descriptor says %d", d.Digest, len(data), d.Size)
	}
	if got := digest.FromBytes(data); got != d.Digest {
		c.t.Errorf("blob %s: content digest is %s", d.Digest, got)
	}
	return data
}

func (c *layoutChecker) descriptor(d ocispec.Descriptor) {
	c.t.Helper()
	c.visited[d.Digest] = d
	switch d.MediaType {
	case ocispec.MediaTypeImageIndex, MediaTypeDockerManifestList:
		var idx ocispec.Index
		if err := json.Unmarshal(c.blob(d), &idx); err != nil {
			c.t.Fatalf("index %s: %v", d.Digest, err)
		}
		if idx.MediaType != d.MediaType {
			c.t.Errorf("index %s says media type %q, its descriptor %q", d.Digest, idx.MediaType, d.MediaType)
		}
		for _, m := range idx.Manifests {
			if m.Platform == nil {
				c.t.Errorf("index %s: manifest %s has no platform", d.Digest, m.Digest)
			}
			c.descriptor(m)
		}
	case ocispec.MediaTypeImageManifest, MediaTypeDockerManifest:
		var m ocispec.Manifest
		if err := json.Unmarshal(c.blob(d), &m); err != nil {
			c.t.Fatalf("manifest %s: %v", d.Digest, err)
		}
		if m.MediaType != d.MediaType || m.SchemaVersion != 2 {
			c.t.Errorf("manifest %s: media type %q schema %d, descriptor %q", d.Digest, m.MediaType, m.SchemaVersion, d.MediaType)
		}
		c.visited[m.Config.Digest] = m.Config
		var img ocispec.Image
		if err := json.Unmarshal(c.blob(m.Config), &img); err != nil {
			c.t.Fatalf("config %s: %v", m.Config.Digest, err)
		}
		if len(img.RootFS.DiffIDs) != len(m.Layers) {
			c.t.Fatalf("config %s: %d diff IDs for %d layers", m.Config.Digest, len(img.RootFS.DiffIDs), len(m.Layers))
		}
		for i, l := range m.Layers {
			c.visited[l.Digest] = l
			c.blob(l)
			f, err := os.Open(filepath.Join(c.dir, "blobs", "sha256", l.Digest.Encoded()))
			if err != nil {
				c.t.Fatal(err)
			}
			digester := digest.SHA256.Digester()
			if _, err := io.Copy(digester.Hash(), decompress(c.t, l.MediaType, f)); err != nil {
				c.t.Errorf("layer %s: decompress: %v", l.Digest, err)
			}
			f.Close()
			if got := digester.Digest(); got != img.RootFS.DiffIDs[i] {
				c.t.Errorf("layer %d %s: uncompressed digest %s, config diff ID %s", i, l.Digest, got, img.RootFS.DiffIDs[i])
			}
		}
	default:
		c.t.Errorf("descriptor %s: unexpected media type %q", d.Digest, d.MediaType)
	}
}

// refInode is a regular file's inode in the reference applier.
type refInode struct {
	mode     fs.FileMode
	uid, gid int
	content  string
}

type refNode struct {
	typ      EntryType
	mode     fs.FileMode // dirs
	uid, gid int         // dirs and symlinks
	target   string
	inode    *refInode
}

// refApply is the test's reference applier: it applies layers to an in-memory tree the way
// the OCI image spec describes, whiteouts and opaque directories included.
type refApply struct {
	nodes map[string]*refNode
}

func newRefApply() *refApply { return &refApply{nodes: map[string]*refNode{}} }

func (a *refApply) removeTree(p string) {
	for k := range a.nodes {
		if k == p || strings.HasPrefix(k, p+"/") {
			delete(a.nodes, k)
		}
	}
}

func (a *refApply) apply(t testing.TB, mediaType string, r io.Reader) {
	t.Helper()
	tr := tar.NewReader(decompress(t, mediaType, r))
	added := map[string]bool{}
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			t.Fatalf("reference applier: %v", err)
		}
		name := path.Clean(hdr.Name)
		if name == "." || strings.HasPrefix(name, "../") || path.IsAbs(name) {
			t.Fatalf("reference applier: entry %q outside the root", hdr.Name)
		}
		parent, base := path.Split(name)
		parent = strings.TrimSuffix(parent, "/")
		if parent != "" {
			if n := a.nodes[parent]; n == nil || n.typ != TypeDir {
				t.Fatalf("reference applier: %s: parent %s is not a directory", name, parent)
			}
		}
		if base == ".wh..wh..opq" {
			for k := range a.nodes {
				if strings.HasPrefix(k, parent+"/") && !added[k] {
					delete(a.nodes, k)
				}
			}
			continue
		}
		if hidden, ok := strings.CutPrefix(base, ".wh."); ok {
			a.removeTree(path.Join(parent, hidden))
			continue
		}
		existing := a.nodes[name]
		if existing != nil && !(existing.typ == TypeDir && hdr.Typeflag == tar.TypeDir) {
			a.removeTree(name)
		}
		added[name] = true
		switch hdr.Typeflag {
		case tar.TypeDir:
			if existing != nil && existing.typ == TypeDir {
				existing.mode, existing.uid, existing.gid = tarMode(hdr.Mode), hdr.Uid, hdr.Gid
				continue
			}
			a.nodes[name] = &refNode{typ: TypeDir, mode: tarMode(hdr.Mode), uid: hdr.Uid, gid: hdr.Gid}
		case tar.TypeReg:
			body, err := io.ReadAll(tr)
			if err != nil {
				t.Fatalf("reference applier: %s: %v", name, err)
			}
			a.nodes[name] = &refNode{typ: TypeFile, inode: &refInode{mode: tarMode(hdr.Mode), uid: hdr.Uid, gid: hdr.Gid, content: string(body)}}
		case tar.TypeSymlink:
			a.nodes[name] = &refNode{typ: TypeSymlink, target: hdr.Linkname, uid: hdr.Uid, gid: hdr.Gid}
		case tar.TypeLink:
			src := a.nodes[path.Clean(hdr.Linkname)]
			if src == nil || src.typ != TypeFile {
				t.Fatalf("reference applier: hardlink %s to missing %s", name, hdr.Linkname)
			}
			// Like containerd's applier: the link header's mode and owner apply to the inode.
			src.inode.mode, src.inode.uid, src.inode.gid = tarMode(hdr.Mode), hdr.Uid, hdr.Gid
			a.nodes[name] = &refNode{typ: TypeFile, inode: src.inode}
		default:
			t.Fatalf("reference applier: %s: unexpected type %c", name, hdr.Typeflag)
		}
	}
}

func (a *refApply) tree() Tree {
	links := map[*refInode]int{}
	for _, n := range a.nodes {
		if n.inode != nil {
			links[n.inode]++
		}
	}
	var t Tree
	for _, p := range slices.Sorted(func(yield func(string) bool) {
		for k := range a.nodes {
			if !yield(k) {
				return
			}
		}
	}) {
		n := a.nodes[p]
		e := Entry{Path: p, Type: n.typ, Mode: n.mode, UID: n.uid, GID: n.gid, Target: n.target}
		if n.inode != nil {
			e.Mode, e.UID, e.GID, e.Content = n.inode.mode, n.inode.uid, n.inode.gid, n.inode.content
			if links[n.inode] > 1 {
				e.LinkGroup = fmt.Sprintf("%p", n.inode)
			}
		}
		if n.typ == TypeSymlink {
			e.Mode = 0
		}
		t = append(t, e)
	}
	return t
}

// applyImage applies the image's layers with the reference applier.
func applyImage(t testing.TB, img *Image) Tree {
	t.Helper()
	a := newRefApply()
	for _, l := range img.Layers {
		r, err := l.Open()
		if err != nil {
			t.Fatal(err)
		}
		a.apply(t, l.Descriptor.MediaType, r)
		r.Close()
	}
	return a.tree()
}

// materialize writes a tree to disk under root, as an applier would.
func materialize(t testing.TB, root string, tree Tree) {
	t.Helper()
	sorted := slices.Clone(tree)
	slices.SortFunc(sorted, func(a, b Entry) int { return strings.Compare(a.Path, b.Path) })
	firstOfGroup := map[string]string{}
	for _, e := range sorted {
		p := filepath.Join(root, filepath.FromSlash(e.Path))
		var err error
		switch e.Type {
		case TypeDir:
			err = os.Mkdir(p, 0o755)
		case TypeSymlink:
			err = os.Symlink(e.Target, p)
		case TypeFile:
			if first, ok := firstOfGroup[e.LinkGroup]; ok && e.LinkGroup != "" {
				err = os.Link(first, p)
				break
			}
			firstOfGroup[e.LinkGroup] = p
			err = os.WriteFile(p, []byte(e.Content), 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
		if e.Type == TypeSymlink {
			err = os.Lchown(p, e.UID, e.GID)
		} else {
			err = errors.Join(os.Lchown(p, e.UID, e.GID), os.Chmod(p, e.Mode))
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// tarNames lists the (name, typeflag, linkname, size) of every entry of an uncompressed tar,
// stopping at the first error, which it returns.
func tarHeaders(data []byte) ([]*tar.Header, error) {
	tr := tar.NewReader(bytes.NewReader(data))
	var hdrs []*tar.Header
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return hdrs, nil
		}
		if err != nil {
			return hdrs, err
		}
		hdrs = append(hdrs, hdr)
		if _, err := io.Copy(io.Discard, tr); err != nil {
			return hdrs, err
		}
	}
}
