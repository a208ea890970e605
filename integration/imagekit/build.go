package imagekit

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"fmt"
	"io"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	digest "github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// entry is one tar entry of a layer built in memory.
type entry struct {
	hdr  tar.Header
	body []byte
}

func dir(name string, mode int64) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode}}
}

func file(name string, mode int64, body string) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(body))}, body: []byte(body)}
}

func symlink(name, target string) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777}}
}

// hardlink links name to target; when target is an earlier entry of the same layer, the
// header takes its mode and owner.
func hardlink(name, target string) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: target, Mode: 0o644}}
}

// owned sets the owner of an entry.
func owned(e entry, uid, gid int) entry {
	e.hdr.Uid, e.hdr.Gid = uid, gid
	return e
}

// tarEntries writes entries as a tar stream with fixed times and, unless set, root owners.
func tarEntries(entries []entry) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	written := map[string]tar.Header{}
	for _, e := range entries {
		h := e.hdr
		if src, ok := written[h.Linkname]; ok && h.Typeflag == tar.TypeLink {
			// A hardlink header carries its inode's mode and owner, as tar writes it;
			// appliers apply them to the inode.
			h.Mode, h.Uid, h.Gid = src.Mode, src.Uid, src.Gid
		}
		written[h.Name] = h
		h.ModTime = created
		h.Format = tar.FormatPAX
		if err := tw.WriteHeader(&h); err != nil {
			return nil, fmt.Errorf("tar header %s: %w", h.Name, err)
		}
		if _, err := tw.Write(e.body); err != nil {
			return nil, fmt.Errorf("tar body %s: %w", h.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("close tar: %w", err)
	}
	return buf.Bytes(), nil
}

// compressor wraps w with the writer of compression c. Close flushes it; it does not close w.
func compressor(w io.Writer, c Compression) (io.WriteCloser, error) {
	switch c {
	case CompressionGzip:
		// The header has no name and a zero time, so the output depends on the input only.
		return gzip.NewWriterLevel(w, gzip.DefaultCompression)
	case CompressionZstd:
		return zstd.NewWriter(w, zstd.WithEncoderConcurrency(1))
	case CompressionNone:
		return nopWriteCloser{w}, nil
	}
	return nil, fmt.Errorf("unknown compression %q", c)
}

type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Close() error { return nil }

func layerMediaType(f Format, c Compression) string {
	if f == FormatDocker {
		if c == CompressionGzip {
			return MediaTypeDockerLayerGzip
		}
		return MediaTypeDockerLayer
	}
	switch c {
	case CompressionGzip:
		return ocispec.MediaTypeImageLayerGzip
	case CompressionZstd:
		return ocispec.MediaTypeImageLayerZstd
	}
	return ocispec.MediaTypeImageLayer
}

// newLayer compresses an uncompressed tar into a layer blob.
func newLayer(tarData []byte, cfg *config) (Layer, error) {
	var buf bytes.Buffer
	cw, err := compressor(&buf, cfg.compression)
	if err != nil {
		return Layer{}, err
	}
	if _, err := cw.Write(tarData); err != nil {
		return Layer{}, fmt.Errorf("compress layer: %w", err)
	}
	if err := cw.Close(); err != nil {
		return Layer{}, fmt.Errorf("compress layer: %w", err)
	}
	data := buf.Bytes()
	return Layer{
		Blob: Blob{
			Descriptor: ocispec.Descriptor{
				MediaType: layerMediaType(cfg.format, cfg.compression),
				Digest:    digest.FromBytes(data),
				Size:      int64(len(data)),
			},
			Data: data,
		},
		DiffID: digest.FromBytes(tarData),
	}, nil
}

// jsonBlob marshals v into a blob of the given media type.
func jsonBlob(mediaType string, v any) (Blob, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return Blob{}, fmt.Errorf("marshal %s: %w", mediaType, err)
	}
	return Blob{
		Descriptor: ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(data), Size: int64(len(data))},
		Data:       data,
	}, nil
}

// runConfig is what a container started from the image runs.
type runConfig struct {
	Cmd []string
	Env []string
}

// manifestBlobs builds the config and manifest of one platform over layers and returns
// (config, manifest).
func manifestBlobs(cfg *config, platform ocispec.Platform, layers []Layer, run runConfig, history string) (Blob, Blob, error) {
	configType, manifestType := ocispec.MediaTypeImageConfig, ocispec.MediaTypeImageManifest
	if cfg.format == FormatDocker {
		configType, manifestType = MediaTypeDockerConfig, MediaTypeDockerManifest
	}
	img := ocispec.Image{
		Created:  &created,
		Platform: platform,
		Config: ocispec.ImageConfig{
			Cmd: run.Cmd,
			Env: run.Env,
		},
		RootFS: ocispec.RootFS{Type: "layers"},
	}
	for i, l := range layers {
		img.RootFS.DiffIDs = append(img.RootFS.DiffIDs, l.DiffID)
		img.History = append(img.History, ocispec.History{
			Created:   &created,
			CreatedBy: fmt.Sprintf("flotilla imagekit: %s layer %d", history, i+1),
		})
	}
	configBlob, err := jsonBlob(configType, img)
	if err != nil {
		return Blob{}, Blob{}, err
	}
	m := ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: manifestType,
		Config:    configBlob.Descriptor,
	}
	for _, l := range layers {
		m.Layers = append(m.Layers, l.Descriptor)
	}
	manifestBlob, err := jsonBlob(manifestType, m)
	if err != nil {
		return Blob{}, Blob{}, err
	}
	return configBlob, manifestBlob, nil
}

// singleImage assembles a one-platform image from its layers.
func singleImage(cfg *config, layers []Layer, run runConfig, history string) (*Image, error) {
	configBlob, manifestBlob, err := manifestBlobs(cfg, cfg.platform, layers, run, history)
	if err != nil {
		return nil, err
	}
	img := &Image{Config: configBlob.Descriptor, Layers: layers}
	for _, l := range layers {
		img.addBlob(l.Blob)
	}
	img.addBlob(configBlob)
	img.addBlob(manifestBlob)
	img.Target = manifestBlob.Descriptor
	return img, nil
}

// addBlob appends b unless a blob with its digest is already there.
func (img *Image) addBlob(b Blob) {
	if _, ok := img.Blob(b.Descriptor.Digest); ok {
		return
	}
	img.Blobs = append(img.Blobs, b)
}
