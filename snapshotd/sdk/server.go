package sdk

import (
	"context"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/flotilla/flotilla/snapshotd/snapshotter"
)

// listBatch is how many snapshots one List answer carries.
const listBatch = 100

// server serves a Snapshotter as containerd's snapshots API. It ignores the
// requests' snapshotter names: a plugin process is one snapshotter.
type server struct {
	snapshotsapi.UnimplementedSnapshotsServer
	s snapshotter.Snapshotter
}

// NewServer returns the gRPC server adapter of s; errors leave it as gRPC
// statuses carrying their errdefs kinds.
func NewServer(s snapshotter.Snapshotter) snapshotsapi.SnapshotsServer {
	return &server{s: s}
}

func labels(l map[string]string) []snapshotter.Opt {
	if len(l) == 0 {
		return nil
	}
	return []snapshotter.Opt{snapshotter.WithLabels(l)}
}

func (s *server) Prepare(ctx context.Context, req *snapshotsapi.PrepareSnapshotRequest) (*snapshotsapi.PrepareSnapshotResponse, error) {
	ms, err := s.s.Prepare(ctx, req.Key, req.Parent, labels(req.Labels)...)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &snapshotsapi.PrepareSnapshotResponse{Mounts: MountsToProto(ms)}, nil
}

func (s *server) View(ctx context.Context, req *snapshotsapi.ViewSnapshotRequest) (*snapshotsapi.ViewSnapshotResponse, error) {
	ms, err := s.s.View(ctx, req.Key, req.Parent, labels(req.Labels)...)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &snapshotsapi.ViewSnapshotResponse{Mounts: MountsToProto(ms)}, nil
}

func (s *server) Mounts(ctx context.Context, req *snapshotsapi.MountsRequest) (*snapshotsapi.MountsResponse, error) {
	ms, err := s.s.Mounts(ctx, req.Key)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &snapshotsapi.MountsResponse{Mounts: MountsToProto(ms)}, nil
}

func (s *server) Commit(ctx context.Context, req *snapshotsapi.CommitSnapshotRequest) (*emptypb.Empty, error) {
	if err := s.s.Commit(ctx, req.Name, req.Key, labels(req.Labels)...); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &emptypb.Empty{}, nil
}

func (s *server) Remove(ctx context.Context, req *snapshotsapi.RemoveSnapshotRequest) (*emptypb.Empty, error) {
	if err := s.s.Remove(ctx, req.Key); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &emptypb.Empty{}, nil
}

func (s *server) Stat(ctx context.Context, req *snapshotsapi.StatSnapshotRequest) (*snapshotsapi.StatSnapshotResponse, error) {
	in, err := s.s.Stat(ctx, req.Key)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &snapshotsapi.StatSnapshotResponse{Info: InfoToProto(in)}, nil
}

func (s *server) Update(ctx context.Context, req *snapshotsapi.UpdateSnapshotRequest) (*snapshotsapi.UpdateSnapshotResponse, error) {
	in, err := s.s.Update(ctx, InfoFromProto(req.Info), req.GetUpdateMask().GetPaths()...)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &snapshotsapi.UpdateSnapshotResponse{Info: InfoToProto(in)}, nil
}

func (s *server) List(req *snapshotsapi.ListSnapshotsRequest, stream snapshotsapi.Snapshots_ListServer) error {
	var batch []*snapshotsapi.Info
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		err := stream.Send(&snapshotsapi.ListSnapshotsResponse{Info: batch})
		batch = nil
		return err
	}
	err := s.s.Walk(stream.Context(), func(_ context.Context, in snapshotter.Info) error {
		batch = append(batch, InfoToProto(in))
		if len(batch) >= listBatch {
			return flush()
		}
		return nil
	}, req.Filters...)
	if err == nil {
		err = flush()
	}
	return errgrpc.ToGRPC(err)
}

func (s *server) Usage(ctx context.Context, req *snapshotsapi.UsageRequest) (*snapshotsapi.UsageResponse, error) {
	u, err := s.s.Usage(ctx, req.Key)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &snapshotsapi.UsageResponse{Size: u.Size, Inodes: u.Inodes}, nil
}

// Cleanup has nothing to do: backends remove a snapshot's data with it.
func (s *server) Cleanup(context.Context, *snapshotsapi.CleanupRequest) (*emptypb.Empty, error) {
	return &emptypb.Empty{}, nil
}
