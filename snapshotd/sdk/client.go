package sdk

import (
	"context"
	"errors"
	"io"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/flotilla/flotilla/snapshotd/snapshotter"
)

// Client is a snapshotter.Snapshotter served over containerd's snapshots
// API: a plugin process seen from snapshotd. Every call carries the
// caller's context, so deadlines and cancellation reach the plugin; errors
// come back as their errdefs kinds.
type Client struct {
	api  snapshotsapi.SnapshotsClient
	name string
	conn *grpc.ClientConn // set for a plugin's client, which owns it
}

var _ snapshotter.Snapshotter = (*Client)(nil)

// NewClient returns a Client calling the snapshots API on conn.
func NewClient(conn grpc.ClientConnInterface) *Client {
	return &Client{api: snapshotsapi.NewSnapshotsClient(conn)}
}

// NewNamedClient returns a Client that names snapshotter in every request,
// for a server that serves several (snapshotd itself).
func NewNamedClient(conn grpc.ClientConnInterface, snapshotter string) *Client {
	return &Client{api: snapshotsapi.NewSnapshotsClient(conn), name: snapshotter}
}

func opts(o []snapshotter.Opt) (map[string]string, error) {
	var in snapshotter.Info
	for _, f := range o {
		if err := f(&in); err != nil {
			return nil, err
		}
	}
	return in.Labels, nil
}

// Stat implements snapshotter.Snapshotter.
func (c *Client) Stat(ctx context.Context, key string) (snapshotter.Info, error) {
	resp, err := c.api.Stat(ctx, &snapshotsapi.StatSnapshotRequest{Snapshotter: c.name, Key: key})
	if err != nil {
		return snapshotter.Info{}, errgrpc.ToNative(err)
	}
	return InfoFromProto(resp.Info), nil
}

// Update implements snapshotter.Snapshotter.
func (c *Client) Update(ctx context.Context, info snapshotter.Info, fieldpaths ...string) (snapshotter.Info, error) {
	req := &snapshotsapi.UpdateSnapshotRequest{Snapshotter: c.name, Info: InfoToProto(info)}
	if len(fieldpaths) > 0 {
		req.UpdateMask = &fieldmaskpb.FieldMask{Paths: fieldpaths}
	}
	resp, err := c.api.Update(ctx, req)
	if err != nil {
		return snapshotter.Info{}, errgrpc.ToNative(err)
	}
	return InfoFromProto(resp.Info), nil
}

// Usage implements snapshotter.Snapshotter.
func (c *Client) Usage(ctx context.Context, key string) (snapshotter.Usage, error) {
	resp, err := c.api.Usage(ctx, &snapshotsapi.UsageRequest{Snapshotter: c.name, Key: key})
	if err != nil {
		return snapshotter.Usage{}, errgrpc.ToNative(err)
	}
	return snapshotter.Usage{Size: resp.Size, Inodes: resp.Inodes}, nil
}

// Mounts implements snapshotter.Snapshotter.
func (c *Client) Mounts(ctx context.Context, key string) ([]snapshotter.Mount, error) {
	resp, err := c.api.Mounts(ctx, &snapshotsapi.MountsRequest{Snapshotter: c.name, Key: key})
	if err != nil {
		return nil, errgrpc.ToNative(err)
	}
	return MountsFromProto(resp.Mounts), nil
}

// Prepare implements snapshotter.Snapshotter.
func (c *Client) Prepare(ctx context.Context, key, parent string, o ...snapshotter.Opt) ([]snapshotter.Mount, error) {
	l, err := opts(o)
	if err != nil {
		return nil, err
	}
	resp, err := c.api.Prepare(ctx, &snapshotsapi.PrepareSnapshotRequest{Snapshotter: c.name, Key: key, Parent: parent, Labels: l})
	if err != nil {
		return nil, errgrpc.ToNative(err)
	}
	return MountsFromProto(resp.Mounts), nil
}

// View implements snapshotter.Snapshotter.
func (c *Client) View(ctx context.Context, key, parent string, o ...snapshotter.Opt) ([]snapshotter.Mount, error) {
	l, err := opts(o)
	if err != nil {
		return nil, err
	}
	resp, err := c.api.View(ctx, &snapshotsapi.ViewSnapshotRequest{Snapshotter: c.name, Key: key, Parent: parent, Labels: l})
	if err != nil {
		return nil, errgrpc.ToNative(err)
	}
	return MountsFromProto(resp.Mounts), nil
}

// Commit implements snapshotter.Snapshotter.
func (c *Client) Commit(ctx context.Context, name, key string, o ...snapshotter.Opt) error {
	l, err := opts(o)
	if err != nil {
		return err
	}
	_, err = c.api.Commit(ctx, &snapshotsapi.CommitSnapshotRequest{Snapshotter: c.name, Name: name, Key: key, Labels: l})
	return errgrpc.ToNative(err)
}

// Remove implements snapshotter.Snapshotter.
func (c *Client) Remove(ctx context.Context, key string) error {
	_, err := c.api.Remove(ctx, &snapshotsapi.RemoveSnapshotRequest{Snapshotter: c.name, Key: key})
	return errgrpc.ToNative(err)
}

// Walk implements snapshotter.Snapshotter.
func (c *Client) Walk(ctx context.Context, fn snapshotter.WalkFunc, filters ...string) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.api.List(ctx, &snapshotsapi.ListSnapshotsRequest{Snapshotter: c.name, Filters: filters})
	if err != nil {
		return errgrpc.ToNative(err)
	}
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return errgrpc.ToNative(err)
		}
		for _, in := range resp.Info {
			if err := fn(ctx, InfoFromProto(in)); err != nil {
				return err
			}
		}
	}
}

// Close does nothing: the connection belongs to whoever made it (go-plugin
// for a plugin), and closing it must not stop the plugin.
func (c *Client) Close() error { return nil }
