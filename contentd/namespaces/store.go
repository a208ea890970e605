// Package namespaces keeps contentd's namespaces — each a name with labels —
// in the metadata database, and serves them as containerd's Namespaces API.
package namespaces

import (
	"fmt"
	"maps"
	"strings"

	"github.com/containerd/errdefs"
	bolt "go.etcd.io/bbolt"

	"github.com/flotilla/flotilla/contentd/metadata"
	"github.com/flotilla/flotilla/services/filters"
	"github.com/flotilla/flotilla/services/identifiers"
)

// Namespace is a namespace and its labels.
type Namespace struct {
	Name   string
	Labels map[string]string
}

// Store keeps namespaces. Names follow containerd's identifier rules; a name
// that breaks them is InvalidArgument in every method. As in containerd, a
// namespace comes into being with its first record: when another store
// first writes into it, or when a label is set on it.
type Store interface {
	// Create creates namespace name with labels; AlreadyExists if it exists.
	Create(name string, labels map[string]string) (Namespace, error)
	// Get returns namespace name. One that does not exist (yet) is answered
	// with no labels, as containerd answers it: clients ask for their
	// namespace before they put anything in it.
	Get(name string) (Namespace, error)
	// List returns the namespaces matching filter (containerd's filter
	// syntax over name and labels.KEY; empty matches all), sorted by name.
	List(filter string) ([]Namespace, error)
	// Update changes the labels of namespace ns.Name to those of ns,
	// creating the namespace when it does not exist and a label is set or
	// deleted (containerd's SetLabel creates it). With no paths every label is replaced;
	// path "labels" does the same; "labels.KEY" sets label KEY to its
	// value in ns.Labels, or deletes it when that value is absent or empty.
	// Any other path is InvalidArgument and nothing is changed.
	Update(ns Namespace, paths ...string) (Namespace, error)
	// Delete deletes namespace name: NotFound if it does not exist,
	// FailedPrecondition while it still holds images, blobs, leases or
	// other records.
	Delete(name string) error
	// Holdings names, sorted, the kinds of record namespace name still
	// holds ("blobs", "images", "leases", ...): none means Delete may
	// proceed. NotFound if the namespace does not exist.
	Holdings(name string) ([]string, error)
}

// BoltStore is the Store kept in contentd's metadata database.
type BoltStore struct {
	db *bolt.DB
}

var _ Store = (*BoltStore)(nil)

// NewStore returns the Store kept in db, a database opened by metadata.Open.
func NewStore(db *bolt.DB) *BoltStore { return &BoltStore{db: db} }

// Create implements Store.
func (s *BoltStore) Create(name string, labels map[string]string) (Namespace, error) {
	if err := validate(name, labels); err != nil {
		return Namespace{}, err
	}
	var out Namespace
	err := s.db.Update(func(tx *bolt.Tx) error {
		b, created, err := metadata.CreateNamespace(tx, name)
		if err != nil {
			return err
		}
		if !created {
			return fmt.Errorf("namespace %q: %w", name, errdefs.ErrAlreadyExists)
		}
		if err := metadata.WriteLabels(b, metadata.BucketLabels, labels); err != nil {
			return err
		}
		out = read(b, name)
		return nil
	})
	return out, err
}

// Get implements Store.
func (s *BoltStore) Get(name string) (Namespace, error) {
	if err := identifiers.Validate(name); err != nil {
		return Namespace{}, fmt.Errorf("namespace: %w", err)
	}
	out := Namespace{Name: name, Labels: map[string]string{}}
	err := s.db.View(func(tx *bolt.Tx) error {
		if b := metadata.Namespace(tx, name); b != nil {
			out = read(b, name)
		}
		return nil
	})
	return out, err
}

// List implements Store.
func (s *BoltStore) List(filter string) ([]Namespace, error) {
	f, err := filters.Parse(filter)
	if err != nil {
		return nil, err
	}
	var out []Namespace
	err = s.db.View(func(tx *bolt.Tx) error {
		return metadata.Namespaces(tx).ForEach(func(k, v []byte) error {
			if v != nil {
				return nil
			}
			ns := read(metadata.Namespace(tx, string(k)), string(k))
			if f.Match(adaptor(ns)) {
				out = append(out, ns)
			}
			return nil
		})
	})
	return out, err
}

// Update implements Store.
func (s *BoltStore) Update(ns Namespace, paths ...string) (Namespace, error) {
	if err := validate(ns.Name, ns.Labels); err != nil {
		return Namespace{}, err
	}
	out := Namespace{Name: ns.Name, Labels: map[string]string{}}
	err := s.db.Update(func(tx *bolt.Tx) error {
		current := map[string]string{}
		if b := metadata.Namespace(tx, ns.Name); b != nil {
			current = read(b, ns.Name).Labels
		}
		labels, err := applyPaths(current, ns, paths)
		if err != nil {
			return err
		}
		if metadata.Namespace(tx, ns.Name) == nil && len(paths) == 0 && len(labels) == 0 {
			// containerd writes nothing here either: a full replacement by
			// no labels sets none, so no namespace comes into being.
			return nil
		}
		b, _, err := metadata.CreateNamespace(tx, ns.Name)
		if err != nil {
			return err
		}
		if err := metadata.WriteLabels(b, metadata.BucketLabels, labels); err != nil {
			return err
		}
		out = read(b, ns.Name)
		return nil
	})
	return out, err
}

// applyPaths returns the labels current becomes when updated from ns along paths.
func applyPaths(current map[string]string, ns Namespace, paths []string) (map[string]string, error) {
	if len(paths) == 0 {
		return ns.Labels, nil
	}
	labels := maps.Clone(current)
	for _, p := range paths {
		var ok bool
		if labels, ok = metadata.UpdateMapPath(labels, ns.Labels, "labels", p); !ok {
			return nil, fmt.Errorf("cannot update field %q of namespace %q: %w", p, ns.Name, errdefs.ErrInvalidArgument)
		}
	}
	return labels, nil
}

// Delete implements Store.
func (s *BoltStore) Delete(name string) error {
	if err := identifiers.Validate(name); err != nil {
		return fmt.Errorf("namespace: %w", err)
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		if metadata.Namespace(tx, name) == nil {
			return fmt.Errorf("namespace %q: %w", name, errdefs.ErrNotFound)
		}
		if held := metadata.Holdings(tx, name); len(held) > 0 {
			return fmt.Errorf("namespace %q must be empty, but it still has %s: %w",
				name, strings.Join(held, ", "), errdefs.ErrFailedPrecondition)
		}
		return metadata.Namespaces(tx).DeleteBucket([]byte(name))
	})
}

// Holdings implements Store.
func (s *BoltStore) Holdings(name string) ([]string, error) {
	if err := identifiers.Validate(name); err != nil {
		return nil, fmt.Errorf("namespace: %w", err)
	}
	var held []string
	err := s.db.View(func(tx *bolt.Tx) error {
		if metadata.Namespace(tx, name) == nil {
			return fmt.Errorf("namespace %q: %w", name, errdefs.ErrNotFound)
		}
		held = metadata.Holdings(tx, name)
		return nil
	})
	return held, err
}

func validate(name string, labels map[string]string) error {
	if err := identifiers.Validate(name); err != nil {
		return fmt.Errorf("namespace: %w", err)
	}
	if err := metadata.ValidateLabels(labels); err != nil {
		return fmt.Errorf("namespace %q: %w", name, err)
	}
	return nil
}

func read(b *bolt.Bucket, name string) Namespace {
	labels := metadata.ReadLabels(b.Bucket(metadata.BucketLabels))
	if labels == nil {
		labels = map[string]string{}
	}
	return Namespace{Name: name, Labels: labels}
}

// adaptor exposes a namespace to filters: name, and labels.KEY (a key
// holding dots may be written unquoted, labels.a.b, or quoted).
func adaptor(ns Namespace) filters.Adaptor {
	return filters.AdapterFunc(func(path []string) (string, bool) {
		switch {
		case len(path) == 1 && path[0] == "name":
			return ns.Name, true
		case len(path) > 1 && path[0] == "labels":
			return metadata.MapField(ns.Labels, path[1:])
		}
		return "", false
	})
}
