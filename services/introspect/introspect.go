// Package introspect serves containerd's Introspection API for one daemon:
// the server's identity and the plugins (services, snapshotters) it provides.
// The gateway merges what every backend answers into one list.
package introspect

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	api "github.com/containerd/containerd/api/services/introspection/v1"
	"github.com/containerd/errdefs"
	"github.com/google/uuid"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/flotilla/flotilla/services/filters"
)

// GRPCPluginType is the introspection type of a gRPC service, as containerd names it.
const GRPCPluginType = "io.containerd.grpc.v1"

// PluginLister returns the plugins a daemon provides right now; a daemon
// whose plugins come and go (snapshotd) answers from its live state.
type PluginLister func(ctx context.Context) []*api.Plugin

// Services returns a PluginLister for a fixed set of gRPC services, by the
// IDs containerd gives them ("content", "images", ...).
func Services(ids ...string) PluginLister {
	plugins := make([]*api.Plugin, 0, len(ids))
	for _, id := range ids {
		plugins = append(plugins, &api.Plugin{Type: GRPCPluginType, ID: id})
	}
	return func(context.Context) []*api.Plugin { return plugins }
}

// Service implements containerd's Introspection service.
type Service struct {
	api.UnimplementedIntrospectionServer
	uuid    string
	plugins PluginLister
	info    InfoProvider
}

// New returns the Introspection service of a daemon whose identity is kept
// under root, listing what plugins returns and asking info (nil: none) for
// plugins' extra information.
func New(root string, plugins PluginLister, info InfoProvider) (*Service, error) {
	id, err := LoadUUID(root)
	if err != nil {
		return nil, err
	}
	return &Service{uuid: id, plugins: plugins, info: info}, nil
}

// LoadUUID returns the daemon's UUID from root/uuid, creating it on first use
// so that the identity survives restarts.
func LoadUUID(root string) (string, error) {
	path := filepath.Join(root, "uuid")
	b, err := os.ReadFile(path)
	if err == nil {
		if id, perr := uuid.ParseBytes([]byte(strings.TrimSpace(string(b)))); perr == nil {
			return id.String(), nil
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("read uuid: %w", err)
	}
	id := uuid.NewString()
	if err := os.MkdirAll(root, 0o711); err != nil {
		return "", fmt.Errorf("uuid: %w", err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(id+"\n"), 0o644); err != nil {
		return "", fmt.Errorf("write uuid: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return "", fmt.Errorf("write uuid: %w", err)
	}
	return id, nil
}

// Plugins lists the daemon's plugins matching the request's filters.
func (s *Service) Plugins(ctx context.Context, req *api.PluginsRequest) (*api.PluginsResponse, error) {
	return FilterPlugins(s.plugins(ctx), req.GetFilters())
}

// FilterPlugins keeps the plugins that match any of the filters (containerd's
// filter syntax over the fields type, id, capabilities and exports.KEY).
func FilterPlugins(plugins []*api.Plugin, filterExprs []string) (*api.PluginsResponse, error) {
	f, err := filters.ParseAll(filterExprs...)
	if err != nil {
		return nil, err
	}
	var out []*api.Plugin
	for _, p := range plugins {
		if f.Match(pluginFields(p)) {
			out = append(out, p)
		}
	}
	return &api.PluginsResponse{Plugins: out}, nil
}

func pluginFields(p *api.Plugin) filters.AdapterFunc {
	return func(path []string) (string, bool) {
		if len(path) == 0 {
			return "", false
		}
		switch path[0] {
		case "type":
			return p.Type, true
		case "id":
			return p.ID, true
		case "capabilities":
			return strings.Join(p.Capabilities, ","), len(p.Capabilities) > 0
		case "exports":
			if len(path) < 2 {
				return "", false
			}
			v, ok := p.Exports[strings.Join(path[1:], ".")]
			return v, ok
		}
		return "", false
	}
}

// Server answers the daemon's identity.
func (s *Service) Server(context.Context, *emptypb.Empty) (*api.ServerResponse, error) {
	return &api.ServerResponse{UUID: s.uuid, Pid: uint64(os.Getpid())}, nil
}

// InfoProvider answers the extra information a plugin gives about itself
// when PluginInfo is called with options: containerd's runtime plugin
// ("io.containerd.runtime.v2", "task") answers a RuntimeInfo to a
// RuntimeRequest. It returns NotImplemented for a plugin that gives none.
type InfoProvider func(ctx context.Context, pluginType, id string, options *anypb.Any) (*anypb.Any, error)

// PluginInfo answers the plugin of the request's type and ID, as containerd
// does: NotFound when the daemon has no such plugin; with options, the
// plugin's extra information, FailedPrecondition when the plugin failed to
// start, NotImplemented when it gives none.
func (s *Service) PluginInfo(ctx context.Context, req *api.PluginInfoRequest) (*api.PluginInfoResponse, error) {
	return PluginInfo(ctx, s.plugins(ctx), s.info, req)
}

// PluginInfo answers req from plugins, the ones a server provides, asking
// info (nil: no plugin gives extra information) when req has options.
func PluginInfo(ctx context.Context, plugins []*api.Plugin, info InfoProvider, req *api.PluginInfoRequest) (*api.PluginInfoResponse, error) {
	var p *api.Plugin
	for _, candidate := range plugins {
		if candidate.GetType() == req.GetType() && candidate.GetID() == req.GetID() {
			p = candidate
			break
		}
	}
	if p == nil {
		return nil, fmt.Errorf("plugin %s.%s not found: %w", req.GetType(), req.GetID(), errdefs.ErrNotFound)
	}
	resp := &api.PluginInfoResponse{Plugin: p}
	if req.GetOptions() == nil {
		return resp, nil
	}
	if p.GetInitErr() != nil {
		return nil, fmt.Errorf("plugin %s.%s: cannot get extra info, plugin not successfully loaded: %w",
			req.GetType(), req.GetID(), errdefs.ErrFailedPrecondition)
	}
	if info == nil {
		return nil, fmt.Errorf("plugin %s.%s does not provide extra information: %w", req.GetType(), req.GetID(), errdefs.ErrNotImplemented)
	}
	extra, err := info(ctx, req.GetType(), req.GetID(), req.GetOptions())
	if err != nil {
		return nil, err
	}
	resp.Extra = extra
	return resp, nil
}
