package gc

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc"

	contentdv1 "github.com/flotilla/flotilla/proto/contentd/v1"
)

// Service serves flotilla.contentd.v1.GC: collections on demand.
type Service struct {
	contentdv1.UnimplementedGCServer
	collector *Collector
	nodes     *Fleet // nil: no service registry, no nodes to forget
}

// NewService returns the GC service over collector and the fleet of nodes
// it collects across (nil without a service registry).
func NewService(collector *Collector, nodes *Fleet) *Service {
	return &Service{collector: collector, nodes: nodes}
}

// Register registers the service on srv.
func (s *Service) Register(srv *grpc.Server) { contentdv1.RegisterGCServer(srv, s) }

// Collect implements contentdv1.GCServer.
func (s *Service) Collect(ctx context.Context, _ *contentdv1.CollectRequest) (*contentdv1.CollectResponse, error) {
	res, err := s.collector.Collect(ctx)
	if err != nil {
		return nil, err
	}
	resp := &contentdv1.CollectResponse{Bytes: res.Bytes, DurationNs: res.Duration.Nanoseconds(), Marked: int64(res.Marked)}
	for _, r := range res.Removed {
		resp.Removed = append(resp.Removed, &contentdv1.Removed{Store: r.Store, Kind: r.Kind, Namespace: r.Namespace, Snapshotter: r.Snapshotter, Id: r.ID})
	}
	slices.SortFunc(resp.Removed, func(a, b *contentdv1.Removed) int {
		return strings.Compare(a.Store+a.Kind+a.Namespace+a.Snapshotter+a.Id, b.Store+b.Kind+b.Namespace+b.Snapshotter+b.Id)
	})
	return resp, nil
}

// Schedule implements contentdv1.GCServer.
func (s *Service) Schedule(ctx context.Context, _ *contentdv1.ScheduleRequest) (*contentdv1.ScheduleResponse, error) {
	if err := s.collector.Deleted(ctx, false); err != nil {
		return nil, err
	}
	return &contentdv1.ScheduleResponse{}, nil
}

// ForgetNode implements contentdv1.GCServer.
func (s *Service) ForgetNode(ctx context.Context, req *contentdv1.ForgetNodeRequest) (*contentdv1.ForgetNodeResponse, error) {
	if req.GetNode() == "" {
		return nil, fmt.Errorf("forget node: a node name is required: %w", errdefs.ErrInvalidArgument)
	}
	if s.nodes == nil {
		return nil, fmt.Errorf("forget node %s: contentd has no service registry (--discovery), so collections know no nodes: %w", req.GetNode(), errdefs.ErrNotImplemented)
	}
	if err := s.nodes.Forget(ctx, req.GetNode()); err != nil {
		return nil, err
	}
	return &contentdv1.ForgetNodeResponse{}, nil
}
