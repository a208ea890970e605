// Package daemon is snapshotd as a component of the daemon kit: its settings
// and how it builds its services, run alone by cmd/snapshotd or beside the
// other components in one process by cmd/flotilla.
//
// snapshotd serves containerd's snapshots and diff services, with each
// snapshotter backend in a plugin process of its own.
package daemon

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	introspection "github.com/containerd/containerd/api/services/introspection/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"

	snapshotterv1 "github.com/flotilla/flotilla/proto/snapshotter/v1"
	"github.com/flotilla/flotilla/services/config"
	"github.com/flotilla/flotilla/services/contentclient"
	kit "github.com/flotilla/flotilla/services/daemon"
	"github.com/flotilla/flotilla/services/dial"
	"github.com/flotilla/flotilla/services/gc"
	"github.com/flotilla/flotilla/services/holdings"
	"github.com/flotilla/flotilla/services/introspect"
	"github.com/flotilla/flotilla/services/mount"
	"github.com/flotilla/flotilla/services/server"
	"github.com/flotilla/flotilla/snapshotd/diff/content"
	diffservice "github.com/flotilla/flotilla/snapshotd/diff/service"
	"github.com/flotilla/flotilla/snapshotd/host"
	"github.com/flotilla/flotilla/snapshotd/service"
)

// Config is snapshotd's settings, from its flags and config file.
type Config struct {
	config.Common
	// Eventd is the address of eventd (or of the gateway) to publish
	// events to; empty drops them.
	Eventd string `toml:"eventd"`
	// Contentd is the address of contentd (or of the gateway), where the
	// diff service reads layers and writes the ones it makes.
	Contentd string `toml:"contentd"`
	// PluginDir holds the default backends' executables
	// (snapshotter-overlayfs, snapshotter-native), registered at first
	// start, and is the only directory the admin API (add, replace) runs
	// backends from.
	PluginDir string `toml:"plugin_dir"`
	// KeepPlugins leaves the plugin processes running when snapshotd stops
	// gracefully, for the next snapshotd to adopt (as it always does after
	// a crash); by default a graceful stop stops them. Mounts outlive the
	// plugins either way.
	KeepPlugins bool `toml:"keep_plugins"`
	// StartOnUse leaves a backend holding no snapshots without a plugin
	// process until a snapshot is first prepared in it.
	StartOnUse bool `toml:"start_on_use"`
}

// SnapshotterPluginType is the introspection type of a snapshotter.
const SnapshotterPluginType = "io.containerd.snapshotter.v1"

// hostPlatforms is the platform every backend serves: the host's.
var hostPlatforms = []*types.Platform{types.OCIPlatformToProto([]ocispec.Platform{platforms.DefaultSpec()})[0]}

// Spec describes snapshotd to the daemon kit, reading its settings into cfg.
func Spec(cfg *Config) kit.Spec {
	var h *host.Host // set by setup; the plugin list follows it
	return kit.Spec{
		Name:    "snapshotd",
		Summary: "prepares root filesystems: containerd's snapshots and diff services, snapshotters as plugin processes",
		Config:  cfg,
		Common:  &cfg.Common,
		Flags: func(fs *flag.FlagSet) {
			exe, _ := os.Executable()
			fs.StringVar(&cfg.Eventd, "eventd", "",
				"address of eventd or the gateway (unix socket or tcp://host:port) to publish events to; empty discards them")
			fs.StringVar(&cfg.Contentd, "contentd", filepath.Join(config.DefaultState(), "contentd.sock"),
				"address of contentd or the gateway (unix socket or tcp://host:port), where diff reads and writes layers")
			fs.StringVar(&cfg.PluginDir, "plugin-dir", filepath.Dir(exe),
				"directory of the snapshotter plugins: the defaults (snapshotter-overlayfs, snapshotter-native) registered at first start, and the only place snapshotters add and replace run an executable from")
			fs.BoolVar(&cfg.KeepPlugins, "keep-plugins", false,
				"on a graceful stop, leave the snapshotter plugin processes running for the next snapshotd to adopt (after a crash they always are)")
			fs.BoolVar(&cfg.StartOnUse, "start-on-use", true,
				"start the plugin process of a snapshotter that holds no snapshots only when a snapshot is first prepared in it (false: start every plugin at once)")
		},
		Plugins: func(ctx context.Context) []*introspection.Plugin {
			plugins := introspect.Services("snapshots", "diff")(ctx)
			if h == nil {
				return plugins
			}
			for _, st := range h.Describe() {
				p := &introspection.Plugin{
					Type:    SnapshotterPluginType,
					ID:      st.Name,
					Exports: map[string]string{"root": st.Root},
					// Backends make root filesystems for the host's
					// platform, as containerd's snapshotters report it
					// (the 2.x client's WithSnapshotterPlatformCheck reads it).
					Platforms: hostPlatforms,
					// Which backend can do what containerd's clients ask.
					Capabilities: capabilities(st.Path),
				}
				if st.State == host.StateFailed {
					p.InitErr = &rpcstatus.Status{Code: int32(codes.Unavailable), Message: st.Error}
				}
				plugins = append(plugins, p)
			}
			return plugins
		},
		Setup: func(ctx context.Context, srv *server.Server) error {
			var err error
			h, err = setup(ctx, srv, cfg)
			return err
		},
	}
}

// capabilities are the introspection capabilities of the backend run from
// binary. Flotilla's overlayfs backend mounts snapshots with ID-mapping
// labels ID-mapped, as containerd's overlay snapshotter does, where the
// kernel can (5.19+): "remap-ids" tells containerd's clients not to chown a
// copy of the image themselves. (The plugin protocol does not carry
// capabilities yet; until it does they are known by binary.)
func capabilities(binary string) []string {
	if filepath.Base(binary) == "snapshotter-overlayfs" && mount.IDMappedOverlaySupported() {
		return []string{"remap-ids"}
	}
	return nil
}

func setup(ctx context.Context, srv *server.Server, cfg *Config) (*host.Host, error) {
	if cfg.PluginDir == "" {
		return nil, fmt.Errorf("--plugin-dir is empty: snapshotd runs backends only from a plugin directory: %w", errdefs.ErrInvalidArgument)
	}
	publisher, err := kit.Publisher(srv, cfg.Eventd)
	if err != nil {
		return nil, err
	}
	// The diff service reads layers from contentd and writes new ones there.
	contentConn, err := dial.For(srv).Dial(cfg.Contentd)
	if err != nil {
		return nil, fmt.Errorf("contentd: %w", err)
	}
	srv.OnStop(func() { contentConn.Close() })

	h, err := host.Open(ctx, host.Options{
		Root: cfg.Root,
		Defaults: []host.Spec{
			{Name: "overlayfs", Path: filepath.Join(cfg.PluginDir, "snapshotter-overlayfs")},
			{Name: "native", Path: filepath.Join(cfg.PluginDir, "snapshotter-native")},
		},
		Logger:     srv.Logger(),
		SocketDir:  filepath.Join(cfg.State, "plugins"),
		StartOnUse: cfg.StartOnUse,
		Tracing:    srv.Tracing(),
		PluginDir:  cfg.PluginDir,
	})
	if err != nil {
		return nil, err
	}
	srv.OnStop(func() {
		stop := h.Shutdown
		if cfg.KeepPlugins {
			stop = h.Close
		}
		if err := stop(); err != nil {
			srv.Logger().Error("snapshotters state not saved", "error", err)
		}
	})

	// Garbage collection: contentd's collector marks and sweeps every
	// backend's snapshots through the gc.Store served here; the snapshots
	// service reports its writes and records the lease each snapshot is
	// made under.
	holds, err := service.OpenLeaseHolds(filepath.Join(cfg.Root, "gc", "leaseholds.db"))
	if err != nil {
		return nil, err
	}
	srv.OnStop(func() { holds.Close() })
	tracker := gc.NewTracker()

	grpcSrv := srv.GRPC()
	snapshots := service.New(h, publisher)
	snapshots.SetGC(tracker, holds)
	snapshots.Register(grpcSrv)
	gc.NewServer(gc.NewStore("snapshotd", tracker, service.NewGCSource(h, holds))).Register(grpcSrv)
	service.NewAdmin(h).Register(grpcSrv)
	// Adding or replacing a backend runs a program as root.
	srv.AdminOnly(snapshotterv1.Snapshotters_Add_FullMethodName,
		snapshotterv1.Snapshotters_Replace_FullMethodName,
		snapshotterv1.Snapshotters_Remove_FullMethodName)
	holdings.New(service.Holdings(h)).Register(grpcSrv)

	layers := content.NewRemote(contentConn)
	if network, path, err := server.SplitAddress(cfg.Contentd); err == nil && network == "unix" {
		// contentd on this host hands layers over as files (a gateway's
		// socket has no handoff beside it: reads go through Content.Read).
		layers.WithHandoff(contentclient.NewHandoff(path + contentclient.HandoffSuffix))
	}
	diffservice.New(layers, layers).Register(grpcSrv)

	return h, nil
}
