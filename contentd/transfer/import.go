package transfer

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/flotilla/flotilla/services/logging"
	"io"
	"maps"
	"path"
	"strings"
	"time"

	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	transfertypes "github.com/containerd/containerd/api/types/transfer"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/flotilla/flotilla/contentd/streaming"
)

// importArchive reads an image archive from the client's stream into the
// content store, unpacks its images as dst asks and names them as
// containerd's importer does. The archive is an OCI image layout (what
// ctr export and newer docker save write: index.json, blobs/), or Docker's
// legacy format (older docker save: manifest.json naming configs and
// layer tars, no index.json), whose images get an index made for them
// (dockerIndex). Names come from each index entry's annotations, through
// dst's prefixes.
func (s *Service) importArchive(ctx context.Context, src *transfertypes.ImageImportStream, dst *transfertypes.ImageStore, send func(*transfertypes.Progress)) error {
	if err := s.mayUnpack(ctx, dst); err != nil {
		return err
	}
	ctx, endLease, err := s.withLease(ctx)
	if err != nil {
		return fmt.Errorf("import: %w", err)
	}
	defer endLease()
	st, err := s.streams.Get(ctx, src.GetStream())
	if err != nil {
		return fmt.Errorf("import stream: %w", err)
	}
	r := streaming.NewReader(st)
	defer r.Close()
	rep := newReporter(send, "import")
	rep.status("Importing")

	var (
		indexJSON []byte
		dockerMfs []dockerManifest
		files     = map[string]archiveFile{} // other files, by path
		links     = map[string]string{}
		blobs     = map[digest.Digest]bool{} // under blobs/
		extra     []digest.Digest            // other files this import added
	)
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("import: read archive: %v: %w", err, errdefs.ErrInvalidArgument)
		}
		name := path.Clean(strings.TrimPrefix(hdr.Name, "./"))
		if hdr.Typeflag == tar.TypeSymlink {
			links[name] = path.Join(path.Dir(name), hdr.Linkname)
			continue
		}
		if hdr.Typeflag != tar.TypeReg {
			continue
		}
		switch {
		case name == "index.json":
			if indexJSON, err = io.ReadAll(io.LimitReader(tr, maxMetadata)); err != nil {
				return fmt.Errorf("import: index.json: %w", err)
			}
		case name == "manifest.json":
			if err := json.NewDecoder(io.LimitReader(tr, maxMetadata)).Decode(&dockerMfs); err != nil {
				return fmt.Errorf("import: manifest.json: %v: %w", err, errdefs.ErrInvalidArgument)
			}
		case name == "oci-layout" || name == "repositories":
		case strings.HasPrefix(name, "blobs/") && strings.Count(name, "/") == 2:
			parts := strings.Split(name, "/")
			dgst := digest.NewDigestFromEncoded(digest.Algorithm(parts[1]), parts[2])
			if err := dgst.Validate(); err != nil {
				return fmt.Errorf("import: blob %s: %v: %w", name, err, errdefs.ErrInvalidArgument)
			}
			if err := s.ingestBlob(ctx, dgst, hdr.Size, tr); err != nil {
				return err
			}
			blobs[dgst] = true
		default:
			// A legacy archive's config or layer, perhaps.
			f, added, err := s.ingestFile(ctx, hdr.Size, tr)
			if err != nil {
				return fmt.Errorf("import %s: %w", name, err)
			}
			files[name] = f
			if added {
				extra = append(extra, f.desc.Digest)
			}
		}
	}
	if indexJSON == nil && dockerMfs != nil {
		if indexJSON, err = s.dockerIndex(ctx, dockerMfs, files, links); err != nil {
			return fmt.Errorf("import: %w", err)
		}
	}
	s.dropUnused(ctx, extra, indexJSON, blobs, dockerMfs, files)
	if indexJSON == nil {
		return fmt.Errorf("import: the archive has neither an index.json (OCI image layout) nor a manifest.json (docker save): %w", errdefs.ErrInvalidArgument)
	}
	var idx ocispec.Index
	if err := json.Unmarshal(indexJSON, &idx); err != nil {
		return fmt.Errorf("import: index.json: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	indexDesc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageIndex, Digest: digest.FromBytes(indexJSON), Size: int64(len(indexJSON))}
	if err := s.ingestBlob(ctx, indexDesc.Digest, indexDesc.Size, bytes.NewReader(indexJSON)); err != nil {
		return err
	}

	// Unpack what the image store asks for, walking the imported blobs.
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	p, err := s.newPuller(ctx, cancel, dst, rep, nil)
	if errdefs.IsFailedPrecondition(err) {
		// No snapshotd: an import keeps the content alone.
		p, err = s.newPuller(ctx, cancel, &transfertypes.ImageStore{Platforms: dst.GetPlatforms()}, rep, nil)
	}
	if err != nil {
		return err
	}
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

	// Name the images: the index by the image name and the extra
	// references, then each entry of index.json, as containerd's image store
	// does.
	extraLabels := extraRefLabels(dst.GetName(), dst.GetLabels(), time.Now())
	if dst.GetName() != "" {
		img, err := s.putImage(ctx, &imagesapi.Image{Name: dst.GetName(), Labels: dst.GetLabels(), Target: descToProto(indexDesc)})
		if err != nil {
			return err
		}
		rep.named(eventSaved, img.GetName(), &indexDesc)
	}
	for _, n := range indexNames(indexDesc, dst.GetExtraReferences()) {
		img, err := s.putImage(ctx, &imagesapi.Image{Name: n, Labels: extraLabels, Target: descToProto(indexDesc)})
		if err != nil {
			return err
		}
		rep.named(eventSaved, img.GetName(), &indexDesc)
	}
	for _, m := range idx.Manifests {
		for _, n := range importNames(m, dst.GetExtraReferences()) {
			target := m
			target.Annotations = maps.Clone(m.Annotations)
			img, err := s.putImage(ctx, &imagesapi.Image{Name: n, Labels: extraLabels, Target: descToProto(target)})
			if err != nil {
				return err
			}
			rep.named(eventSaved, img.GetName(), &target)
		}
	}
	rep.status("Completed import")
	return nil
}

// extraRefLabels are the labels of an image named by an extra reference:
// the image store's labels and, when there is an image name, those that
// make it go with that image (containerd's GC back-reference, and an
// expiry already passed so nothing else keeps it), as containerd's image
// store gives them.
func extraRefLabels(name string, labels map[string]string, now time.Time) map[string]string {
	if name == "" {
		return labels
	}
	out := maps.Clone(labels)
	if out == nil {
		out = map[string]string{}
	}
	out["containerd.io/gc.bref.image"] = name
	out["containerd.io/gc.expire"] = now.Format(time.RFC3339)
	return out
}

// indexNames names the imported index itself by the extra references, as
// containerd's image store names a descriptor that has no names of its
// own: each complete reference as it is, and prefix@digest for each that
// adds the digest (SkipNamedDigest does not apply to the index).
func indexNames(index ocispec.Descriptor, refs []*transfertypes.ImageReference) []string {
	var names []string
	for _, r := range refs {
		switch {
		case r.GetAddDigest():
			names = append(names, r.GetName()+"@"+index.Digest.String())
		case !r.GetIsPrefix():
			names = append(names, r.GetName())
		}
	}
	return names
}

// dropUnused removes the blobs an import added for files outside blobs/
// that no image uses (a legacy archive's per-layer json and VERSION
// files; anything beside an OCI layout). Best effort: what stays is found
// by garbage collection.
func (s *Service) dropUnused(ctx context.Context, added []digest.Digest, indexJSON []byte, blobs map[digest.Digest]bool, mfsts []dockerManifest, files map[string]archiveFile) {
	used := maps.Clone(blobs)
	if indexJSON != nil && mfsts != nil {
		for _, m := range mfsts {
			for _, name := range append([]string{m.Config}, m.Layers...) {
				if f, ok := files[path.Clean(name)]; ok {
					used[f.desc.Digest] = true
				}
			}
		}
	}
	for _, d := range added {
		if used[d] {
			continue
		}
		if err := s.content.Delete(context.WithoutCancel(ctx), d); err != nil && !errdefs.IsNotFound(err) {
			logging.Or(ctx, s.log).Warn("remove a file of an imported archive that no image uses", "digest", d, "error", err)
		}
	}
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

// ingestFile writes size bytes of r as a blob whose digest is learnt as it
// is written, and returns it with its first bytes; added says whether the
// namespace lacked it.
func (s *Service) ingestFile(ctx context.Context, size int64, r io.Reader) (f archiveFile, added bool, err error) {
	ref := "import-file-" + uniquePart()
	w, err := s.content.Writer(ctx, ref, size, "")
	if err != nil {
		return f, false, err
	}
	defer w.Close()
	head := &headRecorder{max: 8}
	if _, err := io.Copy(w, io.TeeReader(io.LimitReader(r, size), head)); err != nil {
		s.content.Abort(context.WithoutCancel(ctx), ref)
		return f, false, err
	}
	f = archiveFile{desc: ocispec.Descriptor{Digest: w.Digest(), Size: w.Status().Offset}, head: head.b}
	switch err := w.Commit(ctx, size, f.desc.Digest, nil); {
	case errdefs.IsAlreadyExists(err):
		return f, false, nil
	case err != nil:
		return f, false, err
	}
	return f, true, nil
}

// headRecorder keeps the first max bytes written to it.
type headRecorder struct {
	b   []byte
	max int
}

func (h *headRecorder) Write(p []byte) (int, error) {
	if n := h.max - len(h.b); n > 0 {
		h.b = append(h.b, p[:min(n, len(p))]...)
	}
	return len(p), nil
}
