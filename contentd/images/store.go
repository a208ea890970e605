// Package images keeps contentd's image catalogue — per namespace, a name
// pointing at a target descriptor, with labels and timestamps — in the
// metadata database, and serves it as containerd's Images API.
package images

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"strconv"
	"time"

	"github.com/containerd/errdefs"
	digest "github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"

	"github.com/flotilla/flotilla/contentd/metadata"
	"github.com/flotilla/flotilla/services/filters"
	"github.com/flotilla/flotilla/services/gc"
	"github.com/flotilla/flotilla/services/namespace"
)

// Descriptor is what an image points at: a manifest or an index.
type Descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      digest.Digest     `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// Image is one record of the catalogue.
type Image struct {
	Name      string            `json:"name"`
	Labels    map[string]string `json:"labels,omitempty"`
	Target    Descriptor        `json:"target"`
	CreatedAt time.Time         `json:"createdAt"`
	UpdatedAt time.Time         `json:"updatedAt"`
}

// Store keeps images in the namespace carried by each call's context; a
// context without one is InvalidArgument. A valid image has a name, a target
// with a media type and a valid digest, and labels within containerd's size
// limit; anything else is InvalidArgument. Label and annotation values that
// are empty are not kept (setting one to "" deletes it), as in containerd.
type Store interface {
	// Get returns image name; NotFound if it does not exist.
	Get(ctx context.Context, name string) (Image, error)
	// List returns the images matching any of filters (containerd's syntax
	// over name, target.digest, target.mediatype, target.size, labels.KEY,
	// annotations.KEY, created_at, updated_at), sorted by name.
	List(ctx context.Context, filters ...string) ([]Image, error)
	// Create adds img, setting its created and updated times;
	// AlreadyExists if the name is taken.
	Create(ctx context.Context, img Image, opts ...Opt) (Image, error)
	// Update changes the existing image img.Name (NotFound otherwise). With
	// no paths every updatable field (labels, target) is replaced by img's;
	// otherwise only the given paths are: "labels", "labels.KEY", "target",
	// "annotations", "annotations.KEY" (the target's). Another path is
	// InvalidArgument and nothing changes. The created time is kept.
	Update(ctx context.Context, img Image, paths []string, opts ...Opt) (Image, error)
	// Delete removes image name: NotFound if it does not exist, or if
	// WithTarget names a digest the image does not point at.
	Delete(ctx context.Context, name string, opts ...Opt) error
}

type options struct {
	now    time.Time
	target digest.Digest
}

// Opt changes one call of a Store.
type Opt func(*options)

// WithTime makes Create and Update record t as the time of the change
// instead of now (containerd's source_date_epoch, for reproducible records).
func WithTime(t time.Time) Opt { return func(o *options) { o.now = t } }

// WithTarget makes Delete remove the image only if it points at dgst.
func WithTarget(dgst digest.Digest) Opt { return func(o *options) { o.target = dgst } }

func apply(opts []Opt) options {
	o := options{now: time.Now().UTC()}
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// BoltStore is the Store kept in contentd's metadata database.
type BoltStore struct {
	db      *bolt.DB
	tracker *gc.Tracker // nil outside garbage collection
}

var _ Store = (*BoltStore)(nil)

// NewStore returns the Store kept in db, a database opened by metadata.Open.
func NewStore(db *bolt.DB) *BoltStore { return &BoltStore{db: db} }

// SetTracker makes the store report its writes and lookups to t, the
// tracker of contentd's garbage collection. Call it before the store is used.
func (s *BoltStore) SetTracker(t *gc.Tracker) { s.tracker = t }

// touches names what writing img touches: the image, its target and what
// its labels reference.
func touches(ns string, img Image) []gc.Ref {
	refs := append(gc.LabelRefs(ns, img.Labels), gc.Image(ns, img.Name))
	if img.Target.Digest != "" {
		refs = append(refs, gc.Content(ns, img.Target.Digest.String()))
	}
	return refs
}

// ForEach calls fn, inside tx, with every image of namespace ns.
func ForEach(tx *bolt.Tx, ns string, fn func(Image) error) error {
	b := metadata.StoreBucket(tx, ns, metadata.BucketImages)
	if b == nil {
		return nil
	}
	return b.ForEach(func(k, v []byte) error {
		img, err := decode(k, v)
		if err != nil {
			return err
		}
		return fn(img)
	})
}

// DeleteRecord removes image name of namespace ns inside tx; it reports
// whether there was one.
func DeleteRecord(tx *bolt.Tx, ns, name string) (bool, error) {
	b := metadata.StoreBucket(tx, ns, metadata.BucketImages)
	if b == nil || b.Get([]byte(name)) == nil {
		return false, nil
	}
	return true, b.Delete([]byte(name))
}

// Get implements Store.
func (s *BoltStore) Get(ctx context.Context, name string) (Image, error) {
	ns, err := namespace.Required(ctx)
	if err != nil {
		return Image{}, err
	}
	var img Image
	err = s.db.View(func(tx *bolt.Tx) error {
		img, err = get(metadata.StoreBucket(tx, ns, metadata.BucketImages), name)
		return err
	})
	if err == nil {
		s.tracker.Touch(touches(ns, img)...)
	}
	return img, err
}

// List implements Store.
func (s *BoltStore) List(ctx context.Context, fs ...string) ([]Image, error) {
	ns, err := namespace.Required(ctx)
	if err != nil {
		return nil, err
	}
	f, err := filters.ParseAll(fs...)
	if err != nil {
		return nil, err
	}
	var out []Image
	err = s.db.View(func(tx *bolt.Tx) error {
		b := metadata.StoreBucket(tx, ns, metadata.BucketImages)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			img, err := decode(k, v)
			if err != nil {
				return err
			}
			if f.Match(adaptor(img)) {
				out = append(out, img)
			}
			return nil
		})
	})
	return out, err
}

// Create implements Store.
func (s *BoltStore) Create(ctx context.Context, img Image, opts ...Opt) (Image, error) {
	ns, err := namespace.Required(ctx)
	if err != nil {
		return Image{}, err
	}
	o := apply(opts)
	img = normalize(img)
	if err := validate(img); err != nil {
		return Image{}, err
	}
	img.CreatedAt, img.UpdatedAt = o.now, o.now
	done := s.tracker.Write(touches(ns, img)...)
	defer done()
	err = s.db.Update(func(tx *bolt.Tx) error {
		b, err := metadata.CreateStoreBucket(tx, ns, metadata.BucketImages)
		if err != nil {
			return err
		}
		if b.Get([]byte(img.Name)) != nil {
			return fmt.Errorf("image %q: %w", img.Name, errdefs.ErrAlreadyExists)
		}
		return put(b, img)
	})
	if err != nil {
		return Image{}, err
	}
	return img, nil
}

// Update implements Store.
func (s *BoltStore) Update(ctx context.Context, img Image, paths []string, opts ...Opt) (Image, error) {
	ns, err := namespace.Required(ctx)
	if err != nil {
		return Image{}, err
	}
	if img.Name == "" {
		return Image{}, fmt.Errorf("image name is required for update: %w", errdefs.ErrInvalidArgument)
	}
	o := apply(opts)
	// What the update may reference is in img: its labels and target.
	done := s.tracker.Write(touches(ns, img)...)
	defer done()
	var updated Image
	err = s.db.Update(func(tx *bolt.Tx) error {
		b := metadata.StoreBucket(tx, ns, metadata.BucketImages)
		current, err := get(b, img.Name)
		if err != nil {
			return err
		}
		if updated, err = applyPaths(current, img, paths); err != nil {
			return err
		}
		updated = normalize(updated)
		if err := validate(updated); err != nil {
			return err
		}
		updated.CreatedAt, updated.UpdatedAt = current.CreatedAt, o.now
		return put(b, updated)
	})
	if err != nil {
		return Image{}, err
	}
	return updated, nil
}

// applyPaths returns current updated from img along paths.
func applyPaths(current, img Image, paths []string) (Image, error) {
	if len(paths) == 0 {
		current.Labels = img.Labels
		current.Target = img.Target
		return current, nil
	}
	updated := current
	updated.Labels = maps.Clone(current.Labels)
	updated.Target.Annotations = maps.Clone(current.Target.Annotations)
	for _, p := range paths {
		var ok bool
		if updated.Labels, ok = metadata.UpdateMapPath(updated.Labels, img.Labels, "labels", p); ok {
			continue
		}
		if updated.Target.Annotations, ok = metadata.UpdateMapPath(updated.Target.Annotations, img.Target.Annotations, "annotations", p); ok {
			continue
		}
		switch p {
		case "target":
			// The target is replaced as a whole: a descriptor's fields only
			// make sense together.
			updated.Target = img.Target
			updated.Target.Annotations = maps.Clone(img.Target.Annotations)
		default:
			return Image{}, fmt.Errorf("cannot update field %q of image %q: %w", p, img.Name, errdefs.ErrInvalidArgument)
		}
	}
	return updated, nil
}

// Delete implements Store.
func (s *BoltStore) Delete(ctx context.Context, name string, opts ...Opt) error {
	ns, err := namespace.Required(ctx)
	if err != nil {
		return err
	}
	o := apply(opts)
	return s.db.Update(func(tx *bolt.Tx) error {
		b := metadata.StoreBucket(tx, ns, metadata.BucketImages)
		img, err := get(b, name)
		if err != nil {
			return err
		}
		if o.target != "" && img.Target.Digest != o.target {
			return fmt.Errorf("image %q points at %s, not %s: %w", name, img.Target.Digest, o.target, errdefs.ErrNotFound)
		}
		return b.Delete([]byte(name))
	})
}

func get(b *bolt.Bucket, name string) (Image, error) {
	var v []byte
	if b != nil && name != "" {
		v = b.Get([]byte(name))
	}
	if v == nil {
		return Image{}, fmt.Errorf("image %q: %w", name, errdefs.ErrNotFound)
	}
	return decode([]byte(name), v)
}

func decode(k, v []byte) (Image, error) {
	var img Image
	if err := json.Unmarshal(v, &img); err != nil {
		return Image{}, fmt.Errorf("decode image %q: %w", k, err)
	}
	img.Name = string(k)
	return img, nil
}

func put(b *bolt.Bucket, img Image) error {
	v, err := json.Marshal(img)
	if err != nil {
		return fmt.Errorf("encode image %q: %w", img.Name, err)
	}
	return b.Put([]byte(img.Name), v)
}

// normalize drops empty label and annotation values, which mean "absent".
func normalize(img Image) Image {
	img.Labels = dropEmpty(img.Labels)
	img.Target.Annotations = dropEmpty(img.Target.Annotations)
	return img
}

func dropEmpty(m map[string]string) map[string]string {
	var out map[string]string
	for k, v := range m {
		if v == "" {
			continue
		}
		if out == nil {
			out = make(map[string]string, len(m))
		}
		out[k] = v
	}
	return out
}

func validate(img Image) error {
	if img.Name == "" {
		return fmt.Errorf("image name must not be empty: %w", errdefs.ErrInvalidArgument)
	}
	if err := metadata.ValidateLabels(img.Labels); err != nil {
		return fmt.Errorf("image %q: %w", img.Name, err)
	}
	if img.Target.MediaType == "" {
		return fmt.Errorf("image %q: target media type must be set: %w", img.Name, errdefs.ErrInvalidArgument)
	}
	if err := img.Target.Digest.Validate(); err != nil {
		return fmt.Errorf("image %q: target digest %q: %v: %w", img.Name, img.Target.Digest, err, errdefs.ErrInvalidArgument)
	}
	if img.Target.Size < 0 {
		return fmt.Errorf("image %q: target size %d is negative: %w", img.Name, img.Target.Size, errdefs.ErrInvalidArgument)
	}
	return nil
}

// adaptor exposes an image to filters with containerd's field names.
func adaptor(img Image) filters.Adaptor {
	return filters.AdapterFunc(func(path []string) (string, bool) {
		if len(path) == 0 {
			return "", false
		}
		switch path[0] {
		case "name":
			return img.Name, len(path) == 1
		case "target":
			if len(path) != 2 {
				return "", false
			}
			switch path[1] {
			case "digest":
				return img.Target.Digest.String(), true
			case "mediatype":
				return img.Target.MediaType, true
			case "size":
				return strconv.FormatInt(img.Target.Size, 10), true
			}
		case "labels":
			return metadata.MapField(img.Labels, path[1:])
		case "annotations":
			return metadata.MapField(img.Target.Annotations, path[1:])
		case "created_at":
			return img.CreatedAt.Format(time.RFC3339Nano), len(path) == 1
		case "updated_at":
			return img.UpdatedAt.Format(time.RFC3339Nano), len(path) == 1
		}
		return "", false
	})
}
