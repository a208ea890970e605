// Package imagekit builds OCI test images from files on the machine, writes them as OCI image
// layouts or archives (what `ctr images import` reads) and pushes them to a registry over plain
// HTTP. It needs no network: the busybox image is made from Debian's busybox-static binary, every
// other image from data generated here.
//
// Images are deterministic: the same options and the same busybox binary give the same digests
// (fixed timestamps and owners, single-threaded compressors, seeded pseudo-random data).
//
// The kinds:
//   - [BuildBusybox]: a runnable one-layer busybox image (Cmd ["sh"]).
//   - [BuildLayers]: three layers whose upper ones delete and replace files of the lower ones
//     (whiteouts, an opaque directory, a file replacing a directory), with hardlinks, symlinks,
//     setuid/setgid and 0600 files and non-root owners; [Image.Expected] is the merged tree.
//   - [BuildMultiarch]: an index of linux/amd64 and linux/arm64 busybox manifests.
//   - [BuildLarge]: one layer of incompressible pseudo-random data of a chosen size, streamed to a
//     temporary file.
//   - [BuildHostile]/[HostileLayer]: layers that try to write outside the directory they are
//     applied to.
package imagekit

import (
	"bytes"
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Media types of Docker's schema 2, used when an image is built with [FormatDocker].
const (
	MediaTypeDockerManifest     = "application/vnd.docker.distribution.manifest.v2+json"
	MediaTypeDockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"
	MediaTypeDockerConfig       = "application/vnd.docker.container.image.v1+json"
	MediaTypeDockerLayer        = "application/vnd.docker.image.rootfs.diff.tar"
	MediaTypeDockerLayerGzip    = "application/vnd.docker.image.rootfs.diff.tar.gzip"
)

// AnnotationImageName is the index.json annotation containerd's importer takes as the image name.
const AnnotationImageName = "io.containerd.image.name"

// Kind names one of the images this package builds.
type Kind string

// The kinds [Build] knows.
const (
	KindBusybox   Kind = "busybox"
	KindLayers    Kind = "layers"
	KindMultiarch Kind = "multiarch"
	KindLarge     Kind = "large"
)

// Kinds lists every kind [Build] accepts.
var Kinds = []Kind{KindBusybox, KindLayers, KindMultiarch, KindLarge}

// Compression is how layer blobs are compressed.
type Compression string

// The layer compressions.
const (
	CompressionGzip Compression = "gzip"
	CompressionZstd Compression = "zstd"
	CompressionNone Compression = "none"
)

// Format selects the manifest, index and config media types.
type Format string

// The manifest formats.
const (
	// FormatOCI uses application/vnd.oci.image.* media types.
	FormatOCI Format = "oci"
	// FormatDocker uses Docker schema 2 media types. It has no zstd layer type.
	FormatDocker Format = "docker"
)

// DefaultBusybox is where Debian's busybox-static installs its binary.
const DefaultBusybox = "/bin/busybox"

// DefaultLargeSize is the payload size of [BuildLarge] when [WithSize] is not given.
const DefaultLargeSize = 64 << 20

// created is the fixed creation time written into every config and tar header, so that
// images are reproducible.
var created = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// Option changes how an image is built.
type Option func(*config)

type config struct {
	compression Compression
	format      Format
	platform    ocispec.Platform
	busybox     string
	size        int64
	seed        uint64
	tempDir     string
}

// WithCompression sets the layer compression (default gzip).
func WithCompression(c Compression) Option { return func(o *config) { o.compression = c } }

// WithFormat sets the manifest format (default OCI).
func WithFormat(f Format) Option { return func(o *config) { o.format = f } }

// WithPlatform sets the platform of single-platform images (default linux and the machine's
// architecture). The busybox binary is not checked against it.
func WithPlatform(p ocispec.Platform) Option { return func(o *config) { o.platform = p } }

// WithBusybox sets the busybox binary to package (default [DefaultBusybox]).
func WithBusybox(path string) Option { return func(o *config) { o.busybox = path } }

// WithSize sets the payload size in bytes of [BuildLarge] (default [DefaultLargeSize]).
func WithSize(n int64) Option { return func(o *config) { o.size = n } }

// WithSeed sets the seed of [BuildLarge]'s pseudo-random data; the same seed and size give
// the same layer.
func WithSeed(seed uint64) Option { return func(o *config) { o.seed = seed } }

// WithTempDir sets where [BuildLarge] writes its layer (default os.TempDir()).
func WithTempDir(dir string) Option { return func(o *config) { o.tempDir = dir } }

func newConfig(opts []Option) (*config, error) {
	c := &config{
		compression: CompressionGzip,
		format:      FormatOCI,
		platform:    HostPlatform(),
		busybox:     DefaultBusybox,
		size:        DefaultLargeSize,
		seed:        1,
	}
	for _, o := range opts {
		o(c)
	}
	switch c.compression {
	case CompressionGzip, CompressionZstd, CompressionNone:
	default:
		return nil, fmt.Errorf("compression %q (want gzip, zstd or none): %w", c.compression, errdefs.ErrInvalidArgument)
	}
	switch c.format {
	case FormatOCI:
	case FormatDocker:
		if c.compression == CompressionZstd {
			return nil, fmt.Errorf("docker schema 2 has no zstd layer media type: %w", errdefs.ErrInvalidArgument)
		}
	default:
		return nil, fmt.Errorf("format %q (want oci or docker): %w", c.format, errdefs.ErrInvalidArgument)
	}
	if c.size < 0 {
		return nil, fmt.Errorf("size %d: %w", c.size, errdefs.ErrInvalidArgument)
	}
	return c, nil
}

// HostPlatform is linux with the architecture this program runs on.
func HostPlatform() ocispec.Platform {
	p := ocispec.Platform{OS: "linux", Architecture: runtime.GOARCH}
	if p.Architecture == "arm64" {
		p.Variant = "v8"
	}
	return p
}

// Blob is one piece of content of an image: its descriptor and its bytes, held in memory
// (Data) or in a file (Path) for large layers.
type Blob struct {
	Descriptor ocispec.Descriptor
	Data       []byte
	Path       string
}

// Open returns the blob's bytes. The caller closes the reader.
func (b Blob) Open() (io.ReadCloser, error) {
	if b.Path != "" {
		f, err := os.Open(b.Path)
		if err != nil {
			return nil, fmt.Errorf("open blob %s: %w", b.Descriptor.Digest, err)
		}
		return f, nil
	}
	return io.NopCloser(bytes.NewReader(b.Data)), nil
}

// Layer is a layer blob with the digest of its uncompressed tar (its diff ID).
type Layer struct {
	Blob
	DiffID digest.Digest
}

// Image is a built image: its root descriptor and every blob reachable from it.
type Image struct {
	// Target is the root: an image manifest, or an index for [BuildMultiarch].
	Target ocispec.Descriptor
	// Config is the config of the host-platform manifest.
	Config ocispec.Descriptor
	// Layers are the layers of the host-platform manifest, lowest first.
	Layers []Layer
	// Expected is the merged root filesystem of the layers, for images that describe it
	// ([BuildLayers], [BuildBusybox]); nil otherwise.
	Expected Tree
	// Blobs holds every blob of the image exactly once, children before parents, Target last.
	Blobs []Blob

	cleanup func() error
}

// Blob returns the blob with digest d.
func (img *Image) Blob(d digest.Digest) (Blob, bool) {
	for _, b := range img.Blobs {
		if b.Descriptor.Digest == d {
			return b, true
		}
	}
	return Blob{}, false
}

// Size is the sum of the sizes of every blob of the image.
func (img *Image) Size() int64 {
	var n int64
	for _, b := range img.Blobs {
		n += b.Descriptor.Size
	}
	return n
}

// Close removes the temporary files the image keeps its blobs in, if any. The image must not
// be used afterwards.
func (img *Image) Close() error {
	if img.cleanup == nil {
		return nil
	}
	err := img.cleanup()
	img.cleanup = nil
	return err
}

// Build builds an image of the given kind.
func Build(kind Kind, opts ...Option) (*Image, error) {
	switch kind {
	case KindBusybox:
		return BuildBusybox(opts...)
	case KindLayers:
		return BuildLayers(opts...)
	case KindMultiarch:
		return BuildMultiarch(opts...)
	case KindLarge:
		return BuildLarge(opts...)
	}
	return nil, fmt.Errorf("image kind %q (want one of %v): %w", kind, Kinds, errdefs.ErrInvalidArgument)
}

// ParseSize parses a byte count: a plain number or one with a unit, KiB, MiB, GiB (powers of
// 1024), KB, MB, GB (powers of 1000) or B ("64MiB", "1GiB", "1500000").
func ParseSize(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{
		{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30},
		{"KB", 1000}, {"MB", 1000 * 1000}, {"GB", 1000 * 1000 * 1000},
		{"B", 1},
	}
	num, mult := strings.TrimSpace(s), int64(1)
	for _, u := range units {
		if strings.HasSuffix(num, u.suffix) {
			num, mult = strings.TrimSpace(strings.TrimSuffix(num, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || n > math.MaxInt64/mult {
		return 0, fmt.Errorf("size %q (want e.g. 4096, 64MiB, 1GiB): %w", s, errdefs.ErrInvalidArgument)
	}
	return n * mult, nil
}
