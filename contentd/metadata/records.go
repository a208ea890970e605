package metadata

import (
	"fmt"
	"maps"
	"sort"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/flotilla/flotilla/services/labels"
)

// MaxLabelSize bounds a label's key and value together, as in containerd.
const MaxLabelSize = labels.MaxSize

// ValidateLabels checks labels with containerd's rules (services/labels):
// InvalidArgument for an empty key, or a key, or key and value together,
// over MaxLabelSize.
func ValidateLabels(l map[string]string) error { return labels.ValidateAll(l) }

// ReadLabels returns the key → value pairs of b; a nil bucket has none.
func ReadLabels(b *bolt.Bucket) map[string]string {
	if b == nil {
		return nil
	}
	labels := map[string]string{}
	b.ForEach(func(k, v []byte) error {
		if v != nil { // nested buckets are not labels
			labels[string(k)] = string(v)
		}
		return nil
	})
	return labels
}

// WriteLabels replaces the bucket name under parent with labels. As in
// containerd, a label with an empty value is not stored: writing "" deletes.
func WriteLabels(parent *bolt.Bucket, name []byte, labels map[string]string) error {
	if parent.Bucket(name) != nil {
		if err := parent.DeleteBucket(name); err != nil {
			return err
		}
	}
	b, err := parent.CreateBucket(name)
	if err != nil {
		return err
	}
	for k, v := range labels {
		if v == "" {
			continue
		}
		if err := b.Put([]byte(k), []byte(v)); err != nil {
			return err
		}
	}
	return nil
}

// UpdateMapPath applies one path of an update mask to a record's map field
// named field ("labels", "annotations"), the way containerd's stores do:
// path field replaces m by a copy of from; path field.KEY (KEY not empty)
// sets m[KEY] to from[KEY], or deletes KEY when from has it empty or not at
// all — an empty value means absent. m may be nil and may be changed in
// place, so pass a copy. It reports whether path addresses field; when it
// does not, m is returned as it was.
func UpdateMapPath(m, from map[string]string, field, path string) (map[string]string, bool) {
	if path == field {
		return maps.Clone(from), true
	}
	key, ok := strings.CutPrefix(path, field+".")
	if !ok || key == "" {
		return m, false
	}
	if v := from[key]; v != "" {
		if m == nil {
			m = map[string]string{}
		}
		m[key] = v
	} else {
		delete(m, key)
	}
	return m, true
}

// MapField is a filter adaptor's lookup of a map field's KEY, addressed as
// FIELD.KEY: path is what follows FIELD, joined back with '.' so that an
// unquoted labels.a.b reads key "a.b". An empty path matches nothing.
func MapField(m map[string]string, path []string) (string, bool) {
	if len(path) == 0 {
		return "", false
	}
	v, ok := m[strings.Join(path, ".")]
	return v, ok
}

// PutTime stores t under key in b.
func PutTime(b *bolt.Bucket, key []byte, t time.Time) error {
	v, err := t.MarshalBinary()
	if err != nil {
		return err
	}
	return b.Put(key, v)
}

// GetTime reads the time stored under key in b; a missing one is the zero time.
func GetTime(b *bolt.Bucket, key []byte) (time.Time, error) {
	var t time.Time
	v := b.Get(key)
	if v == nil {
		return t, nil
	}
	if err := t.UnmarshalBinary(v); err != nil {
		return t, fmt.Errorf("decode %s: %w", key, err)
	}
	return t, nil
}

// storeNames says how a namespace's buckets are called when telling a user
// why the namespace is not empty; containerd calls content "blobs".
var storeNames = map[string]string{
	string(BucketImages):  "images",
	string(BucketContent): "blobs",
	string(BucketLeases):  "leases",
}

// Holdings names, sorted, the stores that still hold records in namespace
// ns: every non-empty bucket but its labels. An empty result means the
// namespace may be deleted.
func Holdings(tx *bolt.Tx, ns string) []string {
	nb := Namespace(tx, ns)
	if nb == nil {
		return nil
	}
	var held []string
	nb.ForEach(func(k, v []byte) error {
		if v != nil || string(k) == string(BucketLabels) {
			return nil
		}
		b := nb.Bucket(k)
		if b == nil {
			return nil
		}
		if k2, _ := b.Cursor().First(); k2 == nil {
			return nil
		}
		name, ok := storeNames[string(k)]
		if !ok {
			name = string(k)
		}
		held = append(held, name)
		return nil
	})
	sort.Strings(held)
	return held
}
