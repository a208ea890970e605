// Package daemon is the gateway as a component of the daemon kit: its
// settings and how it builds its services, run alone by cmd/gateway or
// beside the other components in one process by cmd/flotilla.
//
// The gateway is the front door of a Flotilla stack: it serves containerd's
// gRPC API on one socket, routes every containerd.services.* call to the
// Flotilla service that owns it, and answers Version, Introspection and
// Flotilla's Stack status itself.
package daemon

import (
	"context"
	"flag"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	eventsapi "github.com/containerd/containerd/api/services/events/v1"
	introspection "github.com/containerd/containerd/api/services/introspection/v1"
	versionapi "github.com/containerd/containerd/api/services/version/v1"
	"github.com/containerd/errdefs"
	"google.golang.org/grpc"

	gatewayv1 "github.com/flotilla/flotilla/proto/gateway/v1"
	"github.com/flotilla/flotilla/services/config"
	kit "github.com/flotilla/flotilla/services/daemon"
	"github.com/flotilla/flotilla/services/dial"
	"github.com/flotilla/flotilla/services/server"

	"github.com/flotilla/flotilla/gateway/about"
	"github.com/flotilla/flotilla/gateway/backend"
	"github.com/flotilla/flotilla/gateway/router"
	"github.com/flotilla/flotilla/gateway/ttrpcevents"
)

// Config is the gateway's settings, from its flags and config file.
type Config struct {
	config.Common
	Contentd  string `toml:"contentd"`
	Snapshotd string `toml:"snapshotd"`
	Taskd     string `toml:"taskd"`
	Eventd    string `toml:"eventd"`
	// StallTimeout fails the calls on a backend connection that answers
	// nothing, not even a PING, for this long (a link or host gone down).
	StallTimeout config.Duration `toml:"stall_timeout"`
	// The node this gateway serves (config.Common's Node, --node) goes with
	// every relayed call, so contentd unpacks a pull on its snapshotd.
}

// Spec describes the gateway to the daemon kit, reading its settings into cfg.
func Spec(cfg *Config) kit.Spec {
	addresses := map[string]*string{
		"contentd":  &cfg.Contentd,
		"snapshotd": &cfg.Snapshotd,
		"taskd":     &cfg.Taskd,
		"eventd":    &cfg.Eventd,
	}
	r := router.New()
	return kit.Spec{
		Name:           "gateway",
		DefaultAddress: filepath.Join(config.DefaultState(), "flotilla.sock"),
		Summary:        "serves containerd's gRPC API for the whole stack and routes each call to the Flotilla service that owns it",
		Config:         cfg,
		Common:         &cfg.Common,
		Flags: func(fs *flag.FlagSet) {
			for _, o := range backend.Owners {
				fs.StringVar(addresses[o.Name], o.Name, filepath.Join(config.DefaultState(), o.Name+".sock"),
					fmt.Sprintf("address of %s, which serves containerd's %s services: a unix socket path, unix:///path, tcp://host:port or discover://%s[?node=NODE] (through --discovery)", o.Name, strings.Join(o.Services, ", "), o.Name))
			}
			cfg.StallTimeout = config.Duration(30 * time.Second)
			fs.Var(&cfg.StallTimeout, "stall-timeout",
				"fail the calls on a backend connection that answers nothing, not even a PING, for this long (its link or host is down); at least 1s, 0 waits as long as TCP does")
		},
		ServerOptions: []server.Option{server.WithFrontDoor(func(srv *server.Server) server.FrontDoor {
			r.SetStallTimeout(time.Duration(cfg.StallTimeout))
			return r.FrontDoor(srv)
		})},
		Setup: func(ctx context.Context, srv *server.Server) error {
			if d := time.Duration(cfg.StallTimeout); d != 0 && d < time.Second {
				// Its PINGs come every half of it: the services take no more.
				return fmt.Errorf("--stall-timeout %v: less than 1s: %w", d, errdefs.ErrInvalidArgument)
			}
			r.SetNode(cfg.Node)
			// The gateway's connections are its own: its identity,
			// registry and tracing, also beside other components.
			asGateway := backend.WithDialer(dial.For(srv))
			var backends []*backend.Backend
			for _, o := range backend.Owners {
				b, err := backend.Dial(o.Name, *addresses[o.Name], o.Services, asGateway)
				if err != nil {
					return err
				}
				srv.OnStop(func() { b.Close() })
				r.Route(b)
				backends = append(backends, b)
				if o.Name == "eventd" {
					if err := serveTTRPC(srv, cfg.Address, b); err != nil {
						return err
					}
				}
			}
			self, err := backend.Dial("gateway", cfg.Address, []string{"version", "introspection"}, asGateway)
			if err != nil {
				return err
			}
			srv.OnStop(func() { self.Close() })

			intro, err := about.NewIntrospection(cfg.Root, backends, srv.Logger())
			if err != nil {
				return err
			}
			versionapi.RegisterVersionServer(srv.GRPC(), about.Version{})
			introspection.RegisterIntrospectionServer(srv.GRPC(), intro)
			st := about.NewStack(append([]*backend.Backend{self}, backends...)...)
			if reg := srv.Discovery(); reg != nil {
				d := dial.For(srv)
				st.WithCluster(&about.Cluster{Registry: reg, Dial: func(addr string) (*grpc.ClientConn, error) { return d.Dial(addr) }, Node: cfg.Node})
			}
			gatewayv1.RegisterStackServer(srv.GRPC(), st)
			return nil
		},
	}
}

// serveTTRPC serves containerd's ttrpc endpoint at <address>.ttrpc, as
// containerd does beside its socket, relaying to eventd. A gateway on TCP
// has none: containerd's is a unix socket only.
func serveTTRPC(srv *server.Server, address string, eventd *backend.Backend) error {
	network, path, err := server.SplitAddress(address)
	if err != nil {
		return err
	}
	if network != "unix" {
		return nil
	}
	stop, err := ttrpcevents.Serve(path+".ttrpc", ttrpcevents.Client(eventsapi.NewEventsClient(eventd.Conn())), srv.Tracing())
	if err != nil {
		return err
	}
	srv.OnStop(stop)
	return nil
}
