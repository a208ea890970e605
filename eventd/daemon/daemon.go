// Package daemon is eventd as a component of the daemon kit: its settings
// and how it builds its service, run alone by cmd/eventd or beside the other
// components in one process by cmd/flotilla.
//
// eventd serves containerd's events service: it takes the events the other
// services publish and streams them to subscribers, across every eventd of
// the fleet through Redis pub/sub, or within this node when no Redis is
// configured.
package daemon

import (
	"context"
	"flag"
	"os"

	"github.com/flotilla/flotilla/eventd/exchange"
	"github.com/flotilla/flotilla/services/config"
	kit "github.com/flotilla/flotilla/services/daemon"
	"github.com/flotilla/flotilla/services/introspect"
	"github.com/flotilla/flotilla/services/server"
)

// Config is eventd's settings, from its flags and config file.
type Config struct {
	config.Common
	Redis string `toml:"redis"`
}

// Spec describes eventd to the daemon kit, reading its settings into cfg.
func Spec(cfg *Config) kit.Spec {
	return kit.Spec{
		Name:    "eventd",
		Summary: "containerd's events service, fanned out across hosts through Redis pub/sub",
		Config:  cfg,
		Common:  &cfg.Common,
		Flags: func(fs *flag.FlagSet) {
			fs.StringVar(&cfg.Redis, "redis", os.Getenv("REDIS_URL"),
				"Redis shared by every eventd (redis://host:port, unix:///path); empty runs an in-process bus (default $REDIS_URL)")
		},
		Plugins: introspect.Services("events"),
		// Setup reads cfg only once flags and config file are parsed.
		Setup: func(ctx context.Context, srv *server.Server) error {
			return exchange.Setup(exchange.Config{RedisURL: cfg.Redis})(ctx, srv)
		},
	}
}
