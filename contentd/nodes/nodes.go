// Package nodes maps the node a call came through (services/node) to that
// node's snapshotd, so contentd unpacks pulled images where the caller will
// run them. The map comes from contentd's configuration and, for nodes it
// does not name, from the service registry (services/discovery).
package nodes

import (
	"context"
	"errors"
	"fmt"
	"sync"

	diffapi "github.com/containerd/containerd/api/services/diff/v1"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/errdefs"
	"google.golang.org/grpc"

	"github.com/flotilla/flotilla/contentd/transfer"
	"github.com/flotilla/flotilla/services/dial"
	"github.com/flotilla/flotilla/services/discovery"
	"github.com/flotilla/flotilla/services/mtls"
	"github.com/flotilla/flotilla/services/node"
)

// Static finds snapshotd addresses in a fixed map. It is safe for
// concurrent use.
type Static struct {
	byName   map[string]string // node → snapshotd address
	fallback string            // snapshotd of calls naming no known node
	registry *discovery.Registry
	dialer   *dial.Dialer

	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
}

var _ transfer.Nodes = (*Static)(nil)

// NewStatic returns nodes whose snapshotd addresses are byName, then, for
// other nodes, the snapshotd d's registry (nil: none) lists on that node; a
// call naming no node, or a node found nowhere, is served by fallback (the
// snapshotd of a one-node stack). Connections are made on first use, with
// d (contentd's Dialer); one found through the registry follows it
// (discover://snapshotd?node=...).
func NewStatic(d *dial.Dialer, byName map[string]string, fallback string) *Static {
	return &Static{byName: byName, fallback: fallback, registry: d.Registry, dialer: d, conns: map[string]*grpc.ClientConn{}}
}

// Node implements transfer.Nodes.
func (s *Static) Node(ctx context.Context) (transfer.Node, error) {
	name, _ := node.FromIncoming(ctx)
	if name != "" {
		// Only a node's own gateway (or a local process) names it.
		if caller, ok := mtls.CallerFromContext(ctx); ok {
			if err := caller.MayActFor(name); err != nil {
				return transfer.Node{}, err
			}
		}
	}
	addr, ok := s.byName[name]
	if !ok && name != "" && s.registry != nil {
		t := discovery.Target{Service: "snapshotd", Node: name}
		_, err := s.registry.Lookup(ctx, t)
		switch {
		case err == nil:
			addr, ok = t.Address(), true
		case !errdefs.IsNotFound(err):
			return transfer.Node{}, fmt.Errorf("node %q: %w", name, err)
		}
	}
	if !ok {
		addr = s.fallback
	}
	if addr == "" {
		if name == "" {
			return transfer.Node{}, fmt.Errorf("the call names no node and contentd has no default snapshotd (--snapshotd): %w", errdefs.ErrFailedPrecondition)
		}
		return transfer.Node{}, fmt.Errorf("node %q: contentd knows no snapshotd for it (nodes in its config) and has no default (--snapshotd): %w", name, errdefs.ErrNotFound)
	}
	conn, err := s.conn(addr)
	if err != nil {
		return transfer.Node{}, err
	}
	if name == "" {
		name = "default"
	}
	return transfer.Node{Name: name, Snapshots: snapshotsapi.NewSnapshotsClient(conn), Diff: diffapi.NewDiffClient(conn)}, nil
}

func (s *Static) conn(addr string) (*grpc.ClientConn, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, ok := s.conns[addr]; ok {
		return c, nil
	}
	c, err := s.dialer.Dial(addr)
	if err != nil {
		return nil, fmt.Errorf("snapshotd %s: %w", addr, err)
	}
	s.conns[addr] = c
	return c, nil
}

// Close closes the connections.
func (s *Static) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for _, c := range s.conns {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}
