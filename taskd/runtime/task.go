package runtime

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	eventsapi "github.com/containerd/containerd/api/events"
	taskapi "github.com/containerd/containerd/api/runtime/task/v2"
	tasktypes "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/emptypb"
)

// Task is one container's task: a shim taskd talks to, or, once the shim
// is gone, what taskd recorded of how it ended.
type Task struct {
	m      *Manager
	ns, id string
	bundle *bundle
	cmd    shimCommand

	mu       sync.Mutex
	conn     *shimConn     // nil once the shim is gone or detached
	started  bool          // the shim was started: cleanup must run `shim delete`
	dead     bool          // the shim is gone; answers come from the exit records
	deleting bool          // the shim is being stopped on purpose
	pid      atomic.Uint32 // the init process's pid, as last seen
}

// ID is the container's id.
func (t *Task) ID() string { return t.id }

// Namespace is the task's namespace.
func (t *Task) Namespace() string { return t.ns }

// Bundle is the path of the task's bundle.
func (t *Task) Bundle() string { return t.bundle.path }

func (t *Task) key() string { return t.ns + "/" + t.id }

// attach connects to the shim at address.
func (t *Task) attach(ctx context.Context, address string) error {
	conn, err := connect(ctx, t.bundle, address, t.m.cfg.Log.With("namespace", t.ns, "container", t.id), t.m.cfg.Tracing, func() {
		go t.connClosed()
	})
	if err != nil {
		return err
	}
	t.mu.Lock()
	t.conn = conn
	t.mu.Unlock()
	return nil
}

// detach drops the connection, leaving the shim running.
func (t *Task) detach() {
	t.mu.Lock()
	conn := t.conn
	t.conn = nil
	t.mu.Unlock()
	if conn != nil {
		conn.close()
	}
}

// connClosed runs when the connection to the shim drops: unless taskd is
// stopping or deleting the task, the shim died.
func (t *Task) connClosed() {
	if t.m.closing.Load() {
		return
	}
	t.mu.Lock()
	skip := t.deleting || t.dead || t.conn == nil
	t.mu.Unlock()
	if skip {
		return
	}
	t.m.cfg.Log.Warn("lost the connection to the shim; cleaning up after it", "namespace", t.ns, "container", t.id)
	t.shimGone()
}

// shimGone cleans up after a shim that died: `shim delete` kills and deletes
// the container and unmounts its rootfs; the init process's exit is
// recorded and announced unless it was already. The task stays, stopped,
// until the client deletes it.
func (t *Task) shimGone() {
	t.detach()
	t.mu.Lock()
	t.dead = true
	t.mu.Unlock()
	log := t.m.cfg.Log.With("namespace", t.ns, "container", t.id)
	resp, err := t.cmd.delete(t.bundle)
	if err != nil {
		log.Warn("shim delete", "error", err)
		resp = &taskapi.DeleteResponse{ExitStatus: 128 + 9}
	}
	if _, err := t.m.cfg.Exits.Get(t.ns, t.id, t.id); errdefs.IsNotFound(err) {
		pid := resp.Pid
		if pid == 0 {
			pid = t.pid.Load()
		}
		t.m.announceExit(t.ns, newExit(t, t.id, pid, resp.ExitStatus, resp.ExitedAt))
	}
	removeDeadSocket(t.bundle)
	if err := t.bundle.writeFile(deadFile, time.Now().UTC().Format(time.RFC3339Nano)); err != nil {
		log.Warn("mark shim dead", "error", err)
	}
}

// killStrayShim kills the shim the bundle names in shim.pid if it still
// runs, known by its command line (-namespace NS … -id ID), so that a pid
// reused by another process is left alone.
func (t *Task) killStrayShim() {
	data, err := t.bundle.readFile("shim.pid")
	if err != nil {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(data))
	if err != nil || pid <= 0 {
		return
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return
	}
	args := strings.Split(string(cmdline), "\x00")
	var ns, id string
	for i := 0; i+1 < len(args); i++ {
		switch args[i] {
		case "-namespace":
			ns = args[i+1]
		case "-id":
			id = args[i+1]
		}
	}
	if ns == t.ns && id == t.id {
		t.m.cfg.Log.Warn("killing a shim taskd lost track of", "namespace", t.ns, "container", t.id, "pid", pid)
		_ = unix.Kill(pid, unix.SIGKILL)
	}
}

// abandon undoes a failed Create: the task in the shim, the shim, the
// bundle, the exit records.
func (t *Task) abandon() {
	t.mu.Lock()
	t.deleting = true
	conn := t.conn
	t.mu.Unlock()
	log := t.m.cfg.Log.With("namespace", t.ns, "container", t.id)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if conn != nil {
		call(ctx, t.ns, "delete", conn.task.Delete, &taskapi.DeleteRequest{ID: t.id})
		// Now: the shim goes even if its task could not be deleted (a
		// Create still under way after taskd restarted); `shim delete`
		// below removes what the task left.
		call(ctx, t.ns, "shutdown", conn.task.Shutdown, &taskapi.ShutdownRequest{ID: t.id, Now: true})
		conn.waitExit(3 * time.Second)
		conn.killIfConnected()
		t.detach()
	}
	if t.started {
		if _, err := t.cmd.delete(t.bundle); err != nil {
			log.Debug("shim delete after failed create", "error", err)
		}
	}
	if err := t.bundle.remove(); err != nil {
		log.Error("remove bundle after failed create", "error", err)
	}
	t.m.cfg.Exits.Drop(t.ns, t.id)
}

// reconcile publishes the exits of tracked processes that ended while taskd
// was not listening.
func (t *Task) reconcile(ctx context.Context) {
	ids, err := t.m.cfg.Exits.Pending(t.ns, t.id)
	if err != nil {
		t.m.cfg.Log.Error("reconcile", "namespace", t.ns, "container", t.id, "error", err)
		return
	}
	for _, id := range ids {
		execID := id
		if id == t.id {
			execID = ""
		}
		st, err := t.State(ctx, execID)
		if errdefs.IsNotFound(err) {
			if execID == "" {
				// taskd died while creating the task: finish undoing it.
				t.m.cfg.Log.Warn("shim has no task; removing it", "namespace", t.ns, "container", t.id)
				t.abandon()
				t.m.mu.Lock()
				delete(t.m.tasks, t.key())
				t.m.mu.Unlock()
				return
			}
			t.m.cfg.Exits.Forget(t.ns, t.id, id)
			continue
		}
		if err != nil {
			t.m.cfg.Log.Warn("reconcile: state", "namespace", t.ns, "container", t.id, "process", id, "error", err)
			continue
		}
		if execID == "" {
			t.pid.Store(st.Pid)
		}
		if st.Status == tasktypes.Status_STOPPED {
			t.m.announceExit(t.ns, newExit(t, id, st.Pid, st.ExitStatus, st.ExitedAt))
		}
	}
}

// shim returns the shim's client, or Unavailable when the shim is gone.
func (t *Task) shim() (taskapi.TTRPCTaskService, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.conn == nil {
		return nil, fmt.Errorf("task %q: shim is gone: %w", t.id, errdefs.ErrFailedPrecondition)
	}
	return t.conn.task, nil
}

func (t *Task) isDead() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.dead
}

func (t *Task) processID(execID string) string {
	if execID == "" {
		return t.id
	}
	return execID
}

// State returns the state of the init process (execID "") or of an exec'd
// process. For a task whose shim is gone, the state is stopped with the
// recorded exit.
func (t *Task) State(ctx context.Context, execID string) (*taskapi.StateResponse, error) {
	if t.isDead() {
		e, err := t.m.cfg.Exits.Get(t.ns, t.id, t.processID(execID))
		if err != nil {
			return nil, err
		}
		return &taskapi.StateResponse{ID: t.id, ExecID: execID, Bundle: t.bundle.path, Pid: e.Pid,
			Status: tasktypes.Status_STOPPED, ExitStatus: e.ExitStatus, ExitedAt: e.ExitedAt}, nil
	}
	s, err := t.shim()
	if err != nil {
		return nil, err
	}
	return call(ctx, t.ns, "state", s.State, &taskapi.StateRequest{ID: t.id, ExecID: execID})
}

// Wait blocks until the process exits and returns its exit; when the shim is
// gone it answers from the exit records.
func (t *Task) Wait(ctx context.Context, execID string) (*taskapi.WaitResponse, error) {
	if !t.isDead() {
		s, err := t.shim()
		if err == nil {
			resp, err := call(ctx, t.ns, "wait", s.Wait, &taskapi.WaitRequest{ID: t.id, ExecID: execID})
			if err == nil || !errdefs.IsUnavailable(err) {
				return resp, err
			}
		}
	}
	// The shim went away: its exit, if it was recorded, is the answer.
	for range 50 {
		e, err := t.m.cfg.Exits.Get(t.ns, t.id, t.processID(execID))
		if err == nil {
			return &taskapi.WaitResponse{ExitStatus: e.ExitStatus, ExitedAt: e.ExitedAt}, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil, fmt.Errorf("wait for task %q: shim is gone and no exit was recorded: %w", t.id, errdefs.ErrUnavailable)
}

// Start starts the init process or an exec'd one and returns its pid.
func (t *Task) Start(ctx context.Context, execID string) (uint32, error) {
	s, err := t.shim()
	if err != nil {
		return 0, err
	}
	resp, err := call(ctx, t.ns, "start", s.Start, &taskapi.StartRequest{ID: t.id, ExecID: execID})
	if err != nil {
		return 0, err
	}
	if execID == "" {
		t.pid.Store(resp.Pid)
	}
	return resp.Pid, nil
}

// Pid is the init process's pid as last seen.
func (t *Task) Pid() uint32 { return t.pid.Load() }

// Kill signals the init process, an exec'd one, or with all every process
// of the container.
func (t *Task) Kill(ctx context.Context, execID string, signal uint32, all bool) error {
	s, err := t.shim()
	if err != nil {
		return err
	}
	_, err = call(ctx, t.ns, "kill", s.Kill, &taskapi.KillRequest{ID: t.id, ExecID: execID, Signal: signal, All: all})
	return err
}

// ExecOpts describes a process to add to a running container.
type ExecOpts struct {
	ExecID                string
	Spec                  *anypb.Any // an OCI Process
	Stdin, Stdout, Stderr string
	Terminal              bool
}

// Exec adds a process to the container; Start starts it.
func (t *Task) Exec(ctx context.Context, o ExecOpts) error {
	s, err := t.shim()
	if err != nil {
		return err
	}
	if err := t.m.cfg.Exits.Track(t.ns, t.id, o.ExecID); err != nil {
		return err
	}
	_, err = call(ctx, t.ns, "exec", s.Exec, &taskapi.ExecProcessRequest{ID: t.id, ExecID: o.ExecID, Spec: o.Spec,
		Stdin: o.Stdin, Stdout: o.Stdout, Stderr: o.Stderr, Terminal: o.Terminal})
	if err != nil {
		t.m.cfg.Exits.Forget(t.ns, t.id, o.ExecID)
	}
	return err
}

// DeleteProcess deletes an exec'd process that has exited.
func (t *Task) DeleteProcess(ctx context.Context, execID string) (*taskapi.DeleteResponse, error) {
	s, err := t.shim()
	if err != nil {
		return nil, err
	}
	resp, err := call(ctx, t.ns, "delete process", s.Delete, &taskapi.DeleteRequest{ID: t.id, ExecID: execID})
	if err != nil {
		return nil, err
	}
	t.m.cfg.Exits.Forget(t.ns, t.id, execID)
	return resp, nil
}

// ResizePty resizes a process's terminal.
func (t *Task) ResizePty(ctx context.Context, execID string, width, height uint32) error {
	return t.simple(ctx, "resize pty", func(ctx context.Context, s taskapi.TTRPCTaskService) (*emptypb.Empty, error) {
		return s.ResizePty(ctx, &taskapi.ResizePtyRequest{ID: t.id, ExecID: execID, Width: width, Height: height})
	})
}

// CloseIO closes a process's stdin.
func (t *Task) CloseIO(ctx context.Context, execID string, stdin bool) error {
	return t.simple(ctx, "close io", func(ctx context.Context, s taskapi.TTRPCTaskService) (*emptypb.Empty, error) {
		return s.CloseIO(ctx, &taskapi.CloseIORequest{ID: t.id, ExecID: execID, Stdin: stdin})
	})
}

// Pause freezes every process of the container.
func (t *Task) Pause(ctx context.Context) error {
	return t.simple(ctx, "pause", func(ctx context.Context, s taskapi.TTRPCTaskService) (*emptypb.Empty, error) {
		return s.Pause(ctx, &taskapi.PauseRequest{ID: t.id})
	})
}

// Resume thaws a paused container.
func (t *Task) Resume(ctx context.Context) error {
	return t.simple(ctx, "resume", func(ctx context.Context, s taskapi.TTRPCTaskService) (*emptypb.Empty, error) {
		return s.Resume(ctx, &taskapi.ResumeRequest{ID: t.id})
	})
}

// Update changes the container's resources (an OCI LinuxResources).
func (t *Task) Update(ctx context.Context, resources *anypb.Any, annotations map[string]string) error {
	return t.simple(ctx, "update", func(ctx context.Context, s taskapi.TTRPCTaskService) (*emptypb.Empty, error) {
		return s.Update(ctx, &taskapi.UpdateTaskRequest{ID: t.id, Resources: resources, Annotations: annotations})
	})
}

// Checkpoint checkpoints the container into dir with CRIU.
func (t *Task) Checkpoint(ctx context.Context, dir string, options *anypb.Any) error {
	return t.simple(ctx, "checkpoint", func(ctx context.Context, s taskapi.TTRPCTaskService) (*emptypb.Empty, error) {
		return s.Checkpoint(ctx, &taskapi.CheckpointTaskRequest{ID: t.id, Path: dir, Options: options})
	})
}

// Pids lists the container's processes.
func (t *Task) Pids(ctx context.Context) ([]*tasktypes.ProcessInfo, error) {
	s, err := t.shim()
	if err != nil {
		return nil, err
	}
	resp, err := call(ctx, t.ns, "pids", s.Pids, &taskapi.PidsRequest{ID: t.id})
	if err != nil {
		return nil, err
	}
	return resp.Processes, nil
}

// Stats returns the container's cgroup statistics as the shim encodes them
// (containerd's cgroups v1 or v2 Metrics).
func (t *Task) Stats(ctx context.Context) (*anypb.Any, error) {
	s, err := t.shim()
	if err != nil {
		return nil, err
	}
	resp, err := call(ctx, t.ns, "stats", s.Stats, &taskapi.StatsRequest{ID: t.id})
	if err != nil {
		return nil, err
	}
	return resp.Stats, nil
}

// simple runs a shim call that answers nothing.
func (t *Task) simple(ctx context.Context, what string, fn func(context.Context, taskapi.TTRPCTaskService) (*emptypb.Empty, error)) error {
	s, err := t.shim()
	if err != nil {
		return err
	}
	_, err = call(ctx, t.ns, what, func(ctx context.Context, _ struct{}) (*emptypb.Empty, error) { return fn(ctx, s) }, struct{}{})
	return err
}

// delete deletes the task: in the shim, then the shim, the bundle and the
// exit records.
func (t *Task) delete(ctx context.Context) (*taskapi.DeleteResponse, error) {
	t.mu.Lock()
	if t.deleting {
		t.mu.Unlock()
		return nil, fmt.Errorf("task %q is being deleted: %w", t.id, errdefs.ErrFailedPrecondition)
	}
	t.deleting = true
	dead := t.dead
	conn := t.conn
	t.mu.Unlock()

	var resp *taskapi.DeleteResponse
	if dead || conn == nil {
		// A shim that came up after taskd gave up on it (taskd died while
		// `shim start` ran) serves nothing taskd knows: it goes too.
		t.killStrayShim()
		resp = &taskapi.DeleteResponse{}
		if e, err := t.m.cfg.Exits.Get(t.ns, t.id, t.id); err == nil {
			resp = &taskapi.DeleteResponse{Pid: e.Pid, ExitStatus: e.ExitStatus, ExitedAt: e.ExitedAt}
		}
		// The shim cannot say so: taskd announces the deletion.
		t.m.publish(t.ns, TopicDelete, &eventsapi.TaskDelete{ContainerID: t.id, ID: t.id,
			Pid: resp.Pid, ExitStatus: resp.ExitStatus, ExitedAt: resp.ExitedAt})
	} else {
		undo := func(err error) (*taskapi.DeleteResponse, error) {
			t.mu.Lock()
			t.deleting = false
			t.mu.Unlock()
			return nil, err
		}
		st, err := call(ctx, t.ns, "state", conn.task.State, &taskapi.StateRequest{ID: t.id})
		if err != nil {
			return undo(err)
		}
		switch st.Status {
		case tasktypes.Status_RUNNING, tasktypes.Status_PAUSED, tasktypes.Status_PAUSING:
			return undo(fmt.Errorf("task %q is %s; kill it before deleting it: %w", t.id, st.Status, errdefs.ErrFailedPrecondition))
		}
		resp, err = call(ctx, t.ns, "delete", conn.task.Delete, &taskapi.DeleteRequest{ID: t.id})
		if err != nil {
			return undo(err)
		}
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		call(sctx, t.ns, "shutdown", conn.task.Shutdown, &taskapi.ShutdownRequest{ID: t.id})
		cancel()
		conn.waitExit(3 * time.Second)
		t.detach()
	}
	if err := t.bundle.remove(); err != nil {
		t.m.cfg.Log.Error("remove bundle", "namespace", t.ns, "container", t.id, "error", err)
	}
	if err := t.m.cfg.Exits.Drop(t.ns, t.id); err != nil {
		t.m.cfg.Log.Error("drop exit records", "namespace", t.ns, "container", t.id, "error", err)
	}
	return resp, nil
}

// CRIUUsable returns nil when CRIU, which checkpoints need, is installed and
// `criu check` passes on this kernel; otherwise a FailedPrecondition error
// saying which. (Debian installs criu with runc, yet on many kernels it
// cannot work, so being on PATH is not enough.)
func CRIUUsable(ctx context.Context) error {
	path, err := exec.LookPath("criu")
	if err != nil {
		return fmt.Errorf("CRIU is not installed: %w", errdefs.ErrFailedPrecondition)
	}
	out, err := exec.CommandContext(ctx, path, "check").CombinedOutput()
	if err != nil {
		return fmt.Errorf("CRIU cannot checkpoint on this machine (criu check: %s): %w",
			strings.TrimSpace(lastLine(string(out))), errdefs.ErrFailedPrecondition)
	}
	return nil
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}
