// Package contentclient is a client of containerd's Content service
// (contentd, or the gateway) for the services that read and write blobs:
// a reader at any offset over Info and Read, and a writer over the Write
// stream. Give New a connection from services/dial: that forwards the
// namespace and lease of each call's context, so blobs are read and land
// under the caller's, and turns gRPC errors back into errdefs kinds.
//
// Callers keep their own small Provider/Ingester interfaces and adapt
// *Client to them; this package decides nothing for them (an
// AlreadyExists commit, for one, is returned as it is).
package contentclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	api "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc"
)

// Client reads and writes blobs through one connection. It is safe for
// concurrent use; each reader and writer it returns is not.
type Client struct {
	client api.ContentClient
}

// New returns a client of the Content service served on conn.
func New(conn grpc.ClientConnInterface) *Client {
	return &Client{client: api.NewContentClient(conn)}
}

// ReaderAt asks the store for the blob's size (so a missing blob is
// NotFound now, not at the first read) and returns a reader whose every
// ReadAt is one Read call made with ctx. desc.Size is not trusted: the
// store's size is.
func (c *Client) ReaderAt(ctx context.Context, desc ocispec.Descriptor) (*ReaderAt, error) {
	resp, err := c.client.Info(ctx, &api.InfoRequest{Digest: desc.Digest.String()})
	if err != nil {
		return nil, fmt.Errorf("content info %s: %w", desc.Digest, err)
	}
	return &ReaderAt{ctx: ctx, client: c.client, dgst: desc.Digest, size: resp.GetInfo().GetSize()}, nil
}

// ReaderAt reads one blob at any offset. It holds nothing open between
// reads.
type ReaderAt struct {
	ctx    context.Context
	client api.ContentClient
	dgst   digest.Digest
	size   int64
}

// Size is the blob's size in bytes, as the store answered it.
func (ra *ReaderAt) Size() int64 { return ra.size }

// Close does nothing: there is nothing to release.
func (ra *ReaderAt) Close() error { return nil }

// ReadAt reads len(p) bytes at off, or up to the end of the blob with
// io.EOF. Fewer bytes than the store promised, or data at the wrong
// offset, is a DataLoss error.
func (ra *ReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if off >= ra.size {
		return 0, io.EOF
	}
	want := min(int64(len(p)), ra.size-off)
	ctx, cancel := context.WithCancel(ra.ctx)
	defer cancel()
	stream, err := ra.client.Read(ctx, &api.ReadContentRequest{Digest: ra.dgst.String(), Offset: off, Size: want})
	if err != nil {
		return 0, fmt.Errorf("content read %s: %w", ra.dgst, err)
	}
	n := 0
	for int64(n) < want {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return n, fmt.Errorf("content read %s at %d: %w", ra.dgst, off+int64(n), err)
		}
		if resp.GetOffset() != off+int64(n) {
			return n, fmt.Errorf("content read %s: got data at offset %d, want %d: %w", ra.dgst, resp.GetOffset(), off+int64(n), errdefs.ErrDataLoss)
		}
		n += copy(p[n:], resp.GetData())
	}
	switch {
	case int64(n) < want:
		return n, fmt.Errorf("content read %s at %d: store sent %d of %d bytes: %w", ra.dgst, off, n, want, errdefs.ErrDataLoss)
	case n < len(p):
		return n, io.EOF
	}
	return n, nil
}

// ChunkSize is the most data one Write message carries. Every message is
// answered before the next is sent, so writes much smaller than this are
// slow.
const ChunkSize = 1 << 20

// Writer opens a Write stream on ref and starts the ingest over from
// offset 0: whatever a previous writer left under ref is discarded. A ref
// another live writer holds may be an Unavailable error. The writer lives
// until Commit or Close, or until ctx ends.
func (c *Client) Writer(ctx context.Context, ref string) (*Writer, error) {
	ctx, cancel := context.WithCancel(ctx)
	stream, err := c.client.Write(ctx)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("content write %q: %w", ref, err)
	}
	w := &Writer{stream: stream, cancel: cancel, ref: ref}
	if err := w.send(&api.WriteContentRequest{Action: api.WriteAction_WRITE, Ref: ref, Offset: 0}); err != nil {
		w.Close()
		return nil, err
	}
	return w, nil
}

// Writer writes one blob in order, from offset 0.
type Writer struct {
	stream api.Content_WriteClient
	cancel context.CancelFunc
	ref    string
	offset int64
	once   sync.Once
}

// send sends one message and reads its answer: the protocol answers every
// message with the ingest's offset, which must be where this one ends.
func (w *Writer) send(req *api.WriteContentRequest) error {
	if err := w.stream.Send(req); err != nil {
		// io.EOF: the server ended the stream; Recv says why.
		if errors.Is(err, io.EOF) {
			_, err = w.stream.Recv()
		}
		return fmt.Errorf("content write %q: %w", w.ref, err)
	}
	resp, err := w.stream.Recv()
	if err != nil {
		return fmt.Errorf("content write %q: %w", w.ref, err)
	}
	if want := req.GetOffset() + int64(len(req.GetData())); resp.GetOffset() != want {
		return fmt.Errorf("content write %q: store is at offset %d, want %d: %w", w.ref, resp.GetOffset(), want, errdefs.ErrDataLoss)
	}
	return nil
}

// Write sends p in messages of at most ChunkSize bytes, each answered
// before the next, and returns how many bytes the store took.
func (w *Writer) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		chunk := p[:min(len(p), ChunkSize)]
		if err := w.send(&api.WriteContentRequest{Action: api.WriteAction_WRITE, Ref: w.ref, Offset: w.offset, Data: chunk}); err != nil {
			return written, err
		}
		w.offset += int64(len(chunk))
		written += len(chunk)
		p = p[len(chunk):]
	}
	return written, nil
}

// Commit makes the written bytes a blob labelled with labels, after the
// store has checked that they are size bytes digesting to expected. A size
// other than what was written, or a digest mismatch, is a
// FailedPrecondition error and stores nothing; a blob already stored under
// expected is the store's AlreadyExists error, returned as it is. The
// writer is closed afterwards either way.
func (w *Writer) Commit(ctx context.Context, size int64, expected digest.Digest, labels map[string]string) error {
	defer w.Close()
	if size != w.offset {
		return fmt.Errorf("content commit %q: %d bytes written, committing %d: %w", w.ref, w.offset, size, errdefs.ErrFailedPrecondition)
	}
	return w.send(&api.WriteContentRequest{
		Action: api.WriteAction_COMMIT, Ref: w.ref, Offset: w.offset,
		Total: size, Expected: expected.String(), Labels: labels,
	})
}

// Close ends the Write stream; after Commit it does nothing. An
// uncommitted ingest may be left in the store under its ref, to be resumed
// or garbage collected.
func (w *Writer) Close() error {
	w.once.Do(func() {
		w.stream.CloseSend()
		w.cancel()
	})
	return nil
}
