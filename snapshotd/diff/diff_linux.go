// Package diff is snapshotd's differ: it applies a layer from the content
// store onto a snapshot's mounts and turns the difference between two
// snapshots' mounts into a new layer in the content store. The gRPC
// service in diff/service is a thin adapter over it.
package diff

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"time"

	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"

	"github.com/flotilla/flotilla/snapshotd/diff/archive"
	"github.com/flotilla/flotilla/snapshotd/diff/compression"
	"github.com/flotilla/flotilla/snapshotd/diff/content"
	"github.com/flotilla/flotilla/snapshotd/diff/mount"
)

// UncompressedLabel is the label containerd puts on a compressed layer
// blob to name its uncompressed digest (the diff ID).
const UncompressedLabel = "containerd.io/uncompressed"

// Differ applies and creates layers, reading and writing blobs through a
// content store.
type Differ struct {
	provider    content.Provider
	ingester    content.Ingester
	maxFileSize int64
}

// Option changes a Differ.
type Option func(*Differ)

// WithMaxFileSize refuses layers holding a regular file larger than n
// bytes (archive.DefaultMaxFileSize otherwise).
func WithMaxFileSize(n int64) Option {
	return func(d *Differ) { d.maxFileSize = n }
}

// New returns a differ that reads layers from p and writes new ones to i.
func New(p content.Provider, i content.Ingester, opts ...Option) *Differ {
	d := &Differ{provider: p, ingester: i, maxFileSize: archive.DefaultMaxFileSize}
	for _, opt := range opts {
		opt(d)
	}
	return d
}

// ApplyOption changes one Apply.
type ApplyOption func(*applyConfig)

type applyConfig struct{ syncFS, skipBlobDigest bool }

// WithSyncFS makes Apply flush the filesystem it wrote to before returning.
func WithSyncFS() ApplyOption { return func(c *applyConfig) { c.syncFS = true } }

// WithBlobDigestCheckedByCaller makes Apply skip hashing the compressed
// blob: for a caller that reads a blob still being fetched and keeps the
// snapshot only once the store has verified the blob (contentd's pull).
// The diff ID is computed all the same.
func WithBlobDigestCheckedByCaller() ApplyOption {
	return func(c *applyConfig) { c.skipBlobDigest = true }
}

// Apply extracts the layer desc names onto mounts and returns the
// descriptor of the uncompressed tar it applied: media type
// application/vnd.oci.image.layer.v1.tar, digest (the diff ID) and size.
//
// The layer is read from the provider, decompressed by its media type
// (gzip, zstd or none, checked against the data's magic bytes) and its
// digest and size checked against desc as it is read. mounts is one
// writable bind mount of a directory (applied to directly), one overlay
// mount with an upper directory (applied to the upper directory, with
// overlay whiteouts and parents resolved through its lower directories as
// the merged view shows them), or any list of mounts, which is mounted on a private
// temporary directory for the time of the call. What archive.Apply refuses
// is an InvalidArgument error and leaves everything outside the mounts as
// it was; a media type that is not a layer's is NotImplemented; a blob the
// store lacks is NotFound.
func (d *Differ) Apply(ctx context.Context, desc ocispec.Descriptor, mounts []*types.Mount, opts ...ApplyOption) (ocispec.Descriptor, error) {
	var cfg applyConfig
	for _, opt := range opts {
		opt(&cfg)
	}
	want, err := compression.FromMediaType(desc.MediaType)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	if err := desc.Digest.Validate(); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("layer digest %q: %v: %w", desc.Digest, err, errdefs.ErrInvalidArgument)
	}
	blob, size, err := d.open(ctx, desc)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	defer blob.Close()

	var applied ocispec.Descriptor
	err = onMounts(ctx, mounts, func(root string, overlay bool, lowers []string) error {
		raw := &digestReader{r: blob, digestCount: digestCount{d: desc.Digest.Algorithm().Digester()}, countOnly: cfg.skipBlobDigest}
		rc, got, err := compression.Decompress(raw, want)
		if err != nil {
			return archive.Classify(err)
		}
		defer rc.Close()
		tarStream := &digestReader{r: rc, digestCount: digestCount{d: digest.SHA256.Digester()}}
		aopts := []archive.ApplyOption{archive.WithMaxFileSize(d.maxFileSize)}
		if overlay {
			aopts = append(aopts, archive.WithOverlayLowers(lowers...))
		}
		if got == compression.Uncompressed && size >= 0 {
			aopts = append(aopts, archive.WithStreamSize(size))
		}
		ahead := newReadAhead(tarStream, 256<<10, 8)
		defer ahead.Close()
		if err := archive.Apply(ctx, root, ahead, aopts...); err != nil {
			return fmt.Errorf("apply layer %s: %w", desc.Digest, err)
		}
		// Read what follows the tar's end, so both digests cover everything
		// (and the decompressor checks its trailer). Once ahead is drained,
		// its goroutine is done with the digests.
		if _, err := io.Copy(io.Discard, ahead); err != nil {
			return archive.Classify(fmt.Errorf("read layer %s: %w", desc.Digest, err))
		}
		if _, err := io.Copy(io.Discard, raw); err != nil {
			return archive.Classify(fmt.Errorf("read layer %s: %w", desc.Digest, err))
		}
		if size >= 0 && raw.n != size {
			return fmt.Errorf("layer %s: content is %d bytes, descriptor says %d: %w", desc.Digest, raw.n, size, errdefs.ErrInvalidArgument)
		}
		if dg := raw.d.Digest(); !cfg.skipBlobDigest && dg != desc.Digest {
			return fmt.Errorf("layer %s: content digests to %s (%d bytes): %w", desc.Digest, dg, raw.n, errdefs.ErrInvalidArgument)
		}
		if cfg.syncFS {
			if err := syncFS(root); err != nil {
				return err
			}
		}
		applied = ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: tarStream.d.Digest(), Size: tarStream.n}
		return nil
	})
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	return applied, nil
}

// open opens the layer desc names for reading in order, with its size (-1
// when neither the store nor desc tells it): as one stream when the
// provider can, else through ReaderAt. A missing blob is NotFound here.
func (d *Differ) open(ctx context.Context, desc ocispec.Descriptor) (io.ReadCloser, int64, error) {
	if st, ok := d.provider.(content.Streamer); ok {
		rc, err := st.Stream(ctx, desc)
		if err != nil {
			return nil, 0, fmt.Errorf("layer %s: %w", desc.Digest, err)
		}
		br := bufio.NewReaderSize(rc, 64<<10)
		if _, err := br.Peek(1); err != nil && !errors.Is(err, io.EOF) {
			rc.Close()
			return nil, 0, fmt.Errorf("layer %s: %w", desc.Digest, err)
		}
		size := desc.Size
		if size <= 0 {
			size = -1
		}
		return readCloser{br, rc}, size, nil
	}
	ra, err := d.provider.ReaderAt(ctx, desc)
	if err != nil {
		return nil, 0, fmt.Errorf("layer %s: %w", desc.Digest, err)
	}
	if desc.Size > 0 && ra.Size() != desc.Size {
		ra.Close()
		return nil, 0, fmt.Errorf("layer %s is %d bytes in the store, descriptor says %d: %w", desc.Digest, ra.Size(), desc.Size, errdefs.ErrFailedPrecondition)
	}
	return readCloser{bufio.NewReaderSize(io.NewSectionReader(ra, 0, ra.Size()), 1<<20), ra}, ra.Size(), nil
}

type readCloser struct {
	io.Reader
	io.Closer
}

// digestCount is the digest and the count of the bytes that have passed
// through a digestReader or a digestWriter.
type digestCount struct {
	d digest.Digester
	n int64
}

func (c *digestCount) add(p []byte) {
	c.d.Hash().Write(p)
	c.n += int64(len(p))
}

type digestReader struct {
	r io.Reader
	digestCount
	countOnly bool // count the bytes, do not hash them
}

func (r *digestReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if r.countOnly {
		r.n += int64(n)
	} else {
		r.add(p[:n])
	}
	return n, err
}

func syncFS(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("syncfs %s: %w", dir, err)
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("syncfs %s: %w", dir, err)
	}
	return nil
}

// onMounts calls fn with a directory holding what mounts show, writable:
// a bind mount's source, an overlay's upper directory (overlay true, with
// the overlay's lower directories, topmost first), or mounts mounted on a
// temporary directory.
func onMounts(ctx context.Context, mounts []*types.Mount, fn func(root string, overlay bool, lowers []string) error) error {
	if len(mounts) == 0 {
		return fmt.Errorf("no mounts to apply to: %w", errdefs.ErrInvalidArgument)
	}
	if len(mounts) == 1 && mounts[0].GetTarget() == "" {
		m := mounts[0]
		if upper, lowers, ok := mount.Overlay(m); ok {
			if upper == "" {
				return fmt.Errorf("overlay mount without upperdir is read-only: %w", errdefs.ErrInvalidArgument)
			}
			return fn(upper, true, lowers)
		}
		if bind, ro := mount.Bind(m); bind {
			if ro {
				return fmt.Errorf("bind mount of %s is read-only: %w", m.GetSource(), errdefs.ErrInvalidArgument)
			}
			if fi, err := os.Stat(m.GetSource()); err != nil || !fi.IsDir() {
				return fmt.Errorf("bind mount source %s is not a directory: %w", m.GetSource(), errdefs.ErrInvalidArgument)
			}
			return fn(m.GetSource(), false, nil)
		}
	}
	return mount.WithTempMount(ctx, mounts, func(root string) error { return fn(root, false, nil) })
}

// CompareOption changes one Compare.
type CompareOption func(*compareConfig)

type compareConfig struct {
	mediaType string
	ref       string
	labels    map[string]string
	epoch     *time.Time
}

// WithMediaType sets the new layer's media type (gzip-compressed OCI layer
// by default).
func WithMediaType(mt string) CompareOption { return func(c *compareConfig) { c.mediaType = mt } }

// WithReference sets the content store reference the layer is written
// under while in progress (a unique one by default).
func WithReference(ref string) CompareOption { return func(c *compareConfig) { c.ref = ref } }

// WithLabels labels the committed blob.
func WithLabels(l map[string]string) CompareOption { return func(c *compareConfig) { c.labels = l } }

// WithSourceDateEpoch clamps the layer's modification times to t.
func WithSourceDateEpoch(t time.Time) CompareOption { return func(c *compareConfig) { c.epoch = &t } }

// Compare writes the changes that turn what lower mounts show into what
// upper mounts show as a layer into the content store, and returns its
// descriptor. An empty lower is an empty tree. When upper is an overlay
// whose lower directories are exactly lower's, the layer is read from its
// upper directory, overlay whiteouts turned into OCI ones; otherwise both
// are mounted read-only and compared file by file. A compressed layer's
// blob gets the containerd.io/uncompressed label with its diff ID. An
// unknown media type is NotImplemented; a blob already in the store is
// returned as it is.
func (d *Differ) Compare(ctx context.Context, lower, upper []*types.Mount, opts ...CompareOption) (ocispec.Descriptor, error) {
	cfg := compareConfig{mediaType: ocispec.MediaTypeImageLayerGzip}
	for _, opt := range opts {
		opt(&cfg)
	}
	comp, err := compression.FromMediaType(cfg.mediaType)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	if len(upper) == 0 {
		return ocispec.Descriptor{}, fmt.Errorf("no upper mounts to compare: %w", errdefs.ErrInvalidArgument)
	}
	if cfg.ref == "" {
		cfg.ref = uniqueRef()
	}
	var wopts []archive.WriteOption
	if cfg.epoch != nil {
		wopts = append(wopts, archive.WithSourceDateEpoch(*cfg.epoch))
	}

	write := func(tw io.Writer) error {
		return withTrees(ctx, lower, upper, func(l, u string) error {
			return archive.WriteDiff(ctx, tw, l, u, wopts...)
		})
	}
	if upperDir, ok := overlayUpperOver(lower, upper); ok {
		desc, err := d.writeLayer(ctx, cfg, comp, func(tw io.Writer) error {
			return archive.WriteOverlayUpper(ctx, tw, upperDir, wopts...)
		})
		if !errors.Is(err, archive.ErrOverlayFeature) {
			return desc, err
		}
	}
	return d.writeLayer(ctx, cfg, comp, write)
}

// writeLayer streams the tar fill writes, compressed, into the content
// store and commits it.
func (d *Differ) writeLayer(ctx context.Context, cfg compareConfig, comp compression.Compression, fill func(io.Writer) error) (ocispec.Descriptor, error) {
	w, err := d.ingester.Writer(ctx, cfg.ref)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("open content writer %q: %w", cfg.ref, err)
	}
	defer w.Close()
	bw := bufio.NewWriterSize(w, 1<<20)
	compressed := &digestWriter{w: bw, digestCount: digestCount{d: digest.SHA256.Digester()}}
	zw, err := compression.Compress(compressed, comp)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("compress layer: %w", err)
	}
	uncompressed := &digestWriter{w: zw, digestCount: digestCount{d: digest.SHA256.Digester()}}
	if err := fill(uncompressed); err != nil {
		return ocispec.Descriptor{}, err
	}
	if err := zw.Close(); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("compress layer: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("write layer: %w", err)
	}
	labels := maps.Clone(cfg.labels)
	if comp != compression.Uncompressed {
		if labels == nil {
			labels = map[string]string{}
		}
		labels[UncompressedLabel] = uncompressed.d.Digest().String()
	}
	desc := ocispec.Descriptor{MediaType: cfg.mediaType, Digest: compressed.d.Digest(), Size: compressed.n}
	if err := w.Commit(ctx, desc.Size, desc.Digest, labels); err != nil && !errdefs.IsAlreadyExists(err) {
		return ocispec.Descriptor{}, fmt.Errorf("commit layer %s: %w", desc.Digest, err)
	}
	return desc, nil
}

type digestWriter struct {
	w io.Writer
	digestCount
}

func (w *digestWriter) Write(p []byte) (int, error) {
	n, err := w.w.Write(p)
	w.add(p[:n])
	return n, err
}

// overlayUpperOver returns upper's upper directory when upper is an
// overlay stacked right on what lower shows: an overlay with the same lower
// directories, or a bind mount of its only lower directory.
func overlayUpperOver(lower, upper []*types.Mount) (string, bool) {
	if len(upper) != 1 || len(lower) > 1 {
		return "", false
	}
	upperDir, lowers, ok := mount.Overlay(upper[0])
	if !ok || upperDir == "" {
		return "", false
	}
	if len(lower) == 0 {
		return "", false
	}
	if l, ll, ok := mount.Overlay(lower[0]); ok && l == "" && slices.Equal(ll, lowers) {
		return upperDir, true
	}
	if bind, _ := mount.Bind(lower[0]); bind && len(lowers) == 1 && lower[0].GetSource() == lowers[0] {
		return upperDir, true
	}
	return "", false
}

// withTrees calls fn with directories showing lower ("" when empty) and
// upper, read-only: a bind mount's source as it is, anything else mounted
// read-only on a temporary directory.
func withTrees(ctx context.Context, lower, upper []*types.Mount, fn func(l, u string) error) error {
	return withTree(ctx, lower, func(l string) error {
		return withTree(ctx, upper, func(u string) error { return fn(l, u) })
	})
}

func withTree(ctx context.Context, ms []*types.Mount, fn func(string) error) error {
	if len(ms) == 0 {
		return fn("")
	}
	if len(ms) == 1 && ms[0].GetTarget() == "" {
		if bind, _ := mount.Bind(ms[0]); bind {
			return fn(ms[0].GetSource())
		}
	}
	return mount.WithTempMount(ctx, mount.ReadOnly(ms), fn)
}

func uniqueRef() string {
	b := make([]byte, 8)
	rand.Read(b)
	return fmt.Sprintf("diff-%d-%s", time.Now().UnixNano(), hex.EncodeToString(b))
}
