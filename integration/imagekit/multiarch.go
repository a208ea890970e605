package imagekit

import (
	"fmt"
	"os"

	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// MultiarchPlatforms are the platforms of [BuildMultiarch]'s index, in index order.
var MultiarchPlatforms = []ocispec.Platform{
	{OS: "linux", Architecture: "amd64"},
	{OS: "linux", Architecture: "arm64", Variant: "v8"},
}

// BuildMultiarch builds an index (OCI image index, or Docker manifest list with
// [FormatDocker]) with one busybox manifest per [MultiarchPlatforms]. Every manifest reuses
// the same busybox layer — the binary is the machine's, so only the manifest matching the
// machine runs; the others exist for content and index tests. Image.Config and Image.Layers
// describe the manifest of the machine's platform (the first one if none matches).
func BuildMultiarch(opts ...Option) (*Image, error) {
	cfg, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	binary, err := os.ReadFile(cfg.busybox)
	if err != nil {
		return nil, fmt.Errorf("multiarch image: %w", err)
	}
	layer, err := layerOf(busyboxEntries(binary), cfg)
	if err != nil {
		return nil, fmt.Errorf("multiarch image: %w", err)
	}
	indexType := ocispec.MediaTypeImageIndex
	if cfg.format == FormatDocker {
		indexType = MediaTypeDockerManifestList
	}
	index := ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: indexType}
	img := &Image{Layers: []Layer{layer}}
	img.addBlob(layer.Blob)
	host := HostPlatform()
	for i, p := range MultiarchPlatforms {
		configBlob, manifestBlob, err := manifestBlobs(cfg, p, img.Layers, busyboxRun(), "busybox "+p.Architecture)
		if err != nil {
			return nil, fmt.Errorf("multiarch image: %w", err)
		}
		img.addBlob(configBlob)
		img.addBlob(manifestBlob)
		desc := manifestBlob.Descriptor
		platform := p
		desc.Platform = &platform
		index.Manifests = append(index.Manifests, desc)
		if i == 0 || (p.Architecture == host.Architecture && p.OS == host.OS) {
			img.Config = configBlob.Descriptor
		}
	}
	indexBlob, err := jsonBlob(indexType, index)
	if err != nil {
		return nil, fmt.Errorf("multiarch image: %w", err)
	}
	img.addBlob(indexBlob)
	img.Target = indexBlob.Descriptor
	return img, nil
}
