// Package gc is each daemon's part in Flotilla's garbage collection, which
// contentd's collector runs across the daemons that keep state (contentd,
// snapshotd, taskd) through the Store API (flotilla.gc.v1; see its .proto
// for the protocol). A daemon describes its objects and how to remove them
// as a Source, guards its writes with a Tracker, and serves both as a Store
// (NewStore, then Register). The collector reaches remote stores through
// Remote, which implements the same Store interface.
package gc

import (
	"context"
	"strings"
	"time"
)

// Kinds of object, as Ref.Kind names them.
const (
	KindContent   = "content"
	KindIngest    = "ingest"
	KindImage     = "image"
	KindLease     = "lease"
	KindSnapshot  = "snapshot"
	KindContainer = "container"
	// KindLeaseHold counts records of what a lease held that a sweep
	// dropped, the lease or the object being gone (Removed only).
	KindLeaseHold = "leasehold"
)

// Ref names one object of any store.
type Ref struct {
	Kind        string
	Namespace   string
	Snapshotter string // for snapshots only
	ID          string
}

// Content, Snapshot, Image, ... name objects of each kind.
func Content(ns, dgst string) Ref { return Ref{Kind: KindContent, Namespace: ns, ID: dgst} }
func Ingest(ns, ref string) Ref   { return Ref{Kind: KindIngest, Namespace: ns, ID: ref} }
func Image(ns, name string) Ref   { return Ref{Kind: KindImage, Namespace: ns, ID: name} }
func Lease(ns, id string) Ref     { return Ref{Kind: KindLease, Namespace: ns, ID: id} }
func Container(ns, id string) Ref { return Ref{Kind: KindContainer, Namespace: ns, ID: id} }
func Snapshot(ns, snapshotter, key string) Ref {
	return Ref{Kind: KindSnapshot, Namespace: ns, Snapshotter: snapshotter, ID: key}
}

func (r Ref) String() string {
	if r.Snapshotter != "" {
		return r.Kind + ":" + r.Namespace + "/" + r.Snapshotter + "/" + r.ID
	}
	return r.Kind + ":" + r.Namespace + "/" + r.ID
}

// Object is an object a store owns and may remove.
type Object struct {
	Ref
	// Root objects are alive whatever references them.
	Root bool
	// Flat objects (leases labelled containerd.io/gc.flat) keep what they
	// reference, but not what that references in turn.
	Flat bool
	// Size is what removing the object frees, in bytes, when known.
	Size int64
	// UsedAt is when the object was last used, from its
	// containerd.io/gc.cond.value-usedat label (zero: not said).
	UsedAt time.Time
}

// Edge says that From keeps To alive.
type Edge struct {
	From, To Ref
	// Essential edges name what From cannot exist without (a snapshot's
	// parent, an image's target): they are followed from an object a flat
	// lease holds, whose other references are not.
	Essential bool
	// Condition, when not empty, makes the reference hold only while To
	// meets it (containerd.io/gc.cond.snapshot labels; see Satisfied).
	Condition string
}

// Graph is (part of) what a store reports when marking.
type Graph struct {
	Objects []Object
	Edges   []Edge
}

// Removed counts what one sweep removed of one kind.
type Removed struct {
	Kind  string
	Count int64
	Bytes int64
	Refs  []Ref
}

// Store is one daemon's part in a collection, local or remote. Calls for
// an epoch other than the one begun are FailedPrecondition.
type Store interface {
	// Name names the daemon ("contentd", "snapshotd", "taskd").
	Name() string
	// Begin waits for the writes in flight, then opens epoch: until End,
	// or until timeout passes, every object a write or lookup touches is
	// recorded. A new Begin ends the previous epoch.
	Begin(ctx context.Context, epoch string, timeout time.Duration) error
	// Mark calls fn with the store's objects and references, in batches.
	Mark(ctx context.Context, epoch string, fn func(Graph) error) error
	// Hold blocks the store's writers (until Sweep and End, or timeout)
	// and returns every object touched since Begin.
	Hold(ctx context.Context, epoch string, timeout time.Duration) ([]Ref, error)
	// Sweep removes the objects named, except those touched since Begin;
	// FailedPrecondition when the hold has lapsed (nothing is removed). A
	// lease named that the store does not own is gone (or expired): the
	// store drops its records of what that lease held.
	// Writers stay held until End, since other stores may still sweep.
	Sweep(ctx context.Context, epoch string, remove []Ref) ([]Removed, error)
	// End closes epoch and lets writers go on. Ending an epoch that is no
	// longer open is no error.
	End(ctx context.Context, epoch string) error
}

// Labels that containerd's garbage collector reads (containerd 2.4's
// core/metadata/gc.go), and that Flotilla's stores read alike.
const (
	// LabelRoot (any key it begins, as containerd seeks it) makes content
	// and snapshots roots.
	LabelRoot = "containerd.io/gc.root"
	// LabelExpire (RFC 3339) makes images and leases collectable once
	// passed; on other objects it means nothing.
	LabelExpire = "containerd.io/gc.expire"
	// LabelFlat makes a lease keep what it holds but not what that
	// references.
	LabelFlat = "containerd.io/gc.flat"
	// LabelUsedAt (RFC 3339) on a snapshot is the value conditional
	// references test.
	LabelUsedAt = "containerd.io/gc.cond.value-usedat"

	labelRef          = "containerd.io/gc.ref."
	labelRefContent   = "containerd.io/gc.ref.content"
	labelRefImage     = "containerd.io/gc.ref.image"
	labelRefSnap      = "containerd.io/gc.ref.snapshot."
	labelBackContent  = "containerd.io/gc.bref.content"
	labelBackImage    = "containerd.io/gc.bref.image"
	labelBackCtr      = "containerd.io/gc.bref.container"
	labelBackSnap     = "containerd.io/gc.bref.snapshot."
	labelCondSnapshot = "containerd.io/gc.cond.snapshot"
)

// LabelRefs returns the references that an object's labels make, within
// namespace ns: containerd.io/gc.ref.content[.|/name] → content,
// containerd.io/gc.ref.image[.|/name] → image, and
// containerd.io/gc.ref.snapshot.<snapshotter>[/name] → snapshot.
func LabelRefs(ns string, labels map[string]string) []Ref {
	var refs []Ref
	for k, v := range labels {
		if !strings.HasPrefix(k, labelRef) || v == "" {
			continue
		}
		if sn, ok := strings.CutPrefix(k, labelRefSnap); ok {
			sn, _, _ = strings.Cut(sn, "/")
			refs = append(refs, Snapshot(ns, sn, v))
			continue
		}
		if named(k, labelRefContent) {
			refs = append(refs, Content(ns, v))
		} else if named(k, labelRefImage) {
			refs = append(refs, Image(ns, v))
		}
	}
	return refs
}

// LabelBackRefs returns the objects that an object's back-reference
// labels attach it to, within ns: it lives while any of them does.
// containerd.io/gc.bref.content[.|/name] names content,
// containerd.io/gc.bref.image[.|/name] an image,
// containerd.io/gc.bref.container[.|/name] a container and
// containerd.io/gc.bref.snapshot.<snapshotter>[/name] a snapshot.
func LabelBackRefs(ns string, labels map[string]string) []Ref {
	var refs []Ref
	for k, v := range labels {
		if !strings.HasPrefix(k, "containerd.io/gc.bref.") || v == "" {
			continue
		}
		switch {
		case strings.HasPrefix(k, labelBackSnap):
			sn, _, _ := strings.Cut(k[len(labelBackSnap):], "/")
			refs = append(refs, Snapshot(ns, sn, v))
		case named(k, labelBackContent):
			refs = append(refs, Content(ns, v))
		case named(k, labelBackImage):
			refs = append(refs, Image(ns, v))
		case named(k, labelBackCtr):
			refs = append(refs, Container(ns, v))
		}
	}
	return refs
}

// LabelConditionalRefs returns the conditional references an object's
// containerd.io/gc.cond.snapshot[.|/]<snapshotter>[/name] labels make, each
// valued "<conditions>|<snapshot key>", as edges from from. Conditions
// containerd would not read are left out, and a label with none left
// makes no reference.
func LabelConditionalRefs(from Ref, labels map[string]string) []Edge {
	var edges []Edge
	for k, v := range labels {
		rest, ok := strings.CutPrefix(k, labelCondSnapshot)
		if !ok {
			continue
		}
		sn, _, _ := strings.Cut(strings.TrimLeft(rest, "./"), "/")
		conds, key, ok := strings.Cut(v, "|")
		if !ok {
			continue
		}
		var valid []string
		for c := range strings.SplitSeq(conds, ",") {
			if _, _, ok := parseCondition(c); ok {
				valid = append(valid, c)
			}
		}
		if len(valid) > 0 {
			edges = append(edges, Edge{From: from, To: Snapshot(from.Namespace, sn, key), Condition: strings.Join(valid, ",")})
		}
	}
	return edges
}

// parseCondition reads one usedat condition: usedat<DURATION (used within
// it) or usedat>DURATION (not used within it); other operators and names
// are not read, as by containerd.
func parseCondition(c string) (less bool, d time.Duration, ok bool) {
	i := strings.IndexAny(c, "!<>=")
	if i < 0 || c[:i] != "usedat" {
		return false, 0, false
	}
	op, v := c[i:i+1], c[i+1:]
	if strings.HasPrefix(v, "=") {
		return false, 0, false // <=, >=, ==, != are no usedat operators
	}
	d, err := time.ParseDuration(v)
	if err != nil || (op != "<" && op != ">") {
		return false, 0, false
	}
	return op == "<", d, true
}

// Satisfied reports whether an object last used at usedAt (zero: its use
// is not known, which satisfies nothing) meets any of the comma-separated
// conditions at now.
func Satisfied(condition string, usedAt, now time.Time) bool {
	if usedAt.IsZero() {
		return false
	}
	for c := range strings.SplitSeq(condition, ",") {
		less, d, ok := parseCondition(c)
		if !ok {
			continue
		}
		if since := now.Sub(usedAt); (less && since < d) || (!less && since > d) {
			return true
		}
	}
	return false
}

// UsedAt returns the time of an object's containerd.io/gc.cond.value-usedat
// label, zero without one.
func UsedAt(labels map[string]string) time.Time {
	t, err := time.Parse(time.RFC3339, labels[LabelUsedAt])
	if err != nil {
		return time.Time{}
	}
	return t
}

// named reports whether key is prefix itself or prefix followed by '.' or
// '/' and a name, as containerd reads reference labels.
func named(key, prefix string) bool {
	rest, ok := strings.CutPrefix(key, prefix)
	return ok && (rest == "" || rest[0] == '.' || rest[0] == '/')
}

// IsRoot reports whether labels make content or a snapshot a root: a label
// whose key begins containerd.io/gc.root, as containerd finds it.
// containerd.io/gc.expire makes neither a root (containerd 2.4 reads it on
// images and leases only).
func IsRoot(labels map[string]string) bool {
	for k := range labels {
		if strings.HasPrefix(k, LabelRoot) {
			return true
		}
	}
	return false
}

// Expired reports whether labels carry a containerd.io/gc.expire time that
// has passed at now (images and leases so labelled may be removed).
func Expired(labels map[string]string, now time.Time) bool {
	v, ok := labels[LabelExpire]
	if !ok {
		return false
	}
	t, err := time.Parse(time.RFC3339, v)
	return err == nil && !now.Before(t)
}
