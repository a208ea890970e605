package leases

import (
	"context"
	"fmt"

	api "github.com/containerd/containerd/api/services/leases/v1"
	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Service serves containerd's Leases API over a Store. As in containerd,
// leases publish no events.
type Service struct {
	api.UnimplementedLeasesServer
	store     Store
	collector Collector // nil: nothing is collected
}

// Collector is told of every lease deleted: sync asks it to collect before
// the delete answers.
type Collector interface {
	Deleted(ctx context.Context, sync bool) error
}

// NewService returns the Leases service over store.
func NewService(store Store) *Service { return &Service{store: store} }

// SetCollector makes deletes trigger c. Call it before serving.
func (s *Service) SetCollector(c Collector) { s.collector = c }

// Create implements api.LeasesServer.
func (s *Service) Create(ctx context.Context, req *api.CreateRequest) (*api.CreateResponse, error) {
	l, err := s.store.Create(ctx, req.GetID(), req.GetLabels())
	if err != nil {
		return nil, err
	}
	return &api.CreateResponse{Lease: toProto(l)}, nil
}

// Delete implements api.LeasesServer. With Sync what only the lease held
// has been collected when it answers, as in containerd.
func (s *Service) Delete(ctx context.Context, req *api.DeleteRequest) (*emptypb.Empty, error) {
	if err := s.store.Delete(ctx, req.GetID()); err != nil {
		return nil, err
	}
	if s.collector != nil {
		if err := s.collector.Deleted(ctx, req.GetSync()); err != nil {
			return nil, err
		}
	}
	return &emptypb.Empty{}, nil
}

// List implements api.LeasesServer.
func (s *Service) List(ctx context.Context, req *api.ListRequest) (*api.ListResponse, error) {
	list, err := s.store.List(ctx, req.GetFilters()...)
	if err != nil {
		return nil, err
	}
	resp := &api.ListResponse{Leases: make([]*api.Lease, 0, len(list))}
	for _, l := range list {
		resp.Leases = append(resp.Leases, toProto(l))
	}
	return resp, nil
}

// AddResource implements api.LeasesServer.
func (s *Service) AddResource(ctx context.Context, req *api.AddResourceRequest) (*emptypb.Empty, error) {
	r, err := resource(req.GetResource())
	if err != nil {
		return nil, err
	}
	if err := s.store.AddResource(ctx, req.GetID(), r); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

// DeleteResource implements api.LeasesServer.
func (s *Service) DeleteResource(ctx context.Context, req *api.DeleteResourceRequest) (*emptypb.Empty, error) {
	r, err := resource(req.GetResource())
	if err != nil {
		return nil, err
	}
	if err := s.store.DeleteResource(ctx, req.GetID(), r); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

// ListResources implements api.LeasesServer.
func (s *Service) ListResources(ctx context.Context, req *api.ListResourcesRequest) (*api.ListResourcesResponse, error) {
	list, err := s.store.ListResources(ctx, req.GetID())
	if err != nil {
		return nil, err
	}
	resp := &api.ListResourcesResponse{Resources: make([]*api.Resource, 0, len(list))}
	for _, r := range list {
		resp.Resources = append(resp.Resources, &api.Resource{ID: r.ID, Type: r.Type})
	}
	return resp, nil
}

func resource(r *api.Resource) (Resource, error) {
	if r == nil {
		return Resource{}, fmt.Errorf("resource is required: %w", errdefs.ErrInvalidArgument)
	}
	return Resource{ID: r.GetID(), Type: r.GetType()}, nil
}

func toProto(l Lease) *api.Lease {
	return &api.Lease{ID: l.ID, CreatedAt: timestamppb.New(l.CreatedAt), Labels: l.Labels}
}
