package containers

import (
	"context"
	"fmt"
	"github.com/flotilla/flotilla/services/logging"
	"log/slog"

	eventsapi "github.com/containerd/containerd/api/events"
	api "github.com/containerd/containerd/api/services/containers/v1"
	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/flotilla/flotilla/services/events"
)

// Event topics, as containerd names them.
const (
	TopicCreate = "/containers/create"
	TopicUpdate = "/containers/update"
	TopicDelete = "/containers/delete"
)

// TaskChecker says whether a container has a task, running or not.
type TaskChecker interface {
	// HasTask reports whether container id, in the namespace carried by
	// ctx, has a task that has not been deleted.
	HasTask(ctx context.Context, id string) bool
}

// Service serves containerd's Containers API over a Store, publishing an
// event for every change.
type Service struct {
	api.UnimplementedContainersServer
	store     Store
	tasks     TaskChecker
	publisher events.Publisher
	log       *slog.Logger
	deleted   func(context.Context) // nil: nobody is told of deletions
}

// OnDelete has deleted called after each container is deleted, to schedule
// the garbage collection that frees its snapshot. Call it before serving.
func (s *Service) OnDelete(deleted func(context.Context)) { s.deleted = deleted }

// NewService returns the Containers service over store. A container whose
// task tasks says exists cannot be deleted (FailedPrecondition), as
// containerd's client refuses it; tasks may be nil.
func NewService(store Store, tasks TaskChecker, publisher events.Publisher, log *slog.Logger) *Service {
	if log == nil {
		log = slog.Default()
	}
	if publisher == nil {
		publisher = events.Discard{}
	}
	return &Service{store: store, tasks: tasks, publisher: publisher, log: log}
}

// Get implements api.ContainersServer.
func (s *Service) Get(ctx context.Context, req *api.GetContainerRequest) (*api.GetContainerResponse, error) {
	c, err := s.store.Get(ctx, req.GetID())
	if err != nil {
		return nil, err
	}
	return &api.GetContainerResponse{Container: c}, nil
}

// List implements api.ContainersServer.
func (s *Service) List(ctx context.Context, req *api.ListContainersRequest) (*api.ListContainersResponse, error) {
	list, err := s.store.List(ctx, req.GetFilters()...)
	if err != nil {
		return nil, err
	}
	return &api.ListContainersResponse{Containers: list}, nil
}

// ListStream implements api.ContainersServer: the same as List, one message
// per container.
func (s *Service) ListStream(req *api.ListContainersRequest, stream api.Containers_ListStreamServer) error {
	list, err := s.store.List(stream.Context(), req.GetFilters()...)
	if err != nil {
		return err
	}
	for _, c := range list {
		if err := stream.Send(&api.ListContainerMessage{Container: c}); err != nil {
			return err
		}
	}
	return nil
}

// Create implements api.ContainersServer.
func (s *Service) Create(ctx context.Context, req *api.CreateContainerRequest) (*api.CreateContainerResponse, error) {
	if req.GetContainer() == nil {
		return nil, fmt.Errorf("container is required: %w", errdefs.ErrInvalidArgument)
	}
	c, err := s.store.Create(ctx, req.GetContainer())
	if err != nil {
		return nil, err
	}
	ev := &eventsapi.ContainerCreate{ID: c.ID, Image: c.Image}
	if rt := c.GetRuntime(); rt != nil {
		ev.Runtime = &eventsapi.ContainerCreate_Runtime{Name: rt.Name, Options: rt.Options}
	}
	s.publish(ctx, TopicCreate, ev)
	return &api.CreateContainerResponse{Container: c}, nil
}

// Update implements api.ContainersServer.
func (s *Service) Update(ctx context.Context, req *api.UpdateContainerRequest) (*api.UpdateContainerResponse, error) {
	if req.GetContainer() == nil {
		return nil, fmt.Errorf("container is required: %w", errdefs.ErrInvalidArgument)
	}
	c, err := s.store.Update(ctx, req.GetContainer(), req.GetUpdateMask().GetPaths()...)
	if err != nil {
		return nil, err
	}
	s.publish(ctx, TopicUpdate, &eventsapi.ContainerUpdate{
		ID: c.ID, Image: c.Image, Labels: c.Labels, SnapshotKey: c.SnapshotKey,
	})
	return &api.UpdateContainerResponse{Container: c}, nil
}

// Delete implements api.ContainersServer.
func (s *Service) Delete(ctx context.Context, req *api.DeleteContainerRequest) (*emptypb.Empty, error) {
	if s.tasks != nil && s.tasks.HasTask(ctx, req.GetID()) {
		return nil, fmt.Errorf("container %q has a task; delete the task first: %w", req.GetID(), errdefs.ErrFailedPrecondition)
	}
	if err := s.store.Delete(ctx, req.GetID()); err != nil {
		return nil, err
	}
	s.publish(ctx, TopicDelete, &eventsapi.ContainerDelete{ID: req.GetID()})
	if s.deleted != nil {
		s.deleted(ctx)
	}
	return &emptypb.Empty{}, nil
}

func (s *Service) publish(ctx context.Context, topic string, event any) {
	if err := s.publisher.Publish(ctx, topic, event); err != nil {
		logging.Or(ctx, s.log).Warn("publish event", "topic", topic, "error", err)
	}
}
