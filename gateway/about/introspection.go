package about

import (
	"context"
	"fmt"
	"github.com/flotilla/flotilla/services/logging"
	"log/slog"
	"os"
	"sync"
	"time"

	api "github.com/containerd/containerd/api/services/introspection/v1"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/flotilla/flotilla/gateway/backend"
	"github.com/flotilla/flotilla/services/introspect"
)

// callTimeout bounds each call the gateway makes to a backend on its own
// behalf, once the backend is connected.
const callTimeout = 2 * time.Second

// Introspection implements containerd's Introspection service for the whole
// stack: the gateway's identity, and the plugins of the gateway and of every
// backend in one list.
type Introspection struct {
	api.UnimplementedIntrospectionServer
	uuid     string
	backends []*backend.Backend
	log      *slog.Logger
}

// NewIntrospection returns the Introspection service of a gateway whose
// identity is kept under root and which fronts backends.
func NewIntrospection(root string, backends []*backend.Backend, log *slog.Logger) (*Introspection, error) {
	id, err := introspect.LoadUUID(root)
	if err != nil {
		return nil, err
	}
	return &Introspection{uuid: id, backends: backends, log: log}, nil
}

// Server answers the gateway's UUID, kept across restarts, and its pid.
func (s *Introspection) Server(context.Context, *emptypb.Empty) (*api.ServerResponse, error) {
	return &api.ServerResponse{UUID: s.uuid, Pid: uint64(os.Getpid())}, nil
}

// Plugins lists the gateway's own services (version, introspection) and then
// what each backend's Introspection lists, in the order of the backends,
// keeping those that match the request's filters. A backend that cannot be
// asked does not fail the call: each service routed to it is listed with an
// InitErr saying why (ctr plugins ls shows them with status "error"), and
// the gateway logs a warning.
func (s *Introspection) Plugins(ctx context.Context, req *api.PluginsRequest) (*api.PluginsResponse, error) {
	answers := make([][]*api.Plugin, len(s.backends))
	var wg sync.WaitGroup
	for i, b := range s.backends {
		wg.Go(func() { answers[i] = s.backendPlugins(ctx, b) })
	}
	wg.Wait()

	all := s.own()
	seen := make(map[string]bool)
	for _, p := range all {
		seen[p.Type+"/"+p.ID] = true
	}
	for _, plugins := range answers {
		for _, p := range plugins {
			if key := p.Type + "/" + p.ID; !seen[key] {
				seen[key] = true
				all = append(all, p)
			}
		}
	}
	return introspect.FilterPlugins(all, req.GetFilters())
}

// backendPlugins asks b for all its plugins, or stands in for them when b
// cannot be asked.
func (s *Introspection) backendPlugins(ctx context.Context, b *backend.Backend) []*api.Plugin {
	err := b.Ready(ctx)
	if err == nil {
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		defer cancel()
		var resp *api.PluginsResponse
		resp, err = api.NewIntrospectionClient(b.Conn()).Plugins(cctx, &api.PluginsRequest{})
		if err == nil {
			return resp.GetPlugins()
		}
		err = fmt.Errorf("%s (%s): introspection: %w", b.Name(), b.Address(), errgrpc.ToNative(err))
	}
	logging.Or(ctx, s.log).Warn("introspection: backend's plugins left out", "backend", b.Name(), "address", b.Address(), "error", err)
	initErr := status.Convert(errgrpc.ToGRPC(err)).Proto()
	plugins := make([]*api.Plugin, 0, len(b.Services()))
	for _, id := range b.Services() {
		plugins = append(plugins, &api.Plugin{
			Type:    introspect.GRPCPluginType,
			ID:      id,
			Exports: map[string]string{"backend": b.Name(), "address": b.Address()},
			InitErr: initErr,
		})
	}
	return plugins
}

// PluginInfo answers the plugin of the request's type and ID from the
// gateway's own (version, introspection) or from the backend that has it,
// asking the backends in order; with options, that backend answers the
// plugin's extra information (the 2.x client's RuntimeInfo asks taskd's
// runtime plugin this way). NotFound when no backend has the plugin;
// Unavailable, naming it, when a backend that could have it cannot be asked.
func (s *Introspection) PluginInfo(ctx context.Context, req *api.PluginInfoRequest) (*api.PluginInfoResponse, error) {
	if resp, err := introspect.PluginInfo(ctx, s.own(), nil, req); !errdefs.IsNotFound(err) {
		return resp, err
	}
	var unreachable error
	for _, b := range s.backends {
		resp, err := s.backendPluginInfo(ctx, b, req)
		switch {
		case err == nil:
			return resp, nil
		case errdefs.IsNotFound(err):
			continue
		case errdefs.IsUnavailable(err) || errdefs.IsDeadlineExceeded(err):
			logging.Or(ctx, s.log).Warn("introspection: plugin info: backend not asked", "backend", b.Name(), "address", b.Address(), "error", err)
			if unreachable == nil {
				unreachable = err
			}
			continue
		}
		return nil, err
	}
	if unreachable != nil {
		return nil, fmt.Errorf("plugin %s.%s not found among the backends that answered: %w", req.GetType(), req.GetID(), unreachable)
	}
	return nil, fmt.Errorf("plugin %s.%s not found: %w", req.GetType(), req.GetID(), errdefs.ErrNotFound)
}

// own lists the gateway's own services.
func (s *Introspection) own() []*api.Plugin {
	return []*api.Plugin{
		{Type: introspect.GRPCPluginType, ID: "version"},
		{Type: introspect.GRPCPluginType, ID: "introspection"},
	}
}

// backendPluginInfo asks b for the plugin's info, its errors as kinds.
func (s *Introspection) backendPluginInfo(ctx context.Context, b *backend.Backend, req *api.PluginInfoRequest) (*api.PluginInfoResponse, error) {
	if err := b.Ready(ctx); err != nil {
		return nil, fmt.Errorf("%s (%s): %w", b.Name(), b.Address(), err)
	}
	resp, err := api.NewIntrospectionClient(b.Conn()).PluginInfo(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("%s: plugin info: %w", b.Name(), errgrpc.ToNative(err))
	}
	return resp, nil
}
