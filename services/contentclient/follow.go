package contentclient

import (
	"context"
	"errors"
	"fmt"
	"io"

	api "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/errdefs"
	"github.com/flotilla/flotilla/services/server"
	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc/metadata"
)

// FollowKey is the gRPC metadata key of a Read (or of a call that leads
// to Reads, such as Diff.Apply) asking contentd to follow a blob that a
// transfer of the namespace is still fetching: the Read streams its bytes
// as they arrive instead of answering NotFound. It is Flotilla's own
// extension of the Content API; containerd ignores it.
const FollowKey = "flotilla-content-follow"

// WithFollow marks ctx's outgoing calls as asking to follow blobs being
// fetched.
func WithFollow(ctx context.Context) context.Context {
	if md, ok := metadata.FromOutgoingContext(ctx); ok && len(md.Get(FollowKey)) > 0 {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, FollowKey, "1")
}

// FollowAsked reports whether the call in ctx (a server's incoming
// context) asks to follow blobs being fetched.
func FollowAsked(ctx context.Context) bool {
	md, ok := metadata.FromIncomingContext(ctx)
	return ok && len(md.Get(FollowKey)) > 0
}

// Reader reads blob dgst from its start to its end through one Read call,
// in order, each message as it arrives: with WithFollow, a blob still
// being fetched is read as it comes. Data out of order is a DataLoss
// error; the caller checks the length and digest of what it read. Close
// ends the call.
func (c *Client) Reader(ctx context.Context, dgst digest.Digest) (io.ReadCloser, error) {
	ctx, cancel := context.WithCancel(ctx)
	stream, err := c.client.Read(ctx, &api.ReadContentRequest{Digest: dgst.String()})
	if err != nil {
		cancel()
		return nil, fmt.Errorf("content read %s: %w", dgst, err)
	}
	return &streamReader{stream: stream, cancel: cancel, dgst: dgst}, nil
}

type streamReader struct {
	stream api.Content_ReadClient
	cancel context.CancelFunc
	dgst   digest.Digest
	off    int64
	msg    *readResponse // the message cur is part of, until it is read
	cur    []byte
	err    error
}

func (r *streamReader) Read(p []byte) (int, error) {
	for len(r.cur) == 0 {
		r.msg.Release()
		r.msg = nil
		if r.err != nil {
			return 0, r.err
		}
		resp := new(readResponse)
		err := r.stream.RecvMsg(resp)
		if errors.Is(err, io.EOF) {
			r.err = io.EOF
			continue
		}
		if err != nil {
			r.err = fmt.Errorf("content read %s at %d: %w", r.dgst, r.off, err)
			continue
		}
		r.msg = resp
		if resp.GetOffset() != r.off {
			r.err = fmt.Errorf("content read %s: got data at offset %d, want %d: %w", r.dgst, resp.GetOffset(), r.off, errdefs.ErrDataLoss)
			continue
		}
		r.cur = resp.GetData()
		r.off += int64(len(r.cur))
	}
	n := copy(p, r.cur)
	r.cur = r.cur[n:]
	return n, nil
}

func (r *streamReader) Close() error {
	r.cancel()
	r.msg.Release()
	r.msg, r.cur = nil, nil
	return nil
}

// readResponse is a ReadContentResponse whose data, received through the
// kit's codec (server.OwnedUnmarshaler), stays in the buffer gRPC gathered
// the message in: the reader copies it once, into the caller's buffer,
// instead of twice. Through another codec it is decoded as usual.
type readResponse struct {
	api.ReadContentResponse
	release func()
}

// readDataField is ReadContentResponse's data field number.
const readDataField = 2

// UnmarshalOwned decodes the message from buf, which it keeps until
// Release; the data field refers to buf.
func (r *readResponse) UnmarshalOwned(buf []byte, release func()) error {
	r.release = release
	data, err := server.UnmarshalReferring(buf, &r.ReadContentResponse, readDataField)
	if err != nil {
		return fmt.Errorf("read response: %w", err)
	}
	r.Data = data
	return nil
}

// Release gives the message's buffer back; its data is gone after.
func (r *readResponse) Release() {
	if r != nil && r.release != nil {
		r.release()
		r.release = nil
		r.Data = nil
	}
}
