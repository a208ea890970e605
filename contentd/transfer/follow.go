package transfer

import (
	"context"
	"fmt"
	"io"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"github.com/flotilla/flotilla/contentd/content"
	"github.com/flotilla/flotilla/services/namespace"
)

// Following a blob while it downloads lets a pull apply each layer as its
// bytes arrive instead of after its commit. The unpacker asks snapshotd's
// Diff.Apply to follow (contentclient.FollowKey); snapshotd reads the layer
// through Content.Read with the same key; the content service hands a read
// of a blob the namespace lacks to Follow, which streams the download's
// bytes from its ingest as they are written and then the committed blob.
// Only blobs a transfer of the caller's namespace is fetching are
// followed: anything else is NotFound, as without following.

// download is a blob being written from a registry, as followers see it.
type download struct {
	// open opens the ingest being written (nil: the store cannot read
	// ingests; followers wait for the commit).
	open func() (content.IngestData, error)
	// Guarded by fetcher.mu:
	written int64 // bytes in the ingest that followers may read
	ended   bool
	err     error // why the download failed, once ended
}

// wantKey is a blob a transfer of a namespace is fetching.
type wantKey struct {
	ns   string
	dgst digest.Digest
}

// changed wakes every follower; the caller holds f.mu.
func (f *fetcher) changed() {
	close(f.wake)
	f.wake = make(chan struct{})
}

// want records that a transfer of ctx's namespace is fetching dgsts, so
// that reads may follow them, until the returned release is called.
func (f *fetcher) want(ctx context.Context, dgsts ...digest.Digest) (release func()) {
	ns, _ := namespace.FromContext(ctx)
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, d := range dgsts {
		f.wants[wantKey{ns, d}]++
	}
	return func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		for _, d := range dgsts {
			k := wantKey{ns, d}
			if f.wants[k]--; f.wants[k] <= 0 {
				delete(f.wants, k)
			}
		}
		f.changed()
	}
}

// started registers the download of dgst into ingest ref of ctx's
// namespace, offset bytes of it written already.
func (f *fetcher) started(ctx context.Context, dgst digest.Digest, ref string, offset int64) *download {
	d := &download{written: offset}
	if ir, ok := f.store.(content.IngestReader); ok {
		ctx := context.WithoutCancel(ctx)
		d.open = func() (content.IngestData, error) { return ir.ReadIngest(ctx, ref) }
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.downloads[dgst] = d
	f.changed()
	return d
}

// progressed tells followers that d's ingest now holds written bytes.
func (f *fetcher) progressed(d *download, written int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	d.written = written
	f.changed()
}

// ended tells followers that d is over: committed, or failed with err.
func (f *fetcher) ended(dgst digest.Digest, d *download, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	d.ended, d.err = true, err
	if f.downloads[dgst] == d {
		delete(f.downloads, dgst)
	}
	f.changed()
}

// settled wakes followers after a fetch that recorded a blob without
// downloading it.
func (f *fetcher) settled() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.changed()
}

// Follow returns a reader of blob dgst of ctx's namespace from offset on,
// for a blob a transfer of the namespace is fetching or has fetched: reads
// return bytes as the download writes them, wait when there are none yet,
// and end at the blob's end once it is committed. A download that fails
// fails the reader with its error; a blob no transfer of the namespace is
// fetching, and the namespace lacks, is NotFound. The reader does not
// check the digest (the download's commit does; so may the reader's
// caller).
func (f *fetcher) Follow(ctx context.Context, dgst digest.Digest, offset int64) (io.ReadCloser, error) {
	ns, err := namespace.Required(ctx)
	if err != nil {
		return nil, err
	}
	return &follower{f: f, ctx: ctx, dgst: dgst, key: wantKey{ns, dgst}, off: offset}, nil
}

type follower struct {
	f    *fetcher
	ctx  context.Context
	dgst digest.Digest
	key  wantKey
	off  int64

	dl   *download          // the download read from, once one is
	data content.IngestData // its ingest, open
	blob content.ReaderAt   // the committed blob, once there
}

func (r *follower) Read(p []byte) (int, error) {
	src, limit, whole, err := r.next(r.off)
	if err != nil {
		return 0, err
	}
	if r.off >= limit && whole {
		return 0, io.EOF
	}
	n, err := src.ReadAt(p[:min(int64(len(p)), limit-r.off)], r.off)
	r.off += int64(n)
	if n > 0 {
		return n, nil
	}
	if r.blob == nil {
		return 0, fmt.Errorf("follow %s: read ingest: %w", r.dgst, err)
	}
	return 0, err
}

// next waits until the blob has bytes past off, or has ended at off, and
// returns where they are: src, whose bytes before limit are the blob's,
// and whole when src is the committed blob (limit its size). src is the
// download's open ingest while the blob downloads, then the blob.
func (r *follower) next(off int64) (src io.ReaderAt, limit int64, whole bool, err error) {
	f := r.f
	for {
		if r.blob != nil {
			if off > r.blob.Size() {
				return nil, 0, false, fmt.Errorf("follow %s at %d: past its %d bytes: %w", r.dgst, off, r.blob.Size(), errdefs.ErrOutOfRange)
			}
			return r.blob, r.blob.Size(), true, nil
		}
		f.mu.Lock()
		wake := f.wake
		dl := f.downloads[r.dgst]
		if r.dl != nil && r.dl.ended && r.dl.err != nil {
			err := r.dl.err
			f.mu.Unlock()
			return nil, 0, false, fmt.Errorf("follow %s: %w", r.dgst, err)
		}
		var written int64
		if dl != nil {
			written = dl.written
		}
		wanted := f.wants[r.key] > 0
		f.mu.Unlock()

		if dl != nil && written > off && dl.open != nil {
			if r.dl != dl {
				r.closeData()
				data, err := dl.open()
				if err == nil {
					r.dl, r.data = dl, data
				}
				// An ingest gone meanwhile was committed or failed:
				// the download's end says which.
			}
			if r.dl == dl {
				return r.data, written, false, nil
			}
		}
		if dl == nil {
			ra, err := f.store.ReaderAt(r.ctx, r.dgst)
			if err == nil {
				r.closeData()
				r.blob = ra
				continue
			}
			if !errdefs.IsNotFound(err) {
				return nil, 0, false, err
			}
			if !wanted {
				return nil, 0, false, fmt.Errorf("content %s: not in the namespace and no transfer of it is fetching it: %w", r.dgst, errdefs.ErrNotFound)
			}
		}
		select {
		case <-wake:
		case <-r.ctx.Done():
			return nil, 0, false, context.Cause(r.ctx)
		}
	}
}

func (r *follower) closeData() {
	if r.data != nil {
		r.data.Close()
		r.data = nil
	}
}

func (r *follower) Close() error {
	r.closeData()
	if r.blob != nil {
		return r.blob.Close()
	}
	return nil
}

// Tail follows blob dgst of ctx's namespace as Follow does, but hands over
// where its bytes are rather than the bytes: fn is called with src, whose
// bytes before limit are the blob's, each time more of them are, or src
// changes (the download's ingest, another download's after a retry, the
// committed blob), the last time with whole set (limit is then the blob's
// size). src is valid only during the call. An error of fn ends Tail with
// it; so does a failed download, as a Read of Follow's reader would.
func (f *fetcher) Tail(ctx context.Context, dgst digest.Digest, fn func(src io.ReaderAt, limit int64, whole bool) error) error {
	ns, err := namespace.Required(ctx)
	if err != nil {
		return err
	}
	r := &follower{f: f, ctx: ctx, dgst: dgst, key: wantKey{ns, dgst}}
	defer r.Close()
	var off int64
	for {
		src, limit, whole, err := r.next(off)
		if err != nil {
			return err
		}
		if err := fn(src, limit, whole); err != nil {
			return err
		}
		if whole {
			return nil
		}
		off = limit
	}
}
