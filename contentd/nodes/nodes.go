// Package nodes maps the node a call came through (services/node) to that
// node's snapshotd, so contentd unpacks pulled images where the caller will
// run them. The map comes from contentd's configuration for now; discovery
// through the service registry will fill it later.
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
	"github.com/flotilla/flotilla/services/node"
)

// Static finds snapshotd addresses in a fixed map. It is safe for
// concurrent use.
type Static struct {
	byName   map[string]string // node → snapshotd address
	fallback string            // snapshotd of calls naming no known node

	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
}

var _ transfer.Nodes = (*Static)(nil)

// NewStatic returns nodes whose snapshotd addresses are byName; a call
// naming no node, or a node not in byName, is served by fallback (the
// snapshotd of a one-node stack). Connections are made on first use.
func NewStatic(byName map[string]string, fallback string) *Static {
	return &Static{byName: byName, fallback: fallback, conns: map[string]*grpc.ClientConn{}}
}

// Node implements transfer.Nodes.
func (s *Static) Node(ctx context.Context) (transfer.Node, error) {
	name, _ := node.FromIncoming(ctx)
	addr, ok := s.byName[name]
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
	c, err := dial.Dial(addr)
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
