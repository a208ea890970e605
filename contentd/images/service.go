package images

import (
	"context"
	"fmt"
	"github.com/flotilla/flotilla/services/logging"
	"log/slog"

	eventsapi "github.com/containerd/containerd/api/events"
	api "github.com/containerd/containerd/api/services/images/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
	digest "github.com/opencontainers/go-digest"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/flotilla/flotilla/services/events"
)

// Event topics, as containerd names them.
const (
	TopicCreate = "/images/create"
	TopicUpdate = "/images/update"
	TopicDelete = "/images/delete"
)

// Service serves containerd's Images API over a Store, publishing an event
// for every change.
type Service struct {
	api.UnimplementedImagesServer
	store     Store
	publisher events.Publisher
	log       *slog.Logger
	collector Collector // nil: nothing is collected
}

// Collector is told of every image deleted: sync asks it to collect
// before the delete answers.
type Collector interface {
	Deleted(ctx context.Context, sync bool) error
}

// SetCollector makes deletes trigger c. Call it before serving.
func (s *Service) SetCollector(c Collector) { s.collector = c }

// NewService returns the Images service over store, publishing to publisher
// and logging failed publications to log (nil: slog.Default()).
func NewService(store Store, publisher events.Publisher, log *slog.Logger) *Service {
	if log == nil {
		log = slog.Default()
	}
	return &Service{store: store, publisher: publisher, log: log}
}

// Get implements api.ImagesServer.
func (s *Service) Get(ctx context.Context, req *api.GetImageRequest) (*api.GetImageResponse, error) {
	img, err := s.store.Get(ctx, req.GetName())
	if err != nil {
		return nil, err
	}
	return &api.GetImageResponse{Image: toProto(img)}, nil
}

// List implements api.ImagesServer.
func (s *Service) List(ctx context.Context, req *api.ListImagesRequest) (*api.ListImagesResponse, error) {
	list, err := s.store.List(ctx, req.GetFilters()...)
	if err != nil {
		return nil, err
	}
	resp := &api.ListImagesResponse{Images: make([]*api.Image, 0, len(list))}
	for _, img := range list {
		resp.Images = append(resp.Images, toProto(img))
	}
	return resp, nil
}

// Create implements api.ImagesServer.
func (s *Service) Create(ctx context.Context, req *api.CreateImageRequest) (*api.CreateImageResponse, error) {
	if req.GetImage() == nil {
		return nil, fmt.Errorf("image is required: %w", errdefs.ErrInvalidArgument)
	}
	img, err := s.store.Create(ctx, fromProto(req.GetImage()), timeOpts(req.GetSourceDateEpoch())...)
	if err != nil {
		return nil, err
	}
	s.publish(ctx, TopicCreate, &eventsapi.ImageCreate{Name: img.Name, Labels: img.Labels})
	return &api.CreateImageResponse{Image: toProto(img)}, nil
}

// Update implements api.ImagesServer.
func (s *Service) Update(ctx context.Context, req *api.UpdateImageRequest) (*api.UpdateImageResponse, error) {
	if req.GetImage() == nil {
		return nil, fmt.Errorf("image is required: %w", errdefs.ErrInvalidArgument)
	}
	img, err := s.store.Update(ctx, fromProto(req.GetImage()), req.GetUpdateMask().GetPaths(),
		timeOpts(req.GetSourceDateEpoch())...)
	if err != nil {
		return nil, err
	}
	s.publish(ctx, TopicUpdate, &eventsapi.ImageUpdate{Name: img.Name, Labels: img.Labels})
	return &api.UpdateImageResponse{Image: toProto(img)}, nil
}

// Delete implements api.ImagesServer. With Sync the garbage collection
// that frees the image's blobs and snapshots has run when it answers, as in
// containerd (whose error it answers with, the image being gone either way).
func (s *Service) Delete(ctx context.Context, req *api.DeleteImageRequest) (*emptypb.Empty, error) {
	var opts []Opt
	if t := req.GetTarget(); t != nil {
		opts = append(opts, WithTarget(digest.Digest(t.GetDigest())))
	}
	if err := s.store.Delete(ctx, req.GetName(), opts...); err != nil {
		return nil, err
	}
	s.publish(ctx, TopicDelete, &eventsapi.ImageDelete{Name: req.GetName()})
	if s.collector != nil {
		if err := s.collector.Deleted(ctx, req.GetSync()); err != nil {
			return nil, err
		}
	}
	return &emptypb.Empty{}, nil
}

func (s *Service) publish(ctx context.Context, topic string, event any) {
	if err := s.publisher.Publish(ctx, topic, event); err != nil {
		logging.Or(ctx, s.log).Warn("publish event", "topic", topic, "error", err)
	}
}

func timeOpts(epoch *timestamppb.Timestamp) []Opt {
	if epoch == nil {
		return nil
	}
	return []Opt{WithTime(epoch.AsTime())}
}

func fromProto(img *api.Image) Image {
	t := img.GetTarget()
	return Image{
		Name:   img.GetName(),
		Labels: img.GetLabels(),
		Target: Descriptor{
			MediaType:   t.GetMediaType(),
			Digest:      digest.Digest(t.GetDigest()),
			Size:        t.GetSize(),
			Annotations: t.GetAnnotations(),
		},
	}
}

func toProto(img Image) *api.Image {
	return &api.Image{
		Name:   img.Name,
		Labels: img.Labels,
		Target: &types.Descriptor{
			MediaType:   img.Target.MediaType,
			Digest:      img.Target.Digest.String(),
			Size:        img.Target.Size,
			Annotations: img.Target.Annotations,
		},
		CreatedAt: timestamppb.New(img.CreatedAt),
		UpdatedAt: timestamppb.New(img.UpdatedAt),
	}
}
