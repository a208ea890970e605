package exchange

import (
	"context"

	api "github.com/containerd/containerd/api/services/events/v1"
	"github.com/containerd/containerd/api/types"

	"github.com/flotilla/flotilla/eventd/bus"
	"github.com/flotilla/flotilla/services/server"
)

// Config chooses eventd's bus.
type Config struct {
	// RedisURL is the Redis server shared by the eventd of a fleet; empty
	// selects the in-process bus of a single node.
	RedisURL string
	// BusOptions tune the bus (buffers, recovery grace, channel).
	BusOptions []bus.Option
}

// Setup returns the daemon setup of eventd: it builds the bus, registers the
// Events service and the metrics on srv, ties the service's health to the
// Redis link, and closes the bus when srv stops.
func Setup(cfg Config) func(context.Context, *server.Server) error {
	return func(_ context.Context, srv *server.Server) error {
		m := NewMetrics()
		if err := m.Register(srv.Registry(), cfg.RedisURL != ""); err != nil {
			return err
		}
		log := srv.Logger()
		opts := append([]bus.Option{
			bus.WithLogger(log),
			// eventd's own, also beside other components in one process.
			bus.WithIdentity(srv.Identity()),
			bus.WithTracing(srv.Tracing()),
			bus.WithDropHook(func(env *types.Envelope) { m.Dropped.WithLabelValues(topicLabel(env.Topic)).Inc() }),
		}, cfg.BusOptions...)

		var b bus.Bus
		if cfg.RedisURL == "" {
			log.Info("no redis configured; events reach this eventd's subscribers only")
			b = bus.NewMemory(opts...)
			srv.SetServing(ServiceName, true)
		} else {
			srv.SetServing(ServiceName, false)
			opts = append(opts, bus.WithOutboxHook(func(n int) { m.Outbox.Set(float64(n)) }), bus.WithStateHook(func(up bool) {
				if up {
					m.RedisConnected.Set(1)
				} else {
					m.RedisConnected.Set(0)
				}
				srv.SetServing(ServiceName, up)
			}))
			rb, err := bus.NewRedis(cfg.RedisURL, opts...)
			if err != nil {
				return err
			}
			b = rb
		}
		api.RegisterEventsServer(srv.GRPC(), New(b, m))
		srv.OnStop(func() {
			if err := b.Close(); err != nil {
				log.Warn("close event bus", "error", err)
			}
		})
		return nil
	}
}
