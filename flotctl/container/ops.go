package container

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"time"

	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	tasktypes "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/flotilla/flotilla/flotctl/client"
	"github.com/flotilla/flotilla/flotctl/oci"
	"github.com/flotilla/flotilla/flotctl/stdio"
)

// Summary is one container as `flotctl ps` shows it.
type Summary struct {
	ID          string            `json:"id"`
	Image       string            `json:"image"`
	Command     []string          `json:"command"`
	Created     time.Time         `json:"created"`
	Status      string            `json:"status"`
	Pid         uint32            `json:"pid,omitempty"`
	ExitStatus  *uint32           `json:"exit_status,omitempty"`
	Snapshotter string            `json:"snapshotter"`
	Labels      map[string]string `json:"labels,omitempty"`
}

// List returns the namespace's containers (matching containerd filters,
// when given) with their tasks' status: created (no task), running,
// stopped, paused…
func List(ctx context.Context, c *client.Client, filters ...string) ([]Summary, error) {
	ctx = c.WithNamespace(ctx)
	cs, err := c.Containers.List(ctx, &containersapi.ListContainersRequest{Filters: filters})
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	ts, err := c.Tasks.List(ctx, &tasksapi.ListTasksRequest{})
	if err != nil {
		return nil, fmt.Errorf("list tasks: %w", err)
	}
	tasks := map[string]*tasktypes.Process{}
	for _, t := range ts.Tasks {
		tasks[t.ID] = t
	}
	out := make([]Summary, 0, len(cs.Containers))
	for _, ct := range cs.Containers {
		s := Summary{ID: ct.ID, Image: ct.Image, Created: ct.CreatedAt.AsTime(), Status: "created", Snapshotter: ct.Snapshotter, Labels: ct.Labels}
		var spec specs.Spec
		if ct.Spec != nil && json.Unmarshal(ct.Spec.Value, &spec) == nil && spec.Process != nil {
			s.Command = spec.Process.Args
		}
		if t, ok := tasks[ct.ID]; ok {
			s.Status = statusName(t.Status)
			s.Pid = t.Pid
			if t.Status == tasktypes.Status_STOPPED {
				code := t.ExitStatus
				s.ExitStatus = &code
				s.Pid = 0
			}
		}
		out = append(out, s)
	}
	return out, nil
}

func statusName(s tasktypes.Status) string {
	switch s {
	case tasktypes.Status_CREATED:
		return "created"
	case tasktypes.Status_RUNNING:
		return "running"
	case tasktypes.Status_STOPPED:
		return "stopped"
	case tasktypes.Status_PAUSED:
		return "paused"
	case tasktypes.Status_PAUSING:
		return "pausing"
	}
	return "unknown"
}

// Kill sends sig to container id's task (every process in it with all).
func Kill(ctx context.Context, c *client.Client, id string, sig unix.Signal, all bool) error {
	_, err := c.Tasks.Kill(c.WithNamespace(ctx), &tasksapi.KillRequest{ContainerID: id, Signal: uint32(sig), All: all})
	if errdefs.IsNotFound(err) {
		return fmt.Errorf("container %s has no running task (flotctl ps): %w", id, err)
	}
	return err
}

// Remove deletes container id, its task (refused while it runs unless
// force: then it is killed first), its snapshot and its log file.
func Remove(ctx context.Context, c *client.Client, id string, force bool) error {
	return remove(c.WithNamespace(ctx), c, id, force)
}

func remove(ctx context.Context, c *client.Client, id string, force bool) error {
	ct, err := c.Containers.Get(ctx, &containersapi.GetContainerRequest{ID: id})
	if err != nil {
		if errdefs.IsNotFound(err) {
			return fmt.Errorf("no container %s (flotctl ps): %w", id, err)
		}
		return err
	}
	t, err := c.Tasks.Get(ctx, &tasksapi.GetRequest{ContainerID: id})
	switch {
	case errdefs.IsNotFound(err):
	case err != nil:
		return fmt.Errorf("task of %s: %w", id, err)
	default:
		if t.Process.Status != tasktypes.Status_STOPPED && t.Process.Status != tasktypes.Status_CREATED {
			if !force {
				return fmt.Errorf("container %s is %s: stop it first (flotctl kill %s) or remove it with -f: %w", id, statusName(t.Process.Status), id, errdefs.ErrFailedPrecondition)
			}
			wctx, cancel := context.WithCancel(ctx)
			waited := make(chan error, 1)
			go func() {
				_, err := c.Tasks.Wait(wctx, &tasksapi.WaitRequest{ContainerID: id})
				waited <- err
			}()
			if _, err := c.Tasks.Kill(ctx, &tasksapi.KillRequest{ContainerID: id, Signal: uint32(unix.SIGKILL), All: true}); err != nil && !errdefs.IsNotFound(err) {
				cancel()
				return fmt.Errorf("kill %s: %w", id, err)
			}
			err := <-waited
			cancel()
			if err != nil && !errdefs.IsNotFound(err) {
				return fmt.Errorf("wait for %s: %w", id, err)
			}
		}
		if _, err := c.Tasks.Delete(ctx, &tasksapi.DeleteTaskRequest{ContainerID: id}); err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("delete task of %s: %w", id, err)
		}
	}
	if ct.Container.SnapshotKey != "" {
		_, err := c.Snapshots.Remove(ctx, &snapshotsapi.RemoveSnapshotRequest{Snapshotter: ct.Container.Snapshotter, Key: ct.Container.SnapshotKey})
		if err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("remove snapshot of %s: %w", id, err)
		}
	}
	if _, err := c.Containers.Delete(ctx, &containersapi.DeleteContainerRequest{ID: id}); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("delete container %s: %w", id, err)
	}
	if p, ok := logPath(ct.Container.Labels); ok {
		os.Remove(p)
	}
	return nil
}

// logPath is the file of a file:// log URI label.
func logPath(labels map[string]string) (string, bool) {
	u, err := url.Parse(labels[LabelLogURI])
	if err != nil || u.Scheme != "file" || u.Path == "" {
		return "", false
	}
	return u.Path, true
}

// Logs copies container id's log to w: what its task wrote since it was
// started with `run -d`. With follow it keeps copying until the task exits
// or ctx ends.
func Logs(ctx context.Context, c *client.Client, id string, w io.Writer, follow bool) error {
	ctx = c.WithNamespace(ctx)
	ct, err := c.Containers.Get(ctx, &containersapi.GetContainerRequest{ID: id})
	if err != nil {
		if errdefs.IsNotFound(err) {
			return fmt.Errorf("no container %s (flotctl ps): %w", id, err)
		}
		return err
	}
	p, ok := logPath(ct.Container.Labels)
	if !ok {
		return fmt.Errorf("container %s keeps no log: only containers started with flotctl run -d do: %w", id, errdefs.ErrNotFound)
	}
	f, err := os.Open(p)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			// The shim creates the file when the task starts.
			if !follow {
				return nil
			}
		} else {
			return fmt.Errorf("open log of %s: %w", id, err)
		}
	}
	if !follow {
		defer f.Close()
		_, err := io.Copy(w, f)
		return err
	}
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		c.Tasks.Wait(ctx, &tasksapi.WaitRequest{ContainerID: id})
	}()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		if f == nil {
			if f, err = os.Open(p); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("open log of %s: %w", id, err)
			}
		}
		if f != nil {
			if _, err := io.Copy(w, f); err != nil {
				return err
			}
			if bw, ok := w.(*bufio.Writer); ok {
				bw.Flush()
			}
		}
		select {
		case <-exited:
			// Copy what was written between the last read and the exit.
			if f != nil {
				io.Copy(w, f)
				f.Close()
			}
			return ctx.Err()
		case <-ctx.Done():
			if f != nil {
				f.Close()
			}
			return nil
		case <-tick.C:
		}
	}
}

// ExecOptions are what `flotctl exec` takes.
type ExecOptions struct {
	Args    []string
	Env     []string
	TTY     bool
	Streams stdio.Streams
	FIFODir string
	Console Console
	// Resize, when TTY, is called with the exec process's resize function
	// once it runs, so the caller can follow terminal size changes.
	Resize func(resize func(width, height uint16))
}

// Exec runs args in container id's running task, attached to o.Streams,
// and returns its exit status.
func Exec(ctx context.Context, c *client.Client, id string, o ExecOptions) (uint32, error) {
	ctx = c.WithNamespace(ctx)
	ct, err := c.Containers.Get(ctx, &containersapi.GetContainerRequest{ID: id})
	if err != nil {
		if errdefs.IsNotFound(err) {
			return 0, fmt.Errorf("no container %s (flotctl ps): %w", id, err)
		}
		return 0, err
	}
	var spec specs.Spec
	if ct.Container.Spec == nil || json.Unmarshal(ct.Container.Spec.Value, &spec) != nil || spec.Process == nil {
		return 0, fmt.Errorf("container %s has no readable runtime spec: %w", id, errdefs.ErrFailedPrecondition)
	}
	proc := *spec.Process
	proc.Args = o.Args
	proc.Terminal = o.TTY
	proc.ConsoleSize = nil
	proc.Env = oci.MergeEnv(proc.Env, o.Env)
	if o.TTY {
		proc.Env = oci.MergeEnv(proc.Env, []string{"TERM=xterm"})
		if o.Console != nil {
			if sz, err := o.Console.Size(); err == nil && sz.Width > 0 && sz.Height > 0 {
				proc.ConsoleSize = &specs.Box{Width: uint(sz.Width), Height: uint(sz.Height)}
			}
		}
	}
	b, err := json.Marshal(&proc)
	if err != nil {
		return 0, err
	}
	execID := "exec-" + NewID()
	a, err := stdio.NewFIFOs(ctx, o.FIFODir, execID, stdio.Streams{Stdin: o.Streams.Stdin, Stdout: o.Streams.Stdout, Stderr: o.Streams.Stderr, Terminal: o.TTY}, func() {
		cctx, cancel := cleanupContext(ctx)
		defer cancel()
		c.Tasks.CloseIO(cctx, &tasksapi.CloseIORequest{ContainerID: id, ExecID: execID, Stdin: true})
	})
	if err != nil {
		return 0, err
	}
	defer a.Close()
	cfg := a.Config()
	_, err = c.Tasks.Exec(ctx, &tasksapi.ExecProcessRequest{
		ContainerID: id, ExecID: execID,
		Stdin: cfg.Stdin, Stdout: cfg.Stdout, Stderr: cfg.Stderr, Terminal: o.TTY,
		Spec: &anypb.Any{TypeUrl: processTypeURL, Value: b},
	})
	if err != nil {
		if errdefs.IsNotFound(err) {
			return 0, fmt.Errorf("container %s has no running task: %w", id, err)
		}
		return 0, fmt.Errorf("exec in %s: %w", id, err)
	}
	defer func() {
		cctx, cancel := cleanupContext(ctx)
		defer cancel()
		c.Tasks.DeleteProcess(cctx, &tasksapi.DeleteProcessRequest{ContainerID: id, ExecID: execID})
	}()
	type result struct {
		code uint32
		err  error
	}
	exit := make(chan result, 1)
	go func() {
		resp, err := c.Tasks.Wait(ctx, &tasksapi.WaitRequest{ContainerID: id, ExecID: execID})
		exit <- result{resp.GetExitStatus(), err}
	}()
	if _, err := c.Tasks.Start(ctx, &tasksapi.StartRequest{ContainerID: id, ExecID: execID}); err != nil {
		return 0, fmt.Errorf("start exec in %s: %w", id, err)
	}
	// An exec's stdin exists once it has started: only then may the end of
	// a short stdin be passed on (CloseIO), as containerd's clients do.
	a.Created()
	if o.TTY && o.Resize != nil {
		o.Resize(func(w, h uint16) {
			c.Tasks.ResizePty(ctx, &tasksapi.ResizePtyRequest{ContainerID: id, ExecID: execID, Width: uint32(w), Height: uint32(h)})
		})
	}
	res := <-exit
	if res.err != nil {
		return 0, fmt.Errorf("wait for exec in %s: %w", id, res.err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	a.Wait(wctx)
	cancel()
	return res.code, nil
}

// processTypeURL is the type URL containerd gives a process spec in an Any.
const processTypeURL = "types.containerd.io/opencontainers/runtime-spec/1/Process"
