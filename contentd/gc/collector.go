// Package gc is contentd's garbage collector: one mark-and-sweep across
// every daemon that keeps state (contentd itself, snapshotd with all its
// backends, taskd), through each one's gc.Store (services/gc), and the
// scheduler that runs it after deletions, on a timer and on demand.
package gc

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/containerd/errdefs"

	"github.com/flotilla/flotilla/services/gc"
)

// Peers finds the stores of the other daemons a collection marks across.
// Every store Peers returns must take part: a collection with one missing
// would not see its references, so it fails rather than sweep.
type Peers interface {
	Stores(ctx context.Context) ([]gc.Store, error)
}

// Removal is one object a collection removed.
type Removal struct {
	Store string
	gc.Ref
}

// Result is what one collection did.
type Result struct {
	Removed  []Removal
	Bytes    int64 // freed on disk
	Marked   int   // objects the stores reported
	Duration time.Duration
	// Held is how long writers were blocked, the longest of any store.
	Held time.Duration
	// ByStore counts removals by store and kind.
	ByStore map[string]map[string]gc.Removed
}

// Collector runs collections, one at a time.
type Collector struct {
	local   gc.Store
	peers   Peers // nil: contentd alone
	metrics *Metrics
	log     *slog.Logger

	// EpochTimeout and HoldTimeout are what the collector asks the stores
	// to keep an epoch and a hold for at most.
	EpochTimeout, HoldTimeout time.Duration

	mu sync.Mutex // held by the collection running

	sched scheduler
}

// New returns a collector over contentd's own store and its peers' (nil
// for none); metrics may be nil.
func New(local gc.Store, peers Peers, metrics *Metrics, log *slog.Logger) *Collector {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Collector{local: local, peers: peers, metrics: metrics, log: log,
		EpochTimeout: gc.DefaultEpochTimeout, HoldTimeout: gc.DefaultHoldTimeout}
	c.sched.init()
	return c
}

// node is an object as the collector sees it: who owns it and its flags.
type node struct {
	owners []int // indexes into the stores
	root   bool
	flat   bool
	usedAt []time.Time // by each owner that says
}

// Collect runs one collection now, waiting for one running to finish.
func (c *Collector) Collect(ctx context.Context) (Result, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	start := time.Now()
	res, err := c.collect(ctx)
	res.Duration = time.Since(start)
	c.metrics.observe(res, err)
	if nodes := blockedNodes(err); len(nodes) > 0 {
		c.metrics.blockedBy(nodes)
		c.log.Error("garbage collection stopped before sweeping anything: nodes that may reference what it would remove cannot be asked",
			"nodes", nodes, "error", err, "duration", res.Duration)
	} else if err != nil {
		c.log.Warn("garbage collection failed", "error", err, "duration", res.Duration)
	} else if len(res.Removed) > 0 {
		c.log.Info("garbage collected", "removed", len(res.Removed), "bytes", res.Bytes,
			"marked", res.Marked, "duration", res.Duration, "writers_held", res.Held)
	}
	c.sched.collected(res.Duration)
	return res, err
}

func (c *Collector) collect(ctx context.Context) (Result, error) {
	stores := []gc.Store{c.local}
	if c.peers != nil {
		peers, err := c.peers.Stores(ctx)
		if err != nil {
			return Result{}, fmt.Errorf("gc: find stores: %w", asUnavailable(err))
		}
		stores = append(stores, peers...)
	}
	epoch := newEpoch()

	// End every store begun, whatever happens, so none keeps recording.
	var begun []gc.Store
	defer func() {
		endCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		for _, s := range begun {
			if err := s.End(endCtx, epoch); err != nil {
				c.log.Warn("gc: end epoch", "store", s.Name(), "error", err)
			}
		}
	}()
	for _, s := range stores {
		if err := s.Begin(ctx, epoch, c.EpochTimeout); err != nil {
			return Result{}, notTakingPart(ctx, s, "begin", err)
		}
		begun = append(begun, s)
	}

	// Mark: every store's objects and references.
	nodes := map[gc.Ref]*node{}
	edges := map[gc.Ref][]gc.Edge{}
	// Leases each store records holds of (snapshotd's lease holds), to
	// tell it which of those leases are gone.
	holders := make([]map[gc.Ref]bool, len(stores))
	var res Result
	for i, s := range stores {
		holders[i] = map[gc.Ref]bool{}
		err := s.Mark(ctx, epoch, func(g gc.Graph) error {
			for _, o := range g.Objects {
				n := nodes[o.Ref]
				if n == nil {
					n = &node{}
					nodes[o.Ref] = n
				}
				n.owners = append(n.owners, i)
				n.root = n.root || o.Root
				n.flat = n.flat || o.Flat
				if !o.UsedAt.IsZero() {
					n.usedAt = append(n.usedAt, o.UsedAt)
				}
				res.Marked++
			}
			for _, e := range g.Edges {
				edges[e.From] = append(edges[e.From], e)
				if e.From.Kind == gc.KindLease {
					holders[i][e.From] = true
				}
			}
			return nil
		})
		if err != nil {
			return res, notTakingPart(ctx, s, "mark", err)
		}
	}

	// Hold: writers wait from here; what they touched since Begin lives.
	var touched []gc.Ref
	held := make([]time.Time, len(stores))
	// A store's hold runs from when it answers, so no later than this
	// deadline; sweeps start only while more than half of it remains, so
	// no store lets its writers go while another still sweeps.
	deadline := time.Now().Add(c.HoldTimeout)
	for i, s := range stores {
		refs, err := s.Hold(ctx, epoch, c.HoldTimeout)
		if err != nil {
			return res, notTakingPart(ctx, s, "hold", err)
		}
		held[i] = time.Now()
		touched = append(touched, refs...)
	}

	live := reach(nodes, edges, touched, time.Now())

	// Sweep each store's unreachable objects.
	res.ByStore = map[string]map[string]gc.Removed{}
	var errs []error
	for i, s := range stores {
		var remove []gc.Ref
		for ref, n := range nodes {
			if !live[ref] && owns(n, i) {
				remove = append(remove, ref)
			}
		}
		// A lease that is gone (or expired) keeps nothing: the store drops
		// its records of what that lease held.
		for lease := range holders[i] {
			if n := nodes[lease]; !live[lease] && (n == nil || !owns(n, i)) {
				remove = append(remove, lease)
			}
		}
		if time.Until(deadline) < c.HoldTimeout/2 {
			errs = append(errs, fmt.Errorf("gc: %s and after: not swept, the holds are running out (marking took too long): %w", s.Name(), errdefs.ErrUnavailable))
			break
		}
		removed, err := s.Sweep(ctx, epoch, remove)
		res.Held = max(res.Held, time.Since(held[i]))
		if err != nil {
			errs = append(errs, fmt.Errorf("gc: %s: sweep: %w", s.Name(), err))
		}
		for _, r := range removed {
			byKind := res.ByStore[s.Name()]
			if byKind == nil {
				byKind = map[string]gc.Removed{}
				res.ByStore[s.Name()] = byKind
			}
			sum := byKind[r.Kind]
			sum.Kind = r.Kind
			sum.Count += r.Count
			sum.Bytes += r.Bytes
			byKind[r.Kind] = sum
			res.Bytes += r.Bytes
			for _, ref := range r.Refs {
				res.Removed = append(res.Removed, Removal{Store: s.Name(), Ref: ref})
			}
		}
	}
	return res, errors.Join(errs...)
}

// reach returns every object alive: reachable from a root or from an
// object touched during the collection, as containerd's collector walks.
// What a flat lease holds is alive but followed only along essential edges
// (a snapshot's parents, an image's target), except ingests, which a flat
// lease holds as any other. A conditional edge counts only while its
// target meets its condition at now.
func reach(nodes map[gc.Ref]*node, edges map[gc.Ref][]gc.Edge, touched []gc.Ref, now time.Time) map[gc.Ref]bool {
	type item struct {
		ref  gc.Ref
		flat bool
	}
	live := map[gc.Ref]bool{}
	full := map[gc.Ref]bool{}   // expanded along every edge
	flatly := map[gc.Ref]bool{} // expanded along essential edges
	var queue []item
	visit := func(r gc.Ref, flat bool) {
		live[r] = true
		switch {
		case full[r]:
		case !flat:
			full[r] = true
			queue = append(queue, item{r, false})
		case !flatly[r]:
			flatly[r] = true
			queue = append(queue, item{r, true})
		}
	}
	for r, n := range nodes {
		if n.root {
			visit(r, false)
		}
	}
	for _, r := range touched {
		visit(r, false)
	}
	for len(queue) > 0 {
		it := queue[len(queue)-1]
		queue = queue[:len(queue)-1]
		n := nodes[it.ref]
		leasedFlat := n != nil && n.flat
		for _, e := range edges[it.ref] {
			if it.flat && !e.Essential {
				continue
			}
			if e.Condition != "" && !satisfied(e.Condition, nodes[e.To], now) {
				continue
			}
			visit(e.To, it.flat || (leasedFlat && e.To.Kind != gc.KindIngest))
		}
	}
	return live
}

// satisfied reports whether any owner's record of n meets condition.
func satisfied(condition string, n *node, now time.Time) bool {
	if n == nil {
		return false
	}
	for _, t := range n.usedAt {
		if gc.Satisfied(condition, t, now) {
			return true
		}
	}
	return false
}

func owns(n *node, store int) bool {
	for _, o := range n.owners {
		if o == store {
			return true
		}
	}
	return false
}

// notTakingPart is the error of store s failing phase of collection ctx,
// which then stops before anything is swept; a node's store names its node
// (UnreachableError).
func notTakingPart(ctx context.Context, s gc.Store, phase string, err error) error {
	err = fmt.Errorf("gc: %s: %s: %w", s.Name(), phase, asUnavailable(err))
	// A collection given up by its caller is no node's doing.
	if ns, ok := s.(NodeStore); ok && ctx.Err() == nil {
		return errors.Join(err, &UnreachableError{Nodes: map[string]string{ns.Node(): fmt.Sprintf("%s did not answer %s", s.Name(), phase)}})
	}
	return err
}

// blockedNodes returns the nodes err says stopped a collection.
func blockedNodes(err error) []string {
	var u *UnreachableError
	if !errors.As(err, &u) {
		return nil
	}
	return slices.Sorted(maps.Keys(u.Nodes))
}

// asUnavailable keeps err's kind, or makes an unclassified one Unavailable:
// a store that does not take part stops the collection.
func asUnavailable(err error) error {
	if errdefs.IsNotFound(err) || errdefs.IsFailedPrecondition(err) || errdefs.IsUnavailable(err) ||
		errdefs.IsInvalidArgument(err) || errdefs.IsCanceled(err) || errdefs.IsDeadlineExceeded(err) {
		return err
	}
	return fmt.Errorf("%w: %w", err, errdefs.ErrUnavailable)
}

func newEpoch() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
