package transfer

import (
	"strings"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Docker schema 2 media types, which registries and containerd still use
// beside OCI's.
const (
	mediaTypeDockerManifest     = "application/vnd.docker.distribution.manifest.v2+json"
	mediaTypeDockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"
	mediaTypeDockerConfig       = "application/vnd.docker.container.image.v1+json"
	mediaTypeDockerSchema1      = "application/vnd.docker.distribution.manifest.v1+prettyjws"
	mediaTypeLegacyConfig       = "application/octet-stream"
)

func isIndex(mt string) bool {
	return mt == ocispec.MediaTypeImageIndex || mt == mediaTypeDockerManifestList
}

func isManifest(mt string) bool {
	return mt == ocispec.MediaTypeImageManifest || mt == mediaTypeDockerManifest
}

func isConfig(mt string) bool {
	return mt == ocispec.MediaTypeImageConfig || mt == mediaTypeDockerConfig || mt == mediaTypeLegacyConfig
}

func isLayer(mt string) bool {
	return strings.HasPrefix(mt, "application/vnd.oci.image.layer.") ||
		strings.HasPrefix(mt, "application/vnd.docker.image.rootfs.")
}

// refKey names a descriptor as containerd's remotes.MakeRefKey does: the
// ingest ref of its blob and its name in progress events.
func refKey(d ocispec.Descriptor) string {
	switch mt := d.MediaType; {
	case isManifest(mt):
		return "manifest-" + d.Digest.String()
	case isIndex(mt):
		return "index-" + d.Digest.String()
	case isLayer(mt):
		return "layer-" + d.Digest.String()
	case isConfig(mt):
		return "config-" + d.Digest.String()
	default:
		return "unknown-" + d.Digest.String()
	}
}
