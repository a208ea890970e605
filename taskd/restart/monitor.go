package restart

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strconv"
	"sync"
	"time"

	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	"github.com/containerd/containerd/api/types"
	tasktypes "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/flotilla/flotilla/services/namespace"
)

// DefaultInterval is how often the monitor looks, as in containerd.
const DefaultInterval = 10 * time.Second

// newContainerGrace is how long a new container without a task is left to
// the client that created it: a client creates the container first, with
// its labels, then its task, and the monitor must not race it.
const newContainerGrace = 10 * time.Second

// Containers is the part of containerd's containers service the monitor
// uses; taskd's containers.Service is one.
type Containers interface {
	List(context.Context, *containersapi.ListContainersRequest) (*containersapi.ListContainersResponse, error)
	Update(context.Context, *containersapi.UpdateContainerRequest) (*containersapi.UpdateContainerResponse, error)
}

// Tasks is the part of containerd's tasks service the monitor uses;
// taskd's tasks.Service is one.
type Tasks interface {
	Get(context.Context, *tasksapi.GetRequest) (*tasksapi.GetResponse, error)
	Create(context.Context, *tasksapi.CreateTaskRequest) (*tasksapi.CreateTaskResponse, error)
	Start(context.Context, *tasksapi.StartRequest) (*tasksapi.StartResponse, error)
	Kill(context.Context, *tasksapi.KillRequest) (*emptypb.Empty, error)
	Wait(context.Context, *tasksapi.WaitRequest) (*tasksapi.WaitResponse, error)
	Delete(context.Context, *tasksapi.DeleteTaskRequest) (*tasksapi.DeleteResponse, error)
}

// Config is what a Monitor needs.
type Config struct {
	// Namespaces lists the namespaces that hold containers.
	Namespaces func(context.Context) ([]string, error)
	Containers Containers
	Tasks      Tasks
	// Mounts returns the mounts of a container's snapshot (snapshotter,
	// key), its root filesystem.
	Mounts func(ctx context.Context, snapshotter, key string) ([]*types.Mount, error)
	// Interval between two looks; DefaultInterval when 0.
	Interval time.Duration
	Log      *slog.Logger
}

// Monitor brings the containers' tasks to the status of their labels.
type Monitor struct {
	cfg Config
}

// New returns a Monitor; Run runs it.
func New(cfg Config) *Monitor {
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	return &Monitor{cfg: cfg}
}

// Run reconciles every interval until ctx is done. As in containerd, the
// interval is also the least time between two restarts of a container that
// keeps failing.
func (m *Monitor) Run(ctx context.Context) {
	m.resetAlwaysExplicitlyStopped(ctx)
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := m.Reconcile(ctx); err != nil && ctx.Err() == nil {
			m.cfg.Log.Error("restart monitor", "error", err)
		}
		t.Reset(m.cfg.Interval)
	}
}

// resetAlwaysExplicitlyStopped clears, once as the monitor starts, the
// explicitly-stopped label of every container whose policy is "always", as
// containerd's monitor does: such a container stopped by hand stays down
// until the daemon restarts, then comes back.
func (m *Monitor) resetAlwaysExplicitlyStopped(ctx context.Context) {
	nss, err := m.cfg.Namespaces(ctx)
	if err != nil {
		m.cfg.Log.Error("restart monitor: list namespaces", "error", err)
		return
	}
	for _, ns := range nss {
		ctx := namespace.WithNamespace(ctx, ns)
		resp, err := m.cfg.Containers.List(ctx, &containersapi.ListContainersRequest{Filters: []string{fmt.Sprintf("labels.%q", StatusLabel)}})
		if err != nil {
			m.cfg.Log.Error("restart monitor: list containers", "namespace", ns, "error", err)
			continue
		}
		for _, c := range resp.GetContainers() {
			labels := c.GetLabels()
			p, err := ParsePolicy(labels[PolicyLabel])
			if stopped, _ := strconv.ParseBool(labels[ExplicitlyStoppedLabel]); err != nil || p.Name != "always" || !stopped {
				continue
			}
			_, err = m.cfg.Containers.Update(ctx, &containersapi.UpdateContainerRequest{
				Container:  &containersapi.Container{ID: c.GetID(), Labels: map[string]string{ExplicitlyStoppedLabel: "false"}},
				UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"labels." + ExplicitlyStoppedLabel}},
			})
			if err != nil {
				m.cfg.Log.Error("restart monitor: reset the explicitly-stopped label", "namespace", ns, "container", c.GetID(), "error", err)
			}
		}
	}
}

// Reconcile looks at every labelled container once and applies what has
// to change, the namespaces and the containers in parallel. Errors of one
// container are logged and do not stop the others.
func (m *Monitor) Reconcile(ctx context.Context) error {
	nss, err := m.cfg.Namespaces(ctx)
	if err != nil {
		return fmt.Errorf("list namespaces: %w", err)
	}
	var wg sync.WaitGroup
	for _, ns := range nss {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m.reconcileNamespace(namespace.WithNamespace(ctx, ns), ns)
		}()
	}
	wg.Wait()
	return nil
}

func (m *Monitor) reconcileNamespace(ctx context.Context, ns string) {
	resp, err := m.cfg.Containers.List(ctx, &containersapi.ListContainersRequest{Filters: []string{fmt.Sprintf("labels.%q", StatusLabel)}})
	if err != nil {
		m.cfg.Log.Error("restart monitor: list containers", "namespace", ns, "error", err)
		return
	}
	var wg sync.WaitGroup
	for _, c := range resp.GetContainers() {
		change := m.decide(ctx, c)
		if change == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := change(ctx); err != nil && ctx.Err() == nil {
				m.cfg.Log.Error("restart monitor", "namespace", ns, "container", c.GetID(), "error", err)
			}
		}()
	}
	wg.Wait()
}

// decide returns what to do with container c, or nil.
func (m *Monitor) decide(ctx context.Context, c *containersapi.Container) func(context.Context) error {
	labels := c.GetLabels()
	desired := labels[StatusLabel]
	var st tasktypes.Status // UNKNOWN without a task
	var exitStatus uint32
	got, err := m.cfg.Tasks.Get(ctx, &tasksapi.GetRequest{ContainerID: c.GetID()})
	if err == nil {
		st, exitStatus = got.GetProcess().GetStatus(), got.GetProcess().GetExitStatus()
	} else if !errdefs.IsNotFound(err) {
		m.cfg.Log.Warn("restart monitor: task status", "container", c.GetID(), "error", err)
	}
	switch desired {
	case Running:
		if err != nil && time.Since(c.GetCreatedAt().AsTime()) < newContainerGrace {
			return nil // its creator is about to create its task
		}
		switch st {
		case tasktypes.Status_RUNNING, tasktypes.Status_PAUSED, tasktypes.Status_PAUSING, tasktypes.Status_CREATED:
			return nil // running, or on its way, or paused on purpose
		}
		restart, err := ShouldRestart(labels, exitStatus)
		if err != nil {
			m.cfg.Log.Warn("restart monitor: policy", "container", c.GetID(), "error", err)
			return nil
		}
		if !restart {
			return nil
		}
		count, _ := strconv.Atoi(labels[CountLabel])
		return func(ctx context.Context) error { return m.start(ctx, c, count+1) }
	case Stopped:
		if err != nil || st == tasktypes.Status_STOPPED {
			return nil
		}
		return func(ctx context.Context) error { return m.stop(ctx, c.GetID()) }
	}
	return nil
}

// start replaces the container's stopped task (if any) by a new one and
// starts it, counting the restart in CountLabel.
func (m *Monitor) start(ctx context.Context, c *containersapi.Container, count int) error {
	id := c.GetID()
	logURI, err := logURI(c.GetLabels())
	if err != nil {
		return err
	}
	if got, err := m.cfg.Tasks.Get(ctx, &tasksapi.GetRequest{ContainerID: id}); err == nil {
		if st := got.GetProcess().GetStatus(); st != tasktypes.Status_STOPPED && st != tasktypes.Status_UNKNOWN {
			return nil // someone started it meanwhile
		}
		if _, err := m.cfg.Tasks.Delete(ctx, &tasksapi.DeleteTaskRequest{ContainerID: id}); err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("delete the stopped task: %w", err)
		}
	}
	if _, err := m.cfg.Containers.Update(ctx, &containersapi.UpdateContainerRequest{
		Container:  &containersapi.Container{ID: id, Labels: map[string]string{CountLabel: strconv.Itoa(count)}},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"labels." + CountLabel}},
	}); err != nil {
		return fmt.Errorf("count the restart: %w", err)
	}
	req := &tasksapi.CreateTaskRequest{ContainerID: id, Stdout: logURI, Stderr: logURI}
	if key := c.GetSnapshotKey(); key != "" {
		mounts, err := m.cfg.Mounts(ctx, c.GetSnapshotter(), key)
		if err != nil {
			return fmt.Errorf("root filesystem: %w", err)
		}
		req.Rootfs = mounts
	}
	if _, err := m.cfg.Tasks.Create(ctx, req); err != nil {
		if errdefs.IsAlreadyExists(err) {
			return nil // a client created it meanwhile
		}
		return fmt.Errorf("create task: %w", err)
	}
	if _, err := m.cfg.Tasks.Start(ctx, &tasksapi.StartRequest{ContainerID: id}); err != nil {
		_, derr := m.cfg.Tasks.Delete(context.WithoutCancel(ctx), &tasksapi.DeleteTaskRequest{ContainerID: id})
		return errors.Join(fmt.Errorf("start task: %w", err), derr)
	}
	m.cfg.Log.Info("restart monitor: restarted", "container", id, "count", count)
	return nil
}

// stop kills every process of the container's task and deletes it.
func (m *Monitor) stop(ctx context.Context, id string) error {
	waited := make(chan error, 1)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		_, err := m.cfg.Tasks.Wait(wctx, &tasksapi.WaitRequest{ContainerID: id})
		waited <- err
	}()
	if _, err := m.cfg.Tasks.Kill(ctx, &tasksapi.KillRequest{ContainerID: id, Signal: uint32(unix.SIGKILL), All: true}); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("kill task: %w", err)
	}
	if err := <-waited; err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("wait for the task: %w", err)
	}
	if _, err := m.cfg.Tasks.Delete(ctx, &tasksapi.DeleteTaskRequest{ContainerID: id}); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("delete task: %w", err)
	}
	return nil
}

// logURI is where a restarted task's output goes: LogURILabel, or a file
// for LogPathLabel, or nowhere.
func logURI(labels map[string]string) (string, error) {
	if v := labels[LogURILabel]; v != "" {
		if _, err := url.Parse(v); err != nil {
			return "", fmt.Errorf("label %s=%q: %v: %w", LogURILabel, v, err, errdefs.ErrInvalidArgument)
		}
		return v, nil
	}
	if p := labels[LogPathLabel]; p != "" {
		return (&url.URL{Scheme: "file", Path: p}).String(), nil
	}
	return "", nil
}
