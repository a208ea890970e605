package gc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc"

	"github.com/flotilla/flotilla/services/dial"
	"github.com/flotilla/flotilla/services/discovery"
	"github.com/flotilla/flotilla/services/gc"
)

// nodeServices are the daemons of a node that keep state a collection
// must mark: containers (taskd) and the snapshots they use (snapshotd).
var nodeServices = []string{"snapshotd", "taskd"}

// NodeStore is a store of one node's daemon.
type NodeStore interface {
	gc.Store
	// Node names the node the daemon runs on.
	Node() string
}

// UnreachableError is a collection stopped before anything was swept
// because nodes that may hold references could not all be asked.
type UnreachableError struct {
	// Nodes maps each node left out to why.
	Nodes map[string]string
}

func (e *UnreachableError) Error() string {
	var parts []string
	for _, n := range slices.Sorted(maps.Keys(e.Nodes)) {
		parts = append(parts, fmt.Sprintf("node %s: %s", n, e.Nodes[n]))
	}
	return "nodes that may reference what would be swept cannot be asked: " + strings.Join(parts, "; ") +
		" (once a node is gone for good: flotctl gc --forget-node NAME)"
}

// Unwrap classifies the error: the collection may succeed once the nodes
// are back.
func (e *UnreachableError) Unwrap() error { return errdefs.ErrUnavailable }

// Fleet finds the stores of every node: each snapshotd and taskd the
// service registry lists. A node once seen is remembered (in a file, so
// across restarts) with the daemons it ran, and every collection needs
// each of them: a node whose daemons are down, or no longer registered,
// may still hold containers and snapshots that reference contentd's
// objects, so the collection stops before sweeping until the node is back
// or an operator forgets it (Forget). It is safe for concurrent use.
type Fleet struct {
	dialer   *dial.Dialer
	registry *discovery.Registry
	path     string // the remembered nodes, JSON
	log      *slog.Logger

	mu    sync.Mutex
	known map[string]knownNode // node → what it ran
	conns map[string]*grpc.ClientConn
}

type knownNode struct {
	Services []string  `json:"services"`
	Seen     time.Time `json:"seen"`
}

// OpenFleet returns the fleet of the nodes d's registry lists, remembering
// them in path; it connects to them with d (contentd's Dialer, which has a
// registry).
func OpenFleet(d *dial.Dialer, path string, log *slog.Logger) (*Fleet, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	f := &Fleet{dialer: d, registry: d.Registry, path: path, log: log, known: map[string]knownNode{}, conns: map[string]*grpc.ClientConn{}}
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("gc nodes %s: %w", path, err)
	default:
		if err := json.Unmarshal(b, &f.known); err != nil {
			return nil, fmt.Errorf("gc nodes %s: %w", path, err)
		}
	}
	return f, nil
}

// Watch records the nodes the registry lists every discovery interval
// until ctx ends, so a node that comes and goes between two collections
// is still waited for.
func (f *Fleet) Watch(ctx context.Context) {
	t := time.NewTicker(f.registry.Interval())
	defer t.Stop()
	for {
		if _, err := f.list(ctx); err != nil && ctx.Err() == nil {
			f.log.Debug("gc: nodes not listed", "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// list reads the registry, remembers the nodes it names, and returns the
// instances of nodeServices by node.
func (f *Fleet) list(ctx context.Context) (map[string][]discovery.Instance, error) {
	byNode := map[string][]discovery.Instance{}
	for _, service := range nodeServices {
		insts, err := f.registry.List(ctx, service)
		if err != nil {
			return nil, err
		}
		for _, inst := range insts {
			byNode[inst.Node] = append(byNode[inst.Node], inst)
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	changed := false
	now := time.Now()
	for node, insts := range byNode {
		k := f.known[node]
		for _, inst := range insts {
			if !slices.Contains(k.Services, inst.Service) {
				k.Services = append(k.Services, inst.Service)
				slices.Sort(k.Services)
				changed = true
			}
		}
		if _, ok := f.known[node]; !ok {
			changed = true
			f.log.Info("gc: a new node takes part in collections", "node", node, "services", k.Services)
		}
		k.Seen = now
		f.known[node] = k
	}
	if changed {
		if err := f.saveLocked(); err != nil {
			return nil, err
		}
	}
	return byNode, nil
}

func (f *Fleet) saveLocked() error {
	b, err := json.MarshalIndent(f.known, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(f.path), 0o700); err != nil {
		return err
	}
	tmp := f.path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("gc nodes: %w", err)
	}
	if err := os.Rename(tmp, f.path); err != nil {
		return fmt.Errorf("gc nodes: %w", err)
	}
	return nil
}

// Stores implements Peers: every registered snapshotd and taskd, or an
// UnreachableError naming the remembered nodes some of whose daemons are
// not registered.
func (f *Fleet) Stores(ctx context.Context) ([]gc.Store, error) {
	byNode, err := f.list(ctx)
	if err != nil {
		return nil, fmt.Errorf("list the nodes: %w", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	missing := map[string]string{}
	for node, k := range f.known {
		var absent []string
		for _, service := range k.Services {
			if !slices.ContainsFunc(byNode[node], func(i discovery.Instance) bool { return i.Service == service }) {
				absent = append(absent, service)
			}
		}
		if len(absent) > 0 {
			missing[node] = fmt.Sprintf("%s not registered (last seen %s)", strings.Join(absent, " and "), k.Seen.UTC().Format(time.RFC3339))
		}
	}
	if len(missing) > 0 {
		return nil, &UnreachableError{Nodes: missing}
	}
	var stores []gc.Store
	used := map[string]bool{}
	for _, node := range slices.Sorted(maps.Keys(byNode)) {
		for _, inst := range byNode[node] {
			if used[inst.Address] {
				continue // one daemon registered twice (a restart within the TTL)
			}
			conn, ok := f.conns[inst.Address]
			if !ok {
				conn, err = f.dialer.Dial(inst.Address)
				if err != nil {
					return nil, &UnreachableError{Nodes: map[string]string{node: fmt.Sprintf("%s at %s: %v", inst.Service, inst.Address, err)}}
				}
				f.conns[inst.Address] = conn
			}
			used[inst.Address] = true
			stores = append(stores, nodeStore{Store: gc.NewRemote(inst.Service+"@"+node, conn), node: node})
		}
	}
	for addr, conn := range f.conns {
		if !used[addr] {
			conn.Close()
			delete(f.conns, addr)
		}
	}
	return stores, nil
}

// Forget makes collections stop waiting for node, which must be gone for
// good: what its daemons referenced is swept by the next collection. A
// node whose daemons are registered is not forgotten (FailedPrecondition).
func (f *Fleet) Forget(ctx context.Context, node string) error {
	byNode, err := f.list(ctx)
	if err != nil {
		return fmt.Errorf("list the nodes: %w", err)
	}
	if len(byNode[node]) > 0 {
		return fmt.Errorf("node %s: its %s are registered; stop them first: %w", node, byNode[node][0].Service, errdefs.ErrFailedPrecondition)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.known[node]; !ok {
		return fmt.Errorf("node %s: not known to garbage collection: %w", node, errdefs.ErrNotFound)
	}
	delete(f.known, node)
	if err := f.saveLocked(); err != nil {
		return err
	}
	f.log.Warn("gc: node forgotten; what only it referenced goes with the next collection", "node", node)
	return nil
}

// Close closes the connections.
func (f *Fleet) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	var errs []error
	for addr, c := range f.conns {
		errs = append(errs, c.Close())
		delete(f.conns, addr)
	}
	return errors.Join(errs...)
}

type nodeStore struct {
	gc.Store
	node string
}

func (s nodeStore) Node() string { return s.node }
