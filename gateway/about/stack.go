package about

import (
	"context"
	"fmt"
	"sync"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	gatewayv1 "github.com/flotilla/flotilla/proto/gateway/v1"
	servicev1 "github.com/flotilla/flotilla/proto/service/v1"

	"github.com/flotilla/flotilla/gateway/backend"
)

// Unreachable is the health reported for a backend the gateway cannot connect to.
const Unreachable = "UNREACHABLE"

// Stack implements Flotilla's Stack service: the health and identity of
// every service in the stack, as the gateway sees them.
type Stack struct {
	gatewayv1.UnimplementedStackServer
	services []*backend.Backend
}

// NewStack returns the Stack service reporting on services, in that order.
// The gateway lists itself among them, as a connection to its own address,
// so that it is asked the same way as every backend.
func NewStack(services ...*backend.Backend) *Stack {
	return &Stack{services: services}
}

// Status asks every service, concurrently, for its gRPC health and its Info.
// A service that cannot be asked is reported with its health UNREACHABLE and
// the reason in error; the call itself succeeds.
func (s *Stack) Status(ctx context.Context, _ *gatewayv1.StackStatusRequest) (*gatewayv1.StackStatusResponse, error) {
	out := make([]*gatewayv1.ServiceStatus, len(s.services))
	var wg sync.WaitGroup
	for i, b := range s.services {
		wg.Go(func() { out[i] = ask(ctx, b) })
	}
	wg.Wait()
	return &gatewayv1.StackStatusResponse{Services: out}, nil
}

func ask(ctx context.Context, b *backend.Backend) *gatewayv1.ServiceStatus {
	st := &gatewayv1.ServiceStatus{Name: b.Name(), Address: b.Address(), Services: b.Services()}
	if err := b.Ready(ctx); err != nil {
		st.Health, st.Error = Unreachable, err.Error()
		return st
	}
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()

	health, err := healthpb.NewHealthClient(b.Conn()).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		err = errgrpc.ToNative(err)
		st.Health = healthpb.HealthCheckResponse_UNKNOWN.String()
		if errdefs.IsUnavailable(err) {
			st.Health = Unreachable
		}
		st.Error = fmt.Sprintf("health: %v", err)
		return st
	}
	st.Health = health.GetStatus().String()

	info, err := servicev1.NewInfoClient(b.Conn()).Get(ctx, &servicev1.GetInfoRequest{})
	if err != nil {
		st.Error = fmt.Sprintf("info: %v", errgrpc.ToNative(err))
		return st
	}
	st.Info = info
	return st
}
