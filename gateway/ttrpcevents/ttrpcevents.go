// Package ttrpcevents serves containerd's ttrpc endpoint beside the
// gateway's socket (<address>.ttrpc). containerd serves one service there,
// Events with its one call Forward, for shims that publish over ttrpc; the
// gateway relays each forwarded envelope to eventd over gRPC, so a client
// or shim pointed at a Flotilla stack's address finds it where containerd
// has it.
package ttrpcevents

import (
	"context"
	"fmt"

	eventsapi "github.com/containerd/containerd/api/services/events/v1"
	ttrpcevents "github.com/containerd/containerd/api/services/ttrpc/events/v1"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/flotilla/flotilla/services/namespace"
	"github.com/flotilla/flotilla/services/server"
	"github.com/flotilla/flotilla/services/tracing"
)

// ttrpcNamespaceKey is the ttrpc metadata key containerd's clients send
// the namespace in.
const ttrpcNamespaceKey = "containerd-namespace-ttrpc"

// Forwarder takes a forwarded envelope: eventd's gRPC Events client.
type Forwarder interface {
	Forward(ctx context.Context, req *eventsapi.ForwardRequest) error
}

// Client adapts eventd's gRPC Events client to a Forwarder.
func Client(c eventsapi.EventsClient) Forwarder { return grpcForwarder{c} }

type grpcForwarder struct{ c eventsapi.EventsClient }

func (g grpcForwarder) Forward(ctx context.Context, req *eventsapi.ForwardRequest) error {
	_, err := g.c.Forward(ctx, req)
	return err
}

type service struct{ to Forwarder }

// Forward relays one envelope. The caller's ttrpc namespace, when it sent
// one, goes along as the gRPC namespace; the envelope keeps its own.
func (s service) Forward(ctx context.Context, req *ttrpcevents.ForwardRequest) (*emptypb.Empty, error) {
	env := req.GetEnvelope()
	if env == nil {
		return nil, errgrpc.ToGRPC(fmt.Errorf("forward: no envelope: %w", errdefs.ErrInvalidArgument))
	}
	if md, ok := ttrpc.GetMetadataValue(ctx, ttrpcNamespaceKey); ok && md != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, namespace.MetadataKey, md)
	}
	err := s.to.Forward(ctx, &eventsapi.ForwardRequest{Envelope: env})
	if err != nil {
		// eventd's answer is a gRPC status already; anything else (the
		// connection) is classified here.
		return nil, errgrpc.ToGRPC(err)
	}
	return &emptypb.Empty{}, nil
}

// Serve serves the ttrpc Events service on the unix socket path, replacing
// a stale socket there, and relays what it takes to to, tracing each call
// with tp (nil: off). Call the returned function to stop serving; it
// removes the socket.
func Serve(path string, to Forwarder, tp *tracing.Provider) (func(), error) {
	return server.ServeTTRPC(path, tp, func(srv *ttrpc.Server) {
		ttrpcevents.RegisterTTRPCEventsService(srv, service{to: to})
	})
}
