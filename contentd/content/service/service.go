// Package service serves a content.Store as containerd's Content API
// (containerd.services.content.v1.Content), following containerd's wire
// protocol so that ctr, nerdctl and the containerd client work unchanged.
// It is a thin adapter: the store does the work and classifies errors with
// errdefs kinds, which the kit's server converts to gRPC codes.
package service

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	eventsapi "github.com/containerd/containerd/api/events"
	api "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/flotilla/flotilla/contentd/content"
	"github.com/flotilla/flotilla/services/contentclient"
	"github.com/flotilla/flotilla/services/events"
)

// Topic of the event published when a blob is deleted, as in containerd.
const TopicDelete = "/content/delete"

const (
	// readChunk is the most data one Read response carries.
	readChunk = 1 << 20
	// listBatch is how many Infos one List response carries.
	listBatch = 100
)

var readBuffers = sync.Pool{New: func() any { b := make([]byte, readChunk); return &b }}

// Service is the Content API over a store.
type Service struct {
	api.UnimplementedContentServer
	store    content.Store
	pub      events.Publisher
	follower Follower
}

// Follower reads blobs that are still being fetched.
type Follower interface {
	// Follow returns a reader of blob dgst of the context's namespace from
	// offset on, while a transfer of the namespace fetches it: reads wait
	// for bytes as they arrive and the reader ends at the blob's end. A
	// blob nobody fetches for the namespace is NotFound.
	Follow(ctx context.Context, dgst digest.Digest, offset int64) (io.ReadCloser, error)
}

// Option changes a Service.
type Option func(*Service)

// WithFollower serves Reads that ask to follow (contentclient.FollowKey)
// a blob the namespace does not have yet through f.
func WithFollower(f Follower) Option { return func(s *Service) { s.follower = f } }

// New returns the Content service of store, announcing deletions to pub.
func New(store content.Store, pub events.Publisher, opts ...Option) *Service {
	if pub == nil {
		pub = events.Discard{}
	}
	s := &Service{store: store, pub: pub}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Register serves s on srv.
func (s *Service) Register(srv *grpc.Server) { api.RegisterContentServer(srv, s) }

func parseDigest(s string) (digest.Digest, error) {
	d, err := digest.Parse(s)
	if err != nil {
		return "", fmt.Errorf("digest %q: %v: %w", s, err, errdefs.ErrInvalidArgument)
	}
	return d, nil
}

func infoToProto(info content.Info) *api.Info {
	return &api.Info{
		Digest:    info.Digest.String(),
		Size:      info.Size,
		CreatedAt: timestamppb.New(info.CreatedAt),
		UpdatedAt: timestamppb.New(info.UpdatedAt),
		Labels:    info.Labels,
	}
}

func statusToProto(st content.Status) *api.Status {
	return &api.Status{
		StartedAt: timestamppb.New(st.StartedAt),
		UpdatedAt: timestamppb.New(st.UpdatedAt),
		Ref:       st.Ref,
		Offset:    st.Offset,
		Total:     st.Total,
		Expected:  st.Expected.String(),
	}
}

// Info implements api.ContentServer.
func (s *Service) Info(ctx context.Context, req *api.InfoRequest) (*api.InfoResponse, error) {
	dgst, err := parseDigest(req.GetDigest())
	if err != nil {
		return nil, err
	}
	info, err := s.store.Info(ctx, dgst)
	if err != nil {
		return nil, err
	}
	return &api.InfoResponse{Info: infoToProto(info)}, nil
}

// Update implements api.ContentServer.
func (s *Service) Update(ctx context.Context, req *api.UpdateRequest) (*api.UpdateResponse, error) {
	if req.GetInfo() == nil {
		return nil, fmt.Errorf("update: info is required: %w", errdefs.ErrInvalidArgument)
	}
	dgst, err := parseDigest(req.GetInfo().GetDigest())
	if err != nil {
		return nil, err
	}
	info, err := s.store.Update(ctx, content.Info{Digest: dgst, Labels: req.GetInfo().GetLabels()},
		req.GetUpdateMask().GetPaths()...)
	if err != nil {
		return nil, err
	}
	return &api.UpdateResponse{Info: infoToProto(info)}, nil
}

// List implements api.ContentServer.
func (s *Service) List(req *api.ListContentRequest, stream api.Content_ListServer) error {
	var batch []*api.Info
	err := s.store.Walk(stream.Context(), func(info content.Info) error {
		batch = append(batch, infoToProto(info))
		if len(batch) < listBatch {
			return nil
		}
		err := stream.Send(&api.ListContentResponse{Info: batch})
		batch = nil
		return err
	}, req.GetFilters()...)
	if err != nil {
		return err
	}
	if len(batch) > 0 {
		return stream.Send(&api.ListContentResponse{Info: batch})
	}
	return nil
}

// Delete implements api.ContentServer.
func (s *Service) Delete(ctx context.Context, req *api.DeleteContentRequest) (*emptypb.Empty, error) {
	dgst, err := parseDigest(req.GetDigest())
	if err != nil {
		return nil, err
	}
	if err := s.store.Delete(ctx, dgst); err != nil {
		return nil, err
	}
	if err := s.pub.Publish(ctx, TopicDelete, &eventsapi.ContentDelete{Digest: dgst.String()}); err != nil {
		return nil, fmt.Errorf("content %s deleted, but publishing the event failed: %w", dgst, err)
	}
	return &emptypb.Empty{}, nil
}

// Read implements api.ContentServer: it streams the requested range in
// chunks of at most 1 MiB, each message carrying its offset. A size of 0
// (or one running past the end) reads to the end; an offset past the end
// is OutOfRange.
func (s *Service) Read(req *api.ReadContentRequest, stream api.Content_ReadServer) error {
	dgst, err := parseDigest(req.GetDigest())
	if err != nil {
		return err
	}
	ra, err := s.store.ReaderAt(stream.Context(), dgst)
	if errdefs.IsNotFound(err) && s.follower != nil && contentclient.FollowAsked(stream.Context()) {
		return s.readFollowing(req, stream, dgst)
	}
	if err != nil {
		return err
	}
	defer ra.Close()

	offset, size := max(req.GetOffset(), 0), ra.Size()
	if offset > size {
		return fmt.Errorf("read %s at %d: past object length %d bytes: %w", dgst, offset, size, errdefs.ErrOutOfRange)
	}
	n := req.GetSize()
	if n <= 0 || offset+n > size {
		n = size - offset
	}
	bp := readBuffers.Get().(*[]byte)
	defer readBuffers.Put(bp)
	for n > 0 {
		buf := (*bp)[:min(n, int64(len(*bp)))]
		k, err := ra.ReadAt(buf, offset)
		if k < len(buf) {
			if err == nil || errors.Is(err, io.EOF) {
				err = fmt.Errorf("blob shorter than its recorded %d bytes: %w", size, errdefs.ErrDataLoss)
			}
			return fmt.Errorf("read %s at %d: %w", dgst, offset, err)
		}
		// SendMsg encodes the message before returning, so buf is reusable.
		if err := stream.Send(&api.ReadContentResponse{Offset: offset, Data: buf}); err != nil {
			return err
		}
		offset += int64(k)
		n -= int64(k)
	}
	return nil
}

// readFollowing answers a Read of a blob still being fetched, each chunk as
// it arrives.
func (s *Service) readFollowing(req *api.ReadContentRequest, stream api.Content_ReadServer, dgst digest.Digest) error {
	offset := max(req.GetOffset(), 0)
	r, err := s.follower.Follow(stream.Context(), dgst, offset)
	if err != nil {
		return err
	}
	defer r.Close()
	n := req.GetSize() // 0: to the end
	bp := readBuffers.Get().(*[]byte)
	defer readBuffers.Put(bp)
	for req.GetSize() <= 0 || n > 0 {
		buf := *bp
		if req.GetSize() > 0 {
			buf = buf[:min(n, int64(len(buf)))]
		}
		k, err := r.Read(buf)
		if k > 0 {
			if err := stream.Send(&api.ReadContentResponse{Offset: offset, Data: buf[:k]}); err != nil {
				return err
			}
			offset += int64(k)
			n -= int64(k)
		}
		if errors.Is(err, io.EOF) {
			if req.GetSize() > 0 && n > 0 {
				return fmt.Errorf("read %s at %d: past its end: %w", dgst, offset, errdefs.ErrOutOfRange)
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("read %s at %d: %w", dgst, offset, err)
		}
	}
	return nil
}

// Status implements api.ContentServer.
func (s *Service) Status(ctx context.Context, req *api.StatusRequest) (*api.StatusResponse, error) {
	st, err := s.store.Status(ctx, req.GetRef())
	if err != nil {
		return nil, err
	}
	return &api.StatusResponse{Status: statusToProto(st)}, nil
}

// ListStatuses implements api.ContentServer.
func (s *Service) ListStatuses(ctx context.Context, req *api.ListStatusesRequest) (*api.ListStatusesResponse, error) {
	sts, err := s.store.ListStatuses(ctx, req.GetFilters()...)
	if err != nil {
		return nil, err
	}
	resp := &api.ListStatusesResponse{}
	for _, st := range sts {
		resp.Statuses = append(resp.Statuses, statusToProto(st))
	}
	return resp, nil
}

// Abort implements api.ContentServer.
func (s *Service) Abort(ctx context.Context, req *api.AbortRequest) (*emptypb.Empty, error) {
	if err := s.store.Abort(ctx, req.GetRef()); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}
