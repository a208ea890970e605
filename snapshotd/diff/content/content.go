// Package content is the differ's view of a content store: read a blob by
// its descriptor, write a new one under a reference. The same two small
// interfaces are served by contentd across the network (Remote) and by any
// in-process store, so the differ does not care where blobs live.
package content

import (
	"context"
	"io"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// ReaderAt reads one blob at any offset.
type ReaderAt interface {
	io.ReaderAt
	io.Closer
	// Size is the blob's size in bytes.
	Size() int64
}

// Provider gives read access to blobs.
type Provider interface {
	// ReaderAt opens the blob desc names (by desc.Digest; the size is a
	// hint). A blob the store does not hold is a NotFound error. The caller
	// closes the reader.
	ReaderAt(ctx context.Context, desc ocispec.Descriptor) (ReaderAt, error)
}

// Streamer is a Provider that can also read a blob in order in one go,
// which costs a remote store one call rather than one per ReadAt, and can
// follow a blob still being fetched (contentclient.WithFollow).
type Streamer interface {
	// Stream returns a reader of the blob desc names from its first byte
	// to its last. A blob the store does not hold is a NotFound error, at
	// once or at the first Read. The caller checks the length and digest
	// of what it reads, and closes the reader.
	Stream(ctx context.Context, desc ocispec.Descriptor) (io.ReadCloser, error)
}

// Writer writes one blob in order, from offset 0.
type Writer interface {
	io.Writer
	// Commit stores what was written under expected, after the store has
	// checked that it is size bytes long and digests to expected, and
	// labels it. A mismatch is a FailedPrecondition error and stores
	// nothing; a blob already stored under expected is an AlreadyExists
	// error, which callers take as success. Commit ends the writer.
	Commit(ctx context.Context, size int64, expected digest.Digest, labels map[string]string) error
	// Close releases the writer. Closing without Commit leaves nothing
	// committed; the store may keep the partial write under its ref.
	Close() error
}

// Ingester opens writers for new blobs.
type Ingester interface {
	// Writer starts writing a blob under ref, a name unique to this write
	// while it is in progress. A ref another write holds is an Unavailable
	// error.
	Writer(ctx context.Context, ref string) (Writer, error)
}
