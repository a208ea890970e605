package content

import (
	"context"
	"errors"
	"io"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc"

	"github.com/flotilla/flotilla/services/contentclient"
)

// Remote is a Provider and Ingester backed by containerd's Content service
// (contentd) over conn, through services/contentclient. Use a connection
// from services/dial, which forwards the namespace and lease of each
// call's context and turns gRPC errors back into errdefs kinds.
type Remote struct {
	client  *contentclient.Client
	handoff *contentclient.Handoff // nil: every read is a Content.Read
}

// NewRemote returns a store reading and writing blobs through conn.
func NewRemote(conn grpc.ClientConnInterface) *Remote {
	return &Remote{client: contentclient.New(conn)}
}

// WithHandoff has Stream read blobs from the files contentd hands over on
// h (when contentd is on this host), and through Content.Read only when
// nothing serves h.
func (r *Remote) WithHandoff(h *contentclient.Handoff) *Remote {
	r.handoff = h
	return r
}

var _ Provider = (*Remote)(nil)
var _ Streamer = (*Remote)(nil)
var _ Ingester = (*Remote)(nil)

// ReaderAt asks the store for the blob's size, so a missing blob is
// NotFound now; every ReadAt of the reader is one Read call.
func (r *Remote) ReaderAt(ctx context.Context, desc ocispec.Descriptor) (ReaderAt, error) {
	ra, err := r.client.ReaderAt(ctx, desc)
	if err != nil {
		return nil, err
	}
	return ra, nil
}

// Stream reads the blob from the file contentd hands over (WithHandoff),
// else through one Read call; a context marked with
// contentclient.WithFollow follows a blob contentd is still fetching.
func (r *Remote) Stream(ctx context.Context, desc ocispec.Descriptor) (io.ReadCloser, error) {
	if r.handoff != nil {
		rc, err := r.handoff.Open(ctx, desc.Digest)
		if !errors.Is(err, contentclient.ErrNoHandoff) {
			return rc, err
		}
	}
	return r.client.Reader(ctx, desc.Digest)
}

// Writer opens a Write stream on ref and starts the ingest over from
// offset 0.
func (r *Remote) Writer(ctx context.Context, ref string) (Writer, error) {
	w, err := r.client.Writer(ctx, ref)
	if err != nil {
		return nil, err
	}
	return w, nil
}
