package gc

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc"

	"github.com/flotilla/flotilla/services/dial"
	"github.com/flotilla/flotilla/services/gc"
)

// StaticPeers are the stores at fixed addresses: the node's taskd and
// snapshotd from contentd's configuration. Snapshots are only collected
// where the containers that use them are known, so a snapshotd takes part
// only together with its node's taskd. With a service registry, Fleet
// finds every node's instead.
type StaticPeers struct {
	stores []gc.Store
	conns  []*grpc.ClientConn
}

// NewStaticPeers returns the peers at the addresses given (unix socket or
// tcp://host:port), connecting with d (contentd's Dialer). With snapshotd
// but no taskd, snapshotd is left out.
func NewStaticPeers(d *dial.Dialer, taskd, snapshotd string) (*StaticPeers, error) {
	p := &StaticPeers{}
	if taskd == "" {
		return p, nil
	}
	for _, s := range []struct{ name, addr string }{{"taskd", taskd}, {"snapshotd", snapshotd}} {
		if s.addr == "" {
			continue
		}
		conn, err := d.Dial(s.addr)
		if err != nil {
			p.Close()
			return nil, fmt.Errorf("%s: %w", s.name, err)
		}
		p.conns = append(p.conns, conn)
		p.stores = append(p.stores, gc.NewRemote(s.name, conn))
	}
	return p, nil
}

// Stores implements Peers.
func (p *StaticPeers) Stores(context.Context) ([]gc.Store, error) { return p.stores, nil }

// Close closes the connections.
func (p *StaticPeers) Close() error {
	var errs []error
	for _, c := range p.conns {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}
