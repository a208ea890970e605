package checkpoint

import (
	"context"

	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc"

	"github.com/flotilla/flotilla/services/contentclient"
)

// Remote is an Ingester over containerd's Content service (contentd, or
// the gateway), through services/contentclient. Give it a connection from
// services/dial: that forwards the namespace and lease of each call's
// context, so blobs land under the caller's lease, and turns gRPC errors
// back into errdefs kinds.
type Remote struct {
	client *contentclient.Client
}

var _ Ingester = (*Remote)(nil)

// NewRemote returns an Ingester writing through conn.
func NewRemote(conn grpc.ClientConnInterface) *Remote {
	return &Remote{client: contentclient.New(conn)}
}

// Writer opens a Write stream on ref and starts the ingest at offset 0.
func (r *Remote) Writer(ctx context.Context, ref string) (Writer, error) {
	w, err := r.client.Writer(ctx, ref)
	if err != nil {
		return nil, err
	}
	return remoteWriter{w}, nil
}

// remoteWriter commits checkpoint blobs without labels: the lease of the
// caller's context keeps them until the client labels or references them.
type remoteWriter struct {
	*contentclient.Writer
}

func (w remoteWriter) Commit(ctx context.Context, size int64, expected digest.Digest) error {
	return w.Writer.Commit(ctx, size, expected, nil)
}
