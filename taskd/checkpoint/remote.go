package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	api "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc"
)

// Remote is an Ingester over containerd's Content service (contentd, or
// the gateway). Give it a connection from services/dial: that forwards the
// namespace and lease of each call's context, so blobs land under the
// caller's lease, and turns gRPC errors back into errdefs kinds.
type Remote struct {
	client api.ContentClient
}

var _ Ingester = (*Remote)(nil)

// NewRemote returns an Ingester writing through conn.
func NewRemote(conn grpc.ClientConnInterface) *Remote {
	return &Remote{client: api.NewContentClient(conn)}
}

// Writer opens a Write stream on ref and starts the ingest at offset 0.
func (r *Remote) Writer(ctx context.Context, ref string) (Writer, error) {
	ctx, cancel := context.WithCancel(ctx)
	stream, err := r.client.Write(ctx)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("content write %q: %w", ref, err)
	}
	w := &remoteWriter{stream: stream, cancel: cancel, ref: ref}
	if err := w.send(&api.WriteContentRequest{Action: api.WriteAction_WRITE, Ref: ref}); err != nil {
		w.Close()
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

// send sends one message and reads its answer: the protocol answers every
// message with the ingest's offset, which must be where this one ends.
func (w *remoteWriter) send(req *api.WriteContentRequest) error {
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

// Write sends p as one message.
func (w *remoteWriter) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if err := w.send(&api.WriteContentRequest{Action: api.WriteAction_WRITE, Ref: w.ref, Offset: w.offset, Data: p}); err != nil {
		return 0, err
	}
	w.offset += int64(len(p))
	return len(p), nil
}

func (w *remoteWriter) Commit(ctx context.Context, size int64, expected digest.Digest) error {
	defer w.Close()
	if size != w.offset {
		return fmt.Errorf("content commit %q: %d bytes written, committing %d: %w", w.ref, w.offset, size, errdefs.ErrFailedPrecondition)
	}
	return w.send(&api.WriteContentRequest{
		Action: api.WriteAction_COMMIT, Ref: w.ref, Offset: w.offset,
		Total: size, Expected: expected.String(),
	})
}

func (w *remoteWriter) Close() error {
	w.once.Do(func() {
		w.stream.CloseSend()
		w.cancel()
	})
	return nil
}
