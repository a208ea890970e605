package transfer

import (
	"context"
	"errors"
	"fmt"
	"github.com/flotilla/flotilla/services/namespace"
	"net/http"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/singleflight"
	"oras.land/oras-go/v2/errdef"
	"oras.land/oras-go/v2/registry/remote/errcode"

	"github.com/flotilla/flotilla/contentd/content"
	"github.com/flotilla/flotilla/contentd/registry"
)

// copyBuffer is the size of the buffers blobs are copied through.
const copyBuffer = 1 << 20

var bufPool = sync.Pool{New: func() any { b := make([]byte, copyBuffer); return &b }}

// fetcher writes blobs from registries into the content store. Two fetches
// of one digest at once, from any transfer of any namespace, download it
// once: the others wait and then record the blob the first one committed.
type fetcher struct {
	store  content.Store
	flight singleflight.Group
	// partSize is the size of the ranged parts of a large blob (0: one
	// request per blob).
	partSize int64
	// parallelAfter is how long the first part of a blob may take before
	// the rest is fetched in parallel parts rather than in one request.
	parallelAfter time.Duration

	// What followers (follow.go) wait on:
	mu        sync.Mutex
	wake      chan struct{} // closed and replaced at every change
	downloads map[digest.Digest]*download
	wants     map[wantKey]int
}

func newFetcher(store content.Store, partSize int64, parallelAfter time.Duration) *fetcher {
	return &fetcher{store: store, partSize: partSize, parallelAfter: parallelAfter, wake: make(chan struct{}),
		downloads: map[digest.Digest]*download{}, wants: map[wantKey]int{}}
}

// fetched says how a blob came to be in the store.
type fetched int

const (
	fetchedNew    fetched = iota // downloaded by this call
	fetchedExists                // the namespace had it, or took it from another's
)

// fetch makes blob desc of repo present in the context's namespace with
// labels added, verifying its size and digest. An interrupted download
// leaves its ingest to be resumed by the next fetch, which asks the
// registry only for the bytes it lacks; bytes that do not match the digest
// leave nothing behind. o bounds its registry requests and ranks them
// among the pull's others. progress is told the bytes written so far.
func (f *fetcher) fetch(ctx context.Context, repo *registry.Repository, desc ocispec.Descriptor, labels map[string]string, o order, progress func(int64)) (fetched, error) {
	defer f.settled()
	// Under a lease, a blob already there is recorded in it all the same
	// (the writer below says AlreadyExists and does): the pull's image is
	// not recorded yet, and the blob's other holders may go first.
	if _, leased := namespace.LeaseFromContext(ctx); !leased {
		if _, err := f.store.Info(ctx, desc.Digest); err == nil {
			return fetchedExists, f.addLabels(ctx, desc, labels)
		} else if !errdefs.IsNotFound(err) {
			return 0, err
		}
	}
	var mine bool
	_, err, _ := f.flight.Do(desc.Digest.String(), func() (any, error) {
		mine = true
		return nil, f.download(ctx, repo, desc, labels, o, progress)
	})
	if mine {
		if errdefs.IsAlreadyExists(err) {
			return fetchedExists, f.addLabels(ctx, desc, labels)
		}
		return fetchedNew, err
	}
	if err != nil {
		if ctx.Err() == nil && (errdefs.IsCanceled(err) || errdefs.IsDeadlineExceeded(err) ||
			errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
			// The download this pull waited for ended with its own
			// caller; this pull still wants the blob.
			return f.fetch(ctx, repo, desc, labels, o, progress)
		}
		return 0, err
	}
	// Another transfer downloaded it, perhaps for another namespace:
	// recording it here needs no bytes.
	w, err := f.store.Writer(ctx, refKey(desc), desc.Size, desc.Digest)
	if err == nil {
		w.Close()
		return f.fetch(ctx, repo, desc, labels, o, progress)
	}
	if !errdefs.IsAlreadyExists(err) {
		return 0, err
	}
	return fetchedExists, f.addLabels(ctx, desc, labels)
}

func (f *fetcher) addLabels(ctx context.Context, desc ocispec.Descriptor, labels map[string]string) error {
	if len(labels) == 0 {
		return nil
	}
	paths := make([]string, 0, len(labels))
	for k := range labels {
		paths = append(paths, "labels."+k)
	}
	_, err := f.store.Update(ctx, content.Info{Digest: desc.Digest, Labels: labels}, paths...)
	return err
}

func (f *fetcher) download(ctx context.Context, repo *registry.Repository, desc ocispec.Descriptor, labels map[string]string, o order, progress func(int64)) (err error) {
	w, err := f.store.Writer(ctx, refKey(desc), desc.Size, desc.Digest)
	if err != nil {
		return err
	}
	defer w.Close()
	offset := w.Status().Offset
	if offset > desc.Size {
		if err := w.Truncate(0); err != nil {
			return err
		}
		offset = 0
	}
	if offset < desc.Size {
		dl := f.started(ctx, desc.Digest, refKey(desc), offset)
		defer func() { f.ended(desc.Digest, dl, err) }()
		if progress != nil {
			progress(offset)
		}
		written := func(n int64) {
			f.progressed(dl, n)
			if progress != nil {
				progress(n)
			}
		}
		var done int64
		var ferr error
		if f.partSize > 0 && desc.Size-offset > f.partSize && !isManifest(desc.MediaType) && !isIndex(desc.MediaType) {
			done, ferr = f.fetchRanged(ctx, repo, desc, w, offset, o, written)
		} else {
			done, ferr = f.fetchWhole(ctx, repo, desc, w, offset, o, written)
		}
		if ferr != nil {
			err := fmt.Errorf("fetch %s from %s after %d of %d bytes: %w", desc.Digest, repo.Endpoint.Host, done, desc.Size, ferr)
			if d, ok := w.(detacher); ok {
				// The client drops its lease when the pull fails;
				// what came stays for the next pull to resume.
				if derr := d.Detach(); derr != nil {
					err = errors.Join(err, derr)
				}
			}
			return err
		}
	}
	if err := w.Commit(ctx, desc.Size, desc.Digest, labels); err != nil {
		if errdefs.IsFailedPrecondition(err) {
			// Wrong bytes: nothing of them may stay, not even to resume.
			if aerr := f.store.Abort(ctx, refKey(desc)); aerr != nil && !errdefs.IsNotFound(aerr) {
				err = errors.Join(err, aerr)
			}
			return fmt.Errorf("blob %s from %s does not match its descriptor (size %d): %v: %w",
				desc.Digest, repo.Endpoint.Host, desc.Size, err, errdefs.ErrDataLoss)
		}
		return err
	}
	return nil
}

// fetchWhole writes bytes [offset, size) of desc into w from one request
// (a ranged one when resuming; a registry that ignores ranges sends the
// whole blob, and the ingest starts again at 0).
func (f *fetcher) fetchWhole(ctx context.Context, repo *registry.Repository, desc ocispec.Descriptor, w content.Writer, offset int64, o order, written func(int64)) (int64, error) {
	if err := o.slots.acquire(ctx, o.rank, 0); err != nil {
		return offset, err
	}
	defer o.slots.release()
	rc, start, err := repo.FetchFrom(ctx, desc, offset)
	if err != nil {
		return offset, fmt.Errorf("at %d: %w", offset, classify(err))
	}
	defer rc.Close()
	if start != offset {
		// The registry cannot serve ranges: start again.
		if err := w.Truncate(0); err != nil {
			return offset, err
		}
		offset = 0
		written(0)
	}
	return f.pour(w, rc, offset, desc.Size, written)
}

// detacher is a content writer whose ingest can outlive the lease it was
// started under (the local store's).
type detacher interface {
	Detach() error
}

// ownedWriter is a content writer that can keep p until it calls release
// (the store's writer hashes behind the acknowledgement).
type ownedWriter interface {
	WriteOwned(p []byte, release func()) (int, error)
}

// writeOwned writes p to w, calling release once w no longer needs p.
func writeOwned(w content.Writer, p []byte, release func()) error {
	if ow, ok := w.(ownedWriter); ok {
		_, err := ow.WriteOwned(p, release)
		return err
	}
	_, err := w.Write(p)
	release()
	return err
}

// classify gives registry errors an errdefs kind.
func classify(err error) error {
	switch {
	case errors.Is(err, registry.ErrStalled):
		return fmt.Errorf("%w: %w", err, errdefs.ErrUnavailable)
	case errors.Is(err, errdef.ErrNotFound) || isStatus(err, http.StatusNotFound):
		return fmt.Errorf("%w: %w", err, errdefs.ErrNotFound)
	case errdefs.Resolve(err) != errdefs.ErrUnknown:
		return err
	case isStatus(err, http.StatusUnauthorized) || isStatus(err, http.StatusForbidden):
		return fmt.Errorf("%w: %w", err, errdefs.ErrPermissionDenied)
	default:
		return fmt.Errorf("%w: %w", err, errdefs.ErrUnavailable)
	}
}

// isStatus reports whether err is a registry's error response with code.
func isStatus(err error, code int) bool {
	var er *errcode.ErrorResponse
	return errors.As(err, &er) && er.StatusCode == code
}
