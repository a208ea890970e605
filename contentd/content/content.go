// Package content defines contentd's content-addressed store: blobs named by
// their digest, visible per namespace, written through resumable ingests.
// The interfaces are small and composed, as containerd's are; the store
// package implements them on disk and bbolt, the service package serves them
// as containerd's Content API.
//
// Every method reads the namespace from its context
// (github.com/flotilla/flotilla/services/namespace) and fails with
// InvalidArgument without one. Errors are classified with errdefs kinds.
package content

import (
	"context"
	"io"
	"time"

	"github.com/opencontainers/go-digest"
)

// Info describes a committed blob as one namespace sees it.
type Info struct {
	Digest    digest.Digest
	Size      int64
	CreatedAt time.Time
	UpdatedAt time.Time
	Labels    map[string]string
}

// Status describes an ingest: a blob being written under a ref.
type Status struct {
	Ref      string
	Offset   int64 // bytes written so far
	Total    int64 // expected size, 0 when unknown
	Expected digest.Digest
	// StartedAt is taken within the Writer call that started the ingest;
	// UpdatedAt within the last call that wrote to it (StartedAt until one
	// does). Both survive Close, resuming and restarts.
	StartedAt time.Time
	UpdatedAt time.Time
}

// InfoProvider answers what a namespace knows about a blob.
type InfoProvider interface {
	// Info returns the blob dgst of the context's namespace; NotFound if the
	// namespace has no such blob, even when another namespace has it.
	Info(ctx context.Context, dgst digest.Digest) (Info, error)
}

// Manager reads and changes a namespace's blob records.
type Manager interface {
	InfoProvider
	// Update changes the labels of blob info.Digest, the only mutable field.
	// With no fieldpaths every label is replaced by info.Labels; "labels"
	// does the same; "labels.KEY" sets KEY to info.Labels[KEY], deleting it
	// when that is absent or empty. Other paths are InvalidArgument; a blob
	// the namespace does not have is NotFound. It returns the updated Info.
	Update(ctx context.Context, info Info, fieldpaths ...string) (Info, error)
	// Walk calls fn for each blob of the namespace matching any of filters
	// (containerd's filter syntax over digest and labels.KEY; none matches
	// all), in digest order. An error from fn stops the walk and is returned.
	Walk(ctx context.Context, fn func(Info) error, filters ...string) error
	// Delete removes blob dgst from the namespace (NotFound if it has none).
	// The bytes leave the disk once no namespace holds them.
	Delete(ctx context.Context, dgst digest.Digest) error
}

// ReaderAt reads one committed blob.
type ReaderAt interface {
	io.ReaderAt
	io.Closer
	Size() int64
}

// Provider opens committed blobs for reading.
type Provider interface {
	// ReaderAt opens blob dgst of the context's namespace; NotFound if the
	// namespace has no such blob. The reader stays valid after a Delete.
	ReaderAt(ctx context.Context, dgst digest.Digest) (ReaderAt, error)
}

// IngestData is the data of one ingest, read while it is written.
type IngestData interface {
	io.ReaderAt
	io.Closer
}

// IngestReader is a store that can read an ingest while a writer appends
// to it, so a reader can follow a blob as it arrives.
type IngestReader interface {
	// ReadIngest opens the data of ingest ref of the context's namespace;
	// NotFound if there is none. Only the bytes its writer has written
	// (Write returned) are meaningful; past them the reader may see zeros.
	// The reader stays valid after the ingest is committed or removed.
	ReadIngest(ctx context.Context, ref string) (IngestData, error)
}

// IngestManager reports on and cancels ingests of the context's namespace.
type IngestManager interface {
	// Status returns the ingest named ref; NotFound if there is none.
	Status(ctx context.Context, ref string) (Status, error)
	// ListStatuses returns the ingests matching any of filters (containerd's
	// filter syntax over ref; none matches all), sorted by ref.
	ListStatuses(ctx context.Context, filters ...string) ([]Status, error)
	// Abort removes ingest ref and its data; NotFound if there is none.
	Abort(ctx context.Context, ref string) error
}

// Ingester opens writers.
type Ingester interface {
	// Writer opens the ingest named ref, creating it or resuming it where
	// it stopped (even across restarts of the process). Only one writer may
	// hold a ref at a time: another attempt is Unavailable ("ref ... locked")
	// until the holder is closed or committed. A ref is scoped to the
	// namespace. total and expected, when set, are recorded for Status and
	// checked again at Commit; a total that differs from the one an existing
	// ingest recorded is FailedPrecondition.
	//
	// When expected names a blob the namespace already has, Writer fails
	// with AlreadyExists. When the blob is on disk for another namespace
	// (and total, if set, matches its size), Writer records it in this
	// namespace and fails with AlreadyExists too: nothing needs writing.
	//
	// With a lease in the context the ingest, and then the blob it
	// commits, are held by that lease; a lease that does not exist is
	// NotFound.
	Writer(ctx context.Context, ref string, total int64, expected digest.Digest) (Writer, error)
}

// Writer appends to one ingest. It is not safe for concurrent use.
type Writer interface {
	// Write appends p at the current offset. As io.Writer requires, p is
	// not kept once Write returns: the caller may reuse it at once.
	io.Writer
	// Close releases the ref without committing; the ingest stays on disk
	// to be resumed. Close after Commit does nothing.
	io.Closer
	// Status reports the ingest, Offset being the bytes written so far.
	Status() Status
	// Digest is the digest of the bytes written so far.
	Digest() digest.Digest
	// Truncate discards what was written; only size 0 is supported, any
	// other size is InvalidArgument.
	Truncate(size int64) error
	// Commit makes the written bytes a blob of the namespace, with labels,
	// and releases the ref. size (when > 0) must equal the bytes written and
	// expected (when set) their digest, otherwise Commit fails with
	// FailedPrecondition, leaves no blob and removes the ingest: bytes that
	// are not the blob expected are of no use to a retry, which starts
	// clean. (containerd's local store keeps them until garbage collection
	// drops the lease holding them; Flotilla removes them at once.) Labels
	// that fail validation are InvalidArgument and keep the ingest. The
	// data is synced and renamed into place, so a blob is either absent or
	// complete. If the namespace already has the blob, the ingest is
	// dropped and Commit fails with AlreadyExists. The ref stays locked
	// until the ingest is gone, so a writer opening it meanwhile is told it
	// is locked rather than resuming an ingest being moved. Either way, the
	// writer is closed afterwards.
	Commit(ctx context.Context, size int64, expected digest.Digest, labels map[string]string) error
}

// Store is the whole content store.
type Store interface {
	Manager
	Provider
	IngestManager
	Ingester
}
