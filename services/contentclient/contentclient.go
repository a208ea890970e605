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
	"time"

	api "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
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

// Info is what the store says of one blob.
type Info struct {
	Digest    digest.Digest
	Size      int64
	CreatedAt time.Time
	UpdatedAt time.Time
	Labels    map[string]string
}

// Status is what the store says of one ingest.
type Status struct {
	Ref       string
	Offset    int64
	Total     int64
	Expected  digest.Digest
	StartedAt time.Time
	UpdatedAt time.Time
}

func infoFromProto(in *api.Info) Info {
	return Info{
		Digest:    digest.Digest(in.GetDigest()),
		Size:      in.GetSize(),
		CreatedAt: in.GetCreatedAt().AsTime(),
		UpdatedAt: in.GetUpdatedAt().AsTime(),
		Labels:    in.GetLabels(),
	}
}

func statusFromProto(in *api.Status) Status {
	return Status{
		Ref:       in.GetRef(),
		Offset:    in.GetOffset(),
		Total:     in.GetTotal(),
		Expected:  digest.Digest(in.GetExpected()),
		StartedAt: in.GetStartedAt().AsTime(),
		UpdatedAt: in.GetUpdatedAt().AsTime(),
	}
}

// Info returns the blob dgst of the context's namespace.
func (c *Client) Info(ctx context.Context, dgst digest.Digest) (Info, error) {
	resp, err := c.client.Info(ctx, &api.InfoRequest{Digest: dgst.String()})
	if err != nil {
		return Info{}, fmt.Errorf("content info %s: %w", dgst, err)
	}
	return infoFromProto(resp.GetInfo()), nil
}

// Update changes the labels of blob info.Digest as fieldpaths say
// (containerd's: none replaces them all, "labels.KEY" one) and returns the
// blob as updated.
func (c *Client) Update(ctx context.Context, info Info, fieldpaths ...string) (Info, error) {
	req := &api.UpdateRequest{Info: &api.Info{Digest: info.Digest.String(), Labels: info.Labels}}
	if len(fieldpaths) > 0 {
		req.UpdateMask = &fieldmaskpb.FieldMask{Paths: fieldpaths}
	}
	resp, err := c.client.Update(ctx, req)
	if err != nil {
		return Info{}, fmt.Errorf("content update %s: %w", info.Digest, err)
	}
	return infoFromProto(resp.GetInfo()), nil
}

// Walk calls fn for each blob of the namespace matching any of filters.
// An error from fn ends the walk and is returned.
func (c *Client) Walk(ctx context.Context, fn func(Info) error, filters ...string) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.client.List(ctx, &api.ListContentRequest{Filters: filters})
	if err != nil {
		return fmt.Errorf("content list: %w", err)
	}
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("content list: %w", err)
		}
		for _, info := range resp.GetInfo() {
			if err := fn(infoFromProto(info)); err != nil {
				return err
			}
		}
	}
}

// Delete removes blob dgst from the namespace.
func (c *Client) Delete(ctx context.Context, dgst digest.Digest) error {
	if _, err := c.client.Delete(ctx, &api.DeleteContentRequest{Digest: dgst.String()}); err != nil {
		return fmt.Errorf("content delete %s: %w", dgst, err)
	}
	return nil
}

// Status returns ingest ref of the namespace.
func (c *Client) Status(ctx context.Context, ref string) (Status, error) {
	resp, err := c.client.Status(ctx, &api.StatusRequest{Ref: ref})
	if err != nil {
		return Status{}, fmt.Errorf("content status %q: %w", ref, err)
	}
	return statusFromProto(resp.GetStatus()), nil
}

// ListStatuses returns the namespace's ingests matching any of filters.
func (c *Client) ListStatuses(ctx context.Context, filters ...string) ([]Status, error) {
	resp, err := c.client.ListStatuses(ctx, &api.ListStatusesRequest{Filters: filters})
	if err != nil {
		return nil, fmt.Errorf("content list statuses: %w", err)
	}
	out := make([]Status, 0, len(resp.GetStatuses()))
	for _, st := range resp.GetStatuses() {
		out = append(out, statusFromProto(st))
	}
	return out, nil
}

// Abort removes ingest ref and its data.
func (c *Client) Abort(ctx context.Context, ref string) error {
	if _, err := c.client.Abort(ctx, &api.AbortRequest{Ref: ref}); err != nil {
		return fmt.Errorf("content abort %q: %w", ref, err)
	}
	return nil
}

// Writer opens a Write stream on ref and starts the ingest over from
// offset 0: whatever a previous writer left under ref is discarded. A ref
// another live writer holds may be an Unavailable error. The writer lives
// until Commit or Close, or until ctx ends.
func (c *Client) Writer(ctx context.Context, ref string) (*Writer, error) {
	w, err := c.open(ctx, ref)
	if err != nil {
		return nil, err
	}
	if err := w.send(&api.WriteContentRequest{Action: api.WriteAction_WRITE, Ref: ref, Offset: 0}); err != nil {
		w.Close()
		return nil, err
	}
	return w, nil
}

// ResumeWriter opens a Write stream on ref, as containerd's clients do:
// the store records total and expected (when set), and the writer goes on
// from where a previous writer of ref stopped (Offset of its Status). A
// ref another live writer holds is Unavailable; a blob the namespace
// already has under expected is AlreadyExists.
func (c *Client) ResumeWriter(ctx context.Context, ref string, total int64, expected digest.Digest) (*Writer, error) {
	w, err := c.open(ctx, ref)
	if err != nil {
		return nil, err
	}
	req := &api.WriteContentRequest{Action: api.WriteAction_STAT, Ref: ref, Total: total}
	if expected != "" {
		req.Expected = expected.String()
	}
	resp, err := w.roundTrip(req)
	if err != nil {
		w.Close()
		return nil, err
	}
	w.offset = resp.GetOffset()
	return w, nil
}

func (c *Client) open(ctx context.Context, ref string) (*Writer, error) {
	ctx, cancel := context.WithCancel(ctx)
	stream, err := c.client.Write(ctx)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("content write %q: %w", ref, err)
	}
	return &Writer{stream: stream, cancel: cancel, ref: ref}, nil
}

// Writer writes one blob in order.
type Writer struct {
	stream api.Content_WriteClient
	cancel context.CancelFunc
	ref    string
	offset int64
	once   sync.Once
}

// roundTrip sends one message and reads its answer.
func (w *Writer) roundTrip(req *api.WriteContentRequest) (*api.WriteContentResponse, error) {
	if err := w.stream.Send(req); err != nil {
		// io.EOF: the server ended the stream; Recv says why.
		if errors.Is(err, io.EOF) {
			_, err = w.stream.Recv()
		}
		return nil, fmt.Errorf("content write %q: %w", w.ref, err)
	}
	resp, err := w.stream.Recv()
	if err != nil {
		return nil, fmt.Errorf("content write %q: %w", w.ref, err)
	}
	return resp, nil
}

// send sends one message carrying data and reads its answer: the protocol
// answers every message with the ingest's offset, which must be where
// this one ends.
func (w *Writer) send(req *api.WriteContentRequest) error {
	resp, err := w.roundTrip(req)
	if err != nil {
		return err
	}
	if want := req.GetOffset() + int64(len(req.GetData())); resp.GetOffset() != want {
		return fmt.Errorf("content write %q: store is at offset %d, want %d: %w", w.ref, resp.GetOffset(), want, errdefs.ErrDataLoss)
	}
	return nil
}

// Write sends p in messages of at most ChunkSize bytes, each answered
// before the next, and returns how many bytes the store took. p is not
// kept once Write returns.
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

// Status asks the store for the ingest's state.
func (w *Writer) Status() (Status, error) {
	resp, err := w.roundTrip(&api.WriteContentRequest{Action: api.WriteAction_STAT, Ref: w.ref})
	if err != nil {
		return Status{}, err
	}
	return Status{
		Ref:       w.ref,
		Offset:    resp.GetOffset(),
		Total:     resp.GetTotal(),
		StartedAt: resp.GetStartedAt().AsTime(),
		UpdatedAt: resp.GetUpdatedAt().AsTime(),
	}, nil
}

// Digest asks the store for the digest of the bytes written so far.
func (w *Writer) Digest() (digest.Digest, error) {
	resp, err := w.roundTrip(&api.WriteContentRequest{Action: api.WriteAction_STAT, Ref: w.ref})
	if err != nil {
		return "", err
	}
	return digest.Parse(resp.GetDigest())
}

// Truncate discards what was written; only size 0 is supported.
func (w *Writer) Truncate(size int64) error {
	if size != 0 {
		return fmt.Errorf("content truncate %q to %d: only 0 is supported: %w", w.ref, size, errdefs.ErrInvalidArgument)
	}
	if err := w.send(&api.WriteContentRequest{Action: api.WriteAction_WRITE, Ref: w.ref, Offset: 0}); err != nil {
		return err
	}
	w.offset = 0
	return nil
}

// Commit makes the written bytes a blob labelled with labels, after the
// store has checked that they are size bytes (when size > 0) digesting to
// expected (when set). A size other than what was written, or a digest
// mismatch, is the store's FailedPrecondition error and stores nothing
// (the store drops the ingest); a blob already stored under the digest is
// the store's AlreadyExists error, returned as it is. The writer is closed
// afterwards either way.
func (w *Writer) Commit(ctx context.Context, size int64, expected digest.Digest, labels map[string]string) error {
	defer w.Close()
	req := &api.WriteContentRequest{
		Action: api.WriteAction_COMMIT, Ref: w.ref, Offset: w.offset,
		Total: size, Labels: labels,
	}
	if expected != "" {
		req.Expected = expected.String()
	}
	return w.send(req)
}

// Close ends the Write stream, once the store has let the ref go (so that
// a writer opened right after may take it); after Commit it does nothing.
// An uncommitted ingest may be left in the store under its ref, to be
// resumed or garbage collected.
func (w *Writer) Close() error {
	w.once.Do(func() {
		w.stream.CloseSend()
		// The store ends the stream once its writer is closed.
		for {
			if _, err := w.stream.Recv(); err != nil {
				break
			}
		}
		w.cancel()
	})
	return nil
}
