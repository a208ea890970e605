// Package task implements containerd's runtime v2 task service
// (containerd.task.v2.Task) for containers run by an OCI runtime through
// go-runc: runc by default, or the BinaryName of the runc options
// (containerd.runc.v1.Options) given on Create, such as crun.
//
// Events follow containerd's shim rules: /tasks/create, /tasks/start,
// /tasks/exit and /tasks/delete for the init process, /tasks/exec-added,
// /tasks/exec-started and /tasks/exit for an exec, plus /tasks/paused,
// /tasks/resumed, /tasks/checkpointed and /tasks/oom, each published once,
// in that order per process. A start event always precedes the exit of the
// same process, and the init's exit follows the exits of its execs.
package task

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	taskapi "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/api/types/runc/options"
	tasktypes "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/errdefs"
	runc "github.com/containerd/go-runc"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/flotilla/flotilla/services/mount"
	"github.com/flotilla/flotilla/taskd/shim/cgroup"
	"github.com/flotilla/flotilla/taskd/shim/stdio"
)

// Publisher publishes one containerd event (github.com/containerd/containerd/api/events)
// under its topic. It must not block on delivery and must keep order.
type Publisher interface {
	Publish(ctx context.Context, topic string, event any) error
}

// Files the shim keeps in a container's bundle, besides runc's.
const (
	// OptionsFile holds the runc options of Create (protobuf JSON), so the
	// shim's delete command finds the runtime binary and root.
	OptionsFile = "options.json"
	// InitPidFile holds the init process's pid, written by the runtime.
	InitPidFile = "init.pid"
	// RuntimeLog is the runtime's JSON log; its errors explain failures.
	RuntimeLog = "log.json"
)

// DefaultRuntime is the OCI runtime used when the options name none.
const DefaultRuntime = "runc"

// Version is reported by Connect.
const Version = "taskd-shim 1"

// Config is what a Service needs from the shim process.
type Config struct {
	// Namespace is the containerd namespace the shim serves.
	Namespace string
	// Publisher receives the events.
	Publisher Publisher
	// Exits delivers every reaped process that the shim did not start
	// through go-runc's Monitor: the containers' processes.
	Exits <-chan runc.Exit
	// RuntimeRoot is the runtime's state root when the options set none;
	// the namespace is appended to it.
	RuntimeRoot string
	// Log receives diagnostics.
	Log *slog.Logger
}

// Service implements taskapi.TTRPCTaskService.
type Service struct {
	cfg Config
	log *slog.Logger

	mu         sync.Mutex
	containers map[string]*container
	byPid      map[int]*process
	// While a container is being created or an exec started
	// (startWindows > 0) every exit of an unknown pid is kept in unclaimed:
	// the process may exit before its pid is known (containerd's shim
	// subscribes to exits before it starts a process for the same reason).
	startWindows int
	unclaimed    []runc.Exit

	shutdownOnce sync.Once
	shutdown     chan struct{}
}

var _ taskapi.TTRPCTaskService = (*Service)(nil)

// New returns a Service and starts handling exits.
func New(cfg Config) *Service {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	s := &Service{
		cfg:        cfg,
		log:        cfg.Log,
		containers: map[string]*container{},
		byPid:      map[int]*process{},
		shutdown:   make(chan struct{}),
	}
	go s.handleExits()
	return s
}

// Done is closed when Shutdown decided the shim should exit.
func (s *Service) Done() <-chan struct{} { return s.shutdown }

// publish hands event to the publisher; ctx is the call that caused it,
// whose trace the event continues.
func (s *Service) publish(ctx context.Context, topic string, event any) {
	if err := s.cfg.Publisher.Publish(ctx, topic, event); err != nil {
		s.log.Error("publish", "topic", topic, "error", err)
	}
}

// ---- lookups ----

func (s *Service) container(id string) (*container, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.containerLocked(id)
}

func (s *Service) containerLocked(id string) (*container, error) {
	c, ok := s.containers[id]
	if !ok || c.init == nil { // nil while Create is still running
		return nil, fmt.Errorf("container %q: %w", id, errdefs.ErrNotFound)
	}
	return c, nil
}

func (s *Service) process(id, execID string) (*container, *process, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, err := s.containerLocked(id)
	if err != nil {
		return nil, nil, err
	}
	if execID == "" {
		return c, c.init, nil
	}
	p, ok := c.execs[execID]
	if !ok {
		return nil, nil, fmt.Errorf("exec %q in container %q: %w", execID, id, errdefs.ErrNotFound)
	}
	return c, p, nil
}

// ---- exits ----

func (s *Service) handleExits() {
	for e := range s.cfg.Exits {
		s.mu.Lock()
		if s.startWindows > 0 {
			// A process being created or started may have exited before
			// its pid is known; Create and Start look for it here.
			s.unclaimed = append(s.unclaimed, e)
		}
		p, ok := s.byPid[e.Pid]
		if ok {
			delete(s.byPid, e.Pid)
		}
		s.mu.Unlock()
		if !ok {
			continue
		}
		if p.execID == "" {
			s.killRest(p.c)
		}
		s.mu.Lock()
		if p.starting {
			ex := e
			p.pendingExit = &ex
		} else {
			s.exitedLocked(p, e)
		}
		s.mu.Unlock()
	}
}

// killRest kills what is left of a container whose init exited when it
// shares the host's PID namespace: there the kernel does not end the
// other processes with init, so containerd's shim kills every process of
// the container's cgroup before it reports the init's exit.
func (s *Service) killRest(c *container) {
	if c.ownPID {
		return
	}
	if err := c.runtime.Kill(context.Background(), c.id, int(unix.SIGKILL), &runc.KillOpts{All: true}); err != nil {
		s.log.Debug("kill the rest of a host-PID container", "id", c.id, "error", err)
	}
}

// exitedLocked records the exit of p and publishes it, holding back the
// init's exit while execs of the container still run or are being
// started, so that their exits are published first.
func (s *Service) exitedLocked(p *process, e runc.Exit) {
	c := p.c
	if p.execID == "" {
		if c.oom != nil {
			c.oom.Check() // the OOM kill, if that is what ended init, goes first
		}
		if s.runningExecsLocked(c)+c.startingExecs > 0 {
			ex := e
			c.initExit = &ex
			return
		}
		s.finishLocked(p, e)
		return
	}
	s.finishLocked(p, e)
	s.releaseInitExitLocked(c)
}

// releaseInitExitLocked publishes the init's held-back exit once no exec
// of the container runs or is being started.
func (s *Service) releaseInitExitLocked(c *container) {
	if c.initExit != nil && s.runningExecsLocked(c)+c.startingExecs == 0 {
		e := *c.initExit
		c.initExit = nil
		s.finishLocked(c.init, e)
	}
}

// openWindowLocked starts keeping the exits of unknown pids (see unclaimed).
func (s *Service) openWindowLocked() { s.startWindows++ }

// closeWindowLocked ends a window opened by openWindowLocked.
func (s *Service) closeWindowLocked() {
	s.startWindows--
	if s.startWindows == 0 {
		s.unclaimed = nil
	}
}

// claimLocked takes the exit of pid kept while a window was open.
func (s *Service) claimLocked(pid int) (runc.Exit, bool) {
	for i := len(s.unclaimed) - 1; i >= 0; i-- {
		if s.unclaimed[i].Pid == pid {
			e := s.unclaimed[i]
			s.unclaimed = append(s.unclaimed[:i], s.unclaimed[i+1:]...)
			return e, true
		}
	}
	return runc.Exit{}, false
}

func (s *Service) runningExecsLocked(c *container) int {
	n := 0
	for _, p := range c.execs {
		if p.status == tasktypes.Status_RUNNING {
			n++
		}
	}
	return n
}

func (s *Service) finishLocked(p *process, e runc.Exit) {
	if p.isStopped() {
		return
	}
	p.status = tasktypes.Status_STOPPED
	p.exitStatus = e.Status
	p.exitedAt = e.Timestamp
	if p.execID == "" {
		p.c.paused = false
	}
	close(p.exited)
	// An exec that never started has no exit to report; the init's exit
	// is reported once it had a pid, started or not, as containerd does.
	if p.started || p.execID == "" {
		s.publish(context.Background(), "/tasks/exit", &eventstypes.TaskExit{
			ContainerID: p.c.id,
			ID:          p.id(),
			Pid:         uint32(p.pid),
			ExitStatus:  uint32(e.Status),
			ExitedAt:    timestamppb.New(e.Timestamp),
		})
	}
}

// ---- Create ----

// Create mounts the rootfs onto <bundle>/rootfs, opens the client's stdio
// and creates the container with the runtime. The bundle's config.json is
// the caller's.
func (s *Service) Create(ctx context.Context, r *taskapi.CreateTaskRequest) (_ *taskapi.CreateTaskResponse, retErr error) {
	if r.GetID() == "" || strings.ContainsAny(r.GetID(), "/\x00") {
		return nil, fmt.Errorf("container id %q: %w", r.GetID(), errdefs.ErrInvalidArgument)
	}
	if r.GetBundle() == "" {
		return nil, fmt.Errorf("create %s: bundle path required: %w", r.GetID(), errdefs.ErrInvalidArgument)
	}
	if r.GetCheckpoint() != "" {
		return nil, fmt.Errorf("create %s from checkpoint: restore is not supported: %w", r.GetID(), errdefs.ErrNotImplemented)
	}
	opts, err := runtimeOptions(r.GetOptions())
	if err != nil {
		return nil, err
	}
	spec, err := readSpec(r.GetBundle())
	if err != nil {
		return nil, err
	}
	c := &container{
		id:      r.GetID(),
		bundle:  r.GetBundle(),
		opts:    opts,
		execs:   map[string]*process{},
		ownPID:  hasOwnPIDNamespace(spec),
		runtime: NewRuntime(r.GetBundle(), opts, s.cfg.RuntimeRoot, s.cfg.Namespace),
	}
	c.lifecycle.Lock()
	defer c.lifecycle.Unlock()
	s.mu.Lock()
	if _, ok := s.containers[c.id]; ok {
		s.mu.Unlock()
		return nil, fmt.Errorf("container %q: %w", c.id, errdefs.ErrAlreadyExists)
	}
	s.containers[c.id] = c // reserved; removed again on failure
	s.mu.Unlock()
	defer func() {
		if retErr != nil {
			s.mu.Lock()
			delete(s.containers, c.id)
			s.mu.Unlock()
		}
	}()

	if err := writeOptions(c.bundle, opts); err != nil {
		return nil, err
	}
	if path := opts.GetShimCgroup(); path != "" {
		// As containerd's shim: the shim itself runs in the cgroup the
		// options name (its later children, runc included, start there).
		if err := cgroup.Join(path, os.Getpid()); err != nil {
			return nil, fmt.Errorf("create %s: shim cgroup: %w", c.id, err)
		}
	}
	if len(r.GetRootfs()) > 0 {
		rootfs := filepath.Join(c.bundle, "rootfs")
		if err := os.MkdirAll(rootfs, 0o711); err != nil {
			return nil, fmt.Errorf("create rootfs dir: %w", err)
		}
		// Targets resolve inside the rootfs: a symlink in the image cannot
		// send a mount onto the host.
		points, err := mount.AllPoints(r.GetRootfs(), rootfs)
		if err != nil {
			return nil, fmt.Errorf("mount rootfs of %s: %w", c.id, err)
		}
		c.mounts = points
		defer func() {
			if retErr != nil {
				_ = mount.UnmountPoints(points)
				_ = mount.Unmount(rootfs)
			}
		}()
	}

	sio := stdio.Stdio{Stdin: r.GetStdin(), Stdout: r.GetStdout(), Stderr: r.GetStderr(), Terminal: r.GetTerminal()}
	p := newProcess(c, "", sio)
	streams, err := stdio.Open(ctx, sio, s.owner(c))
	if err != nil {
		return nil, fmt.Errorf("stdio of %s: %w", c.id, err)
	}
	p.streams = streams
	defer func() {
		if retErr != nil {
			streams.Close()
		}
	}()

	s.mu.Lock()
	s.openWindowLocked()
	s.mu.Unlock()
	windowOpen := true
	defer func() {
		if windowOpen {
			s.mu.Lock()
			s.closeWindowLocked()
			s.mu.Unlock()
		}
	}()

	pidFile := filepath.Join(c.bundle, InitPidFile)
	err = c.runtime.Create(ctx, c.id, c.bundle, &runc.CreateOpts{
		PidFile:       pidFile,
		IO:            streams.IO(),
		ConsoleSocket: streams.ConsoleSocket(),
		NoPivot:       opts.GetNoPivotRoot(),
		NoNewKeyring:  opts.GetNoNewKeyring(),
	})
	if err != nil {
		_ = c.runtime.Delete(context.Background(), c.id, &runc.DeleteOpts{Force: true})
		return nil, runtimeError(fmt.Sprintf("create container %s", c.id), err, c.bundle)
	}
	if err := streams.AfterStart(ctx); err != nil {
		_ = c.runtime.Delete(context.Background(), c.id, &runc.DeleteOpts{Force: true})
		return nil, err
	}
	pid, err := readPid(pidFile)
	if err != nil {
		_ = c.runtime.Delete(context.Background(), c.id, &runc.DeleteOpts{Force: true})
		return nil, err
	}

	s.mu.Lock()
	p.pid = pid
	c.init = p
	s.publish(ctx, "/tasks/create", &eventstypes.TaskCreate{
		ContainerID: c.id,
		Bundle:      c.bundle,
		Rootfs:      r.GetRootfs(),
		IO:          &eventstypes.TaskIO{Stdin: sio.Stdin, Stdout: sio.Stdout, Stderr: sio.Stderr, Terminal: sio.Terminal},
		Checkpoint:  r.GetCheckpoint(),
		Pid:         uint32(pid),
	})
	// The init may have died already (killed while runc created it, by
	// the OOM killer say): then the container is stopped, not created.
	early, exited := s.claimLocked(pid)
	if !exited {
		s.byPid[pid] = p
	}
	s.closeWindowLocked()
	windowOpen = false
	s.mu.Unlock()

	if exited {
		s.killRest(c)
		s.mu.Lock()
		s.exitedLocked(p, early)
		s.mu.Unlock()
		return &taskapi.CreateTaskResponse{Pid: uint32(pid)}, nil
	}
	s.watchOOM(c, pid)
	return &taskapi.CreateTaskResponse{Pid: uint32(pid)}, nil
}

// owner is whose streams a process of c has: a logger binary is told the
// container and namespace; the pipes go to the options' IoUid and IoGid.
func (s *Service) owner(c *container) stdio.Owner {
	return stdio.Owner{
		ContainerID: c.id,
		Namespace:   s.cfg.Namespace,
		UID:         int(c.opts.GetIoUid()),
		GID:         int(c.opts.GetIoGid()),
	}
}

func (s *Service) watchOOM(c *container, pid int) {
	dir, err := cgroup.MemoryDir(pid)
	if err == nil {
		var w *cgroup.OOMWatch
		w, err = cgroup.WatchOOM(dir, func() {
			s.publish(context.Background(), "/tasks/oom", &eventstypes.TaskOOM{ContainerID: c.id})
		})
		if err == nil {
			s.mu.Lock()
			c.oom = w // read by the exit handler
			s.mu.Unlock()
		}
	}
	if err != nil {
		s.log.Warn("no OOM events for container", "id", c.id, "error", err)
	}
}

// NewRuntime returns the go-runc client for a container in namespace ns:
// the options' BinaryName (runc by default) with the options' Root, or
// defaultRoot, and ns appended to it, as containerd's shim does (so
// `runc --root <root>/<ns> list` lists the namespace's containers).
func NewRuntime(bundle string, opts *options.Options, defaultRoot, ns string) *runc.Runc {
	bin := opts.GetBinaryName()
	if bin == "" {
		bin = DefaultRuntime
	}
	root := opts.GetRoot()
	if root == "" {
		root = defaultRoot
	}
	return &runc.Runc{
		Command:       bin,
		Root:          filepath.Join(root, ns),
		Log:           filepath.Join(bundle, RuntimeLog),
		LogFormat:     runc.JSON,
		PdeathSignal:  unix.SIGKILL, // a runtime call dies with the shim
		SystemdCgroup: opts.GetSystemdCgroup(),
	}
}

// runtimeOptions decodes Create's options: nothing, or containerd's runc
// options (containerd.runc.v1.Options).
func runtimeOptions(a *anypb.Any) (*options.Options, error) {
	if a == nil || a.GetTypeUrl() == "" {
		return &options.Options{}, nil
	}
	v, err := typeurl.UnmarshalAny(a)
	if err != nil {
		return nil, fmt.Errorf("runtime options of type %q: %v: %w", a.GetTypeUrl(), err, errdefs.ErrInvalidArgument)
	}
	o, ok := v.(*options.Options)
	if !ok {
		return nil, fmt.Errorf("runtime options of type %q: want containerd.runc.v1.Options: %w", a.GetTypeUrl(), errdefs.ErrInvalidArgument)
	}
	return o, nil
}

func writeOptions(bundle string, o *options.Options) error {
	data, err := protojson.Marshal(o)
	if err != nil {
		return fmt.Errorf("encode options: %w", err)
	}
	if err := os.WriteFile(filepath.Join(bundle, OptionsFile), data, 0o600); err != nil {
		return fmt.Errorf("write options: %w", err)
	}
	return nil
}

// ReadOptions reads the options Create saved in bundle; none saved means
// the defaults.
func ReadOptions(bundle string) (*options.Options, error) {
	data, err := os.ReadFile(filepath.Join(bundle, OptionsFile))
	if errors.Is(err, os.ErrNotExist) {
		return &options.Options{}, nil
	}
	if err != nil {
		return nil, err
	}
	var o options.Options
	if err := protojson.Unmarshal(data, &o); err != nil {
		return nil, fmt.Errorf("decode %s: %w", OptionsFile, err)
	}
	return &o, nil
}

func readSpec(bundle string) (*specs.Spec, error) {
	data, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("bundle %s has no config.json: %w", bundle, errdefs.ErrNotFound)
		}
		return nil, fmt.Errorf("read spec: %w", err)
	}
	var spec specs.Spec
	if err := json.Unmarshal(data, &spec); err != nil {
		return nil, fmt.Errorf("bundle %s: config.json: %v: %w", bundle, err, errdefs.ErrInvalidArgument)
	}
	return &spec, nil
}

func hasOwnPIDNamespace(spec *specs.Spec) bool {
	if spec.Linux == nil {
		return false
	}
	for _, ns := range spec.Linux.Namespaces {
		if ns.Type == specs.PIDNamespace {
			return ns.Path == ""
		}
	}
	return false
}

func readPid(path string) (int, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("read pid file: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		return 0, fmt.Errorf("pid file %s: %w", path, err)
	}
	return pid, nil
}

// runtimeError wraps a failed runtime call with the runtime's own last
// error message from its log, and classifies the common cases.
func runtimeError(what string, err error, bundle string) error {
	msg := lastLogError(filepath.Join(bundle, RuntimeLog))
	if msg != "" {
		err = fmt.Errorf("%w: %s", err, msg)
	}
	text := err.Error()
	switch {
	case strings.Contains(text, "does not exist"), strings.Contains(text, "no such file"), strings.Contains(text, "not found"):
		return fmt.Errorf("%s: %w: %w", what, err, errdefs.ErrNotFound)
	case strings.Contains(text, "not running"), strings.Contains(text, "not paused"), strings.Contains(text, "is paused"), strings.Contains(text, "is stopped"):
		return fmt.Errorf("%s: %w: %w", what, err, errdefs.ErrFailedPrecondition)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// lastLogError returns the message of the runtime log's last error entry.
func lastLogError(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := bytes.Split(bytes.TrimSpace(data), []byte("\n"))
	for i := len(lines) - 1; i >= 0; i-- {
		var entry struct {
			Level string `json:"level"`
			Msg   string `json:"msg"`
		}
		if json.Unmarshal(lines[i], &entry) == nil && (entry.Level == "error" || entry.Level == "fatal") {
			return entry.Msg
		}
	}
	return ""
}

// ---- Start ----

// Start starts the init process (execID "") or a created exec.
//
// Starting an exec does not take the container's lifecycle lock: a
// `runc exec` may take long, and other execs, Kill or State must not wait
// for it (containerd's shim does not hold its lock across it either).
// While an exec is being started the init's exit is held back, so the
// exec's start and exit events come before it.
func (s *Service) Start(ctx context.Context, r *taskapi.StartRequest) (*taskapi.StartResponse, error) {
	c, p, err := s.process(r.GetID(), r.GetExecID())
	if err != nil {
		return nil, err
	}
	if p.execID != "" {
		return s.startExec(ctx, c, p)
	}
	c.lifecycle.Lock()
	defer c.lifecycle.Unlock()
	s.mu.Lock()
	if p.status != tasktypes.Status_CREATED || p.isStopped() {
		s.mu.Unlock()
		return nil, fmt.Errorf("start %s: task is %s, not created: %w", c.id, p.status, errdefs.ErrFailedPrecondition)
	}
	p.starting = true
	s.mu.Unlock()

	err = c.runtime.Start(ctx, c.id)

	s.mu.Lock()
	defer s.mu.Unlock()
	p.starting = false
	if err == nil {
		p.status = tasktypes.Status_RUNNING
		p.started = true
		s.publish(ctx, "/tasks/start", &eventstypes.TaskStart{ContainerID: c.id, Pid: uint32(p.pid)})
	}
	if p.pendingExit != nil {
		e := *p.pendingExit
		p.pendingExit = nil
		s.exitedLocked(p, e)
	}
	if err != nil {
		return nil, runtimeError(fmt.Sprintf("start %s", c.id), err, c.bundle)
	}
	return &taskapi.StartResponse{Pid: uint32(p.pid)}, nil
}

func (s *Service) startExec(ctx context.Context, c *container, p *process) (*taskapi.StartResponse, error) {
	s.mu.Lock()
	if p.status != tasktypes.Status_CREATED || p.starting || p.isStopped() {
		s.mu.Unlock()
		return nil, fmt.Errorf("start exec %s: process is %s, not created: %w", p.execID, p.status, errdefs.ErrFailedPrecondition)
	}
	if c.init.isStopped() || c.initExit != nil {
		s.mu.Unlock()
		return nil, fmt.Errorf("start exec %s: container %s is stopped: %w", p.execID, c.id, errdefs.ErrFailedPrecondition)
	}
	p.starting = true
	c.startingExecs++
	s.openWindowLocked()
	s.mu.Unlock()

	pid, err := s.runExec(ctx, c, p)

	s.mu.Lock()
	defer s.mu.Unlock()
	defer s.closeWindowLocked()
	p.starting = false
	c.startingExecs--
	if err != nil {
		// It never ran: it is stopped without having started, so no events.
		s.finishLocked(p, runc.Exit{Status: 255, Timestamp: time.Now()})
		s.releaseInitExitLocked(c)
		return nil, err
	}
	p.pid = pid
	p.status = tasktypes.Status_RUNNING
	p.started = true
	s.publish(ctx, "/tasks/exec-started", &eventstypes.TaskExecStarted{ContainerID: c.id, ExecID: p.execID, Pid: uint32(pid)})
	if e, ok := s.claimLocked(pid); ok {
		s.exitedLocked(p, e)
	} else {
		s.byPid[pid] = p
	}
	return &taskapi.StartResponse{Pid: uint32(pid)}, nil
}

func (s *Service) runExec(ctx context.Context, c *container, p *process) (int, error) {
	streams, err := stdio.Open(ctx, p.stdio, s.owner(c))
	if err != nil {
		return 0, fmt.Errorf("stdio of exec %s: %w", p.execID, err)
	}
	// From here ResizePty goes to the streams, which keep the size until
	// the pty comes; one asked for earlier is handed over.
	s.mu.Lock()
	p.streams = streams
	size, closeStdin := p.ptySize, p.closeStdin
	s.mu.Unlock()
	if closeStdin {
		// What the client wrote is still forwarded; then end of file.
		if err := streams.CloseStdin(); err != nil {
			streams.Close()
			return 0, fmt.Errorf("close stdin of exec %s: %w", p.execID, err)
		}
	}
	spec := *p.spec
	if size != nil {
		_ = streams.Resize(size[0], size[1])
		// runc starts the process before the shim receives the pty, so a
		// resize then would race the process's first look at its size;
		// the spec's consoleSize has runc size the pty before it runs.
		if spec.Terminal {
			spec.ConsoleSize = &specs.Box{Width: uint(size[0]), Height: uint(size[1])}
		}
	}
	pidFile := filepath.Join(c.bundle, p.execID+".pid")
	defer os.Remove(pidFile)
	err = c.runtime.Exec(ctx, c.id, spec, &runc.ExecOpts{
		PidFile:       pidFile,
		IO:            streams.IO(),
		ConsoleSocket: streams.ConsoleSocket(),
		Detach:        true,
	})
	if err != nil {
		streams.Close()
		return 0, runtimeError(fmt.Sprintf("exec %s in %s", p.execID, c.id), err, c.bundle)
	}
	if err := streams.AfterStart(ctx); err != nil {
		streams.Close()
		return 0, err
	}
	pid, err := readPid(pidFile)
	if err != nil {
		streams.Close()
		return 0, err
	}
	return pid, nil
}

// ---- Delete ----

// Delete removes a stopped exec, or the container once its init has
// stopped (a created, never started container is killed first): the
// runtime's state, the rootfs mount and the stdio go.
func (s *Service) Delete(ctx context.Context, r *taskapi.DeleteRequest) (*taskapi.DeleteResponse, error) {
	c, p, err := s.process(r.GetID(), r.GetExecID())
	if err != nil {
		return nil, err
	}
	if p.execID != "" {
		return s.deleteExec(c, p)
	}
	c.lifecycle.Lock()
	defer c.lifecycle.Unlock()
	s.mu.Lock()
	if _, ok := s.containers[c.id]; !ok {
		s.mu.Unlock()
		return nil, fmt.Errorf("container %q: %w", c.id, errdefs.ErrNotFound)
	}
	created := p.status == tasktypes.Status_CREATED
	s.mu.Unlock()
	if !p.isStopped() && !created {
		return nil, fmt.Errorf("delete %s: task is running, kill it first: %w", c.id, errdefs.ErrFailedPrecondition)
	}
	if created {
		// The init goes first, so that runc finds the cgroup empty and
		// can remove it.
		if err := c.runtime.Kill(ctx, c.id, int(unix.SIGKILL), &runc.KillOpts{All: true}); err != nil {
			s.log.Debug("delete: kill the init of a created container", "id", c.id, "error", err)
		}
		select {
		case <-p.exited:
		case <-time.After(5 * time.Second):
			s.log.Warn("init of a deleted, never started container did not exit", "id", c.id, "pid", p.pid)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	s.log.Debug("delete: runtime delete", "id", c.id)
	if err := c.runtime.Delete(ctx, c.id, &runc.DeleteOpts{Force: created}); err != nil && !isNotExist(err) {
		return nil, runtimeError(fmt.Sprintf("delete %s", c.id), err, c.bundle)
	}

	s.log.Debug("delete: closing stdio", "id", c.id)
	if p.streams != nil {
		p.streams.Wait(2 * time.Second)
		p.streams.Close()
	}
	if c.oom != nil {
		c.oom.Stop()
	}
	s.log.Debug("delete: unmounting", "id", c.id)
	if len(c.mounts) > 0 {
		// Every mount the shim made, the last first, then whatever the
		// container left stacked on its rootfs.
		err := errors.Join(mount.UnmountPoints(c.mounts), mount.Unmount(filepath.Join(c.bundle, "rootfs")))
		if err != nil {
			return nil, fmt.Errorf("delete %s: %w", c.id, err)
		}
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range c.execs {
		if e.streams != nil {
			e.streams.Close()
		}
	}
	delete(s.containers, c.id)
	if s.byPid[p.pid] == p {
		delete(s.byPid, p.pid)
	}
	resp := &taskapi.DeleteResponse{Pid: uint32(p.pid), ExitStatus: uint32(p.exitStatus), ExitedAt: timestamppb.New(p.exitedAt)}
	s.publish(ctx, "/tasks/delete", &eventstypes.TaskDelete{
		ContainerID: c.id,
		Pid:         resp.Pid,
		ExitStatus:  resp.ExitStatus,
		ExitedAt:    resp.ExitedAt,
	})
	return resp, nil
}

func isNotExist(err error) bool {
	return err != nil && (strings.Contains(err.Error(), "does not exist") || strings.Contains(err.Error(), "not exist"))
}

func (s *Service) deleteExec(c *container, p *process) (*taskapi.DeleteResponse, error) {
	s.mu.Lock()
	if p.status == tasktypes.Status_RUNNING || p.starting {
		s.mu.Unlock()
		return nil, fmt.Errorf("delete exec %s: process is running: %w", p.execID, errdefs.ErrFailedPrecondition)
	}
	delete(c.execs, p.execID)
	streams := p.streams
	s.mu.Unlock()
	if streams != nil {
		streams.Wait(2 * time.Second)
		streams.Close()
	}
	resp := &taskapi.DeleteResponse{Pid: uint32(p.pid), ExitStatus: uint32(p.exitStatus)}
	if !p.exitedAt.IsZero() {
		resp.ExitedAt = timestamppb.New(p.exitedAt)
	}
	return resp, nil
}

// ---- Exec ----

// Exec adds a process (an OCI process spec as JSON in an Any) to a running
// container; Start runs it.
func (s *Service) Exec(ctx context.Context, r *taskapi.ExecProcessRequest) (*emptypb.Empty, error) {
	if r.GetExecID() == "" || strings.ContainsAny(r.GetExecID(), "/\x00") {
		return nil, fmt.Errorf("exec id %q: %w", r.GetExecID(), errdefs.ErrInvalidArgument)
	}
	if r.GetSpec() == nil {
		return nil, fmt.Errorf("exec %s: process spec required: %w", r.GetExecID(), errdefs.ErrInvalidArgument)
	}
	var spec specs.Process
	if err := json.Unmarshal(r.GetSpec().GetValue(), &spec); err != nil {
		return nil, fmt.Errorf("exec %s: process spec: %v: %w", r.GetExecID(), err, errdefs.ErrInvalidArgument)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c, err := s.containerLocked(r.GetID())
	if err != nil {
		return nil, err
	}
	if c.init.isStopped() || c.initExit != nil {
		return nil, fmt.Errorf("exec in %s: container is stopped: %w", c.id, errdefs.ErrFailedPrecondition)
	}
	if _, ok := c.execs[r.GetExecID()]; ok {
		return nil, fmt.Errorf("exec %q in %s: %w", r.GetExecID(), c.id, errdefs.ErrAlreadyExists)
	}
	p := newProcess(c, r.GetExecID(), stdio.Stdio{Stdin: r.GetStdin(), Stdout: r.GetStdout(), Stderr: r.GetStderr(), Terminal: r.GetTerminal()})
	// The request's terminal flag decides, not the spec's: clients (and
	// containerd's tests) exec with a TTY in a container created without.
	spec.Terminal = r.GetTerminal()
	p.spec = &spec
	c.execs[p.execID] = p
	s.publish(ctx, "/tasks/exec-added", &eventstypes.TaskExecAdded{ContainerID: c.id, ExecID: p.execID})
	return &emptypb.Empty{}, nil
}

// ---- signals, state, waiting ----

// Kill signals the init process (all: every process of the container) or
// an exec. A process that already exited answers NotFound, as containerd's
// shim does.
func (s *Service) Kill(ctx context.Context, r *taskapi.KillRequest) (*emptypb.Empty, error) {
	c, p, err := s.process(r.GetID(), r.GetExecID())
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	finished := p.isStopped() || (p.execID == "" && c.initExit != nil)
	s.mu.Unlock()
	if finished {
		return nil, fmt.Errorf("kill %s: process already finished: %w", p.id(), errdefs.ErrNotFound)
	}
	if p.execID != "" {
		s.mu.Lock()
		pid := p.pid
		s.mu.Unlock()
		if pid == 0 {
			return nil, fmt.Errorf("kill exec %s: not started: %w", p.execID, errdefs.ErrFailedPrecondition)
		}
		if err := unix.Kill(pid, unix.Signal(r.GetSignal())); err != nil {
			if errors.Is(err, unix.ESRCH) {
				return nil, fmt.Errorf("kill exec %s: process already finished: %w", p.execID, errdefs.ErrNotFound)
			}
			return nil, fmt.Errorf("kill exec %s: %w", p.execID, err)
		}
		return &emptypb.Empty{}, nil
	}
	if err := c.runtime.Kill(ctx, c.id, int(r.GetSignal()), &runc.KillOpts{All: r.GetAll()}); err != nil {
		if p.isStopped() {
			return nil, fmt.Errorf("kill %s: process already finished: %w", c.id, errdefs.ErrNotFound)
		}
		return nil, runtimeError(fmt.Sprintf("kill %s", c.id), err, c.bundle)
	}
	return &emptypb.Empty{}, nil
}

// State reports a process.
func (s *Service) State(ctx context.Context, r *taskapi.StateRequest) (*taskapi.StateResponse, error) {
	c, p, err := s.process(r.GetID(), r.GetExecID())
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	st := p.status
	if p.execID == "" && c.paused && st == tasktypes.Status_RUNNING {
		st = tasktypes.Status_PAUSED
	}
	resp := &taskapi.StateResponse{
		ID:         p.id(),
		ExecID:     p.execID,
		Bundle:     c.bundle,
		Pid:        uint32(p.pid),
		Status:     st,
		Stdin:      p.stdio.Stdin,
		Stdout:     p.stdio.Stdout,
		Stderr:     p.stdio.Stderr,
		Terminal:   p.stdio.Terminal,
		ExitStatus: uint32(p.exitStatus),
	}
	if p.execID == "" {
		resp.ID = c.id
	}
	if !p.exitedAt.IsZero() {
		resp.ExitedAt = timestamppb.New(p.exitedAt)
	}
	return resp, nil
}

// Wait blocks until the process has exited, or ctx is done.
func (s *Service) Wait(ctx context.Context, r *taskapi.WaitRequest) (*taskapi.WaitResponse, error) {
	_, p, err := s.process(r.GetID(), r.GetExecID())
	if err != nil {
		return nil, err
	}
	select {
	case <-p.exited:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return &taskapi.WaitResponse{ExitStatus: uint32(p.exitStatus), ExitedAt: timestamppb.New(p.exitedAt)}, nil
}

// Pids lists the container's processes; an exec's entry carries its exec
// ID as containerd.runc.v1.ProcessDetails.
func (s *Service) Pids(ctx context.Context, r *taskapi.PidsRequest) (*taskapi.PidsResponse, error) {
	c, err := s.container(r.GetID())
	if err != nil {
		return nil, err
	}
	pids, err := c.runtime.Ps(ctx, c.id)
	if err != nil {
		return nil, runtimeError(fmt.Sprintf("list processes of %s", c.id), err, c.bundle)
	}
	s.mu.Lock()
	execOf := map[int]string{}
	for id, p := range c.execs {
		if p.pid != 0 {
			execOf[p.pid] = id
		}
	}
	s.mu.Unlock()
	resp := &taskapi.PidsResponse{}
	for _, pid := range pids {
		info := &tasktypes.ProcessInfo{Pid: uint32(pid)}
		if id, ok := execOf[pid]; ok {
			a, err := typeurl.MarshalAnyToProto(&options.ProcessDetails{ExecID: id})
			if err != nil {
				return nil, fmt.Errorf("encode process details: %w", err)
			}
			info.Info = a
		}
		resp.Processes = append(resp.Processes, info)
	}
	return resp, nil
}

// Pause freezes the container.
func (s *Service) Pause(ctx context.Context, r *taskapi.PauseRequest) (*emptypb.Empty, error) {
	return s.setPaused(ctx, r.GetID(), true)
}

// Resume thaws the container.
func (s *Service) Resume(ctx context.Context, r *taskapi.ResumeRequest) (*emptypb.Empty, error) {
	return s.setPaused(ctx, r.GetID(), false)
}

func (s *Service) setPaused(ctx context.Context, id string, pause bool) (*emptypb.Empty, error) {
	c, err := s.container(id)
	if err != nil {
		return nil, err
	}
	c.lifecycle.Lock()
	defer c.lifecycle.Unlock()
	s.mu.Lock()
	running := c.init.status == tasktypes.Status_RUNNING
	paused := c.paused
	s.mu.Unlock()
	switch {
	case !running:
		return nil, fmt.Errorf("container %s is not running: %w", id, errdefs.ErrFailedPrecondition)
	case pause && paused:
		return nil, fmt.Errorf("container %s is already paused: %w", id, errdefs.ErrFailedPrecondition)
	case !pause && !paused:
		return nil, fmt.Errorf("container %s is not paused: %w", id, errdefs.ErrFailedPrecondition)
	}
	if pause {
		err = c.runtime.Pause(ctx, c.id)
	} else {
		err = c.runtime.Resume(ctx, c.id)
	}
	if err != nil {
		return nil, runtimeError(fmt.Sprintf("pause=%v %s", pause, c.id), err, c.bundle)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c.paused = pause
	if pause {
		s.publish(ctx, "/tasks/paused", &eventstypes.TaskPaused{ContainerID: c.id})
	} else {
		s.publish(ctx, "/tasks/resumed", &eventstypes.TaskResumed{ContainerID: c.id})
	}
	return &emptypb.Empty{}, nil
}

// Checkpoint dumps the container with CRIU into r.Path; without criu on
// the PATH it fails with FailedPrecondition.
func (s *Service) Checkpoint(ctx context.Context, r *taskapi.CheckpointTaskRequest) (*emptypb.Empty, error) {
	c, err := s.container(r.GetID())
	if err != nil {
		return nil, err
	}
	if _, err := exec.LookPath("criu"); err != nil {
		return nil, fmt.Errorf("checkpoint %s: criu is not installed: %w", c.id, errdefs.ErrFailedPrecondition)
	}
	if r.GetPath() == "" {
		return nil, fmt.Errorf("checkpoint %s: image path required: %w", c.id, errdefs.ErrInvalidArgument)
	}
	var o options.CheckpointOptions
	if r.GetOptions() != nil {
		if err := typeurl.UnmarshalTo(r.GetOptions(), &o); err != nil {
			return nil, fmt.Errorf("checkpoint options: %v: %w", err, errdefs.ErrInvalidArgument)
		}
	}
	c.lifecycle.Lock()
	defer c.lifecycle.Unlock()
	var actions []runc.CheckpointAction
	if !o.GetExit() {
		actions = append(actions, runc.LeaveRunning)
	}
	work := o.GetWorkPath()
	if work == "" {
		work = filepath.Join(c.bundle, "criu-work")
	}
	err = c.runtime.Checkpoint(ctx, c.id, &runc.CheckpointOpts{
		ImagePath:                r.GetPath(),
		WorkDir:                  work,
		ParentPath:               o.GetParentPath(),
		AllowOpenTCP:             o.GetOpenTcp(),
		AllowExternalUnixSockets: o.GetExternalUnixSockets(),
		AllowTerminal:            o.GetTerminal(),
		FileLocks:                o.GetFileLocks(),
		EmptyNamespaces:          o.GetEmptyNamespaces(),
	}, actions...)
	if err != nil {
		return nil, runtimeError(fmt.Sprintf("checkpoint %s", c.id), err, c.bundle)
	}
	s.publish(ctx, "/tasks/checkpointed", &eventstypes.TaskCheckpointed{ContainerID: c.id, Checkpoint: r.GetPath()})
	return &emptypb.Empty{}, nil
}

// ResizePty resizes a process's terminal. An exec not started yet gets the
// size as soon as its terminal exists (clients such as nerdctl resize
// before they start); a process without a terminal has nothing to resize,
// which is not an error (as in containerd's shim).
func (s *Service) ResizePty(ctx context.Context, r *taskapi.ResizePtyRequest) (*emptypb.Empty, error) {
	_, p, err := s.process(r.GetID(), r.GetExecID())
	if err != nil {
		return nil, err
	}
	if p.isStopped() {
		return nil, fmt.Errorf("resize %s: process has exited: %w", p.id(), errdefs.ErrFailedPrecondition)
	}
	s.mu.Lock()
	streams := p.streams
	if streams == nil {
		p.ptySize = &[2]uint32{r.GetWidth(), r.GetHeight()}
	}
	s.mu.Unlock()
	if streams == nil {
		return &emptypb.Empty{}, nil
	}
	if err := streams.Resize(r.GetWidth(), r.GetHeight()); err != nil {
		return nil, fmt.Errorf("resize %s: %w", p.id(), err)
	}
	return &emptypb.Empty{}, nil
}

// CloseIO closes a process's stdin: it reads end of file.
func (s *Service) CloseIO(ctx context.Context, r *taskapi.CloseIORequest) (*emptypb.Empty, error) {
	_, p, err := s.process(r.GetID(), r.GetExecID())
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	streams := p.streams
	if streams == nil && r.GetStdin() {
		// An exec not started yet: clients may close its stdin first
		// (a short stdin ends while the exec is being set up).
		p.closeStdin = true
	}
	s.mu.Unlock()
	if r.GetStdin() && streams != nil {
		if err := streams.CloseStdin(); err != nil {
			return nil, fmt.Errorf("close stdin of %s: %w", p.id(), err)
		}
	}
	return &emptypb.Empty{}, nil
}

// Update changes the container's resources (an OCI LinuxResources as JSON
// in an Any).
func (s *Service) Update(ctx context.Context, r *taskapi.UpdateTaskRequest) (*emptypb.Empty, error) {
	c, err := s.container(r.GetID())
	if err != nil {
		return nil, err
	}
	if r.GetResources() == nil {
		return nil, fmt.Errorf("update %s: resources required: %w", c.id, errdefs.ErrInvalidArgument)
	}
	var res specs.LinuxResources
	if err := json.Unmarshal(r.GetResources().GetValue(), &res); err != nil {
		return nil, fmt.Errorf("update %s: resources: %v: %w", c.id, err, errdefs.ErrInvalidArgument)
	}
	c.lifecycle.Lock()
	defer c.lifecycle.Unlock()
	if c.init.isStopped() {
		return nil, fmt.Errorf("update %s: container is stopped: %w", c.id, errdefs.ErrFailedPrecondition)
	}
	if err := c.runtime.Update(ctx, c.id, &res); err != nil {
		return nil, runtimeError(fmt.Sprintf("update %s", c.id), err, c.bundle)
	}
	return &emptypb.Empty{}, nil
}

// Stats returns the container's cgroup statistics: cgroup v1 or v2
// metrics, whichever the host uses for the container.
func (s *Service) Stats(ctx context.Context, r *taskapi.StatsRequest) (*taskapi.StatsResponse, error) {
	c, p, err := s.process(r.GetID(), "")
	if err != nil {
		return nil, err
	}
	if p.isStopped() {
		return nil, fmt.Errorf("stats of %s: container is stopped: %w", c.id, errdefs.ErrNotFound)
	}
	m, err := cgroup.Metrics(p.pid)
	if err != nil {
		return nil, fmt.Errorf("stats of %s: %w", c.id, err)
	}
	a, err := typeurl.MarshalAnyToProto(m)
	if err != nil {
		return nil, fmt.Errorf("encode stats: %w", err)
	}
	return &taskapi.StatsResponse{Stats: a}, nil
}

// Connect reports the shim's pid and the container's init pid (0 before
// Create).
func (s *Service) Connect(ctx context.Context, r *taskapi.ConnectRequest) (*taskapi.ConnectResponse, error) {
	resp := &taskapi.ConnectResponse{ShimPid: uint32(os.Getpid()), Version: Version}
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, ok := s.containers[r.GetID()]; ok && c.init != nil {
		resp.TaskPid = uint32(c.init.pid)
	}
	return resp, nil
}

// Shutdown lets the shim exit once no container is left (or at once with
// Now). Otherwise it does nothing.
func (s *Service) Shutdown(ctx context.Context, r *taskapi.ShutdownRequest) (*emptypb.Empty, error) {
	s.mu.Lock()
	n := len(s.containers)
	s.mu.Unlock()
	if n > 0 && !r.GetNow() {
		return &emptypb.Empty{}, nil
	}
	s.shutdownOnce.Do(func() { close(s.shutdown) })
	return &emptypb.Empty{}, nil
}
