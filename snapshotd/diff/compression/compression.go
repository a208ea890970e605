// Package compression knows the compressions of OCI and Docker layers:
// which one a media type names, which one a stream's first bytes show, and
// how to undo or apply each.
package compression

import (
	"bufio"
	"bytes"
	"fmt"
	"io"

	"github.com/containerd/errdefs"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Compression is how a layer's tar is compressed.
type Compression int

const (
	// Uncompressed is a plain tar.
	Uncompressed Compression = iota
	// Gzip is a tar compressed with gzip.
	Gzip
	// Zstd is a tar compressed with zstd.
	Zstd
)

func (c Compression) String() string {
	switch c {
	case Gzip:
		return "gzip"
	case Zstd:
		return "zstd"
	}
	return "uncompressed"
}

// Docker's layer media types, which OCI's layer types replace.
const (
	DockerLayer     = "application/vnd.docker.image.rootfs.diff.tar"
	DockerLayerGzip = "application/vnd.docker.image.rootfs.diff.tar.gzip"
	DockerLayerZstd = "application/vnd.docker.image.rootfs.diff.tar.zstd"
)

// FromMediaType tells the compression a layer media type names. Any other
// media type (encrypted layers, non-distributable ones with an unknown
// suffix, configs) is a NotImplemented error.
func FromMediaType(mediaType string) (Compression, error) {
	switch mediaType {
	case ocispec.MediaTypeImageLayer, DockerLayer, ocispec.MediaTypeImageLayerNonDistributable: // deprecated, still found in the wild
		return Uncompressed, nil
	case ocispec.MediaTypeImageLayerGzip, DockerLayerGzip, ocispec.MediaTypeImageLayerNonDistributableGzip:
		return Gzip, nil
	case ocispec.MediaTypeImageLayerZstd, DockerLayerZstd, ocispec.MediaTypeImageLayerNonDistributableZstd:
		return Zstd, nil
	}
	return Uncompressed, fmt.Errorf("layer media type %q: %w", mediaType, errdefs.ErrNotImplemented)
}

// MediaType is the OCI layer media type for c.
func MediaType(c Compression) string {
	switch c {
	case Gzip:
		return ocispec.MediaTypeImageLayerGzip
	case Zstd:
		return ocispec.MediaTypeImageLayerZstd
	}
	return ocispec.MediaTypeImageLayer
}

var (
	gzipMagic = []byte{0x1f, 0x8b, 0x08}
	zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}
)

// Detect tells the compression a stream's first bytes show.
func Detect(head []byte) Compression {
	switch {
	case bytes.HasPrefix(head, gzipMagic):
		return Gzip
	case bytes.HasPrefix(head, zstdMagic):
		return Zstd
	}
	return Uncompressed
}

// Decompress returns the tar inside r, which its media type says is
// compressed with want. The stream's magic bytes must agree with a
// compressed media type (InvalidArgument otherwise); a media type that says
// uncompressed is trusted only as far as the bytes agree, as containerd
// does, since some tools label compressed layers as plain tar. The caller
// closes the reader; closing does not close r.
func Decompress(r io.Reader, want Compression) (io.ReadCloser, Compression, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	head, err := br.Peek(len(zstdMagic))
	if err != nil && err != io.EOF {
		return nil, Uncompressed, fmt.Errorf("read layer header: %w", err)
	}
	got := Detect(head)
	if want != Uncompressed && got != want {
		return nil, got, fmt.Errorf("layer media type says %s but its content is %s: %w", want, got, errdefs.ErrInvalidArgument)
	}
	switch got {
	case Gzip:
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, got, fmt.Errorf("gzip layer: %v: %w", err, errdefs.ErrInvalidArgument)
		}
		return zr, got, nil
	case Zstd:
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, got, fmt.Errorf("zstd layer: %v: %w", err, errdefs.ErrInvalidArgument)
		}
		return zr.IOReadCloser(), got, nil
	}
	return io.NopCloser(br), got, nil
}

// Compress returns a writer that compresses into w with c. Closing it
// flushes the compressed stream; it does not close w.
func Compress(w io.Writer, c Compression) (io.WriteCloser, error) {
	switch c {
	case Gzip:
		return gzip.NewWriterLevel(w, gzip.DefaultCompression)
	case Zstd:
		return zstd.NewWriter(w)
	}
	return nopWriteCloser{w}, nil
}

type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Close() error { return nil }
