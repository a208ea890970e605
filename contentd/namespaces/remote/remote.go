// Package remote tells contentd's namespaces service what taskd and
// snapshotd hold, by asking them over gRPC: what they hold in one namespace
// through containerd's own APIs (taskd's containers through the Containers
// API, snapshotd's snapshots through the Snapshots API in every snapshotter
// its admin API lists), and which namespaces they hold anything in through
// Flotilla's Holdings API (flotilla.namespaces.v1).
package remote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"time"

	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"google.golang.org/grpc"

	namespacesv1 "github.com/flotilla/flotilla/proto/namespaces/v1"
	snapshotterv1 "github.com/flotilla/flotilla/proto/snapshotter/v1"
	"github.com/flotilla/flotilla/services/dial"
	"github.com/flotilla/flotilla/services/namespace"
)

// askWait bounds a question to taskd and snapshotd: long enough for one
// that is restarting to answer, short enough that a namespace call with
// one of them down fails (Unavailable) rather than hangs.
const askWait = 5 * time.Second

// Occupants asks taskd and snapshotd what they hold in a namespace. It
// implements namespaces.Occupants.
type Occupants struct {
	containers   containersapi.ContainersClient   // nil: taskd is not asked
	snapshotters snapshotterv1.SnapshottersClient // nil: snapshotd is not asked
	snapshots    snapshotsapi.SnapshotsClient
	holdings     map[string]namespacesv1.HoldingsClient // by service name
	conns        []*grpc.ClientConn
}

// New returns Occupants asking taskd at address taskd and snapshotd at
// address snapshotd (unix socket or tcp://host:port), connecting with d
// (contentd's Dialer); an empty address leaves that service unasked, and
// with both empty New returns nil. Connections are made lazily, on the
// first question; Close releases them.
func New(d *dial.Dialer, taskd, snapshotd string) (*Occupants, error) {
	if taskd == "" && snapshotd == "" {
		return nil, nil
	}
	o := &Occupants{holdings: map[string]namespacesv1.HoldingsClient{}}
	// A question waits for its peer's connection (askWait bounds it), so a
	// service that has just restarted is asked again rather than failing
	// the question on the last error of a connection backing off.
	waitForReady := grpc.WithDefaultCallOptions(grpc.WaitForReady(true))
	if taskd != "" {
		conn, err := d.Dial(taskd, waitForReady)
		if err != nil {
			return nil, fmt.Errorf("taskd: %w", err)
		}
		o.conns = append(o.conns, conn)
		o.containers = containersapi.NewContainersClient(conn)
		o.holdings["taskd"] = namespacesv1.NewHoldingsClient(conn)
	}
	if snapshotd != "" {
		conn, err := d.Dial(snapshotd, waitForReady)
		if err != nil {
			o.Close()
			return nil, fmt.Errorf("snapshotd: %w", err)
		}
		o.conns = append(o.conns, conn)
		o.snapshotters = snapshotterv1.NewSnapshottersClient(conn)
		o.snapshots = snapshotsapi.NewSnapshotsClient(conn)
		o.holdings["snapshotd"] = namespacesv1.NewHoldingsClient(conn)
	}
	return o, nil
}

// Close closes the connections.
func (o *Occupants) Close() error {
	var errs []error
	for _, c := range o.conns {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}

// Holds names "containers" if taskd has any container in namespace ns and
// "snapshots" if any of snapshotd's snapshotters has a snapshot there. An
// error names the service that could not answer.
func (o *Occupants) Holds(ctx context.Context, ns string) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, askWait)
	defer cancel()
	// Ask in the namespace being deleted, under no lease of the caller's.
	ctx = namespace.WithLease(namespace.WithNamespace(ctx, ns), "")
	var held []string
	if o.containers != nil {
		resp, err := o.containers.List(ctx, &containersapi.ListContainersRequest{})
		if err != nil {
			return nil, fmt.Errorf("taskd: list containers: %w", err)
		}
		if len(resp.GetContainers()) > 0 {
			held = append(held, "containers")
		}
	}
	if o.snapshotters != nil {
		has, err := o.hasSnapshots(ctx)
		if err != nil {
			return nil, fmt.Errorf("snapshotd: %w", err)
		}
		if has {
			held = append(held, "snapshots")
		}
	}
	return held, nil
}

// Namespaces names, sorted, every namespace in which taskd or snapshotd
// holds a record. A service that does not answer is named in the error;
// the names the others gave are returned all the same.
func (o *Occupants) Namespaces(ctx context.Context) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, askWait)
	defer cancel()
	var names []string
	var errs []error
	for _, service := range slices.Sorted(maps.Keys(o.holdings)) {
		resp, err := o.holdings[service].List(ctx, &namespacesv1.ListHoldingsRequest{})
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: list holdings: %w", service, err))
			continue
		}
		for _, h := range resp.GetHoldings() {
			names = append(names, h.GetNamespace())
		}
	}
	return slices.Compact(slices.Sorted(slices.Values(names))), errors.Join(errs...)
}

// hasSnapshots reports whether any snapshotter has a snapshot in ctx's namespace.
func (o *Occupants) hasSnapshots(ctx context.Context) (bool, error) {
	resp, err := o.snapshotters.List(ctx, &snapshotterv1.ListSnapshottersRequest{})
	if err != nil {
		return false, fmt.Errorf("list snapshotters: %w", err)
	}
	for _, sn := range resp.GetSnapshotters() {
		has, err := o.snapshotterHas(ctx, sn.GetName())
		if err != nil {
			return false, fmt.Errorf("snapshotter %q: list snapshots: %w", sn.GetName(), err)
		}
		if has {
			return true, nil
		}
	}
	return false, nil
}

// snapshotterHas reports whether snapshotter name has a snapshot in ctx's
// namespace, reading no further than the first.
func (o *Occupants) snapshotterHas(ctx context.Context, name string) (bool, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := o.snapshots.List(ctx, &snapshotsapi.ListSnapshotsRequest{Snapshotter: name})
	if err != nil {
		return false, err
	}
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		if len(resp.GetInfo()) > 0 {
			return true, nil
		}
	}
}
