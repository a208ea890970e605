// Command gateway is the front door of a Flotilla stack: it serves
// containerd's gRPC API on one socket, routes every containerd.services.*
// call to the Flotilla service that owns it, and answers Version,
// Introspection and Flotilla's Stack status itself.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	introspection "github.com/containerd/containerd/api/services/introspection/v1"
	versionapi "github.com/containerd/containerd/api/services/version/v1"

	gatewayv1 "github.com/flotilla/flotilla/proto/gateway/v1"
	"github.com/flotilla/flotilla/services/config"
	"github.com/flotilla/flotilla/services/daemon"
	"github.com/flotilla/flotilla/services/server"

	"github.com/flotilla/flotilla/gateway/about"
	"github.com/flotilla/flotilla/gateway/backend"
	"github.com/flotilla/flotilla/gateway/router"
)

type gatewayConfig struct {
	config.Common
	Contentd  string `toml:"contentd"`
	Snapshotd string `toml:"snapshotd"`
	Taskd     string `toml:"taskd"`
	Eventd    string `toml:"eventd"`
	// Node names the node this gateway serves; every relayed call carries
	// it, so contentd unpacks a pull on this node's snapshotd.
	Node string `toml:"node"`
}

func main() {
	daemon.Main(spec())
}

// spec describes the gateway daemon.
func spec() daemon.Spec {
	var cfg gatewayConfig
	addresses := map[string]*string{
		"contentd":  &cfg.Contentd,
		"snapshotd": &cfg.Snapshotd,
		"taskd":     &cfg.Taskd,
		"eventd":    &cfg.Eventd,
	}
	r := router.New()
	return daemon.Spec{
		Name:           "gateway",
		DefaultAddress: filepath.Join(config.DefaultState(), "flotilla.sock"),
		Summary:        "serves containerd's gRPC API for the whole stack and routes each call to the Flotilla service that owns it",
		Config:         &cfg,
		Common:         &cfg.Common,
		Flags: func(fs *flag.FlagSet) {
			host, _ := os.Hostname()
			fs.StringVar(&cfg.Node, "node", host,
				"name of the node this gateway serves, sent with every call it relays (flotilla-node metadata) so contentd unpacks pulls on this node")
			for _, o := range backend.Owners {
				fs.StringVar(addresses[o.Name], o.Name, filepath.Join(config.DefaultState(), o.Name+".sock"),
					fmt.Sprintf("address of %s, which serves containerd's %s services: a unix socket path, unix:///path or tcp://host:port", o.Name, strings.Join(o.Services, ", ")))
			}
		},
		ServerOptions: []server.Option{server.WithFrontDoor(r.FrontDoor)},
		Setup: func(ctx context.Context, srv *server.Server) error {
			r.SetNode(cfg.Node)
			var backends []*backend.Backend
			for _, o := range backend.Owners {
				b, err := backend.Dial(o.Name, *addresses[o.Name], o.Services)
				if err != nil {
					return err
				}
				srv.OnStop(func() { b.Close() })
				r.Route(b)
				backends = append(backends, b)
			}
			self, err := backend.Dial("gateway", cfg.Address, []string{"version", "introspection"})
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
			gatewayv1.RegisterStackServer(srv.GRPC(), about.NewStack(append([]*backend.Backend{self}, backends...)...))
			return nil
		},
	}
}
