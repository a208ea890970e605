package transfer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"

	"github.com/containerd/errdefs"
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
// leave nothing behind. progress is told the bytes written so far.
func (f *fetcher) fetch(ctx context.Context, repo *registry.Repository, desc ocispec.Descriptor, labels map[string]string, progress func(int64)) (fetched, error) {
	if _, err := f.store.Info(ctx, desc.Digest); err == nil {
		return fetchedExists, f.addLabels(ctx, desc, labels)
	} else if !errdefs.IsNotFound(err) {
		return 0, err
	}
	var mine bool
	_, err, _ := f.flight.Do(desc.Digest.String(), func() (any, error) {
		mine = true
		return nil, f.download(ctx, repo, desc, labels, progress)
	})
	if mine {
		if errdefs.IsAlreadyExists(err) {
			return fetchedExists, f.addLabels(ctx, desc, labels)
		}
		return fetchedNew, err
	}
	if err != nil {
		return 0, err
	}
	// Another transfer downloaded it, perhaps for another namespace:
	// recording it here needs no bytes.
	w, err := f.store.Writer(ctx, refKey(desc), desc.Size, desc.Digest)
	if err == nil {
		w.Close()
		return f.fetch(ctx, repo, desc, labels, progress)
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

func (f *fetcher) download(ctx context.Context, repo *registry.Repository, desc ocispec.Descriptor, labels map[string]string, progress func(int64)) error {
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
		rc, err := repo.Fetch(ctx, desc)
		if err != nil {
			return fmt.Errorf("fetch %s from %s: %w", desc.Digest, repo.Endpoint.Host, classify(err))
		}
		defer rc.Close()
		if offset > 0 {
			if s, ok := rc.(io.Seeker); ok {
				if _, err := s.Seek(offset, io.SeekStart); err != nil {
					return fmt.Errorf("resume %s at %d: %w", desc.Digest, offset, classify(err))
				}
			} else {
				// The registry cannot serve ranges: start again.
				if err := w.Truncate(0); err != nil {
					return err
				}
				offset = 0
			}
		}
		if progress != nil {
			progress(offset)
		}
		done := offset
		lr := io.LimitReader(rc, desc.Size-offset+1) // one byte more shows an oversized blob
		for {
			// The store may hash a buffer after Write returns: each read
			// takes a fresh one, given back once the store is done with it.
			bp := bufPool.Get().(*[]byte)
			n, rerr := io.ReadFull(lr, *bp)
			if n > 0 {
				if err := writeOwned(w, (*bp)[:n], func() { bufPool.Put(bp) }); err != nil {
					return fmt.Errorf("write %s: %w", desc.Digest, err)
				}
				done += int64(n)
				if progress != nil {
					progress(done)
				}
			} else {
				bufPool.Put(bp)
			}
			if (rerr == io.EOF || rerr == io.ErrUnexpectedEOF) && done >= desc.Size {
				break
			}
			if rerr == io.EOF {
				// Cut short: keep what came, for the next pull to resume.
				rerr = io.ErrUnexpectedEOF
			}
			if rerr != nil {
				return fmt.Errorf("fetch %s from %s after %d of %d bytes: %w", desc.Digest, repo.Endpoint.Host, done, desc.Size, classify(rerr))
			}
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
