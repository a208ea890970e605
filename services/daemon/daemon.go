// Package daemon is the main function every Flotilla daemon shares: read the
// flags and config, build the logger and the server, let the daemon register
// its services, and serve until told to stop.
package daemon

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/flotilla/flotilla/services/config"
	"github.com/flotilla/flotilla/services/dial"
	"github.com/flotilla/flotilla/services/discovery"
	"github.com/flotilla/flotilla/services/introspect"
	"github.com/flotilla/flotilla/services/logging"
	"github.com/flotilla/flotilla/services/mtls"
	"github.com/flotilla/flotilla/services/server"
	"github.com/flotilla/flotilla/services/tracing"

	introspection "github.com/containerd/containerd/api/services/introspection/v1"
)

// Spec describes one daemon.
type Spec struct {
	// Name is the daemon's component name, also its default socket's name.
	Name string
	// DefaultAddress replaces the default $FLOTILLA_STATE/<name>.sock.
	DefaultAddress string
	// Summary is one line for --help saying what the daemon does.
	Summary string
	// Config points at the daemon's config struct, which embeds config.Common
	// and carries toml tags; Common points at that embedded struct.
	Config any
	Common *config.Common
	// Flags registers the daemon's own flags, bound to fields of Config.
	Flags func(fs *flag.FlagSet)
	// Plugins lists what the daemon provides, for containerd's Introspection.
	Plugins introspect.PluginLister
	// PluginInfo answers the extra information of the daemon's plugins
	// (containerd's PluginInfo with options); nil when none gives any.
	PluginInfo introspect.InfoProvider
	// Setup builds the daemon's services and registers them on srv. It may
	// register cleanups with srv.OnStop.
	Setup func(ctx context.Context, srv *server.Server) error
	// ServerOptions are passed to server.New.
	ServerOptions []server.Option
}

// Main runs the daemon and exits the process when it stops.
func Main(spec Spec) {
	if err := Run(context.Background(), spec, os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintf(os.Stderr, "%s: %v\n", spec.Name, err)
		os.Exit(1)
	}
}

// Run is Main without the exit, for tests.
func Run(ctx context.Context, spec Spec, args []string) error {
	fs, err := flags(spec)
	if err != nil {
		return err
	}
	if err := config.Parse(fs, args, spec.Config, &spec.Common.ConfigFile); err != nil {
		return err
	}
	srv, err := build(ctx, spec, alone)
	if err != nil {
		return err
	}
	return srv.Run(ctx)
}

// flags returns the flag set of spec's daemon, bound to its Config.
func flags(spec Spec) (*flag.FlagSet, error) {
	fs := flag.NewFlagSet(spec.Name, flag.ContinueOnError)
	spec.Common.Register(fs, spec.Name, spec.Summary)
	if spec.DefaultAddress != "" {
		f := fs.Lookup("address")
		f.DefValue = spec.DefaultAddress
		if err := f.Value.Set(spec.DefaultAddress); err != nil {
			return nil, err
		}
	}
	if spec.Flags != nil {
		spec.Flags(fs)
	}
	return fs, nil
}

// How a daemon is built: alone in its process, or as one component of a
// Group.
const (
	alone   = true
	inGroup = false
)

// build makes spec's daemon, its settings parsed: its directories, logger
// and server, with its services registered by Setup; Run serves it.
//
// The daemon's identity, service registry and tracing are its server's
// (srv.Identity, srv.Discovery, srv.Tracing; dial.For(srv) dials with them),
// so that the components of one process each keep their own. Only a daemon
// alone in its process also makes them the process's (package dial's
// functions, OpenTelemetry's global provider).
func build(ctx context.Context, spec Spec, alone bool) (*server.Server, error) {
	log, err := logging.New(os.Stderr, spec.Name, spec.Common.LogLevel)
	if err != nil {
		return nil, err
	}
	// ttrpc logs through containerd's log package (logrus): one logger.
	logging.BridgeLogrus(log)
	// Modes as containerd keeps its own, also when the directory was made
	// before with a wider one: the root (blobs, databases) is the daemon's
	// alone, 0700; the state may be crossed but not listed, 0711, since a
	// user-namespaced container's root must reach its rootfs through the
	// bundle in taskd's state. (Client sockets are 0660.)
	for dir, mode := range map[string]os.FileMode{spec.Common.Root: 0o700, spec.Common.State: 0o711} {
		if err := os.MkdirAll(dir, mode); err != nil {
			return nil, fmt.Errorf("create %s: %w", dir, err)
		}
		if err := os.Chmod(dir, mode); err != nil {
			return nil, fmt.Errorf("restrict %s: %w", dir, err)
		}
	}
	id, err := mtls.Load(spec.Common.Files)
	if err != nil {
		return nil, err
	}
	var registry *discovery.Registry
	if spec.Common.Discovery != "" {
		registry, err = discovery.Open(spec.Common.Discovery, id, time.Duration(spec.Common.DiscoveryInterval), log)
		if err != nil {
			return nil, err
		}
	}
	startTracing := tracing.New
	if alone {
		dial.SetIdentity(id)
		dial.SetRegistry(registry)
		startTracing = tracing.Init
	}
	tp, err := startTracing(ctx, spec.Name, spec.Common.OTLPEndpoint)
	if err != nil {
		if registry != nil {
			registry.Close()
		}
		return nil, err
	}
	srv := server.New(spec.Name, *spec.Common, log, append([]server.Option{
		server.WithIdentity(id), server.WithDiscovery(registry), server.WithTracing(tp),
	}, spec.ServerOptions...)...)
	if registry != nil {
		// Closed once the server has stopped (and unregistered).
		srv.OnStop(func() { registry.Close() })
	}
	srv.OnStop(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := tp.Shutdown(ctx); err != nil {
			log.Warn("flush traces", "error", err)
		}
	})
	if registry != nil {
		register(srv, registry, spec.Name, *spec.Common)
	}
	if spec.Plugins != nil {
		intro, err := introspect.New(spec.Common.Root, spec.Plugins, spec.PluginInfo)
		if err != nil {
			return nil, err
		}
		introspection.RegisterIntrospectionServer(srv.GRPC(), intro)
	}
	if spec.Setup != nil {
		if err := spec.Setup(ctx, srv); err != nil {
			return nil, fmt.Errorf("setup: %w", err)
		}
	}
	return srv, nil
}
