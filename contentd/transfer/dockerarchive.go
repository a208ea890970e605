package transfer

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"path"

	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Docker's layer media types, which a legacy archive's layers get.
const (
	mediaTypeDockerLayer     = "application/vnd.docker.image.rootfs.diff.tar"
	mediaTypeDockerLayerGzip = "application/vnd.docker.image.rootfs.diff.tar.gzip"
	mediaTypeDockerLayerZstd = "application/vnd.docker.image.rootfs.diff.tar.zstd"
)

// dockerManifest is one entry of a docker save archive's manifest.json
// (Docker's image archive format 1.1/1.2: no index.json).
type dockerManifest struct {
	Config   string
	RepoTags []string
	Layers   []string
}

// archiveFile is a file of an archive outside blobs/, ingested as a blob
// because a legacy manifest.json may name it as a config or a layer.
type archiveFile struct {
	desc ocispec.Descriptor
	head []byte // the first bytes, to tell a layer's compression
}

var (
	gzipMagic = []byte{0x1f, 0x8b, 0x08}
	zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}
)

// dockerIndex turns a legacy archive's manifest.json entries into an OCI
// index, as containerd's importer does: for each entry a Docker schema 2
// manifest of its config and layers (media types told by the layers'
// first bytes) is written to the store, its platform taken from the
// config, and the index names it once per RepoTag, normalised
// ("busybox:1" is docker.io/library/busybox:1) in io.containerd.image.name
// with the tag as the OCI ref name. files are the archive's files by path;
// links its symlinks (path to the path they point at).
func (s *Service) dockerIndex(ctx context.Context, mfsts []dockerManifest, files map[string]archiveFile, links map[string]string) ([]byte, error) {
	lookup := func(name string) (archiveFile, bool) {
		name = path.Clean(name)
		for range 8 { // links to links, but not forever
			if f, ok := files[name]; ok {
				return f, true
			}
			target, ok := links[name]
			if !ok {
				break
			}
			name = target
		}
		return archiveFile{}, false
	}
	// As containerd writes it (no mediaType), so the index digests alike.
	idx := ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}}
	for _, m := range mfsts {
		cfgFile, ok := lookup(m.Config)
		if !ok {
			return nil, fmt.Errorf("manifest.json names config %q, which the archive lacks: %w", m.Config, errdefs.ErrInvalidArgument)
		}
		cfg := cfgFile.desc
		cfg.MediaType = mediaTypeDockerConfig
		var layers []ocispec.Descriptor
		for _, l := range m.Layers {
			f, ok := lookup(l)
			if !ok {
				return nil, fmt.Errorf("manifest.json names layer %q, which the archive lacks: %w", l, errdefs.ErrInvalidArgument)
			}
			d := f.desc
			switch {
			case bytes.HasPrefix(f.head, gzipMagic):
				d.MediaType = mediaTypeDockerLayerGzip
			case bytes.HasPrefix(f.head, zstdMagic):
				d.MediaType = mediaTypeDockerLayerZstd
			default:
				d.MediaType = mediaTypeDockerLayer
			}
			layers = append(layers, d)
		}
		manifest, err := json.Marshal(struct {
			SchemaVersion int                  `json:"schemaVersion"`
			MediaType     string               `json:"mediaType"`
			Config        ocispec.Descriptor   `json:"config"`
			Layers        []ocispec.Descriptor `json:"layers"`
		}{2, mediaTypeDockerManifest, cfg, layers})
		if err != nil {
			return nil, err
		}
		desc := ocispec.Descriptor{MediaType: mediaTypeDockerManifest, Digest: digest.FromBytes(manifest), Size: int64(len(manifest))}
		if err := s.ingestBlob(ctx, desc.Digest, desc.Size, bytes.NewReader(manifest)); err != nil {
			return nil, err
		}
		data, err := readBlob(ctx, s.content, cfg)
		if err != nil {
			return nil, fmt.Errorf("config %s: %w", m.Config, err)
		}
		var img ocispec.Image
		if err := json.Unmarshal(data, &img); err != nil {
			return nil, fmt.Errorf("config %s: %v: %w", m.Config, err, errdefs.ErrInvalidArgument)
		}
		if img.OS != "" {
			desc.Platform = &ocispec.Platform{OS: img.OS, Architecture: img.Architecture, Variant: img.Variant, OSVersion: img.OSVersion}
		}
		if len(m.RepoTags) == 0 {
			idx.Manifests = append(idx.Manifests, desc)
			continue
		}
		for _, tag := range m.RepoTags {
			named, err := reference.ParseDockerRef(tag)
			if err != nil {
				return nil, fmt.Errorf("manifest.json repo tag %q: %v: %w", tag, err, errdefs.ErrInvalidArgument)
			}
			d := desc
			d.Annotations = map[string]string{annotationImageName: named.String(), ocispec.AnnotationRefName: refName(named)}
			idx.Manifests = append(idx.Manifests, d)
		}
	}
	return json.Marshal(idx)
}

// refName is the OCI ref name of a full image name: its tag, or its
// digest when it has no tag.
func refName(named reference.Named) string {
	if t, ok := named.(reference.Tagged); ok {
		return t.Tag()
	}
	if d, ok := named.(reference.Digested); ok {
		return d.Digest().String()
	}
	return named.String()
}
