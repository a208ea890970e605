package about

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/types/known/timestamppb"

	gatewayv1 "github.com/flotilla/flotilla/proto/gateway/v1"
	servicev1 "github.com/flotilla/flotilla/proto/service/v1"
	"github.com/flotilla/flotilla/services/discovery"

	"github.com/flotilla/flotilla/gateway/backend"
)

// Unreachable is the health reported for a backend the gateway cannot connect to.
const Unreachable = "UNREACHABLE"

// Stack implements Flotilla's Stack service: the health and identity of
// every service in the stack, as the gateway sees them.
type Stack struct {
	gatewayv1.UnimplementedStackServer
	services []*backend.Backend
	cluster  *Cluster
}

// NewStack returns the Stack service reporting on services, in that order.
// The gateway lists itself among them, as a connection to its own address,
// so that it is asked the same way as every backend.
func NewStack(services ...*backend.Backend) *Stack {
	return &Stack{services: services}
}

// A Cluster is what the Stack service needs to show every node's services:
// the service registry, a way to dial what it lists, and the gateway's own
// node (unix sockets of other nodes cannot be reached from it).
type Cluster struct {
	Registry *discovery.Registry
	Dial     func(addr string) (*grpc.ClientConn, error)
	Node     string
}

// WithCluster has Status also list every instance c's registry holds.
func (s *Stack) WithCluster(c *Cluster) *Stack {
	s.cluster = c
	return s
}

// Registered is the health reported for an instance the gateway cannot
// ask (a unix socket on another node) but whose registration is current:
// it renews it every discovery interval, so it was alive moments ago.
const Registered = "REGISTERED"

// Status asks every service, concurrently, for its gRPC health and its Info.
// A service that cannot be asked is reported with its health UNREACHABLE and
// the reason in error; the call itself succeeds. With a cluster, every
// registered instance on every node is asked the same way.
func (s *Stack) Status(ctx context.Context, _ *gatewayv1.StackStatusRequest) (*gatewayv1.StackStatusResponse, error) {
	resp := &gatewayv1.StackStatusResponse{Services: make([]*gatewayv1.ServiceStatus, len(s.services))}
	var wg sync.WaitGroup
	for i, b := range s.services {
		wg.Go(func() { resp.Services[i] = ask(ctx, b) })
	}
	if s.cluster != nil {
		insts, err := s.cluster.Registry.List(ctx, "")
		if err != nil {
			resp.ClusterError = err.Error()
		}
		resp.Cluster = make([]*gatewayv1.ServiceStatus, len(insts))
		for i, inst := range insts {
			wg.Go(func() { resp.Cluster[i] = s.cluster.ask(ctx, inst) })
		}
	}
	wg.Wait()
	return resp, nil
}

func ask(ctx context.Context, b *backend.Backend) *gatewayv1.ServiceStatus {
	st := &gatewayv1.ServiceStatus{Name: b.Name(), Address: b.Address(), Services: b.Services()}
	if err := b.Ready(ctx); err != nil {
		st.Health, st.Error = Unreachable, err.Error()
		return st
	}
	check(ctx, b.Conn(), st)
	return st
}

// ask asks registered instance inst for its health and info; what it
// cannot ask comes from the registration.
func (c *Cluster) ask(ctx context.Context, inst discovery.Instance) *gatewayv1.ServiceStatus {
	st := &gatewayv1.ServiceStatus{Name: inst.Service, Address: inst.Address, Node: inst.Node,
		Info: &servicev1.GetInfoResponse{Name: inst.Service, Version: inst.Version, Revision: inst.Revision,
			Address: inst.Address, MetricsAddress: inst.Metrics, Pid: int64(inst.PID), StartedAt: timestamppb.New(inst.Started)}}
	unix := strings.HasPrefix(inst.Address, "/") || strings.HasPrefix(inst.Address, "unix://")
	if unix && inst.Node != c.Node {
		st.Health, st.Error = Registered, "a unix socket on another node: registered moments ago, not asked"
		return st
	}
	conn, err := c.Dial(inst.Address)
	if err != nil {
		st.Health, st.Error = Unreachable, err.Error()
		return st
	}
	defer conn.Close()
	check(ctx, conn, st)
	return st
}

// check fills st with the health and info of the service on conn.
func check(ctx context.Context, conn *grpc.ClientConn, st *gatewayv1.ServiceStatus) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()

	health, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		err = errgrpc.ToNative(err)
		st.Health = healthpb.HealthCheckResponse_UNKNOWN.String()
		if errdefs.IsUnavailable(err) || errdefs.IsDeadlineExceeded(err) {
			st.Health = Unreachable
		}
		st.Error = fmt.Sprintf("health: %v", err)
		return
	}
	st.Health = health.GetStatus().String()

	info, err := servicev1.NewInfoClient(conn).Get(ctx, &servicev1.GetInfoRequest{})
	if err != nil {
		st.Error = fmt.Sprintf("info: %v", errgrpc.ToNative(err))
		return
	}
	st.Info = info
}
