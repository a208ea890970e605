package image

import (
	types "github.com/containerd/containerd/api/types"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// DescriptorFromProto converts containerd's wire descriptor.
func DescriptorFromProto(d *types.Descriptor) ocispec.Descriptor {
	return ocispec.Descriptor{
		MediaType:   d.GetMediaType(),
		Digest:      digest.Digest(d.GetDigest()),
		Size:        d.GetSize(),
		Annotations: d.GetAnnotations(),
	}
}

// DescriptorToProto converts to containerd's wire descriptor.
func DescriptorToProto(d ocispec.Descriptor) *types.Descriptor {
	return &types.Descriptor{
		MediaType:   d.MediaType,
		Digest:      d.Digest.String(),
		Size:        d.Size,
		Annotations: d.Annotations,
	}
}
