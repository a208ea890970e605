// Package host runs snapshotd's snapshotter backends as go-plugin processes:
// it starts them, adopts those an earlier snapshotd left running, restarts
// the ones that crash, and adds, replaces and removes them at runtime. It
// hands out each backend as a snapshotter.Snapshotter whose calls wait a
// bounded time for a backend that is restarting or being replaced.
package host

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"

	"github.com/flotilla/flotilla/services/identifiers"
	"github.com/flotilla/flotilla/services/tracing"
	"github.com/flotilla/flotilla/snapshotd/snapshotter"
)

// States of a backend.
const (
	StateRunning    = "running"
	StateStarting   = "starting"
	StateRestarting = "restarting" // its process died; a new one is on its way
	StateReplacing  = "replacing"
	StateFailed     = "failed" // cannot be started; retried with backoff
	// StateIdle: it holds no snapshots and no process serves it; one is
	// started when a snapshot is first prepared (Options.StartOnUse).
	StateIdle = "idle"
)

// Options configure Open.
type Options struct {
	// Root is snapshotd's root: the state file and each backend's data
	// directory (Root/snapshotters/<name>) live under it.
	Root string
	// Defaults are the backends registered at first start, when no state
	// has been saved. One that fails to start is logged and left out.
	Defaults []Spec
	// Logger logs the host's and the plugins' messages.
	Logger *slog.Logger
	// CallWait bounds how long a call waits for a backend that is not
	// running (restarting, being replaced); default 10s.
	CallWait time.Duration
	// PollInterval is how often each plugin process is checked for life;
	// default 200ms.
	PollInterval time.Duration
	// SocketDir is where plugins make their sockets: snapshotd's state,
	// not $TMPDIR. Sockets a killed plugin left there are removed at Open.
	SocketDir string
	// StartOnUse leaves a backend that holds no snapshots (a default at
	// first start; one that held none when it was last shut down) without
	// a process until a snapshot is prepared in it: until then it answers
	// that there is nothing, as its process would, and costs no memory.
	// A process left running (Close, or a crash) is adopted regardless.
	StartOnUse bool
	// Tracing is snapshotd's: its calls to the plugins are traced with it,
	// and the plugins it starts trace to the same collector (nil: off).
	Tracing *tracing.Provider
	// PluginDir is the only directory Add and Replace run executables
	// from: a relative path is taken from it, and both the path a caller
	// names and the file it leads to (symlinks and ".." resolved) must lie
	// inside it, since a backend runs as snapshotd's user (root). Empty
	// takes any absolute path (tests of this package).
	PluginDir string
}

// Spec names a backend and its executable.
type Spec struct {
	Name string
	Path string
}

// Status describes one backend.
type Status struct {
	Name  string
	Path  string
	Root  string
	Pid   int
	State string
	// Active is the number of active snapshots, -1 if it could not be
	// counted (the backend is not running).
	Active int
	// Restarts counts the times its process died and was started again.
	Restarts int
	// Error is why it is not running, if it is not.
	Error string
}

// Host is the set of running backends.
type Host struct {
	opts Options
	log  *slog.Logger

	mu       sync.Mutex
	backends map[string]*backend
	closed   bool

	// stopping is closed when Close or Shutdown begins: restart loops end.
	stopping chan struct{}
	// restarts counts the restart loops running, which Close and Shutdown
	// wait for, so that no plugin starts once they have returned.
	restarts sync.WaitGroup
}

// Open starts or adopts every saved backend (or the defaults, at first
// start). Backends that cannot be started are kept, in state failed, and
// retried in the background.
func Open(ctx context.Context, opts Options) (*Host, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if opts.CallWait <= 0 {
		opts.CallWait = 10 * time.Second
	}
	if opts.PollInterval <= 0 {
		opts.PollInterval = 200 * time.Millisecond
	}
	if err := os.MkdirAll(filepath.Join(opts.Root, "snapshotters"), 0o700); err != nil {
		return nil, fmt.Errorf("snapshotters: %w", err)
	}
	if opts.SocketDir != "" {
		if err := os.MkdirAll(opts.SocketDir, 0o700); err != nil {
			return nil, fmt.Errorf("plugin sockets: %w", err)
		}
		removeStaleSockets(opts.SocketDir, opts.Logger)
	}
	h := &Host{opts: opts, log: opts.Logger, backends: make(map[string]*backend), stopping: make(chan struct{})}
	st, ok, err := loadState(opts.Root)
	if err != nil {
		return nil, err
	}
	if !ok {
		for _, d := range opts.Defaults {
			b := h.newBackend(d.Name, d.Path)
			if opts.StartOnUse {
				if err := checkExecutable(d.Path); err != nil {
					h.log.Error("default snapshotter not usable; left out", "snapshotter", d.Name, "path", d.Path, "error", err)
					continue
				}
				b.setIdle()
				h.backends[d.Name] = b
				continue
			}
			if err := b.start(ctx); err != nil {
				h.log.Error("default snapshotter not started; left out", "snapshotter", d.Name, "path", d.Path, "error", err)
				continue
			}
			h.backends[d.Name] = b
		}
		return h, h.save()
	}
	for _, sb := range st.Snapshotters {
		b := h.newBackend(sb.Name, sb.Path)
		h.backends[sb.Name] = b
		if sb.Reattach != nil {
			err := b.adopt(ctx, *sb.Reattach)
			if err == nil {
				continue
			}
			h.log.Warn("could not adopt snapshotter process; starting a new one", "snapshotter", sb.Name, "pid", sb.Reattach.Pid, "error", err)
		} else if sb.Empty && opts.StartOnUse {
			b.setIdle()
			continue
		}
		if err := b.start(ctx); err != nil {
			h.log.Error("snapshotter failed to start; retrying in the background", "snapshotter", sb.Name, "error", err)
			b.fail(err)
		}
	}
	return h, h.save()
}

func (h *Host) newBackend(name, path string) *backend {
	b := &backend{
		h:       h,
		name:    name,
		path:    path,
		root:    filepath.Join(h.opts.Root, "snapshotters", name),
		changed: make(chan struct{}),
		state:   StateStarting,
	}
	b.log = h.log.With("snapshotter", name)
	return b
}

// save persists the backends and their processes' reattach information.
func (h *Host) save() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.saveLocked()
}

func (h *Host) saveLocked() error {
	var st savedState
	for _, name := range h.namesLocked() {
		b := h.backends[name]
		sb := savedBackend{Name: name}
		b.mu.Lock()
		sb.Path = b.path
		if b.inst != nil {
			rc := b.inst.proc.Reattach()
			sb.Reattach = &rc
		} else {
			sb.Empty = b.empty
		}
		b.mu.Unlock()
		st.Snapshotters = append(st.Snapshotters, sb)
	}
	return saveState(h.opts.Root, st)
}

func (h *Host) namesLocked() []string {
	names := make([]string, 0, len(h.backends))
	for n := range h.backends {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Names lists the backends, sorted.
func (h *Host) Names() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.namesLocked()
}

// Get returns backend name as a Snapshotter. An unknown name is
// InvalidArgument, as containerd answers for a snapshotter not loaded.
func (h *Host) Get(name string) (snapshotter.Snapshotter, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	b, ok := h.backends[name]
	if !ok {
		return nil, fmt.Errorf("snapshotter not loaded: %s: %w", name, errdefs.ErrInvalidArgument)
	}
	return b, nil
}

func (h *Host) lookup(name string) (*backend, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	b, ok := h.backends[name]
	if !ok {
		return nil, fmt.Errorf("snapshotter %q: %w", name, errdefs.ErrNotFound)
	}
	return b, nil
}

// List describes every backend, counting each one's active snapshots.
func (h *Host) List(ctx context.Context) []Status {
	h.mu.Lock()
	bs := make([]*backend, 0, len(h.backends))
	for _, n := range h.namesLocked() {
		bs = append(bs, h.backends[n])
	}
	h.mu.Unlock()
	out := make([]Status, 0, len(bs))
	for _, b := range bs {
		out = append(out, b.status(ctx))
	}
	return out
}

// Describe describes every backend without asking its process anything
// (Active is -1), for callers that must answer quickly.
func (h *Host) Describe() []Status {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]Status, 0, len(h.backends))
	for _, n := range h.namesLocked() {
		out = append(out, h.backends[n].describe())
	}
	return out
}

// Status describes backend name; NotFound if there is none.
func (h *Host) Status(ctx context.Context, name string) (Status, error) {
	b, err := h.lookup(name)
	if err != nil {
		return Status{}, err
	}
	return b.status(ctx), nil
}

// Add starts the executable at path as backend name, with its data under
// snapshotd's root. AlreadyExists if the name is taken; InvalidArgument for
// a bad name or a path that is not an executable file; FailedPrecondition,
// with the plugin's own message, if it does not start.
func (h *Host) Add(ctx context.Context, name, path string) (Status, error) {
	if err := identifiers.Validate(name); err != nil {
		return Status{}, fmt.Errorf("snapshotter name: %w", err)
	}
	path, err := h.pluginExecutable(path)
	if err != nil {
		return Status{}, err
	}
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return Status{}, fmt.Errorf("add %s: snapshotd is stopping: %w", name, errdefs.ErrUnavailable)
	}
	if _, ok := h.backends[name]; ok {
		h.mu.Unlock()
		return Status{}, fmt.Errorf("snapshotter %q: %w", name, errdefs.ErrAlreadyExists)
	}
	b := h.newBackend(name, path)
	// Reserve the name while the process starts.
	b.adding = true
	h.backends[name] = b
	h.mu.Unlock()

	err = b.start(ctx)
	h.mu.Lock()
	b.mu.Lock()
	b.adding = false
	b.mu.Unlock()
	if err != nil {
		delete(h.backends, name)
		h.mu.Unlock()
		b.markRemoved()
		return Status{}, fmt.Errorf("add snapshotter %q: %w", name, err)
	}
	serr := h.saveLocked()
	h.mu.Unlock()
	if serr != nil {
		h.log.Error("snapshotter added but not saved", "snapshotter", name, "error", serr)
	}
	h.log.Info("snapshotter added", "snapshotter", name, "path", path, "pid", b.pid())
	return b.status(ctx), nil
}

// Replace swaps backend name's executable for the one at path: calls in
// flight finish on the old process, new calls wait; the old process is
// stopped (it unmounts nothing) and the new one started on the same data.
// If the new executable does not start, the old one is started again and
// Replace fails with the new one's error.
func (h *Host) Replace(ctx context.Context, name, path string) (Status, error) {
	path, err := h.pluginExecutable(path)
	if err != nil {
		return Status{}, err
	}
	b, err := h.lookup(name)
	if err != nil {
		return Status{}, err
	}
	if err := b.replace(ctx, path); err != nil {
		return Status{}, err
	}
	if err := h.save(); err != nil {
		h.log.Error("snapshotter replaced but not saved", "snapshotter", name, "error", err)
	}
	return b.status(ctx), nil
}

// Remove stops backend name and forgets it; its data stays on disk, so
// adding the same name again finds its snapshots. Unless force is set, it is
// refused with FailedPrecondition while the backend holds active snapshots
// or is not running (so they cannot be counted).
func (h *Host) Remove(ctx context.Context, name string, force bool) error {
	b, err := h.lookup(name)
	if err != nil {
		return err
	}
	b.life.Lock()
	defer b.life.Unlock()
	if !force {
		n, err := b.countActive(ctx)
		if err != nil {
			return fmt.Errorf("remove snapshotter %q: cannot count its active snapshots (%v); use force: %w", name, err, errdefs.ErrFailedPrecondition)
		}
		if n > 0 {
			return fmt.Errorf("remove snapshotter %q: it holds %d active snapshots; remove them or use force: %w", name, n, errdefs.ErrFailedPrecondition)
		}
	}
	h.mu.Lock()
	if h.backends[name] != b {
		h.mu.Unlock()
		return fmt.Errorf("snapshotter %q: %w", name, errdefs.ErrNotFound)
	}
	delete(h.backends, name)
	serr := h.saveLocked()
	h.mu.Unlock()
	inst := b.markRemoved()
	if inst != nil {
		inst.drain(ctx)
		inst.stop()
	}
	h.log.Info("snapshotter removed", "snapshotter", name, "forced", force)
	return serr
}

// Close leaves every plugin process running and saves how to adopt them:
// snapshotd is stopping, and the next one takes them over with their mounts.
func (h *Host) Close() error {
	bs := h.beginStop()
	h.mu.Lock()
	err := h.saveLocked()
	h.mu.Unlock()
	for _, b := range bs {
		b.detach()
	}
	// A restart under way stops the process it started (the backend is
	// removed): none outlives snapshotd unrecorded.
	h.restarts.Wait()
	return err
}

// beginStop marks the host closed, ends the restart loops' waits and
// returns the backends; once only.
func (h *Host) beginStop() []*backend {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.closed {
		h.closed = true
		close(h.stopping)
	}
	bs := make([]*backend, 0, len(h.backends))
	for _, b := range h.backends {
		bs = append(bs, b)
	}
	return bs
}

// Shutdown stops every plugin process (which unmounts nothing) and saves
// the set of backends without processes to adopt: the next snapshotd
// starts new ones on the same data.
func (h *Host) Shutdown() error {
	for _, b := range h.beginStop() {
		if h.opts.StartOnUse {
			// Whether the next snapshotd may leave it without a process.
			b.noteEmpty()
		}
		if inst := b.markRemoved(); inst != nil {
			inst.stop()
		}
	}
	// A restart under way stops the process it started (the backend is
	// removed), and Shutdown returns only once it has.
	h.restarts.Wait()
	return h.save()
}

// pluginExecutable checks the executable a caller asked Add or Replace to
// run and returns the path to run it by: with a plugin directory, the
// file's real path, so that a symlink changed after the check cannot lead
// elsewhere. A path outside the directory is InvalidArgument.
func (h *Host) pluginExecutable(path string) (string, error) {
	if h.opts.PluginDir == "" {
		return path, checkExecutable(path)
	}
	dir, err := filepath.EvalSymlinks(h.opts.PluginDir)
	if err == nil {
		dir, err = filepath.Abs(dir)
	}
	if err != nil {
		return "", fmt.Errorf("plugin directory %s: %w: %w", h.opts.PluginDir, err, errdefs.ErrFailedPrecondition)
	}
	asked := path
	if !filepath.IsAbs(path) {
		path = filepath.Join(dir, path)
	}
	outside := func(p string) error {
		return fmt.Errorf("plugin executable %s (%s) is outside the plugin directory %s: snapshotd runs backends only from there (--plugin-dir): %w",
			asked, p, h.opts.PluginDir, errdefs.ErrInvalidArgument)
	}
	// Judged as written (".." resolved), then where its symlinks lead.
	if !within(dir, filepath.Clean(path)) && !within(filepath.Clean(h.opts.PluginDir), filepath.Clean(path)) {
		return "", outside(filepath.Clean(path))
	}
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return "", fmt.Errorf("plugin executable %s: %w: %w", asked, err, errdefs.ErrInvalidArgument)
	}
	if !within(dir, real) {
		return "", outside(real)
	}
	return real, checkExecutable(real)
}

// within reports whether path lies below dir (both clean and absolute).
func within(dir, path string) bool {
	rel, err := filepath.Rel(dir, path)
	return err == nil && rel != "." && rel != ".." && !strings.HasPrefix(rel, "../")
}

func checkExecutable(path string) error {
	if !filepath.IsAbs(path) {
		return fmt.Errorf("plugin executable %q: path must be absolute: %w", path, errdefs.ErrInvalidArgument)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("plugin executable: %w: %w", err, errdefs.ErrInvalidArgument)
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("plugin executable %s is not an executable file: %w", path, errdefs.ErrInvalidArgument)
	}
	return nil
}

// tail keeps the last bytes written to it: a plugin's standard error, to
// quote when it fails to start.
type tail struct {
	mu  sync.Mutex
	buf []byte
}

const tailSize = 2048

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > tailSize {
		t.buf = append([]byte(nil), t.buf[len(t.buf)-tailSize:]...)
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}
