// Package daemon is taskd as a component of the daemon kit: its settings
// and how it builds its services, run alone by cmd/taskd or beside the
// other components in one process by cmd/flotilla.
//
// taskd serves containerd's containers and tasks services, running each
// container under a shim that outlives taskd. Shims send their events back
// by running the process's own binary as `BINARY publish` (PublishMain).
package daemon

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	eventsapi "github.com/containerd/containerd/api/services/events/v1"
	introspection "github.com/containerd/containerd/api/services/introspection/v1"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/types/known/anypb"

	contentdv1 "github.com/flotilla/flotilla/proto/contentd/v1"
	"github.com/flotilla/flotilla/services/config"
	kit "github.com/flotilla/flotilla/services/daemon"
	"github.com/flotilla/flotilla/services/dial"
	"github.com/flotilla/flotilla/services/gc"
	"github.com/flotilla/flotilla/services/holdings"
	"github.com/flotilla/flotilla/services/introspect"
	"github.com/flotilla/flotilla/services/server"
	"github.com/flotilla/flotilla/taskd/checkpoint"
	"github.com/flotilla/flotilla/taskd/containers"
	"github.com/flotilla/flotilla/taskd/forward"
	"github.com/flotilla/flotilla/taskd/metadata"
	"github.com/flotilla/flotilla/taskd/restart"
	"github.com/flotilla/flotilla/taskd/runtime"
	"github.com/flotilla/flotilla/taskd/tasks"
)

// runtimeConfig is one [runtimes."NAME"] table of the config file.
type runtimeConfig struct {
	// Path is the shim binary serving the runtime.
	Path string `toml:"path"`
}

// Config is taskd's settings, from its flags and config file.
type Config struct {
	config.Common
	// Eventd is the address of eventd (or of the gateway) to publish
	// events to; empty drops them.
	Eventd string `toml:"eventd"`
	// Contentd is the address of contentd (or of the gateway), where
	// checkpoints are stored.
	Contentd string `toml:"contentd"`
	// Snapshotd is the address of snapshotd (or of the gateway), where the
	// restart monitor finds a container's root filesystem.
	Snapshotd string `toml:"snapshotd"`
	// RestartInterval is how often the restart monitor looks at the
	// containers labelled containerd.io/restart.status.
	RestartInterval time.Duration `toml:"restart_interval"`
	// Runtimes maps runtime names to shim binaries.
	Runtimes map[string]runtimeConfig `toml:"runtimes"`
}

// PublishCommand is the first argument with which a shim runs the binary
// serving taskd (its -publish-binary) to hand taskd one event.
const PublishCommand = "publish"

// PublishMain runs `BINARY publish --address ADDR --topic TOPIC --namespace
// NS` (event on stdin) and reports whether args asked for it; it exits the
// process when the event could not be handed over. A main serving taskd
// calls it first with its arguments.
func PublishMain(args []string) bool {
	i := slices.Index(args, PublishCommand)
	if i < 0 {
		return false
	}
	args = slices.Delete(slices.Clone(args), i, i+1)
	if err := forward.PublishMain(args, os.Stdin, filepath.Join(config.DefaultState(), "taskd.sock")); err != nil {
		fmt.Fprintf(os.Stderr, "taskd publish: %v\n", err)
		os.Exit(1)
	}
	return true
}

// Spec describes taskd to the daemon kit, reading its settings into cfg.
func Spec(cfg *Config) kit.Spec {
	var info *runtime.Info // set by setup
	return kit.Spec{
		Name:    "taskd",
		Summary: "runs containers: containerd's containers and tasks services, one shim per container",
		Config:  cfg,
		Common:  &cfg.Common,
		Flags: func(fs *flag.FlagSet) {
			fs.StringVar(&cfg.Eventd, "eventd", "",
				"address of eventd or the gateway (unix socket or tcp://host:port) to publish events to; empty discards them")
			fs.StringVar(&cfg.Contentd, "contentd", filepath.Join(config.DefaultState(), "contentd.sock"),
				"address of contentd or the gateway (unix socket or tcp://host:port), where task checkpoints are stored")
			fs.StringVar(&cfg.Snapshotd, "snapshotd", filepath.Join(config.DefaultState(), "snapshotd.sock"),
				"address of snapshotd or the gateway (unix socket or tcp://host:port), where the restart monitor gets root filesystems")
			fs.DurationVar(&cfg.RestartInterval, "restart-interval", restart.DefaultInterval,
				"how often the restart monitor checks the containers labelled "+restart.StatusLabel)
		},
		Plugins: plugins,
		PluginInfo: func(ctx context.Context, pluginType, id string, options *anypb.Any) (*anypb.Any, error) {
			if info == nil {
				return nil, fmt.Errorf("taskd is starting: %w", errdefs.ErrUnavailable)
			}
			return info.PluginInfo(ctx, pluginType, id, options)
		},
		Setup: func(ctx context.Context, srv *server.Server) error {
			var err error
			info, err = setup(ctx, srv, cfg)
			return err
		},
	}
}

// plugins is what taskd provides, for containerd's Introspection.
func plugins(ctx context.Context) []*introspection.Plugin {
	list := introspect.Services("containers", "tasks")(ctx)
	return append(list,
		&introspection.Plugin{Type: runtime.PluginType, ID: runtime.PluginID},
		&introspection.Plugin{Type: runtime.PluginType, ID: runtime.RuncV2},
		// containerd's restart monitor; clients look for it by id.
		&introspection.Plugin{Type: "io.containerd.internal.v1", ID: "restart", Capabilities: restart.Capabilities},
	)
}

// setup builds taskd's services and returns what answers its runtime
// plugin's information.
func setup(ctx context.Context, srv *server.Server, cfg *Config) (*runtime.Info, error) {
	log := srv.Logger()
	db, err := metadata.Open(filepath.Join(cfg.Root, "meta.db"))
	if err != nil {
		return nil, err
	}
	srv.OnStop(func() { db.Close() })

	publisher, err := kit.Publisher(srv, cfg.Eventd)
	if err != nil {
		return nil, err
	}

	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find taskd's binary: %w", err)
	}
	ttrpcAddress, err := ttrpcPath(cfg)
	if err != nil {
		return nil, err
	}
	paths := map[string]string{}
	for name, rc := range cfg.Runtimes {
		paths[name] = rc.Path
	}
	resolver := &runtime.Resolver{Paths: paths, Dir: filepath.Dir(self)}
	manager := runtime.NewManager(runtime.Config{
		State:         filepath.Join(cfg.State, "tasks"),
		Address:       cfg.Address,
		TTRPCAddress:  ttrpcAddress,
		PublishBinary: self,
		Resolver:      resolver,
		Exits:         runtime.NewExitStore(db),
		Events:        publisher,
		Log:           log,
		Tracing:       srv.Tracing(),
		// Where taskd-shim makes its sockets: $FLOTILLA_STATE/s, or
		// /run/flotilla/s when that path would be too long for a socket.
		ShimSockets: []string{filepath.Join(config.DefaultState(), "s"), "/run/flotilla/s"},
	})
	stopTTRPC, err := forward.ServeTTRPC(ttrpcAddress, manager, srv.Tracing())
	if err != nil {
		return nil, err
	}
	srv.OnStop(stopTTRPC)
	srv.OnStop(manager.Close)
	// Shims that kept running while taskd was down are adopted before the
	// first call is served.
	if err := manager.Load(ctx); err != nil {
		return nil, err
	}

	// Checkpoints are stored in contentd; the connection is lazy, so
	// taskd starts without it.
	// taskd's connections: its identity, registry and tracing.
	dialer := dial.For(srv)
	contentConn, err := dialer.Dial(cfg.Contentd)
	if err != nil {
		return nil, fmt.Errorf("contentd: %w", err)
	}
	srv.OnStop(func() { contentConn.Close() })

	snapshotConn, err := dialer.Dial(cfg.Snapshotd)
	if err != nil {
		return nil, fmt.Errorf("snapshotd: %w", err)
	}
	srv.OnStop(func() { snapshotConn.Close() })

	store := containers.NewStore(db)
	containerService := containers.NewService(store, manager, publisher, log)
	// Garbage collection: contentd's collector reads the containers (roots
	// that keep their snapshots and images) through the gc.Store served
	// here, and is asked to collect after a container is deleted.
	tracker := gc.NewTracker()
	store.SetTracker(tracker)
	gc.NewServer(gc.NewStore("taskd", tracker, containers.NewGCSource(store))).Register(srv.GRPC())
	gcClient := contentdv1.NewGCClient(contentConn)
	containerService.OnDelete(func(ctx context.Context) {
		go func() {
			ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			defer cancel()
			if _, err := gcClient.Schedule(ctx, &contentdv1.ScheduleRequest{}); err != nil {
				log.Debug("schedule garbage collection", "error", err)
			}
		}()
	})
	taskService := tasks.NewService(store, manager, checkpoint.NewRemote(contentConn), log)
	containersapi.RegisterContainersServer(srv.GRPC(), containerService)
	tasksapi.RegisterTasksServer(srv.GRPC(), taskService)
	eventsapi.RegisterEventsServer(srv.GRPC(), forward.NewGRPC(manager))
	holdings.New(store.Holdings).Register(srv.GRPC())

	snapshots := snapshotsapi.NewSnapshotsClient(snapshotConn)
	monitor := restart.New(restart.Config{
		Namespaces: func(context.Context) ([]string, error) { return metadata.Namespaces(db) },
		Containers: containerService,
		Tasks:      taskService,
		Mounts: func(ctx context.Context, snapshotter, key string) ([]*types.Mount, error) {
			resp, err := snapshots.Mounts(ctx, &snapshotsapi.MountsRequest{Snapshotter: snapshotter, Key: key})
			if err != nil {
				return nil, err
			}
			return resp.GetMounts(), nil
		},
		Interval: cfg.RestartInterval,
		Log:      log,
	})
	monitorCtx, stopMonitor := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() { defer close(done); monitor.Run(monitorCtx) }()
	srv.OnStop(func() { stopMonitor(); <-done })
	return &runtime.Info{Resolver: resolver, Log: log}, nil
}

// ttrpcPath is where taskd takes shims' events over ttrpc: next to its unix
// socket, as containerd does (<socket>.ttrpc), or in its state directory
// when it serves TCP.
func ttrpcPath(cfg *Config) (string, error) {
	network, addr, err := server.SplitAddress(cfg.Address)
	if err != nil {
		return "", err
	}
	if network == "unix" {
		return addr + ".ttrpc", nil
	}
	return filepath.Join(cfg.State, "taskd.ttrpc"), nil
}
