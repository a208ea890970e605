// Package forward is how events from shims reach taskd: containerd's
// Events.Forward served on taskd's gRPC socket (for shims that publish by
// running `taskd publish`, which this package implements too) and on a ttrpc
// socket (for shims that publish over ttrpc to $TTRPC_ADDRESS, as
// containerd 1.6's shims do).
package forward

import (
	"context"
	"flag"
	"fmt"
	"io"
	"time"

	eventsapi "github.com/containerd/containerd/api/services/events/v1"
	ttrpcevents "github.com/containerd/containerd/api/services/ttrpc/events/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/flotilla/flotilla/services/dial"
	"github.com/flotilla/flotilla/services/events"
	"github.com/flotilla/flotilla/services/server"
	"github.com/flotilla/flotilla/services/tracing"
)

// Sink takes an event forwarded by a shim.
type Sink interface {
	// Forward handles env, whose namespace, topic and timestamp are set.
	Forward(ctx context.Context, env *types.Envelope) error
}

// GRPC serves containerd's Events API with Forward only: the other calls
// belong to eventd.
type GRPC struct {
	eventsapi.UnimplementedEventsServer
	sink Sink
}

// NewGRPC returns the gRPC Events service handing forwarded events to sink.
func NewGRPC(sink Sink) *GRPC { return &GRPC{sink: sink} }

// Forward implements eventsapi.EventsServer.
func (g *GRPC) Forward(ctx context.Context, req *eventsapi.ForwardRequest) (*emptypb.Empty, error) {
	if err := g.sink.Forward(ctx, req.GetEnvelope()); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

type ttrpcService struct{ sink Sink }

func (t ttrpcService) Forward(ctx context.Context, req *ttrpcevents.ForwardRequest) (*emptypb.Empty, error) {
	if err := t.sink.Forward(ctx, req.GetEnvelope()); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &emptypb.Empty{}, nil
}

// ServeTTRPC serves containerd's ttrpc Events service (Forward) on the unix
// socket path, replacing a stale socket, tracing each call with tp (nil:
// off). Call the returned function to stop.
func ServeTTRPC(path string, sink Sink, tp *tracing.Provider) (func(), error) {
	return server.ServeTTRPC(path, tp, func(srv *ttrpc.Server) {
		ttrpcevents.RegisterTTRPCEventsService(srv, ttrpcService{sink: sink})
	})
}

// Publish sends one event to taskd at address (through Events.Forward) as
// containerd's `containerd publish` does: event is a protobuf-encoded Any,
// which is how a shim hands it over on stdin.
func Publish(ctx context.Context, address, ns, topic string, event []byte) error {
	if ns == "" || topic == "" {
		return fmt.Errorf("publish: --namespace and --topic are required: %w", errdefs.ErrInvalidArgument)
	}
	if err := events.ValidateTopic(topic); err != nil {
		return fmt.Errorf("publish: %w", err)
	}
	var body anypb.Any
	if err := proto.Unmarshal(event, &body); err != nil {
		return fmt.Errorf("publish: event on stdin is not a protobuf Any: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	conn, err := dial.Dial(address)
	if err != nil {
		return fmt.Errorf("publish: %w", err)
	}
	defer conn.Close()
	_, err = eventsapi.NewEventsClient(conn).Forward(ctx, &eventsapi.ForwardRequest{Envelope: &types.Envelope{
		Timestamp: timestamppb.Now(), Namespace: ns, Topic: topic, Event: &body,
	}})
	if err != nil {
		return fmt.Errorf("publish %s to %s: %w", topic, address, err)
	}
	return nil
}

// PublishMain is `taskd publish --address ADDR --topic T --namespace NS`,
// with the event on stdin; defaultAddress is taskd's default socket.
func PublishMain(args []string, stdin io.Reader, defaultAddress string) error {
	fs := flag.NewFlagSet("taskd publish", flag.ContinueOnError)
	address := fs.String("address", defaultAddress, "taskd's gRPC address")
	topic := fs.String("topic", "", "event topic, such as /tasks/exit")
	ns := fs.String("namespace", "", "namespace of the event")
	if err := fs.Parse(args); err != nil {
		return err
	}
	body, err := io.ReadAll(stdin)
	if err != nil {
		return fmt.Errorf("publish: read event: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return Publish(ctx, *address, *ns, *topic, body)
}
