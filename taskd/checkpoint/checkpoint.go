// Package checkpoint stores a task's checkpoint in a content store as
// containerd does: the CRIU image directory as an uncompressed tar, and the
// container's runtime spec as a protobuf Any, each a blob whose descriptor
// is answered to the client of Tasks.Checkpoint.
package checkpoint

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// Media types of a checkpoint's blobs, as containerd names them.
const (
	// MediaTypeCheckpoint is the CRIU image directory, an uncompressed tar.
	MediaTypeCheckpoint = "application/vnd.containerd.container.criu.checkpoint.criu.tar"
	// MediaTypeConfig is the container's runtime spec: a protobuf-encoded
	// google.protobuf.Any (type URL and JSON spec).
	MediaTypeConfig = "application/vnd.containerd.container.checkpoint.config.v1+proto"
)

// Ingester opens writers for new blobs.
type Ingester interface {
	// Writer starts writing a new blob under ref, from offset 0: whatever a
	// previous writer left under ref is discarded. Writers on different
	// refs are independent; a second live writer on the same ref may fail
	// with Unavailable. The namespace and lease of ctx scope the blob.
	Writer(ctx context.Context, ref string) (Writer, error)
}

// Writer writes one blob.
type Writer interface {
	io.Writer
	// Commit makes the written bytes a blob, after checking that they are
	// size bytes with the expected digest (FailedPrecondition otherwise,
	// and no blob is left). When a blob with that digest already exists,
	// Commit fails with AlreadyExists: the content is there. The writer
	// is closed afterwards either way.
	Commit(ctx context.Context, size int64, expected digest.Digest) error
	// Close gives the writer up; after Commit it does nothing. An
	// uncommitted ingest may be left in the store to be resumed or
	// garbage collected.
	Close() error
}

// Store writes the CRIU image directory dir (as a tar) and spec into ing,
// under refs starting with ref, and returns their descriptors in that
// order, as containerd's Tasks.Checkpoint answers them. The tar is streamed,
// never held in memory.
func Store(ctx context.Context, ing Ingester, ref, dir string, spec *anypb.Any) ([]*types.Descriptor, error) {
	if spec == nil {
		return nil, fmt.Errorf("checkpoint %s: the container has no spec: %w", ref, errdefs.ErrInvalidArgument)
	}
	specData, err := proto.Marshal(spec)
	if err != nil {
		return nil, fmt.Errorf("checkpoint %s: encode spec: %w", ref, err)
	}

	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(WriteTar(pw, dir)) }()
	image, err := WriteBlob(ctx, ing, ref+"/criu.tar", MediaTypeCheckpoint, pr)
	// Unblocks the tar writer if WriteBlob stopped reading early.
	pr.CloseWithError(errors.New("checkpoint image no longer read"))
	if err != nil {
		return nil, err
	}
	config, err := WriteBlob(ctx, ing, ref+"/spec", MediaTypeConfig, bytes.NewReader(specData))
	if err != nil {
		return nil, err
	}
	return []*types.Descriptor{image, config}, nil
}

// WriteBlob streams r into a new blob under ref, hashing it on the way,
// and commits it with the size and digest it saw. A blob that already
// exists is success. The descriptor has empty annotations, as containerd
// answers them.
func WriteBlob(ctx context.Context, ing Ingester, ref, mediaType string, r io.Reader) (*types.Descriptor, error) {
	w, err := ing.Writer(ctx, ref)
	if err != nil {
		return nil, fmt.Errorf("write %s: %w", ref, err)
	}
	defer w.Close()
	digester := digest.Canonical.Digester()
	size, err := copyChunks(io.MultiWriter(w, digester.Hash()), r)
	if err != nil {
		return nil, fmt.Errorf("write %s: %w", ref, err)
	}
	dgst := digester.Digest()
	if err := w.Commit(ctx, size, dgst); err != nil && !errdefs.IsAlreadyExists(err) {
		return nil, fmt.Errorf("commit %s (%s): %w", ref, dgst, err)
	}
	return &types.Descriptor{MediaType: mediaType, Digest: dgst.String(), Size: size, Annotations: map[string]string{}}, nil
}

// chunkSize is how much each Write to the store carries: every Write is
// one message, answered before the next is sent, so small ones are slow.
const chunkSize = 1 << 20

// copyChunks copies r to w in writes of chunkSize bytes (the last may be
// shorter), however little each Read of r returns.
func copyChunks(w io.Writer, r io.Reader) (int64, error) {
	buf := make([]byte, chunkSize)
	var total int64
	for {
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return total, werr
			}
			total += int64(n)
		}
		switch {
		case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
			return total, nil
		case err != nil:
			return total, err
		}
	}
}

// WriteTar writes the tree under dir to w as an uncompressed tar: entries
// named relative to dir, in lexical order, directories before what they
// hold. Regular files, directories and symbolic links are archived; a
// CRIU image directory holds nothing else, and other kinds (sockets,
// devices) fail with InvalidArgument.
func WriteTar(w io.Writer, dir string) error {
	tw := tar.NewWriter(w)
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if path == dir {
			return nil
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		var link string
		switch mode := info.Mode(); {
		case mode.IsRegular(), mode.IsDir():
		case mode&fs.ModeSymlink != 0:
			if link, err = os.Readlink(path); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%s: cannot archive a %s: %w", path, mode.Type(), errdefs.ErrInvalidArgument)
		}
		hdr, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		hdr.Name = filepath.ToSlash(rel)
		if info.IsDir() {
			hdr.Name += "/"
		}
		// Access and change times change on their own (reading the
		// directory changes them); leaving them out makes the same
		// images the same blob.
		hdr.AccessTime, hdr.ChangeTime = time.Time{}, time.Time{}
		hdr.Format = tar.FormatPAX
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if !info.Mode().IsRegular() {
			return nil
		}
		return copyFile(tw, path)
	})
	if err != nil {
		return fmt.Errorf("archive %s: %w", dir, err)
	}
	return tw.Close()
}

func copyFile(w io.Writer, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := io.Copy(w, f); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}
