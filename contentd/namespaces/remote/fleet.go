package remote

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/flotilla/flotilla/services/dial"
	"github.com/flotilla/flotilla/services/discovery"
)

// Fleet asks every node what it holds: each taskd and snapshotd the
// service registry lists, and the statically configured pair (a one-node
// stack, or services outside the registry). It implements
// namespaces.Occupants. An instance that does not answer fails the
// question, naming its node: a namespace is deleted only when every node
// could say it holds nothing there.
type Fleet struct {
	dialer           *dial.Dialer
	registry         *discovery.Registry
	taskd, snapshotd string // static addresses, "" for none
	mu               sync.Mutex
	byAddr           map[string]*Occupants // "taskd <address>" or "snapshotd <address>"
}

// NewFleet returns a Fleet asking the instances d's registry lists and the
// static taskd and snapshotd (either may be ""), connecting with d
// (contentd's Dialer, which has a registry). Close releases its
// connections.
func NewFleet(d *dial.Dialer, taskd, snapshotd string) *Fleet {
	return &Fleet{dialer: d, registry: d.Registry, taskd: taskd, snapshotd: snapshotd, byAddr: map[string]*Occupants{}}
}

// member is one service instance the fleet asks.
type member struct {
	who string // "taskd on node b (10.0.0.2:7003)"
	occ *Occupants
}

// members returns the instances to ask now, dropping connections to
// instances no longer registered.
func (f *Fleet) members(ctx context.Context) ([]member, error) {
	type want struct{ service, node, addr string }
	var wants []want
	if f.taskd != "" {
		wants = append(wants, want{"taskd", "(configured)", f.taskd})
	}
	if f.snapshotd != "" {
		wants = append(wants, want{"snapshotd", "(configured)", f.snapshotd})
	}
	for _, service := range []string{"taskd", "snapshotd"} {
		insts, err := f.registry.List(ctx, service)
		if err != nil {
			return nil, err
		}
		for _, inst := range insts {
			wants = append(wants, want{service, inst.Node, inst.Address})
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []member
	seen := map[string]bool{}
	for _, w := range wants {
		k := w.service + " " + w.addr
		if seen[k] {
			continue
		}
		seen[k] = true
		occ, ok := f.byAddr[k]
		if !ok {
			var err error
			if w.service == "taskd" {
				occ, err = New(f.dialer, w.addr, "")
			} else {
				occ, err = New(f.dialer, "", w.addr)
			}
			if err != nil {
				return nil, fmt.Errorf("%s on node %s (%s): %w", w.service, w.node, w.addr, err)
			}
			f.byAddr[k] = occ
		}
		out = append(out, member{who: fmt.Sprintf("%s on node %s (%s)", w.service, w.node, w.addr), occ: occ})
	}
	for k, occ := range f.byAddr {
		if !seen[k] {
			occ.Close()
			delete(f.byAddr, k)
		}
	}
	return out, nil
}

// Holds implements namespaces.Occupants over every node.
func (f *Fleet) Holds(ctx context.Context, ns string) ([]string, error) {
	members, err := f.members(ctx)
	if err != nil {
		return nil, err
	}
	var held []string
	for _, m := range members {
		kinds, err := m.occ.Holds(ctx, ns)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", m.who, err)
		}
		held = append(held, kinds...)
	}
	slices.Sort(held)
	return slices.Compact(held), nil
}

// Namespaces implements namespaces.Occupants over every node.
func (f *Fleet) Namespaces(ctx context.Context) ([]string, error) {
	members, err := f.members(ctx)
	if err != nil {
		return nil, err
	}
	var names []string
	var errs []error
	for _, m := range members {
		n, err := m.occ.Namespaces(ctx)
		names = append(names, n...)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", m.who, err))
		}
	}
	slices.Sort(names)
	return slices.Compact(names), errors.Join(errs...)
}

// Close closes every connection.
func (f *Fleet) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	var errs []error
	for k, occ := range f.byAddr {
		errs = append(errs, occ.Close())
		delete(f.byAddr, k)
	}
	return errors.Join(errs...)
}
