package daemon

import (
	"context"
	"net"
	"os"
	"time"

	"github.com/flotilla/flotilla/services/config"
	"github.com/flotilla/flotilla/services/discovery"
	"github.com/flotilla/flotilla/services/server"
	"github.com/flotilla/flotilla/services/version"
)

// register has srv registered in registry as service name while it serves:
// from when it listens until it stops. A registry out of reach at start is
// retried every interval.
func register(srv *server.Server, registry *discovery.Registry, name string, cfg config.Common) {
	inst := discovery.Instance{
		Service:  name,
		Node:     cfg.Node,
		Address:  AdvertisedAddress(cfg),
		Version:  version.Version,
		Revision: version.Revision,
		PID:      os.Getpid(),
		Started:  time.Now(),
		Metrics:  cfg.MetricsAddress,
	}
	done := make(chan struct{})
	started := false
	// Stopping the server ends ctx at once (deregistering while calls in
	// flight finish); the registry is closed only after this.
	srv.OnStop(func() {
		if started {
			<-done
		}
	})
	srv.OnServe(func(ctx context.Context) {
		started = true
		go func() {
			defer close(done)
			for {
				deregister, err := registry.Register(ctx, inst)
				if err == nil {
					<-ctx.Done()
					deregister()
					return
				}
				srv.Logger().Warn("not registered; retrying", "error", err, "in", registry.Interval())
				select {
				case <-ctx.Done():
					return
				case <-time.After(registry.Interval()):
				}
			}
		}()
	})
}

// AdvertisedAddress is the address cfg's daemon registers: the advertise
// address when set, else the address it listens on (a TCP listen address
// on all interfaces is registered with the host name instead).
func AdvertisedAddress(cfg config.Common) string {
	if cfg.AdvertiseAddress != "" {
		return cfg.AdvertiseAddress
	}
	network, address, err := server.SplitAddress(cfg.Address)
	if err != nil || network != "tcp" {
		return cfg.Address
	}
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return cfg.Address
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host, _ = os.Hostname()
	}
	return net.JoinHostPort(host, port)
}
