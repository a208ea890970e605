// Package image reads an image's manifest and config from a containerd
// content store for one platform, and unpacks its layers into a snapshotter
// through the Snapshots and Diff services, as containerd's clients do.
package image

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	digest "github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Docker's media types, which containerd treats as their OCI equivalents.
const (
	MediaTypeDockerManifest     = "application/vnd.docker.distribution.manifest.v2+json"
	MediaTypeDockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"
	MediaTypeDockerConfig       = "application/vnd.docker.container.image.v1+json"
)

// maxBlob bounds the manifests, indexes and configs read into memory.
const maxBlob = 16 << 20

// Resolved is an image's manifest and config for one platform.
type Resolved struct {
	// Name is the image record's name; Target its target descriptor.
	Name   string
	Target ocispec.Descriptor
	// ManifestDesc is the manifest chosen for the platform.
	ManifestDesc ocispec.Descriptor
	Manifest     ocispec.Manifest
	Config       ocispec.Image
	// ChainIDs are the snapshot names of the layers, bottom first: the
	// top one is the rootfs's parent.
	ChainIDs []digest.Digest
}

// Get returns the image record called name, NotFound when there is none.
func Get(ctx context.Context, images imagesapi.ImagesClient, name string) (*imagesapi.Image, error) {
	resp, err := images.Get(ctx, &imagesapi.GetImageRequest{Name: name})
	if err != nil {
		if errdefs.IsNotFound(err) {
			return nil, fmt.Errorf("image %q: not found (flotctl pull %s, or flotctl images ls): %w", name, name, errdefs.ErrNotFound)
		}
		return nil, fmt.Errorf("image %q: %w", name, err)
	}
	return resp.Image, nil
}

// Resolve reads the image called name and picks the manifest that best
// matches platform out of an index, then reads its config.
func Resolve(ctx context.Context, images imagesapi.ImagesClient, content contentapi.ContentClient, name string, platform platforms.MatchComparer) (*Resolved, error) {
	img, err := Get(ctx, images, name)
	if err != nil {
		return nil, err
	}
	target := DescriptorFromProto(img.Target)
	md, err := ChooseManifest(ctx, content, target, platform)
	if err != nil {
		return nil, fmt.Errorf("image %q: %w", name, err)
	}
	var m ocispec.Manifest
	if err := ReadJSON(ctx, content, md, &m); err != nil {
		return nil, fmt.Errorf("image %q: manifest: %w", name, err)
	}
	var cfg ocispec.Image
	if err := ReadJSON(ctx, content, m.Config, &cfg); err != nil {
		return nil, fmt.Errorf("image %q: config: %w", name, err)
	}
	if len(cfg.RootFS.DiffIDs) != len(m.Layers) {
		return nil, fmt.Errorf("image %q: config lists %d diff IDs for %d layers: %w", name, len(cfg.RootFS.DiffIDs), len(m.Layers), errdefs.ErrInvalidArgument)
	}
	return &Resolved{
		Name: name, Target: target, ManifestDesc: md, Manifest: m, Config: cfg,
		ChainIDs: identity.ChainIDs(append([]digest.Digest(nil), cfg.RootFS.DiffIDs...)),
	}, nil
}

// ChooseManifest returns desc itself when it is a manifest, or the entry of
// the index it names that best matches platform (indexes nest).
func ChooseManifest(ctx context.Context, content contentapi.ContentClient, desc ocispec.Descriptor, platform platforms.MatchComparer) (ocispec.Descriptor, error) {
	for depth := 0; depth < 8; depth++ {
		switch desc.MediaType {
		case ocispec.MediaTypeImageManifest, MediaTypeDockerManifest:
			return desc, nil
		case ocispec.MediaTypeImageIndex, MediaTypeDockerManifestList:
			var idx ocispec.Index
			if err := ReadJSON(ctx, content, desc, &idx); err != nil {
				return ocispec.Descriptor{}, fmt.Errorf("index: %w", err)
			}
			next, err := pick(idx.Manifests, platform)
			if err != nil {
				return ocispec.Descriptor{}, err
			}
			desc = next
		default:
			return ocispec.Descriptor{}, fmt.Errorf("media type %q is not an image manifest or index: %w", desc.MediaType, errdefs.ErrNotImplemented)
		}
	}
	return ocispec.Descriptor{}, fmt.Errorf("indexes nested too deep: %w", errdefs.ErrInvalidArgument)
}

// pick returns the best match for platform among an index's entries;
// entries without a platform match any (they are nested indexes or a
// single-platform image's manifest).
func pick(entries []ocispec.Descriptor, platform platforms.MatchComparer) (ocispec.Descriptor, error) {
	var found []ocispec.Descriptor
	for _, d := range entries {
		if d.Platform == nil || platform.Match(*d.Platform) {
			found = append(found, d)
		}
	}
	if len(found) == 0 {
		var have []string
		for _, d := range entries {
			if d.Platform != nil {
				have = append(have, platforms.Format(*d.Platform))
			}
		}
		return ocispec.Descriptor{}, fmt.Errorf("no manifest for this platform (the image has %v; choose one with --platform): %w", have, errdefs.ErrNotFound)
	}
	sort.SliceStable(found, func(i, j int) bool {
		if found[i].Platform == nil || found[j].Platform == nil {
			return found[i].Platform != nil
		}
		return platform.Less(*found[i].Platform, *found[j].Platform)
	})
	return found[0], nil
}

// ReadJSON reads the blob desc names (at most 16 MiB) and decodes it into v.
func ReadJSON(ctx context.Context, content contentapi.ContentClient, desc ocispec.Descriptor, v any) error {
	if desc.Size > maxBlob {
		return fmt.Errorf("blob %s is %d bytes, more than %d: %w", desc.Digest, desc.Size, maxBlob, errdefs.ErrInvalidArgument)
	}
	b, err := ReadBlob(ctx, content, desc.Digest)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("blob %s: %w", desc.Digest, err)
	}
	return nil
}

// ReadBlob reads a whole blob from content and checks its digest.
func ReadBlob(ctx context.Context, content contentapi.ContentClient, dgst digest.Digest) ([]byte, error) {
	stream, err := content.Read(ctx, &contentapi.ReadContentRequest{Digest: dgst.String()})
	if err != nil {
		return nil, fmt.Errorf("read blob %s: %w", dgst, err)
	}
	var b []byte
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read blob %s: %w", dgst, err)
		}
		b = append(b, resp.Data...)
		if len(b) > maxBlob {
			return nil, fmt.Errorf("blob %s is larger than %d bytes: %w", dgst, maxBlob, errdefs.ErrInvalidArgument)
		}
	}
	if got := dgst.Algorithm().FromBytes(b); got != dgst {
		return nil, fmt.Errorf("blob %s read back as %s: %w", dgst, got, errdefs.ErrDataLoss)
	}
	return b, nil
}
