package runtime

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	eventsapi "github.com/containerd/containerd/api/events"
	taskapi "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/flotilla/flotilla/services/events"
	"github.com/flotilla/flotilla/services/identifiers"
	"github.com/flotilla/flotilla/services/namespace"
	"github.com/flotilla/flotilla/services/tracing"
)

// Task event topics, as containerd names them.
const (
	TopicExit   = "/tasks/exit"
	TopicDelete = "/tasks/delete"
)

// Config is what a Manager needs.
type Config struct {
	// State holds the bundles: <State>/<namespace>/<container id>.
	State string
	// Address is taskd's gRPC address, passed to shims as -address.
	Address string
	// TTRPCAddress is where taskd takes events from shims over ttrpc
	// (containerd's TTRPC_ADDRESS).
	TTRPCAddress string
	// PublishBinary is taskd's own binary, passed as -publish-binary for
	// shims that publish events by running `taskd publish`.
	PublishBinary string
	// Resolver finds a runtime's shim.
	Resolver *Resolver
	// Exits keeps exit records.
	Exits *ExitStore
	// Events is where the shims' events (and taskd's own, for shims that
	// died) go: eventd.
	Events events.Publisher
	// Log receives the shims' logs and taskd's troubles with them.
	Log *slog.Logger
	// Tracing is taskd's: its calls to the shims are traced with it, and
	// the shims it starts trace to the same collector (nil: off).
	Tracing *tracing.Provider
	// ShimSockets are the directories shims make their sockets in
	// (<FLOTILLA_STATE>/s); Load removes the sockets there that no shim
	// serves, left by shims killed before a bundle named them.
	ShimSockets []string
}

// Manager runs tasks through shims and keeps track of them. Tasks are
// scoped by the namespace carried by each call's context.
type Manager struct {
	cfg     Config
	closing atomic.Bool

	mu    sync.Mutex
	tasks map[string]*Task // "<ns>/<id>" → task; nil while being created
}

// NewManager returns a manager with no tasks; call Load to adopt the shims
// that are already running.
func NewManager(cfg Config) *Manager {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Events == nil {
		cfg.Events = events.Discard{}
	}
	return &Manager{cfg: cfg, tasks: map[string]*Task{}}
}

// CreateOpts describes a task to create.
type CreateOpts struct {
	// ID is the container's id.
	ID string
	// Runtime is the container's runtime name; RuntimePath, when set, is the
	// shim binary to use instead of resolving the name.
	Runtime, RuntimePath string
	// RuntimeOptions are the container's runtime options, TaskOptions the
	// request's; the shim gets the task's, or else the runtime's.
	RuntimeOptions, TaskOptions *anypb.Any
	// Spec is the container's OCI runtime spec in JSON.
	Spec []byte
	// Rootfs are the mounts that make the root filesystem.
	Rootfs []*types.Mount
	// Stdin, Stdout, Stderr are FIFO paths (or other URIs the shim knows).
	Stdin, Stdout, Stderr string
	Terminal              bool
}

// createTimeout bounds the creation of a task once started, whatever the
// caller's deadline.
const createTimeout = 2 * time.Minute

// Create starts a shim for container opts.ID and creates its task: the
// container exists but its process has not started. It fails with
// InvalidArgument for a bad spec or runtime name, NotFound when the runtime's
// shim or the rootfs cannot be found, AlreadyExists when the container has a
// task. On failure nothing is left: no bundle, no shim, no mount.
//
// A caller that goes away (its deadline, a ctrl-C, a gateway that crashed)
// does not cut creation short: a shim stopped halfway could be left where
// no call reaches it. Creation runs to its end and, the caller being gone,
// is undone; the caller gets its context's error.
func (m *Manager) Create(ctx context.Context, opts CreateOpts) (_ *Task, retErr error) {
	work, cancel := context.WithTimeout(context.WithoutCancel(ctx), createTimeout)
	defer cancel()
	return m.create(work, ctx, opts)
}

func (m *Manager) create(ctx, caller context.Context, opts CreateOpts) (_ *Task, retErr error) {
	ns, err := namespace.Required(ctx)
	if err != nil {
		return nil, err
	}
	if err := identifiers.Validate(opts.ID); err != nil {
		return nil, fmt.Errorf("container id: %w", err)
	}
	// A container has one task: a second Create is AlreadyExists, whatever
	// else is wrong with it.
	key := ns + "/" + opts.ID
	m.mu.Lock()
	if _, ok := m.tasks[key]; ok {
		m.mu.Unlock()
		return nil, fmt.Errorf("task %q in namespace %q: %w", opts.ID, ns, errdefs.ErrAlreadyExists)
	}
	m.tasks[key] = nil
	m.mu.Unlock()
	defer func() {
		if retErr != nil {
			m.mu.Lock()
			delete(m.tasks, key)
			m.mu.Unlock()
		}
	}()

	binary := opts.RuntimePath
	if binary != "" {
		if !filepath.IsAbs(binary) {
			return nil, fmt.Errorf("runtime path %q is not absolute: %w", binary, errdefs.ErrInvalidArgument)
		}
		if err := executable(binary); err != nil {
			return nil, fmt.Errorf("runtime path: %w", err)
		}
	} else if binary, err = m.cfg.Resolver.Resolve(opts.Runtime); err != nil {
		return nil, err
	}
	config, err := PrepareSpec(opts.Spec, len(opts.Rootfs) > 0)
	if err != nil {
		return nil, fmt.Errorf("container %q: %w", opts.ID, err)
	}
	if err := checkMounts(opts.Rootfs); err != nil {
		return nil, fmt.Errorf("container %q: %w", opts.ID, err)
	}

	b, err := newBundle(m.cfg.State, ns, opts.ID, config)
	if err != nil {
		return nil, err
	}
	t := &Task{m: m, ns: ns, id: opts.ID, bundle: b, cmd: m.shimCommand(binary)}
	defer func() {
		if retErr != nil {
			t.abandon()
		}
	}()
	if err := b.writeFile(shimFile, binary); err != nil {
		return nil, fmt.Errorf("bundle: %w", err)
	}
	if err := makeLogFifo(b); err != nil {
		return nil, err
	}
	if err := m.cfg.Exits.Track(ns, opts.ID, opts.ID); err != nil {
		return nil, err
	}
	address, err := t.cmd.start(b, opts.RuntimeOptions)
	if err != nil {
		return nil, fmt.Errorf("task %q: %w", opts.ID, err)
	}
	t.started = true
	if err := t.attach(ctx, address); err != nil {
		return nil, fmt.Errorf("task %q: %w", opts.ID, err)
	}
	taskOpts := opts.TaskOptions
	if taskOpts == nil {
		taskOpts = opts.RuntimeOptions
	}
	resp, err := call(ctx, ns, "create task "+opts.ID, t.conn.task.Create, &taskapi.CreateTaskRequest{
		ID: opts.ID, Bundle: b.path, Rootfs: opts.Rootfs, Terminal: opts.Terminal,
		Stdin: opts.Stdin, Stdout: opts.Stdout, Stderr: opts.Stderr, Options: taskOpts,
	})
	if err != nil {
		return nil, err
	}
	if err := caller.Err(); err != nil {
		return nil, fmt.Errorf("create task %q: the caller went away, the task is removed again: %w", opts.ID, err)
	}
	t.pid.Store(resp.Pid)
	m.mu.Lock()
	m.tasks[key] = t
	m.mu.Unlock()
	return t, nil
}

// checkMounts finds bind mounts whose source is missing before a shim does.
func checkMounts(mounts []*types.Mount) error {
	for _, mt := range mounts {
		if mt.GetType() != "bind" && mt.GetType() != "rbind" {
			continue
		}
		if _, err := os.Stat(mt.GetSource()); err != nil {
			return fmt.Errorf("rootfs mount source %s: %w", mt.GetSource(), errdefs.ErrNotFound)
		}
	}
	return nil
}

func (m *Manager) shimCommand(binary string) shimCommand {
	return shimCommand{binary: binary, address: m.cfg.Address, ttrpcAddress: m.cfg.TTRPCAddress, publisher: m.cfg.PublishBinary,
		env: m.cfg.Tracing.Env()}
}

// Get returns the task of container id, or NotFound.
func (m *Manager) Get(ctx context.Context, id string) (*Task, error) {
	ns, err := namespace.Required(ctx)
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	t := m.tasks[ns+"/"+id]
	m.mu.Unlock()
	if t == nil {
		return nil, fmt.Errorf("task %q in namespace %q: %w", id, ns, errdefs.ErrNotFound)
	}
	return t, nil
}

// HasTask reports whether container id has a task (or one being created).
func (m *Manager) HasTask(ctx context.Context, id string) bool {
	ns, err := namespace.Required(ctx)
	if err != nil {
		return false
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.tasks[ns+"/"+id]
	return ok
}

// List returns the tasks of the namespace, ordered by container id.
func (m *Manager) List(ctx context.Context) ([]*Task, error) {
	ns, err := namespace.Required(ctx)
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	var out []*Task
	for _, t := range m.tasks {
		if t != nil && t.ns == ns {
			out = append(out, t)
		}
	}
	m.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].id < out[j].id })
	return out, nil
}

// Delete deletes the task of container id, which must not be running or
// paused (FailedPrecondition), stops its shim, removes its bundle and
// returns how its process ended.
func (m *Manager) Delete(ctx context.Context, id string) (*taskapi.DeleteResponse, error) {
	t, err := m.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	resp, err := t.delete(ctx)
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	if m.tasks[t.key()] == t {
		delete(m.tasks, t.key())
	}
	m.mu.Unlock()
	return resp, nil
}

// Forward takes an event from a shim and sends it on to eventd. An exit is
// recorded first; one that was already announced (the shim retrying after
// taskd restarted and reconciled) is dropped, so each exit goes out once.
func (m *Manager) Forward(ctx context.Context, env *types.Envelope) error {
	if env.GetNamespace() == "" || env.GetTopic() == "" || env.GetEvent() == nil {
		return fmt.Errorf("event needs a namespace, a topic and a body: %w", errdefs.ErrInvalidArgument)
	}
	if err := identifiers.Validate(env.Namespace); err != nil {
		return fmt.Errorf("event namespace: %w", err)
	}
	if env.Topic == TopicExit {
		var e eventsapi.TaskExit
		if err := env.Event.UnmarshalTo(&e); err != nil {
			return fmt.Errorf("%s event: %v: %w", TopicExit, err, errdefs.ErrInvalidArgument)
		}
		first, err := m.cfg.Exits.Record(env.Namespace, &e)
		if err != nil {
			return err
		}
		if !first {
			m.cfg.Log.Debug("dropped an exit event already published", "namespace", env.Namespace, "container", e.ContainerID, "id", e.ID, "pid", e.Pid)
			return nil
		}
	}
	return m.cfg.Events.Publish(namespace.WithNamespace(ctx, env.Namespace), env.Topic, env.Event)
}

// announceExit records and publishes an exit that taskd found itself
// (reconciliation, a dead shim), unless it was announced before.
func (m *Manager) announceExit(ns string, e *eventsapi.TaskExit) {
	first, err := m.cfg.Exits.Record(ns, e)
	if err != nil {
		m.cfg.Log.Error("record exit", "namespace", ns, "container", e.ContainerID, "id", e.ID, "error", err)
	}
	if !first {
		return
	}
	m.publish(ns, TopicExit, e)
}

func (m *Manager) publish(ns, topic string, event proto.Message) {
	a, err := typeurl.MarshalAnyToProto(event)
	if err == nil {
		err = m.cfg.Events.Publish(namespace.WithNamespace(context.Background(), ns), topic, a)
	}
	if err != nil {
		m.cfg.Log.Warn("publish event", "namespace", ns, "topic", topic, "error", err)
	}
}

// Load adopts the shims found under the state directory: it reconnects to
// each, and reconciles what happened while taskd was down — a process that
// exited is recorded and its exit published, once. A shim that is gone is
// cleaned up with `shim delete`, and its task stays, stopped, until deleted.
func (m *Manager) Load(ctx context.Context) error {
	nss, err := os.ReadDir(m.cfg.State)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("load tasks: %w", err)
	}
	for _, nsd := range nss {
		if !nsd.IsDir() || identifiers.Validate(nsd.Name()) != nil {
			continue
		}
		ns := nsd.Name()
		ids, err := os.ReadDir(filepath.Join(m.cfg.State, ns))
		if err != nil {
			return fmt.Errorf("load tasks of namespace %s: %w", ns, err)
		}
		for _, d := range ids {
			if !d.IsDir() || identifiers.Validate(d.Name()) != nil {
				continue
			}
			m.load(ctx, &bundle{ns: ns, id: d.Name(), path: filepath.Join(m.cfg.State, ns, d.Name())})
		}
	}
	m.removeStaleSockets()
	return nil
}

// removeStaleSockets removes the shim sockets nobody serves: a shim killed
// with SIGKILL cannot remove its own. Those of the shims just adopted
// answer, and stay.
func (m *Manager) removeStaleSockets() {
	for _, dir := range m.cfg.ShimSockets {
		entries, err := os.ReadDir(dir)
		if err != nil {
			if !errors.Is(err, os.ErrNotExist) {
				m.cfg.Log.Warn("look for stale shim sockets", "dir", dir, "error", err)
			}
			continue
		}
		for _, e := range entries {
			if e.Type()&os.ModeSocket == 0 {
				continue
			}
			if path := filepath.Join(dir, e.Name()); removeIfUnserved(path) {
				m.cfg.Log.Info("removed the socket of a dead shim", "socket", path)
			}
		}
	}
}

func (m *Manager) load(ctx context.Context, b *bundle) {
	log := m.cfg.Log.With("namespace", b.ns, "container", b.id)
	binary, err := b.readFile(shimFile)
	if err != nil {
		log.Warn("bundle without a shim; removing it", "bundle", b.path)
		if err := b.remove(); err != nil {
			log.Error("remove bundle", "error", err)
		}
		m.cfg.Exits.Drop(b.ns, b.id)
		return
	}
	t := &Task{m: m, ns: b.ns, id: b.id, bundle: b, cmd: m.shimCommand(binary), started: true}
	m.mu.Lock()
	m.tasks[t.key()] = t
	m.mu.Unlock()
	if b.has(deadFile) {
		t.dead = true
		return
	}
	address, err := b.readFile(addressFile)
	if err == nil {
		err = t.attach(ctx, address)
	}
	if err != nil {
		log.Warn("shim is gone; cleaning up after it", "error", err)
		t.shimGone()
		return
	}
	log.Info("reconnected to shim", "address", address)
	t.reconcile(ctx)
}

// Close disconnects from the shims, which keep running.
func (m *Manager) Close() {
	m.closing.Store(true)
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, t := range m.tasks {
		if t != nil {
			t.detach()
		}
	}
}

// newExit is a TaskExit of process id of task t.
func newExit(t *Task, id string, pid, status uint32, at *timestamppb.Timestamp) *eventsapi.TaskExit {
	if at == nil {
		at = timestamppb.Now()
	}
	return &eventsapi.TaskExit{ContainerID: t.id, ID: id, Pid: pid, ExitStatus: status, ExitedAt: at}
}
