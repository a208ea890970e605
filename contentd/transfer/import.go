package transfer

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"path"
	"strings"

	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	transfertypes "github.com/containerd/containerd/api/types/transfer"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"

	"github.com/flotilla/flotilla/contentd/streaming"
)

// importArchive reads an OCI image layout tar (what ctr export and docker
// save write) from the client's stream into the content store, unpacks
// its images as dst asks and names them as containerd's importer does:
// from each index.json entry's annotations, through dst's prefixes.
func (s *Service) importArchive(ctx context.Context, src *transfertypes.ImageImportStream, dst *transfertypes.ImageStore, send func(*transfertypes.Progress)) error {
	st, err := s.streams.Get(ctx, src.GetStream())
	if err != nil {
		return fmt.Errorf("import stream: %w", err)
	}
	r := streaming.NewReader(st)
	defer r.Close()
	rep := newReporter(send, "import")
	rep.status("Importing")

	var indexJSON []byte
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("import: read archive: %v: %w", err, errdefs.ErrInvalidArgument)
		}
		if hdr.Typeflag != tar.TypeReg {
			continue
		}
		name := path.Clean(strings.TrimPrefix(hdr.Name, "./"))
		switch {
		case name == "index.json":
			if indexJSON, err = io.ReadAll(io.LimitReader(tr, maxMetadata)); err != nil {
				return fmt.Errorf("import: index.json: %w", err)
			}
		case strings.HasPrefix(name, "blobs/"):
			parts := strings.Split(name, "/")
			if len(parts) != 3 {
				continue
			}
			dgst := digest.NewDigestFromEncoded(digest.Algorithm(parts[1]), parts[2])
			if err := dgst.Validate(); err != nil {
				return fmt.Errorf("import: blob %s: %v: %w", name, err, errdefs.ErrInvalidArgument)
			}
			if err := s.ingestBlob(ctx, dgst, hdr.Size, tr); err != nil {
				return err
			}
		}
	}
	if indexJSON == nil {
		return fmt.Errorf("import: the archive has no index.json (only OCI image layouts are supported): %w", errdefs.ErrNotImplemented)
	}
	var idx ocispec.Index
	if err := json.Unmarshal(indexJSON, &idx); err != nil {
		return fmt.Errorf("import: index.json: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	indexDesc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageIndex, Digest: digest.FromBytes(indexJSON), Size: int64(len(indexJSON))}
	if err := s.ingestBlob(ctx, indexDesc.Digest, indexDesc.Size, strings.NewReader(string(indexJSON))); err != nil {
		return err
	}

	// Unpack what the image store asks for, walking the imported blobs.
	p := &puller{s: s, rep: rep, local: true, filter: platforms.All}
	if ps := dst.GetPlatforms(); len(ps) > 0 {
		var list []ocispec.Platform
		for _, pl := range ps {
			list = append(list, platformFromProto(pl))
		}
		p.filter = platforms.Ordered(list...)
	}
	for _, u := range dst.GetUnpacks() {
		sn := u.GetSnapshotter()
		if sn == "" {
			sn = s.cfg.DefaultSnapshotter
		}
		pl := platforms.DefaultSpec()
		if u.GetPlatform() != nil {
			pl = platformFromProto(u.GetPlatform())
		}
		p.unpacks = append(p.unpacks, unpackTarget{platform: pl, matcher: platforms.Only(pl), snapshotter: sn})
	}
	if len(p.unpacks) > 0 && s.nodes != nil {
		if p.node, err = s.nodes.Node(ctx); err != nil {
			return err
		}
	} else {
		p.unpacks = nil
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	p.layers, _ = errgroup.WithContext(ctx)
	p.layers.SetLimit(s.cfg.MaxConcurrentDownloads)
	p.cancel = cancel
	walk := func(ctx context.Context) error {
		for _, m := range idx.Manifests {
			if m.Platform != nil && !p.filter.Match(*m.Platform) {
				continue
			}
			if err := p.walk(ctx, m, nil); err != nil {
				return err
			}
		}
		return nil
	}
	if err := p.run(ctx, walk); err != nil {
		return fmt.Errorf("import: %w", err)
	}

	// Name the images.
	if dst.GetName() != "" {
		img, err := s.putImage(ctx, &imagesapi.Image{Name: dst.GetName(), Labels: dst.GetLabels(), Target: descToProto(indexDesc)})
		if err != nil {
			return err
		}
		rep.named(eventSaved, img.GetName(), &indexDesc)
	}
	for _, m := range idx.Manifests {
		for _, n := range importNames(m, dst.GetExtraReferences()) {
			target := m
			target.Annotations = maps.Clone(m.Annotations)
			img, err := s.putImage(ctx, &imagesapi.Image{Name: n, Labels: dst.GetLabels(), Target: descToProto(target)})
			if err != nil {
				return err
			}
			rep.named(eventSaved, img.GetName(), &target)
		}
	}
	rep.status("Completed import")
	return nil
}

// importNames names an imported index.json entry as containerd's image
// store does for archive imports: each prefix reference turns the entry's
// io.containerd.image.name (a full name, kept only if it has the prefix
// unless overwriting is allowed) or org.opencontainers.image.ref.name (a
// tag, put after the prefix) into a name, and may add prefix@digest.
func importNames(m ocispec.Descriptor, refs []*transfertypes.ImageReference) []string {
	var names []string
	for _, r := range refs {
		if !r.GetIsPrefix() {
			continue
		}
		name := ""
		if full := m.Annotations[annotationImageName]; full != "" {
			if r.GetAllowOverwrite() || hasImagePrefix(full, r.GetName()) {
				name = full
			}
		} else if tag := m.Annotations[ocispec.AnnotationRefName]; tag != "" {
			switch {
			case !strings.ContainsAny(tag, "/:@"):
				name = r.GetName() + ":" + tag
			case r.GetAllowOverwrite() || hasImagePrefix(tag, r.GetName()):
				name = tag
			}
		}
		if name == "" {
			if r.GetAddDigest() {
				names = append(names, r.GetName()+"@"+m.Digest.String())
			}
			continue
		}
		names = append(names, name)
		if r.GetAddDigest() && !r.GetSkipNamedDigest() {
			names = append(names, r.GetName()+"@"+m.Digest.String())
		}
	}
	return names
}

func hasImagePrefix(s, prefix string) bool {
	if prefix == "" || !strings.HasPrefix(s, prefix) {
		return false
	}
	return len(s) == len(prefix) || strings.ContainsRune("/:@", rune(s[len(prefix)]))
}

// ingestBlob writes size bytes of r as blob dgst, verified; a blob the
// namespace has already is skipped.
func (s *Service) ingestBlob(ctx context.Context, dgst digest.Digest, size int64, r io.Reader) error {
	w, err := s.content.Writer(ctx, "import-"+dgst.String(), size, dgst)
	if errdefs.IsAlreadyExists(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("import %s: %w", dgst, err)
	}
	defer w.Close()
	if w.Status().Offset > 0 {
		if err := w.Truncate(0); err != nil {
			return err
		}
	}
	for {
		bp := bufPool.Get().(*[]byte)
		n, rerr := io.ReadFull(r, *bp)
		if n > 0 {
			if err := writeOwned(w, (*bp)[:n], func() { bufPool.Put(bp) }); err != nil {
				return fmt.Errorf("import %s: %w", dgst, err)
			}
		} else {
			bufPool.Put(bp)
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			return fmt.Errorf("import %s: %w", dgst, rerr)
		}
	}
	if err := w.Commit(ctx, size, dgst, nil); err != nil && !errdefs.IsAlreadyExists(err) {
		return fmt.Errorf("import %s: %w", dgst, err)
	}
	return nil
}
