package sdk

import (
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/api/types"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/flotilla/flotilla/snapshotd/snapshotter"
)

// The kinds are numbered alike in both; the conversions say so.

// KindToProto converts a kind to containerd's API.
func KindToProto(k snapshotter.Kind) snapshotsapi.Kind { return snapshotsapi.Kind(k) }

// KindFromProto converts a kind from containerd's API.
func KindFromProto(k snapshotsapi.Kind) snapshotter.Kind { return snapshotter.Kind(k) }

// InfoToProto converts an Info to containerd's API.
func InfoToProto(in snapshotter.Info) *snapshotsapi.Info {
	return &snapshotsapi.Info{
		Name:      in.Name,
		Parent:    in.Parent,
		Kind:      KindToProto(in.Kind),
		CreatedAt: timestamppb.New(in.Created),
		UpdatedAt: timestamppb.New(in.Updated),
		Labels:    in.Labels,
	}
}

// InfoFromProto converts an Info from containerd's API.
func InfoFromProto(in *snapshotsapi.Info) snapshotter.Info {
	if in == nil {
		return snapshotter.Info{}
	}
	return snapshotter.Info{
		Kind:    KindFromProto(in.Kind),
		Name:    in.Name,
		Parent:  in.Parent,
		Labels:  in.Labels,
		Created: in.CreatedAt.AsTime(),
		Updated: in.UpdatedAt.AsTime(),
	}
}

// MountsToProto converts mounts to containerd's API.
func MountsToProto(ms []snapshotter.Mount) []*types.Mount {
	out := make([]*types.Mount, len(ms))
	for i, m := range ms {
		out[i] = &types.Mount{Type: m.Type, Source: m.Source, Target: m.Target, Options: m.Options}
	}
	return out
}

// MountsFromProto converts mounts from containerd's API.
func MountsFromProto(ms []*types.Mount) []snapshotter.Mount {
	out := make([]snapshotter.Mount, len(ms))
	for i, m := range ms {
		out[i] = snapshotter.Mount{Type: m.Type, Source: m.Source, Target: m.Target, Options: m.Options}
	}
	return out
}
