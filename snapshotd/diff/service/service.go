// Package service serves containerd's Diff API
// (containerd.services.diff.v1.Diff) over a diff.Differ.
package service

import (
	"context"
	"fmt"

	diffapi "github.com/containerd/containerd/api/services/diff/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc"

	"github.com/flotilla/flotilla/services/contentclient"
	"github.com/flotilla/flotilla/services/namespace"
	"github.com/flotilla/flotilla/snapshotd/diff"
	"github.com/flotilla/flotilla/snapshotd/diff/content"
)

// Service is the Diff gRPC service.
type Service struct {
	diffapi.UnimplementedDiffServer
	differ *diff.Differ
}

// New returns the Diff service reading layers from p and writing new ones
// to i (both usually content.NewRemote of a connection to contentd).
func New(p content.Provider, i content.Ingester, opts ...diff.Option) *Service {
	return &Service{differ: diff.New(p, i, opts...)}
}

// Register registers the service on srv.
func (s *Service) Register(srv grpc.ServiceRegistrar) {
	diffapi.RegisterDiffServer(srv, s)
}

// Apply applies a layer onto mounts. Payloads (stream processor
// configuration, for encrypted layers) are not supported: a layer that
// needs one has a media type Apply answers NotImplemented.
func (s *Service) Apply(ctx context.Context, req *diffapi.ApplyRequest) (*diffapi.ApplyResponse, error) {
	if _, err := namespace.Required(ctx); err != nil {
		return nil, err
	}
	desc, err := fromProto(req.GetDiff())
	if err != nil {
		return nil, err
	}
	var opts []diff.ApplyOption
	if contentclient.FollowAsked(ctx) {
		// The caller (contentd's pull) is still fetching the layer: read
		// it as it arrives. contentd verifies the blob as it commits it,
		// and the caller keeps the snapshot only once it has.
		ctx = contentclient.WithFollow(ctx)
		opts = append(opts, diff.WithBlobDigestCheckedByCaller())
	}
	if req.GetSyncFs() {
		opts = append(opts, diff.WithSyncFS())
	}
	applied, err := s.differ.Apply(ctx, desc, req.GetMounts(), opts...)
	if err != nil {
		return nil, err
	}
	return &diffapi.ApplyResponse{Applied: toProto(applied)}, nil
}

// Diff writes the difference between two mounts as a layer into the
// content store.
func (s *Service) Diff(ctx context.Context, req *diffapi.DiffRequest) (*diffapi.DiffResponse, error) {
	if _, err := namespace.Required(ctx); err != nil {
		return nil, err
	}
	var opts []diff.CompareOption
	if mt := req.GetMediaType(); mt != "" {
		opts = append(opts, diff.WithMediaType(mt))
	}
	if ref := req.GetRef(); ref != "" {
		opts = append(opts, diff.WithReference(ref))
	}
	if l := req.GetLabels(); len(l) > 0 {
		opts = append(opts, diff.WithLabels(l))
	}
	if ts := req.GetSourceDateEpoch(); ts != nil {
		opts = append(opts, diff.WithSourceDateEpoch(ts.AsTime()))
	}
	desc, err := s.differ.Compare(ctx, req.GetLeft(), req.GetRight(), opts...)
	if err != nil {
		return nil, err
	}
	return &diffapi.DiffResponse{Diff: toProto(desc)}, nil
}

func fromProto(d *types.Descriptor) (ocispec.Descriptor, error) {
	if d == nil {
		return ocispec.Descriptor{}, fmt.Errorf("missing diff descriptor: %w", errdefs.ErrInvalidArgument)
	}
	dg, err := digest.Parse(d.GetDigest())
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("diff digest %q: %v: %w", d.GetDigest(), err, errdefs.ErrInvalidArgument)
	}
	return ocispec.Descriptor{MediaType: d.GetMediaType(), Digest: dg, Size: d.GetSize(), Annotations: d.GetAnnotations()}, nil
}

func toProto(d ocispec.Descriptor) *types.Descriptor {
	return &types.Descriptor{MediaType: d.MediaType, Digest: d.Digest.String(), Size: d.Size, Annotations: d.Annotations}
}
