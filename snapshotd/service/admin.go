package service

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/emptypb"

	snapshotterv1 "github.com/flotilla/flotilla/proto/snapshotter/v1"
	"github.com/flotilla/flotilla/snapshotd/host"
)

// Admin serves Flotilla's Snapshotters API (flotilla.snapshotd.v1): the
// runtime management of snapshotd's backends.
type Admin struct {
	snapshotterv1.UnimplementedSnapshottersServer
	host *host.Host
}

// NewAdmin returns the admin service over h.
func NewAdmin(h *host.Host) *Admin { return &Admin{host: h} }

// Register registers the service on srv.
func (a *Admin) Register(srv *grpc.Server) { snapshotterv1.RegisterSnapshottersServer(srv, a) }

func toProto(st host.Status) *snapshotterv1.Snapshotter {
	return &snapshotterv1.Snapshotter{
		Name:            st.Name,
		Path:            st.Path,
		Pid:             int64(st.Pid),
		State:           st.State,
		ActiveSnapshots: int64(st.Active),
		Root:            st.Root,
		Restarts:        int64(st.Restarts),
		Error:           st.Error,
	}
}

// List implements Snapshotters.List.
func (a *Admin) List(ctx context.Context, _ *snapshotterv1.ListSnapshottersRequest) (*snapshotterv1.ListSnapshottersResponse, error) {
	var out []*snapshotterv1.Snapshotter
	for _, st := range a.host.List(ctx) {
		out = append(out, toProto(st))
	}
	return &snapshotterv1.ListSnapshottersResponse{Snapshotters: out}, nil
}

// Add implements Snapshotters.Add.
func (a *Admin) Add(ctx context.Context, req *snapshotterv1.AddSnapshotterRequest) (*snapshotterv1.SnapshotterResponse, error) {
	st, err := a.host.Add(ctx, req.Name, req.Path)
	if err != nil {
		return nil, err
	}
	return &snapshotterv1.SnapshotterResponse{Snapshotter: toProto(st)}, nil
}

// Replace implements Snapshotters.Replace.
func (a *Admin) Replace(ctx context.Context, req *snapshotterv1.ReplaceSnapshotterRequest) (*snapshotterv1.SnapshotterResponse, error) {
	st, err := a.host.Replace(ctx, req.Name, req.Path)
	if err != nil {
		return nil, err
	}
	return &snapshotterv1.SnapshotterResponse{Snapshotter: toProto(st)}, nil
}

// Remove implements Snapshotters.Remove.
func (a *Admin) Remove(ctx context.Context, req *snapshotterv1.RemoveSnapshotterRequest) (*emptypb.Empty, error) {
	if err := a.host.Remove(ctx, req.Name, req.Force); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}
