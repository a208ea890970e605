package namespaces

import (
	"context"
	"fmt"
	"github.com/flotilla/flotilla/services/logging"
	"log/slog"
	"slices"
	"strings"

	eventsapi "github.com/containerd/containerd/api/events"
	api "github.com/containerd/containerd/api/services/namespaces/v1"
	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/flotilla/flotilla/services/events"
	"github.com/flotilla/flotilla/services/filters"
	"github.com/flotilla/flotilla/services/identifiers"
	"github.com/flotilla/flotilla/services/namespace"
)

// Event topics, as containerd names them.
const (
	TopicCreate = "/namespaces/create"
	TopicUpdate = "/namespaces/update"
	TopicDelete = "/namespaces/delete"
)

// Occupants tells what other services hold in namespaces: the containers
// and snapshots kept outside contentd. In containerd every resource's
// namespace is a namespace, so these count as namespaces too.
type Occupants interface {
	// Holds names, as containerd words them ("containers", "snapshots"),
	// the kinds of record still held in namespace ns, which ctx carries as
	// its namespace too; none means the others
	// hold nothing there. An error means it could not be told — a service
	// unreachable or failing — and names that service.
	Holds(ctx context.Context, ns string) ([]string, error)
	// Namespaces names every namespace in which the others hold a record.
	// With an error it still returns what the services that did answer
	// said; the error names those that did not.
	Namespaces(ctx context.Context) ([]string, error)
}

// Service serves containerd's Namespaces API over a Store, publishing an
// event for every change.
type Service struct {
	api.UnimplementedNamespacesServer
	store     Store
	occupants Occupants
	publisher events.Publisher
	log       *slog.Logger
}

// NewService returns the Namespaces service over store, publishing to
// publisher and logging failed publications to log (nil: slog.Default()).
// Before deleting a namespace it asks occupants whether other services
// still hold anything there; nil occupants means no one else is asked.
func NewService(store Store, occupants Occupants, publisher events.Publisher, log *slog.Logger) *Service {
	if log == nil {
		log = slog.Default()
	}
	return &Service{store: store, occupants: occupants, publisher: publisher, log: log}
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
//
// It lists contentd's namespaces and those in which only other services
// hold records (with no labels, since labels live here). A service that
// cannot say is logged and left out rather than failing the whole list:
// tools walk namespaces to find workloads, and a partial list serves them
// better than none.
func (s *Service) List(ctx context.Context, req *api.ListNamespacesRequest) (*api.ListNamespacesResponse, error) {
	filter, err := filters.Parse(req.GetFilter())
	if err != nil {
		return nil, err
	}
	list, err := s.store.List(req.GetFilter())
	if err != nil {
		return nil, err
	}
	if s.occupants != nil {
		others, err := s.occupants.Namespaces(ctx)
		if err != nil {
			logging.Or(ctx, s.log).Warn("namespaces list may miss namespaces held outside contentd", "error", err)
		}
		known := make(map[string]bool, len(list))
		for _, ns := range list {
			known[ns.Name] = true
		}
		for _, name := range others {
			ns := Namespace{Name: name, Labels: map[string]string{}}
			if known[name] || identifiers.Validate(name) != nil || !filter.Match(adaptor(ns)) {
				continue
			}
			known[name] = true
			list = append(list, ns)
		}
		slices.SortFunc(list, func(a, b Namespace) int { return strings.Compare(a.Name, b.Name) })
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
//
// The namespace must be empty in contentd and, when occupants are set, in
// the services they ask: otherwise FailedPrecondition naming everything it
// still has, or Unavailable when a service cannot say.
func (s *Service) Delete(ctx context.Context, req *api.DeleteNamespaceRequest) (*emptypb.Empty, error) {
	if err := s.checkOccupants(ctx, req.GetName()); err != nil {
		return nil, err
	}
	if err := s.store.Delete(req.GetName()); err != nil {
		return nil, err
	}
	s.publish(ctx, req.GetName(), TopicDelete, &eventsapi.NamespaceDelete{Name: req.GetName()})
	return &emptypb.Empty{}, nil
}

// checkOccupants fails unless the services behind s.occupants hold nothing
// in namespace name. Its FailedPrecondition names contentd's own holdings
// too, so the caller hears everything at once. A namespace unknown to
// contentd may still be held by the others (they made it, as in
// containerd a container makes one): then it is FailedPrecondition too,
// and NotFound only when no one holds anything there.
func (s *Service) checkOccupants(ctx context.Context, name string) error {
	if s.occupants == nil {
		return nil
	}
	own, err := s.store.Holdings(name)
	missing := errdefs.IsNotFound(err)
	if err != nil && !missing {
		return err
	}
	others, err := s.occupants.Holds(namespace.WithNamespace(ctx, name), name)
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return fmt.Errorf("namespace %q not deleted: %w", name, ctxErr)
		}
		// %v: whatever kind the peer answered, the caller is told that
		// emptiness could not be checked, not the peer's own reason.
		return fmt.Errorf("namespace %q not deleted, cannot tell whether it is empty: %v: %w",
			name, err, errdefs.ErrUnavailable)
	}
	if len(others) == 0 {
		if missing {
			return fmt.Errorf("namespace %q: %w", name, errdefs.ErrNotFound)
		}
		return nil
	}
	held := slices.Compact(slices.Sorted(slices.Values(append(own, others...))))
	return fmt.Errorf("namespace %q must be empty, but it still has %s: %w",
		name, strings.Join(held, ", "), errdefs.ErrFailedPrecondition)
}

// publish hands an event to the publisher in the caller's namespace, or in
// the namespace changed when the caller named none.
func (s *Service) publish(ctx context.Context, changed, topic string, event any) {
	if _, ok := namespace.FromContext(ctx); !ok {
		ctx = namespace.WithNamespace(ctx, changed)
	}
	if err := s.publisher.Publish(ctx, topic, event); err != nil {
		logging.Or(ctx, s.log).Warn("publish event", "topic", topic, "namespace", changed, "error", err)
	}
}

func toProto(ns Namespace) *api.Namespace {
	return &api.Namespace{Name: ns.Name, Labels: ns.Labels}
}
