package host

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/containerd/errdefs"

	"github.com/flotilla/flotilla/snapshotd/sdk"
	"github.com/flotilla/flotilla/snapshotd/snapshotter"
)

// Restart backoff after a plugin dies: the first restart is immediate, the
// next ones wait from minBackoff doubling up to maxBackoff. A process that
// ran for stableAfter resets the backoff.
const (
	minBackoff  = 100 * time.Millisecond
	maxBackoff  = 10 * time.Second
	stableAfter = 30 * time.Second
	startLimit  = 30 * time.Second
)

// instance is one plugin process serving a backend, and the calls on it.
type instance struct {
	proc     *sdk.Process
	calls    sync.WaitGroup
	started  time.Time
	stopping atomic.Bool   // stopped on purpose: its exit is no crash
	quit     chan struct{} // ends the watcher
	quitOnce sync.Once
}

func (i *instance) endWatch() { i.quitOnce.Do(func() { close(i.quit) }) }

// drain waits for the calls in flight on the instance, or ctx's end.
func (i *instance) drain(ctx context.Context) error {
	done := make(chan struct{})
	go func() { i.calls.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (i *instance) stop() {
	i.stopping.Store(true)
	i.endWatch()
	i.proc.Stop()
}

// backend is one named snapshotter. It implements snapshotter.Snapshotter by
// calling its current process.
type backend struct {
	h    *Host
	log  *slog.Logger
	name string
	root string

	// life serializes what starts and stops processes: start, adopt,
	// restart, replace and remove.
	life sync.Mutex

	mu         sync.Mutex
	path       string
	inst       *instance // nil while no process serves
	state      string
	lastErr    error
	restarts   int
	removed    bool
	adding     bool
	restarting bool          // a restart loop runs
	changed    chan struct{} // closed and replaced whenever inst changes
	// idle: no process, since it holds no snapshots; the first Prepare or
	// View starts one (Options.StartOnUse).
	idle bool
	// empty: it holds no snapshots, as far as the host knows: while
	// idle, and after Shutdown found none.
	empty bool
}

var _ snapshotter.Snapshotter = (*backend)(nil)

// broadcastLocked wakes the calls waiting for a process.
func (b *backend) broadcastLocked() {
	close(b.changed)
	b.changed = make(chan struct{})
}

func (b *backend) pid() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.inst == nil {
		return 0
	}
	return b.inst.proc.Pid()
}

func (b *backend) start(ctx context.Context) error {
	b.life.Lock()
	defer b.life.Unlock()
	b.mu.Lock()
	path := b.path
	b.mu.Unlock()
	return b.startLocked(ctx, path)
}

// startLocked starts a process from path and makes it current. b.life is held.
func (b *backend) startLocked(ctx context.Context, path string) error {
	if err := os.MkdirAll(b.root, 0o700); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, startLimit)
	defer cancel()
	stderr := &tail{}
	p, err := sdk.Start(ctx, sdk.Config{Path: path, Root: b.root, Logger: b.log, Stderr: stderr, SocketDir: b.h.opts.SocketDir, Tracing: b.h.opts.Tracing})
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg != "" {
			return fmt.Errorf("%s did not start: %s: %w", path, msg, errdefs.ErrFailedPrecondition)
		}
		return fmt.Errorf("%s did not start: %v: %w", path, err, errdefs.ErrFailedPrecondition)
	}
	b.mu.Lock()
	removed := b.removed
	if !removed {
		b.path = path
	}
	b.mu.Unlock()
	if removed {
		// Removed, or snapshotd stopping, while the process started: it
		// must not outlive what asked for it.
		p.Stop()
		return fmt.Errorf("snapshotter %s was removed while its process started: %w", b.name, errdefs.ErrUnavailable)
	}
	b.setInstance(p)
	b.log.Info("snapshotter process started", "path", path, "pid", p.Pid())
	return nil
}

// adopt takes over the process an earlier snapshotd started.
func (b *backend) adopt(ctx context.Context, rc sdk.Reattach) error {
	b.life.Lock()
	defer b.life.Unlock()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	b.mu.Lock()
	path := b.path
	b.mu.Unlock()
	p, err := sdk.Attach(ctx, sdk.Config{Path: path, Root: b.root, Logger: b.log, Tracing: b.h.opts.Tracing}, rc)
	if err != nil {
		// A process of ours that does not answer still holds the data:
		// it must go before a new one can open it.
		// Only if the pid still names that process: the kernel may have
		// given it to another one since (sdk.Signal checks).
		if sdk.Same(rc, path) {
			b.log.Warn("killing unresponsive snapshotter process", "pid", rc.Pid)
			if kerr := sdk.Signal(rc, path, syscall.SIGKILL); kerr != nil {
				b.log.Warn("unresponsive snapshotter process not killed", "pid", rc.Pid, "error", kerr)
			}
		}
		return err
	}
	b.setInstance(p)
	b.log.Info("snapshotter process adopted", "pid", p.Pid())
	return nil
}

func (b *backend) setInstance(p *sdk.Process) {
	inst := &instance{proc: p, started: time.Now(), quit: make(chan struct{})}
	b.mu.Lock()
	if b.removed {
		b.mu.Unlock()
		p.Stop()
		return
	}
	b.idle, b.empty = false, false
	b.inst = inst
	b.state = StateRunning
	b.lastErr = nil
	b.broadcastLocked()
	b.mu.Unlock()
	go b.watch(inst)
}

// setIdle leaves the backend without a process until it is used.
func (b *backend) setIdle() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.idle, b.empty, b.state = true, true, StateIdle
}

// isIdle reports whether the backend has no process because it holds no
// snapshots: what is asked of it does not exist.
func (b *backend) isIdle() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.idle && !b.removed
}

// wake starts the process of an idle backend, for a call that makes a
// snapshot; it does nothing to one that is not idle.
func (b *backend) wake(ctx context.Context) error {
	if !b.isIdle() {
		return nil
	}
	b.life.Lock()
	defer b.life.Unlock()
	b.mu.Lock()
	idle, path := b.idle && !b.removed, b.path
	b.mu.Unlock()
	if !idle {
		return nil
	}
	// The process outlives the call that woke it.
	if err := b.startLocked(context.WithoutCancel(ctx), path); err != nil {
		return fmt.Errorf("snapshotter %s: start its process: %w", b.name, err)
	}
	if err := b.h.save(); err != nil {
		b.log.Error("save snapshotters state", "error", err)
	}
	return nil
}

// noteEmpty records whether the running process holds no snapshot, for the
// next start to leave the backend idle; it is not empty when that cannot
// be told.
func (b *backend) noteEmpty() {
	b.mu.Lock()
	inst := b.inst
	if inst == nil {
		b.mu.Unlock()
		return
	}
	inst.calls.Add(1)
	b.mu.Unlock()
	defer inst.calls.Done()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	errFound := errors.New("found one")
	err := inst.proc.Snapshotter().Walk(ctx, func(context.Context, snapshotter.Info) error { return errFound })
	b.mu.Lock()
	b.empty = err == nil
	b.mu.Unlock()
}

// notFound is what an idle backend answers about a snapshot key.
func (b *backend) notFound(key string) error {
	return fmt.Errorf("snapshot %s in %s: %w", key, b.name, errdefs.ErrNotFound)
}

// watch notices the death of inst's process.
func (b *backend) watch(inst *instance) {
	t := time.NewTicker(b.h.opts.PollInterval)
	defer t.Stop()
	for {
		select {
		case <-inst.quit:
			return
		case <-t.C:
			if inst.stopping.Load() {
				return
			}
			if !inst.proc.Alive() {
				b.crashed(inst)
				return
			}
		}
	}
}

// crashed retires inst, whose process died or stopped answering, and
// starts the restart loop.
func (b *backend) crashed(inst *instance) {
	b.mu.Lock()
	if b.inst != inst || b.removed {
		b.mu.Unlock()
		return
	}
	b.inst = nil
	b.state = StateRestarting
	b.restarts++
	b.broadcastLocked()
	b.mu.Unlock()
	inst.endWatch()
	if inst.proc.Alive() {
		// Alive but not answering: it holds the data, so it must go.
		inst.proc.Kill()
	}
	// Its connection and go-plugin's client would otherwise stay, with
	// their goroutines, for every crash.
	inst.proc.Release()
	b.log.Warn("snapshotter process died; restarting it", "pid", inst.proc.Pid(), "ran", time.Since(inst.started).Round(time.Millisecond))
	b.restartLoop(time.Since(inst.started) < stableAfter)
}

// fail records that no process could be started, and retries.
func (b *backend) fail(err error) {
	b.mu.Lock()
	b.state = StateFailed
	b.lastErr = err
	b.mu.Unlock()
	b.restartLoop(true)
}

// restartLoop starts processes, with backoff, until one runs or the
// backend is removed. It runs once per backend at a time.
func (b *backend) restartLoop(backoff bool) {
	b.mu.Lock()
	if b.restarting || b.removed {
		b.mu.Unlock()
		return
	}
	b.restarting = true
	// Counted before b.mu is released: once markRemoved has run (under
	// b.mu), no restart loop can start, so the host's wait covers all.
	b.h.restarts.Add(1)
	b.mu.Unlock()
	go func() {
		defer b.h.restarts.Done()
		defer func() {
			b.mu.Lock()
			b.restarting = false
			b.mu.Unlock()
		}()
		wait := time.Duration(0)
		if backoff {
			wait = minBackoff
		}
		for {
			select {
			case <-time.After(wait):
			case <-b.h.stopping:
				return
			}
			b.life.Lock()
			b.mu.Lock()
			done := b.removed || b.inst != nil
			path := b.path
			b.mu.Unlock()
			if done {
				b.life.Unlock()
				return
			}
			err := b.startLocked(context.Background(), path)
			b.life.Unlock()
			if err == nil {
				if serr := b.h.save(); serr != nil {
					b.log.Error("save snapshotters state", "error", serr)
				}
				return
			}
			b.log.Error("snapshotter restart failed", "error", err, "retry_in", wait)
			b.mu.Lock()
			b.state = StateFailed
			b.lastErr = err
			b.mu.Unlock()
			wait = min(max(wait*2, minBackoff), maxBackoff)
		}
	}()
}

// replace drains the current process, stops it and starts path's.
func (b *backend) replace(ctx context.Context, path string) error {
	b.life.Lock()
	defer b.life.Unlock()
	b.mu.Lock()
	if b.removed {
		b.mu.Unlock()
		return fmt.Errorf("snapshotter %q: %w", b.name, errdefs.ErrNotFound)
	}
	old, oldPath := b.inst, b.path
	b.inst = nil
	b.state = StateReplacing
	b.broadcastLocked()
	b.mu.Unlock()

	if old != nil {
		if err := old.drain(ctx); err != nil {
			// Give the process back its place: nothing changed.
			b.mu.Lock()
			b.inst, b.state = old, StateRunning
			b.broadcastLocked()
			b.mu.Unlock()
			return fmt.Errorf("replace snapshotter %q: waiting for calls in flight: %w", b.name, err)
		}
		old.stop()
	}
	err := b.startLocked(ctx, path)
	if err == nil {
		b.log.Info("snapshotter replaced", "old_path", oldPath, "path", path)
		return nil
	}
	if rerr := b.startLocked(context.WithoutCancel(ctx), oldPath); rerr != nil {
		b.mu.Lock()
		b.state, b.lastErr = StateFailed, rerr
		b.mu.Unlock()
		b.restartLoop(true)
		return fmt.Errorf("replace snapshotter %q: %w; the previous executable did not restart either: %v", b.name, err, rerr)
	}
	return fmt.Errorf("replace snapshotter %q: %w; the previous executable serves again", b.name, err)
}

// markRemoved makes calls fail from now on and returns the current
// instance, for the caller to drain and stop.
func (b *backend) markRemoved() *instance {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.removed = true
	inst := b.inst
	b.inst = nil
	b.broadcastLocked()
	if inst != nil {
		inst.endWatch()
	}
	return inst
}

// detach forgets the process and leaves it running.
func (b *backend) detach() {
	if inst := b.markRemoved(); inst != nil {
		inst.proc.Detach()
	}
}

// acquire returns the current instance with a call counted on it, waiting
// until deadline for one while the backend restarts or is replaced.
func (b *backend) acquire(ctx context.Context, deadline time.Time) (*instance, error) {
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	b.mu.Lock()
	for {
		if b.removed {
			b.mu.Unlock()
			return nil, fmt.Errorf("snapshotter not loaded: %s (removed): %w", b.name, errdefs.ErrInvalidArgument)
		}
		if b.inst != nil {
			inst := b.inst
			inst.calls.Add(1)
			b.mu.Unlock()
			return inst, nil
		}
		changed, state, lastErr := b.changed, b.state, b.lastErr
		b.mu.Unlock()
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, fmt.Errorf("snapshotter %s is %s: %w", b.name, state, ctx.Err())
		case <-timer.C:
			msg := fmt.Sprintf("snapshotter %s is %s", b.name, state)
			if lastErr != nil {
				msg += ": " + lastErr.Error()
			}
			return nil, fmt.Errorf("%s: %w", msg, errdefs.ErrUnavailable)
		}
		b.mu.Lock()
	}
}

// call runs fn on the current process. When the process died during the
// call, a read (idempotent) is retried once on the process that replaces
// it; a change (Prepare, View, Commit, Remove, Update) is not, since it may
// have taken effect before the process died: it fails Unavailable, saying
// so, and the caller looks before trying again.
func (b *backend) call(ctx context.Context, idempotent bool, fn func(s snapshotter.Snapshotter) error) error {
	deadline := time.Now().Add(b.h.opts.CallWait)
	for attempt := 0; ; attempt++ {
		inst, err := b.acquire(ctx, deadline)
		if err != nil {
			return err
		}
		err = fn(inst.proc.Snapshotter())
		inst.calls.Done()
		if err == nil || attempt > 0 || !connectionLost(ctx, err) {
			return err
		}
		if inst.proc.Alive() {
			pctx, cancel := context.WithTimeout(ctx, time.Second)
			perr := inst.proc.Ping(pctx)
			cancel()
			if perr == nil {
				return err
			}
		}
		b.crashed(inst)
		if !idempotent {
			return fmt.Errorf("snapshotter %s: its process died during the call, which may or may not have taken effect: %v: %w",
				b.name, err, errdefs.ErrUnavailable)
		}
	}
}

// connectionLost says whether a call failed because the process's
// connection went away rather than by the plugin's answer: Unavailable, or
// cancelled though the caller did not cancel (snapshotd closing the
// connection of a process it has seen die, while the call was in flight).
func connectionLost(ctx context.Context, err error) bool {
	if ctx.Err() != nil {
		return false
	}
	return errdefs.IsUnavailable(err) || errdefs.IsCanceled(err)
}

// countActive counts the active snapshots of the running process, without
// waiting for one.
func (b *backend) countActive(ctx context.Context) (int, error) {
	b.mu.Lock()
	if b.idle {
		b.mu.Unlock()
		return 0, nil
	}
	inst := b.inst
	if inst == nil {
		state := b.state
		b.mu.Unlock()
		return 0, fmt.Errorf("snapshotter %s is %s", b.name, state)
	}
	inst.calls.Add(1)
	b.mu.Unlock()
	defer inst.calls.Done()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	n := 0
	err := inst.proc.Snapshotter().Walk(ctx, func(context.Context, snapshotter.Info) error {
		n++
		return nil
	}, "kind==active")
	return n, err
}

func (b *backend) status(ctx context.Context) Status {
	st := b.describe()
	if st.State == StateIdle {
		st.Active = 0
	} else if n, err := b.countActive(ctx); err == nil {
		st.Active = n
	}
	return st
}

func (b *backend) describe() Status {
	b.mu.Lock()
	defer b.mu.Unlock()
	st := Status{Name: b.name, Path: b.path, Root: b.root, State: b.state, Restarts: b.restarts, Active: -1}
	if b.inst != nil {
		st.Pid = b.inst.proc.Pid()
	}
	if b.lastErr != nil {
		st.Error = b.lastErr.Error()
	}
	return st
}

// The snapshotter.Snapshotter methods: each is a call on the current
// process. An idle backend holds nothing: it answers NotFound for a key, and
// starts its process only to make a snapshot (Prepare, View).

func (b *backend) Stat(ctx context.Context, key string) (info snapshotter.Info, err error) {
	if b.isIdle() {
		return info, b.notFound(key)
	}
	err = b.call(ctx, true, func(s snapshotter.Snapshotter) error { info, err = s.Stat(ctx, key); return err })
	return info, err
}

func (b *backend) Update(ctx context.Context, in snapshotter.Info, fieldpaths ...string) (info snapshotter.Info, err error) {
	if b.isIdle() {
		return info, b.notFound(in.Name)
	}
	err = b.call(ctx, false, func(s snapshotter.Snapshotter) error { info, err = s.Update(ctx, in, fieldpaths...); return err })
	return info, err
}

func (b *backend) Usage(ctx context.Context, key string) (u snapshotter.Usage, err error) {
	if b.isIdle() {
		return u, b.notFound(key)
	}
	err = b.call(ctx, true, func(s snapshotter.Snapshotter) error { u, err = s.Usage(ctx, key); return err })
	return u, err
}

func (b *backend) Mounts(ctx context.Context, key string) (ms []snapshotter.Mount, err error) {
	if b.isIdle() {
		return nil, b.notFound(key)
	}
	err = b.call(ctx, true, func(s snapshotter.Snapshotter) error { ms, err = s.Mounts(ctx, key); return err })
	return ms, err
}

func (b *backend) Prepare(ctx context.Context, key, parent string, opts ...snapshotter.Opt) (ms []snapshotter.Mount, err error) {
	if err := b.wake(ctx); err != nil {
		return nil, err
	}
	err = b.call(ctx, false, func(s snapshotter.Snapshotter) error { ms, err = s.Prepare(ctx, key, parent, opts...); return err })
	return ms, err
}

func (b *backend) View(ctx context.Context, key, parent string, opts ...snapshotter.Opt) (ms []snapshotter.Mount, err error) {
	if err := b.wake(ctx); err != nil {
		return nil, err
	}
	err = b.call(ctx, false, func(s snapshotter.Snapshotter) error { ms, err = s.View(ctx, key, parent, opts...); return err })
	return ms, err
}

func (b *backend) Commit(ctx context.Context, name, key string, opts ...snapshotter.Opt) error {
	if b.isIdle() {
		return b.notFound(key)
	}
	return b.call(ctx, false, func(s snapshotter.Snapshotter) error { return s.Commit(ctx, name, key, opts...) })
}

func (b *backend) Remove(ctx context.Context, key string) error {
	if b.isIdle() {
		return b.notFound(key)
	}
	return b.call(ctx, false, func(s snapshotter.Snapshotter) error { return s.Remove(ctx, key) })
}

// Walk retries only if the process died before fn saw any snapshot, so
// that no snapshot is visited twice.
func (b *backend) Walk(ctx context.Context, fn snapshotter.WalkFunc, filters ...string) error {
	if b.isIdle() {
		return nil
	}
	seen := false
	return b.call(ctx, true, func(s snapshotter.Snapshotter) error {
		if seen {
			return fmt.Errorf("walk of snapshotter %s cut short: its process died: %w", b.name, errdefs.ErrUnavailable)
		}
		return s.Walk(ctx, func(ctx context.Context, info snapshotter.Info) error {
			seen = true
			return fn(ctx, info)
		}, filters...)
	})
}

// Close does nothing: the host owns the backend's process.
func (b *backend) Close() error { return nil }
