package content

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

// Remote is a Provider and Ingester backed by containerd's Content service
// (contentd) over conn. Use a connection from services/dial, which forwards
// the namespace and lease of each call's context and turns gRPC errors back
// into errdefs kinds.
type Remote struct {
	client api.ContentClient
}

// NewRemote returns a store reading and writing blobs through conn.
func NewRemote(conn grpc.ClientConnInterface) *Remote {
	return &Remote{client: api.NewContentClient(conn)}
}

var _ Provider = (*Remote)(nil)
var _ Ingester = (*Remote)(nil)

// ReaderAt asks the store for the blob's size (so a missing blob is
// NotFound now, not at the first read) and returns a reader whose every
// ReadAt is one Read call.
func (r *Remote) ReaderAt(ctx context.Context, desc ocispec.Descriptor) (ReaderAt, error) {
	resp, err := r.client.Info(ctx, &api.InfoRequest{Digest: desc.Digest.String()})
	if err != nil {
		return nil, fmt.Errorf("content info %s: %w", desc.Digest, err)
	}
	return &remoteReaderAt{ctx: ctx, client: r.client, dgst: desc.Digest, size: resp.GetInfo().GetSize()}, nil
}

type remoteReaderAt struct {
	ctx    context.Context
	client api.ContentClient
	dgst   digest.Digest
	size   int64
}

func (ra *remoteReaderAt) Size() int64  { return ra.size }
func (ra *remoteReaderAt) Close() error { return nil }

func (ra *remoteReaderAt) ReadAt(p []byte, off int64) (int, error) {
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

// writeChunk is the most data one Write message carries.
const writeChunk = 1 << 20

// Writer opens a Write stream on ref and starts the ingest over from
// offset 0.
func (r *Remote) Writer(ctx context.Context, ref string) (Writer, error) {
	ctx, cancel := context.WithCancel(ctx)
	stream, err := r.client.Write(ctx)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("content write %q: %w", ref, err)
	}
	w := &remoteWriter{stream: stream, cancel: cancel, ref: ref}
	if err := w.send(&api.WriteContentRequest{Action: api.WriteAction_WRITE, Ref: ref, Offset: 0}); err != nil {
		cancel()
		return nil, err
	}
	return w, nil
}

type remoteWriter struct {
	stream api.Content_WriteClient
	cancel context.CancelFunc
	ref    string
	offset int64
	once   sync.Once
}

// send sends one message and waits for its answer, as the protocol
// answers every message.
func (w *remoteWriter) send(req *api.WriteContentRequest) error {
	if err := w.stream.Send(req); err != nil {
		if errors.Is(err, io.EOF) {
			_, err = w.stream.Recv()
		}
		return fmt.Errorf("content write %q: %w", w.ref, err)
	}
	resp, err := w.stream.Recv()
	if err != nil {
		return fmt.Errorf("content write %q: %w", w.ref, err)
	}
	if req.GetAction() != api.WriteAction_STAT && resp.GetOffset() != req.GetOffset()+int64(len(req.GetData())) {
		return fmt.Errorf("content write %q: store is at offset %d, want %d: %w", w.ref, resp.GetOffset(), req.GetOffset()+int64(len(req.GetData())), errdefs.ErrDataLoss)
	}
	return nil
}

func (w *remoteWriter) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		chunk := p[:min(len(p), writeChunk)]
		if err := w.send(&api.WriteContentRequest{Action: api.WriteAction_WRITE, Ref: w.ref, Offset: w.offset, Data: chunk}); err != nil {
			return written, err
		}
		w.offset += int64(len(chunk))
		written += len(chunk)
		p = p[len(chunk):]
	}
	return written, nil
}

func (w *remoteWriter) Commit(ctx context.Context, size int64, expected digest.Digest, labels map[string]string) error {
	defer w.Close()
	if size != w.offset {
		return fmt.Errorf("content commit %q: %d bytes written, committing %d: %w", w.ref, w.offset, size, errdefs.ErrFailedPrecondition)
	}
	return w.send(&api.WriteContentRequest{
		Action: api.WriteAction_COMMIT, Ref: w.ref, Offset: w.offset,
		Total: size, Expected: expected.String(), Labels: labels,
	})
}

func (w *remoteWriter) Close() error {
	w.once.Do(func() {
		w.stream.CloseSend()
		w.cancel()
	})
	return nil
}
