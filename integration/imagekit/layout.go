package imagekit

import (
	"archive/tar"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"

	"github.com/containerd/errdefs"
	digest "github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// layoutIndex is the index.json naming each image: the descriptor of its root with the
// reference as both org.opencontainers.image.ref.name and io.containerd.image.name, so that
// `ctr images import` names the image exactly ref.
func layoutIndex(images map[string]*Image) ([]byte, error) {
	index := ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex}
	for _, ref := range slices.Sorted(maps.Keys(images)) {
		if ref == "" {
			return nil, fmt.Errorf("image layout: empty reference: %w", errdefs.ErrInvalidArgument)
		}
		desc := images[ref].Target
		desc.Annotations = map[string]string{
			ocispec.AnnotationRefName: ref,
			AnnotationImageName:       ref,
		}
		index.Manifests = append(index.Manifests, desc)
	}
	data, err := json.Marshal(index)
	if err != nil {
		return nil, fmt.Errorf("image layout index: %w", err)
	}
	return data, nil
}

// layoutBlobs is every blob of the images once, in a stable order.
func layoutBlobs(images map[string]*Image) []Blob {
	seen := map[digest.Digest]bool{}
	var blobs []Blob
	for _, ref := range slices.Sorted(maps.Keys(images)) {
		for _, b := range images[ref].Blobs {
			if !seen[b.Descriptor.Digest] {
				seen[b.Descriptor.Digest] = true
				blobs = append(blobs, b)
			}
		}
	}
	return blobs
}

func blobPath(d digest.Digest) string {
	return "blobs/" + d.Algorithm().String() + "/" + d.Encoded()
}

var ociLayout = []byte(`{"imageLayoutVersion":"` + ocispec.ImageLayoutVersion + `"}`)

// WriteLayout writes images, keyed by reference ("busybox:1", "127.0.0.1:5000/x:y"), as an
// OCI image layout in dir (created if missing): oci-layout, index.json, blobs/sha256/….
func WriteLayout(dir string, images map[string]*Image) error {
	index, err := layoutIndex(images)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(dir, "blobs", "sha256"), 0o755); err != nil {
		return fmt.Errorf("image layout: %w", err)
	}
	for _, b := range layoutBlobs(images) {
		if err := writeBlobFile(filepath.Join(dir, filepath.FromSlash(blobPath(b.Descriptor.Digest))), b); err != nil {
			return fmt.Errorf("image layout: %w", err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, ocispec.ImageLayoutFile), ociLayout, 0o644); err != nil {
		return fmt.Errorf("image layout: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, ocispec.ImageIndexFile), index, 0o644); err != nil {
		return fmt.Errorf("image layout: %w", err)
	}
	return nil
}

func writeBlobFile(path string, b Blob) error {
	r, err := b.Open()
	if err != nil {
		return err
	}
	defer r.Close()
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	n, err := io.Copy(f, r)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil && n != b.Descriptor.Size {
		err = fmt.Errorf("blob %s: wrote %d bytes, descriptor says %d", b.Descriptor.Digest, n, b.Descriptor.Size)
	}
	return err
}

// WriteArchive writes images, keyed by reference, as an OCI archive: the tar of an OCI image
// layout, which `ctr images import` accepts. Blobs are streamed, never held whole.
func WriteArchive(w io.Writer, images map[string]*Image) error {
	index, err := layoutIndex(images)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(w)
	small := func(name string, data []byte) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(data)), ModTime: created})
	}
	for _, f := range []struct {
		name string
		data []byte
	}{{ocispec.ImageLayoutFile, ociLayout}, {ocispec.ImageIndexFile, index}} {
		if err := small(f.name, f.data); err != nil {
			return fmt.Errorf("oci archive: %w", err)
		}
		if _, err := tw.Write(f.data); err != nil {
			return fmt.Errorf("oci archive: %w", err)
		}
	}
	for _, d := range []string{"blobs/", "blobs/sha256/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755, ModTime: created}); err != nil {
			return fmt.Errorf("oci archive: %w", err)
		}
	}
	for _, b := range layoutBlobs(images) {
		if err := archiveBlob(tw, b); err != nil {
			return fmt.Errorf("oci archive: blob %s: %w", b.Descriptor.Digest, err)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("oci archive: %w", err)
	}
	return nil
}

func archiveBlob(tw *tar.Writer, b Blob) error {
	r, err := b.Open()
	if err != nil {
		return err
	}
	defer r.Close()
	hdr := &tar.Header{Typeflag: tar.TypeReg, Name: blobPath(b.Descriptor.Digest), Mode: 0o444, Size: b.Descriptor.Size, ModTime: created}
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	_, err = io.Copy(tw, r)
	return err
}

// WriteArchive writes the image alone under ref as an OCI archive; see [WriteArchive].
func (img *Image) WriteArchive(w io.Writer, ref string) error {
	return WriteArchive(w, map[string]*Image{ref: img})
}

// WriteLayout writes the image alone under ref as an OCI image layout; see [WriteLayout].
func (img *Image) WriteLayout(dir, ref string) error {
	return WriteLayout(dir, map[string]*Image{ref: img})
}

// dockerManifestEntry is one image of the manifest.json of `docker save`'s format.
type dockerManifestEntry struct {
	Config   string
	RepoTags []string
	Layers   []string
}

// WriteDockerArchive writes images, keyed by reference, in the archive format of `docker save`,
// which `docker load` of every Docker Engine version reads (20.10 reads no OCI archive): a
// manifest.json naming each image's config and layers, which are stored as in an OCI archive
// (blobs/sha256/…, compressed layers as built). Only an image's host-platform manifest is
// written. Blobs are streamed, never held whole.
func WriteDockerArchive(w io.Writer, images map[string]*Image) error {
	var manifest []dockerManifestEntry
	seen := map[digest.Digest]bool{}
	var blobs []Blob
	add := func(img *Image, d digest.Digest) error {
		b, ok := img.Blob(d)
		if !ok {
			return fmt.Errorf("docker archive: blob %s is not in the image: %w", d, errdefs.ErrNotFound)
		}
		if !seen[d] {
			seen[d] = true
			blobs = append(blobs, b)
		}
		return nil
	}
	for _, ref := range slices.Sorted(maps.Keys(images)) {
		if ref == "" {
			return fmt.Errorf("docker archive: empty reference: %w", errdefs.ErrInvalidArgument)
		}
		img := images[ref]
		entry := dockerManifestEntry{Config: blobPath(img.Config.Digest), RepoTags: []string{ref}}
		if err := add(img, img.Config.Digest); err != nil {
			return err
		}
		for _, l := range img.Layers {
			if err := add(img, l.Descriptor.Digest); err != nil {
				return err
			}
			entry.Layers = append(entry.Layers, blobPath(l.Descriptor.Digest))
		}
		manifest = append(manifest, entry)
	}
	data, err := json.Marshal(manifest)
	if err != nil {
		return fmt.Errorf("docker archive: %w", err)
	}
	tw := tar.NewWriter(w)
	for _, d := range []string{"blobs/", "blobs/sha256/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755, ModTime: created}); err != nil {
			return fmt.Errorf("docker archive: %w", err)
		}
	}
	for _, b := range blobs {
		if err := archiveBlob(tw, b); err != nil {
			return fmt.Errorf("docker archive: blob %s: %w", b.Descriptor.Digest, err)
		}
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "manifest.json", Mode: 0o644, Size: int64(len(data)), ModTime: created}); err != nil {
		return fmt.Errorf("docker archive: %w", err)
	}
	if _, err := tw.Write(data); err != nil {
		return fmt.Errorf("docker archive: %w", err)
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("docker archive: %w", err)
	}
	return nil
}

// WriteDockerArchive writes the image alone under ref in `docker save`'s format; see
// [WriteDockerArchive].
func (img *Image) WriteDockerArchive(w io.Writer, ref string) error {
	return WriteDockerArchive(w, map[string]*Image{ref: img})
}
