// Package holdings serves Flotilla's Holdings API (flotilla.namespaces.v1)
// for a daemon that keeps records per namespace outside contentd, so that
// contentd's Namespaces API lists those namespaces as containerd does.
package holdings

import (
	"context"
	"slices"

	"google.golang.org/grpc"

	namespacesv1 "github.com/flotilla/flotilla/proto/namespaces/v1"
)

// Lister names, for every namespace in which a daemon holds at least one
// record, the kinds of record held there as containerd words them
// ("containers", "snapshots"). Namespaces holding nothing are absent.
type Lister func(ctx context.Context) (map[string][]string, error)

// Service is the Holdings API over a Lister.
type Service struct {
	namespacesv1.UnimplementedHoldingsServer
	list Lister
}

// New returns the Holdings service answering from list.
func New(list Lister) *Service { return &Service{list: list} }

// Register registers the service on srv.
func (s *Service) Register(srv *grpc.Server) { namespacesv1.RegisterHoldingsServer(srv, s) }

// List implements namespacesv1.HoldingsServer: sorted by namespace, kinds
// sorted and each named once.
func (s *Service) List(ctx context.Context, _ *namespacesv1.ListHoldingsRequest) (*namespacesv1.ListHoldingsResponse, error) {
	held, err := s.list(ctx)
	if err != nil {
		return nil, err
	}
	resp := &namespacesv1.ListHoldingsResponse{}
	for ns, kinds := range held {
		if len(kinds) == 0 {
			continue
		}
		resp.Holdings = append(resp.Holdings, &namespacesv1.Holding{
			Namespace: ns,
			Kinds:     slices.Compact(slices.Sorted(slices.Values(kinds))),
		})
	}
	slices.SortFunc(resp.Holdings, func(a, b *namespacesv1.Holding) int {
		switch {
		case a.Namespace < b.Namespace:
			return -1
		case a.Namespace > b.Namespace:
			return 1
		}
		return 0
	})
	return resp, nil
}
