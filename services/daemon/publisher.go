package daemon

import (
	"context"
	"time"

	"github.com/flotilla/flotilla/services/dial"
	"github.com/flotilla/flotilla/services/events"
	"github.com/flotilla/flotilla/services/server"
)

// Publisher returns the events.Publisher a daemon hands its events to: one
// that delivers them to eventd at addr, connecting as the daemon, with its metrics on srv's registry
// and its queue flushed (within a bound) when srv stops; or events.Discard
// when addr is empty.
func Publisher(srv *server.Server, addr string) (events.Publisher, error) {
	if addr == "" {
		return events.Discard{}, nil
	}
	remote, err := events.NewRemote(addr, events.WithLogger(srv.Logger()), events.WithDialer(dial.For(srv)))
	if err != nil {
		return nil, err
	}
	if err := remote.Register(srv.Registry()); err != nil {
		return nil, err
	}
	srv.OnStop(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := remote.Close(ctx); err != nil {
			srv.Logger().Warn("events not delivered before stop", "error", err)
		}
	})
	return remote, nil
}
