// Package exchange serves containerd's Events API
// (containerd.services.events.v1.Events) over a bus.Bus: Publish and Forward
// validate and stamp envelopes and hand them to the bus, Subscribe streams
// what the bus delivers through the caller's filters.
package exchange

import (
	"context"
	"fmt"
	"time"

	api "github.com/containerd/containerd/api/services/events/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/flotilla/flotilla/eventd/bus"
	"github.com/flotilla/flotilla/services/events"
	"github.com/flotilla/flotilla/services/filters"
	"github.com/flotilla/flotilla/services/identifiers"
	"github.com/flotilla/flotilla/services/namespace"
)

// ServiceName is the gRPC name of the Events service, also its health name.
const ServiceName = "containerd.services.events.v1.Events"

// Service implements containerd's Events service.
type Service struct {
	api.UnimplementedEventsServer
	bus     bus.Bus
	metrics *Metrics
}

// New returns the Events service over b, counting into m.
func New(b bus.Bus, m *Metrics) *Service {
	return &Service{bus: b, metrics: m}
}

// Publish wraps the event in an envelope stamped now, in the namespace of
// the call (required), and publishes it. The topic must satisfy
// events.ValidateTopic and the event must be set.
func (s *Service) Publish(ctx context.Context, req *api.PublishRequest) (*emptypb.Empty, error) {
	ns, err := namespace.Required(ctx)
	if err != nil {
		return nil, fmt.Errorf("publish: %w", err)
	}
	if err := events.ValidateTopic(req.GetTopic()); err != nil {
		return nil, fmt.Errorf("publish: %w", err)
	}
	if req.GetEvent() == nil {
		return nil, fmt.Errorf("publish %s: event is required: %w", req.GetTopic(), errdefs.ErrInvalidArgument)
	}
	env := &types.Envelope{Timestamp: timestamppb.Now(), Namespace: ns, Topic: req.GetTopic(), Event: req.GetEvent()}
	return s.publish(ctx, env)
}

// Forward publishes an envelope made elsewhere, as it is: its namespace,
// topic, timestamp and event must all be valid.
func (s *Service) Forward(ctx context.Context, req *api.ForwardRequest) (*emptypb.Empty, error) {
	env := req.GetEnvelope()
	if err := ValidateEnvelope(env); err != nil {
		return nil, fmt.Errorf("forward: %w", err)
	}
	return s.publish(ctx, env)
}

func (s *Service) publish(ctx context.Context, env *types.Envelope) (*emptypb.Empty, error) {
	if err := s.bus.Publish(ctx, env); err != nil {
		return nil, err
	}
	s.metrics.Published.WithLabelValues(topicLabel(env.Topic)).Inc()
	return &emptypb.Empty{}, nil
}

// ValidateEnvelope checks a forwarded envelope as containerd does: a valid
// namespace, a valid topic, a timestamp that is set, and an event.
func ValidateEnvelope(env *types.Envelope) error {
	if env == nil {
		return fmt.Errorf("envelope is required: %w", errdefs.ErrInvalidArgument)
	}
	if env.GetNamespace() == "" {
		return fmt.Errorf("envelope has no namespace: %w", errdefs.ErrInvalidArgument)
	}
	if err := identifiers.Validate(env.GetNamespace()); err != nil {
		return fmt.Errorf("envelope namespace: %w", err)
	}
	if err := events.ValidateTopic(env.GetTopic()); err != nil {
		return fmt.Errorf("envelope: %w", err)
	}
	if ts := env.GetTimestamp(); ts == nil || (ts.GetSeconds() == 0 && ts.GetNanos() == 0) || ts.AsTime().Equal(time.Time{}) {
		return fmt.Errorf("envelope %s has no timestamp; forwarded events must carry the time they happened: %w", env.GetTopic(), errdefs.ErrInvalidArgument)
	} else if err := ts.CheckValid(); err != nil {
		return fmt.Errorf("envelope %s timestamp: %v: %w", env.GetTopic(), err, errdefs.ErrInvalidArgument)
	}
	if env.GetEvent() == nil {
		return fmt.Errorf("envelope %s has no event: %w", env.GetTopic(), errdefs.ErrInvalidArgument)
	}
	return nil
}

// Subscribe streams the envelopes of every namespace that match any of the
// request's filters (containerd's syntax over topic, namespace and
// event.<field>), from the moment the response headers are sent until the
// caller goes away. A filter that does not parse is InvalidArgument. A
// subscriber that reads too slowly loses events rather than holding up the
// others; the losses are counted as dropped.
func (s *Service) Subscribe(req *api.SubscribeRequest, stream api.Events_SubscribeServer) error {
	f, err := filters.ParseAll(req.GetFilters()...)
	if err != nil {
		return fmt.Errorf("subscribe: %w", err)
	}
	sub := s.bus.Subscribe(func(env *types.Envelope) bool { return f.Match(Fields(env)) })
	defer sub.Close()
	s.metrics.Subscribers.Inc()
	defer s.metrics.Subscribers.Dec()

	// The headers tell the caller the subscription is in place: what is
	// published after they arrive reaches it.
	if err := stream.SendHeader(metadata.MD{}); err != nil {
		return err
	}
	ctx := stream.Context()
	for {
		select {
		case <-ctx.Done():
			return nil
		case env, ok := <-sub.C():
			if !ok {
				return fmt.Errorf("subscribe: event bus stopped: %w", errdefs.ErrUnavailable)
			}
			if err := stream.Send(env); err != nil {
				return err
			}
			s.metrics.Delivered.WithLabelValues(topicLabel(env.Topic)).Inc()
		}
	}
}
