package transfer

import (
	"archive/tar"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"path"
	"strings"
	"time"

	transfertypes "github.com/containerd/containerd/api/types/transfer"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/flotilla/flotilla/contentd/streaming"
)

// annotationImageName is the index.json annotation holding an image's full
// name, which containerd's importer reads back.
const annotationImageName = "io.containerd.image.name"

// export writes the images src names as an OCI image layout tar (with
// Docker's manifest.json unless skipped) to the client's stream.
func (s *Service) export(ctx context.Context, src *transfertypes.ImageStore, dst *transfertypes.ImageExportStream, send func(*transfertypes.Progress)) error {
	var names []string
	if src.GetName() != "" {
		names = append(names, src.GetName())
	}
	for _, r := range src.GetExtraReferences() {
		if r.GetIsPrefix() {
			return fmt.Errorf("export by name prefix: %w", errdefs.ErrNotImplemented)
		}
		names = append(names, r.GetName())
	}
	if len(names) == 0 {
		return fmt.Errorf("no image to export: %w", errdefs.ErrInvalidArgument)
	}
	var match platforms.Matcher
	switch {
	case dst.GetAllPlatforms():
	case len(dst.GetPlatforms()) > 0:
		var list []ocispec.Platform
		for _, p := range dst.GetPlatforms() {
			list = append(list, platformFromProto(p))
		}
		match = platforms.Ordered(list...)
	default:
		match = platforms.Default()
	}
	type exported struct {
		name string
		desc ocispec.Descriptor
	}
	var imgs []exported
	for _, n := range names {
		img, err := s.sourceImage(ctx, &transfertypes.ImageStore{Name: n})
		if err != nil {
			return err
		}
		imgs = append(imgs, exported{n, descFromProto(img.GetTarget())})
	}
	st, err := s.streams.Get(ctx, dst.GetStream())
	if err != nil {
		return fmt.Errorf("export stream: %w", err)
	}
	w := streaming.NewWriter(ctx, st)
	defer w.Close()
	rep := newReporter(send, names[0])
	rep.status("Exporting")

	tw := tar.NewWriter(w)
	seen := map[string]bool{}
	index := ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex}
	var dockerManifest []dockerManifestEntry
	for _, img := range imgs {
		err := walkStored(ctx, s.content, img.desc, match, seen, func(d ocispec.Descriptor) error {
			return s.writeBlob(ctx, tw, d)
		})
		if err != nil {
			return err
		}
		d := img.desc
		d.Annotations = map[string]string{annotationImageName: img.name}
		if tag := tagOf(img.name); tag != "" {
			d.Annotations[ocispec.AnnotationRefName] = tag
		}
		index.Manifests = append(index.Manifests, d)
		if !dst.GetSkipCompatibilityManifest() {
			if e, ok, err := s.dockerEntry(ctx, img.desc, img.name, match); err != nil {
				return err
			} else if ok {
				dockerManifest = append(dockerManifest, e)
			}
		}
	}
	files := []struct {
		name string
		v    any
	}{{ocispec.ImageLayoutFile, ocispec.ImageLayout{Version: ocispec.ImageLayoutVersion}}, {"index.json", index}}
	if len(dockerManifest) > 0 {
		files = append(files, struct {
			name string
			v    any
		}{"manifest.json", dockerManifest})
	}
	for _, f := range files {
		data, err := json.Marshal(f.v)
		if err != nil {
			return err
		}
		if err := writeTarFile(tw, f.name, int64(len(data)), strings.NewReader(string(data))); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	rep.status("Completed export")
	return nil
}

type dockerManifestEntry struct {
	Config   string
	RepoTags []string
	Layers   []string
}

// dockerEntry describes img for Docker's manifest.json: its manifest for
// the platform match picks (an index's best), config and layers.
func (s *Service) dockerEntry(ctx context.Context, desc ocispec.Descriptor, name string, match platforms.Matcher) (dockerManifestEntry, bool, error) {
	if isIndex(desc.MediaType) {
		kids, err := children(ctx, s.content, desc, match)
		if err != nil {
			return dockerManifestEntry{}, false, err
		}
		for _, k := range kids {
			if isManifest(k.MediaType) {
				if _, err := s.content.Info(ctx, k.Digest); err == nil {
					return s.dockerEntry(ctx, k, name, match)
				}
			}
		}
		return dockerManifestEntry{}, false, nil
	}
	if !isManifest(desc.MediaType) {
		return dockerManifestEntry{}, false, nil
	}
	kids, err := children(ctx, s.content, desc, match)
	if err != nil || len(kids) == 0 {
		return dockerManifestEntry{}, false, err
	}
	e := dockerManifestEntry{Config: blobPath(kids[0].Digest)}
	if strings.Contains(name, ":") || strings.Contains(name, "@") {
		if tagOf(name) != "" {
			e.RepoTags = []string{name}
		}
	}
	for _, l := range kids[1:] {
		e.Layers = append(e.Layers, blobPath(l.Digest))
	}
	return e, true, nil
}

// tagOf is the tag of an image name ("" when it has none).
func tagOf(name string) string {
	if i := strings.IndexByte(name, '@'); i >= 0 {
		name = name[:i]
	}
	i := strings.LastIndexByte(name, ':')
	if i < 0 || strings.Contains(name[i+1:], "/") {
		return ""
	}
	return name[i+1:]
}

func blobPath(d digest.Digest) string {
	return path.Join("blobs", d.Algorithm().String(), d.Encoded())
}

func (s *Service) writeBlob(ctx context.Context, tw *tar.Writer, d ocispec.Descriptor) error {
	ra, err := s.content.ReaderAt(ctx, d.Digest)
	if err != nil {
		return fmt.Errorf("export %s: %w", d.Digest, err)
	}
	defer ra.Close()
	return writeTarFile(tw, blobPath(d.Digest), ra.Size(), io.NewSectionReader(ra, 0, ra.Size()))
}

func writeTarFile(tw *tar.Writer, name string, size int64, r io.Reader) error {
	hdr := &tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o444, Size: size, ModTime: time.Unix(0, 0), Format: tar.FormatPAX}
	if err := tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("export %s: %w", name, err)
	}
	if _, err := io.Copy(tw, r); err != nil {
		return fmt.Errorf("export %s: %w", name, err)
	}
	return nil
}
