package namespaces

import (
	"context"
	"fmt"
	"log/slog"

	eventsapi "github.com/containerd/containerd/api/events"
	api "github.com/containerd/containerd/api/services/namespaces/v1"
	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/flotilla/flotilla/services/events"
	"github.com/flotilla/flotilla/services/namespace"
)

// Event topics, as containerd names them.
const (
	TopicCreate = "/namespaces/create"
	TopicUpdate = "/namespaces/update"
	TopicDelete = "/namespaces/delete"
)

// Service serves containerd's Namespaces API over a Store, publishing an
// event for every change.
type Service struct {
	api.UnimplementedNamespacesServer
	store     Store
	publisher events.Publisher
	log       *slog.Logger
}

// NewService returns the Namespaces service over store, publishing to
// publisher and logging failed publications to log (nil: slog.Default()).
func NewService(store Store, publisher events.Publisher, log *slog.Logger) *Service {
	if log == nil {
		log = slog.Default()
	}
	return &Service{store: store, publisher: publisher, log: log}
}

// Get implements api.NamespacesServer.
func (s *Service) Get(_ context.Context, req *api.GetNamespaceRequest) (*api.GetNamespaceResponse, error) {
	ns, err := s.store.Get(req.GetName())
	if err != nil {
		return nil, err
	}
	return &api.GetNamespaceResponse{Namespace: toProto(ns)}, nil
}

// List implements api.NamespacesServer.
func (s *Service) List(_ context.Context, req *api.ListNamespacesRequest) (*api.ListNamespacesResponse, error) {
	list, err := s.store.List(req.GetFilter())
	if err != nil {
		return nil, err
	}
	resp := &api.ListNamespacesResponse{Namespaces: make([]*api.Namespace, 0, len(list))}
	for _, ns := range list {
		resp.Namespaces = append(resp.Namespaces, toProto(ns))
	}
	return resp, nil
}

// Create implements api.NamespacesServer.
func (s *Service) Create(ctx context.Context, req *api.CreateNamespaceRequest) (*api.CreateNamespaceResponse, error) {
	if req.GetNamespace() == nil {
		return nil, fmt.Errorf("namespace is required: %w", errdefs.ErrInvalidArgument)
	}
	ns, err := s.store.Create(req.GetNamespace().GetName(), req.GetNamespace().GetLabels())
	if err != nil {
		return nil, err
	}
	s.publish(ctx, ns.Name, TopicCreate, &eventsapi.NamespaceCreate{Name: ns.Name, Labels: ns.Labels})
	return &api.CreateNamespaceResponse{Namespace: toProto(ns)}, nil
}

// Update implements api.NamespacesServer.
func (s *Service) Update(ctx context.Context, req *api.UpdateNamespaceRequest) (*api.UpdateNamespaceResponse, error) {
	if req.GetNamespace() == nil {
		return nil, fmt.Errorf("namespace is required: %w", errdefs.ErrInvalidArgument)
	}
	ns, err := s.store.Update(Namespace{Name: req.GetNamespace().GetName(), Labels: req.GetNamespace().GetLabels()},
		req.GetUpdateMask().GetPaths()...)
	if err != nil {
		return nil, err
	}
	s.publish(ctx, ns.Name, TopicUpdate, &eventsapi.NamespaceUpdate{Name: ns.Name, Labels: ns.Labels})
	return &api.UpdateNamespaceResponse{Namespace: toProto(ns)}, nil
}

// Delete implements api.NamespacesServer.
func (s *Service) Delete(ctx context.Context, req *api.DeleteNamespaceRequest) (*emptypb.Empty, error) {
	if err := s.store.Delete(req.GetName()); err != nil {
		return nil, err
	}
	s.publish(ctx, req.GetName(), TopicDelete, &eventsapi.NamespaceDelete{Name: req.GetName()})
	return &emptypb.Empty{}, nil
}

// publish hands an event to the publisher in the caller's namespace, or in
// the namespace changed when the caller named none.
func (s *Service) publish(ctx context.Context, changed, topic string, event any) {
	if _, ok := namespace.FromContext(ctx); !ok {
		ctx = namespace.WithNamespace(ctx, changed)
	}
	if err := s.publisher.Publish(ctx, topic, event); err != nil {
		s.log.Warn("publish event", "topic", topic, "namespace", changed, "error", err)
	}
}

func toProto(ns Namespace) *api.Namespace {
	return &api.Namespace{Name: ns.Name, Labels: ns.Labels}
}
