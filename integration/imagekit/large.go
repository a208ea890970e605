package imagekit

import (
	"archive/tar"
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// LargeFile is the path, in the large image's root filesystem, of its payload.
const LargeFile = "large.bin"

// BuildLarge builds a one-layer image whose layer holds LargeFile: [WithSize] bytes
// (default [DefaultLargeSize]) of pseudo-random data from [WithSeed], which no compressor
// shrinks. The layer is streamed into a temporary file under [WithTempDir] while its digests
// are computed, so memory stays flat whatever the size; Image.Close removes the file.
// Image.Expected is nil (the payload is too large to hold); see [LargeContent].
func BuildLarge(opts ...Option) (_ *Image, retErr error) {
	cfg, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	f, err := os.CreateTemp(cfg.tempDir, "flotilla-large-*.layer")
	if err != nil {
		return nil, fmt.Errorf("large image: %w", err)
	}
	path := f.Name()
	defer func() {
		if retErr != nil {
			os.Remove(path)
		}
	}()
	layer, err := writeLargeLayer(f, cfg)
	if cerr := f.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("large image: write %s: %w", path, err)
	}
	layer.Path = path
	img, err := singleImage(cfg, []Layer{layer}, runConfig{}, fmt.Sprintf("%d random bytes", cfg.size))
	if err != nil {
		return nil, fmt.Errorf("large image: %w", err)
	}
	img.cleanup = func() error { return os.Remove(path) }
	return img, nil
}

// LargeContent returns a reader of the payload BuildLarge writes for a size and seed, to
// compare an unpacked LargeFile with.
func LargeContent(size int64, seed uint64) io.Reader {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	return io.LimitReader(rand.NewChaCha8(key), size)
}

// writeLargeLayer streams the tar of the payload through the compressor into w, hashing the
// tar (diff ID) and the compressed bytes (digest) on the way.
func writeLargeLayer(w io.Writer, cfg *config) (Layer, error) {
	compressed := &countingHash{h: sha256.New()}
	out := bufio.NewWriterSize(io.MultiWriter(w, compressed), 1<<20)
	cw, err := compressor(out, cfg.compression)
	if err != nil {
		return Layer{}, err
	}
	diffID := sha256.New()
	tw := tar.NewWriter(io.MultiWriter(cw, diffID))
	hdr := &tar.Header{
		Typeflag: tar.TypeReg,
		Name:     LargeFile,
		Mode:     0o644,
		Size:     cfg.size,
		ModTime:  created,
		Format:   tar.FormatPAX,
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return Layer{}, err
	}
	if _, err := io.CopyBuffer(tw, LargeContent(cfg.size, cfg.seed), make([]byte, 1<<20)); err != nil {
		return Layer{}, err
	}
	if err := errors.Join(tw.Close(), cw.Close(), out.Flush()); err != nil {
		return Layer{}, err
	}
	return Layer{
		Blob: Blob{Descriptor: ocispec.Descriptor{
			MediaType: layerMediaType(cfg.format, cfg.compression),
			Digest:    digest.NewDigestFromBytes(digest.SHA256, compressed.h.Sum(nil)),
			Size:      compressed.n,
		}},
		DiffID: digest.NewDigestFromBytes(digest.SHA256, diffID.Sum(nil)),
	}, nil
}

type countingHash struct {
	h interface {
		io.Writer
		Sum([]byte) []byte
	}
	n int64
}

func (c *countingHash) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return c.h.Write(p)
}
