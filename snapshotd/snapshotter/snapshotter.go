// Package snapshotter defines what a snapshotter backend is: the interface
// every backend implements, in a plugin process or in-process, with the
// contracts containerd's clients rely on.
//
// A snapshot is a directory tree identified by a key. It is one of three
// kinds: an active snapshot is writable and may become committed; a view is
// a read-only look at a committed snapshot; a committed snapshot is
// immutable and may be the parent of actives and views. A snapshot's parent
// chain is the stack of committed snapshots its content is layered on.
//
// Keys are opaque strings, unique per backend across all kinds. Backends know
// nothing of namespaces: snapshotd scopes keys by prefixing them.
package snapshotter

import (
	"context"
	"time"
)

// Kind is a snapshot's kind.
type Kind uint8

// The kinds of snapshot, numbered as in containerd's API.
const (
	KindUnknown Kind = iota
	KindView
	KindActive
	KindCommitted
)

func (k Kind) String() string {
	switch k {
	case KindView:
		return "view"
	case KindActive:
		return "active"
	case KindCommitted:
		return "committed"
	}
	return "unknown"
}

// ParseKind is the inverse of Kind.String; unknown names give KindUnknown.
func ParseKind(s string) Kind {
	switch s {
	case "view":
		return KindView
	case "active":
		return KindActive
	case "committed":
		return KindCommitted
	}
	return KindUnknown
}

// Info describes one snapshot.
type Info struct {
	Kind    Kind
	Name    string // the key, or the name of a committed snapshot
	Parent  string // name of the parent committed snapshot; empty for none
	Labels  map[string]string
	Created time.Time
	Updated time.Time
}

// Usage is the disk a snapshot uses on its own, excluding its parents.
type Usage struct {
	Inodes int64
	Size   int64 // bytes
}

// Mount is one mount(2) that, applied in order with the others returned,
// yields the snapshot's tree at a target directory.
type Mount struct {
	Type    string
	Source  string
	Target  string // sub-path of the target; empty for the target itself
	Options []string
}

// WalkFunc is called for each snapshot Walk visits; an error stops the walk
// and is returned by Walk.
type WalkFunc func(context.Context, Info) error

// Opt sets a property of a snapshot being created or committed.
type Opt func(*Info) error

// WithLabels adds labels to the snapshot.
func WithLabels(labels map[string]string) Opt {
	return func(info *Info) error {
		if info.Labels == nil {
			info.Labels = make(map[string]string, len(labels))
		}
		for k, v := range labels {
			info.Labels[k] = v
		}
		return nil
	}
}

// Snapshotter is a snapshotter backend. All methods are safe for concurrent
// use. Errors are classified with github.com/containerd/errdefs kinds, which
// clients branch on; the contract of each method names the kinds it returns.
type Snapshotter interface {
	// Stat returns the snapshot named key, of any kind. NotFound if there
	// is none.
	Stat(ctx context.Context, key string) (Info, error)

	// Update changes the labels of snapshot info.Name and returns its new
	// Info. fieldpaths select what changes: "labels" replaces every label
	// with info.Labels, "labels.KEY" sets label KEY to info.Labels[KEY] or
	// removes it when info.Labels has no KEY. No fieldpaths replaces all
	// labels. Any other fieldpath is InvalidArgument; an unknown snapshot
	// is NotFound. Updated is set to now.
	Update(ctx context.Context, info Info, fieldpaths ...string) (Info, error)

	// Usage returns the disk used by snapshot key alone. For an active
	// snapshot it is measured now; a committed one's was measured when it
	// was committed. NotFound if there is no such snapshot.
	Usage(ctx context.Context, key string) (Usage, error)

	// Mounts returns the mounts of the active snapshot or view key, the same
	// as Prepare or View returned. NotFound for an unknown key,
	// FailedPrecondition for a committed snapshot.
	Mounts(ctx context.Context, key string) ([]Mount, error)

	// Prepare creates active snapshot key on top of committed snapshot
	// parent ("" for an empty tree) and returns its mounts: a writable tree
	// holding parent's content. AlreadyExists if key is taken by a snapshot
	// of any kind (Prepare or View with the same key twice must fail);
	// NotFound if parent does not exist; InvalidArgument if parent is not
	// committed or key is empty.
	Prepare(ctx context.Context, key, parent string, opts ...Opt) ([]Mount, error)

	// View is Prepare for a read-only view: the mounts are read-only, the
	// snapshot can be removed but never committed. Same errors as Prepare.
	View(ctx context.Context, key, parent string, opts ...Opt) ([]Mount, error)

	// Commit turns active snapshot key into committed snapshot name,
	// keeping its parent and labels (opts may add labels); its Created and
	// Updated times are the time of the commit. key no longer exists
	// afterwards. NotFound if key does not exist; FailedPrecondition
	// if key is not active; AlreadyExists if name is taken. The caller must
	// have unmounted key's mounts.
	Commit(ctx context.Context, name, key string, opts ...Opt) error

	// Remove removes snapshot key, of any kind, and its data. NotFound if
	// there is none; FailedPrecondition if it is the parent of another
	// snapshot. Remove never unmounts anything: a mounted active snapshot's
	// directories are removed under its mounts, as in containerd.
	Remove(ctx context.Context, key string) error

	// Walk calls fn for every snapshot matching any of the filters
	// (containerd's filter syntax over the fields kind, name, parent and
	// labels.KEY; none matches all), in no particular order. Parse errors
	// are InvalidArgument.
	Walk(ctx context.Context, fn WalkFunc, filters ...string) error

	// Close releases the backend's resources (its database). It never
	// unmounts or removes snapshots; a backend closed and opened again on
	// the same root finds them all.
	Close() error
}
