package metadata

import (
	"errors"
	"maps"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	bolt "go.etcd.io/bbolt"
)

func TestValidateLabels(t *testing.T) {
	for _, tc := range []struct {
		name   string
		labels map[string]string
		ok     bool
	}{
		{"no labels are valid", nil, true},
		{"key and value at the limit are valid", map[string]string{"k": strings.Repeat("v", MaxLabelSize-1)}, true},
		{"key and value over the limit are InvalidArgument", map[string]string{"k": strings.Repeat("v", MaxLabelSize)}, false},
		{"an empty key is InvalidArgument", map[string]string{"": "v"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := ValidateLabels(tc.labels)
			if tc.ok != (err == nil) || err != nil && !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("got %v", err)
			}
		})
	}
}

func TestLabelsAndTimesRoundTrip(t *testing.T) {
	db := open(t)
	when := time.Date(2024, 5, 6, 7, 8, 9, 10, time.UTC)
	err := db.Update(func(tx *bolt.Tx) error {
		b, _, err := CreateNamespace(tx, "ns")
		if err != nil {
			return err
		}
		if err := WriteLabels(b, BucketLabels, map[string]string{"a": "1", "gone": "x"}); err != nil {
			return err
		}
		// Writing again replaces, and an empty value is not stored.
		if err := WriteLabels(b, BucketLabels, map[string]string{"a": "2", "b": "", "c": "3"}); err != nil {
			return err
		}
		return PutTime(b, KeyCreated, when)
	})
	if err != nil {
		t.Fatal(err)
	}
	db.View(func(tx *bolt.Tx) error {
		b := Namespace(tx, "ns")
		if got := ReadLabels(b.Bucket(BucketLabels)); !maps.Equal(got, map[string]string{"a": "2", "c": "3"}) {
			t.Errorf("labels = %v", got)
		}
		if got, err := GetTime(b, KeyCreated); err != nil || !got.Equal(when) {
			t.Errorf("time = %v, %v", got, err)
		}
		if got, err := GetTime(b, []byte("missing")); err != nil || !got.IsZero() {
			t.Errorf("missing time = %v, %v", got, err)
		}
		return nil
	})
}

func TestHoldings(t *testing.T) {
	db := open(t)
	err := db.Update(func(tx *bolt.Tx) error {
		b, _, err := CreateNamespace(tx, "ns")
		if err != nil {
			return err
		}
		if err := WriteLabels(b, BucketLabels, map[string]string{"a": "1"}); err != nil {
			return err
		}
		for _, name := range [][]byte{BucketContent, BucketLeases, []byte("ingests")} {
			sb, err := b.CreateBucket(name)
			if err != nil {
				return err
			}
			if err := sb.Put([]byte("k"), nil); err != nil {
				return err
			}
		}
		_, err = b.CreateBucket(BucketImages) // empty: holds nothing
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	db.View(func(tx *bolt.Tx) error {
		if got := strings.Join(Holdings(tx, "ns"), ","); got != "blobs,ingests,leases" {
			t.Errorf("holdings = %s, want blobs,ingests,leases (labels and empty stores do not count)", got)
		}
		if got := Holdings(tx, "nothere"); got != nil {
			t.Errorf("holdings of a missing namespace = %v", got)
		}
		return nil
	})
}

func TestLeaseResourcesNeedTheLease(t *testing.T) {
	db := open(t)
	err := db.Update(func(tx *bolt.Tx) error {
		return AddLeaseResource(tx, "ns", "nolease", ResourceContent, "sha256:x")
	})
	if !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("add to a missing lease: %v, want NotFound", err)
	}
}

func open(t *testing.T) *bolt.DB {
	t.Helper()
	db, err := Open(filepath.Join(t.TempDir(), "sub", "meta.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func TestUpdateMapPath(t *testing.T) {
	from := map[string]string{"a": "new", "empty": ""}
	for _, tc := range []struct {
		name    string
		m       map[string]string
		path    string
		want    map[string]string
		handled bool
	}{
		{"the field replaces the map with a copy of the new one", map[string]string{"x": "1"}, "labels", from, true},
		{"field.KEY sets the key", map[string]string{"x": "1"}, "labels.a", map[string]string{"x": "1", "a": "new"}, true},
		{"field.KEY on a nil map makes one", nil, "labels.a", map[string]string{"a": "new"}, true},
		{"field.KEY with an empty new value deletes the key", map[string]string{"empty": "1"}, "labels.empty", map[string]string{}, true},
		{"field.KEY absent from the new map deletes the key", map[string]string{"gone": "1"}, "labels.gone", map[string]string{}, true},
		{"field. with no key is not the field's", map[string]string{"x": "1"}, "labels.", map[string]string{"x": "1"}, false},
		{"another field is not handled", map[string]string{"x": "1"}, "target", map[string]string{"x": "1"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, handled := UpdateMapPath(tc.m, from, "labels", tc.path)
			if handled != tc.handled || !maps.Equal(got, tc.want) {
				t.Errorf("got %v, %v; want %v, %v", got, handled, tc.want, tc.handled)
			}
		})
	}
}

func TestMapFieldJoinsKeysWithDots(t *testing.T) {
	m := map[string]string{"a.b": "1", "c": "2"}
	for _, tc := range []struct {
		path []string
		want string
		ok   bool
	}{
		{[]string{"a", "b"}, "1", true},
		{[]string{"c"}, "2", true},
		{[]string{"d"}, "", false},
		{nil, "", false},
	} {
		if v, ok := MapField(m, tc.path); v != tc.want || ok != tc.ok {
			t.Errorf("MapField(%v) = %q, %v; want %q, %v", tc.path, v, ok, tc.want, tc.ok)
		}
	}
}
