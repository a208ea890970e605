package transfer

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/flotilla/flotilla/contentd/content"
)

// children returns what desc (read from store) refers to: an index's
// manifests that match (all when match is nil), a manifest's config and
// layers. Other blobs have none.
func children(ctx context.Context, store content.Provider, desc ocispec.Descriptor, match platforms.Matcher) ([]ocispec.Descriptor, error) {
	switch {
	case isIndex(desc.MediaType):
		data, err := readBlob(ctx, store, desc)
		if err != nil {
			return nil, err
		}
		var idx ocispec.Index
		if err := json.Unmarshal(data, &idx); err != nil {
			return nil, fmt.Errorf("index %s: %v: %w", desc.Digest, err, errdefs.ErrInvalidArgument)
		}
		var out []ocispec.Descriptor
		for _, m := range idx.Manifests {
			if match == nil || m.Platform == nil || match.Match(*m.Platform) {
				out = append(out, m)
			}
		}
		return out, nil
	case isManifest(desc.MediaType):
		data, err := readBlob(ctx, store, desc)
		if err != nil {
			return nil, err
		}
		var m ocispec.Manifest
		if err := json.Unmarshal(data, &m); err != nil {
			return nil, fmt.Errorf("manifest %s: %v: %w", desc.Digest, err, errdefs.ErrInvalidArgument)
		}
		return append([]ocispec.Descriptor{m.Config}, m.Layers...), nil
	}
	return nil, nil
}

// walkStored calls fn for desc and everything it refers to in store,
// children before their parents (the order a registry accepts pushes in),
// each digest once.
func walkStored(ctx context.Context, store content.Provider, desc ocispec.Descriptor, match platforms.Matcher, seen map[string]bool, fn func(ocispec.Descriptor) error) error {
	if seen[desc.Digest.String()] {
		return nil
	}
	seen[desc.Digest.String()] = true
	kids, err := children(ctx, store, desc, match)
	if err != nil {
		return err
	}
	for _, c := range kids {
		if err := walkStored(ctx, store, c, match, seen, fn); err != nil {
			return err
		}
	}
	return fn(desc)
}
