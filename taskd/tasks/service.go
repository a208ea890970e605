// Package tasks serves containerd's Tasks API: each call finds the
// container's task in the runtime manager and asks its shim.
package tasks

import (
	"context"
	"fmt"
	"github.com/flotilla/flotilla/services/logging"
	"log/slog"
	"os"
	"path/filepath"

	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	api "github.com/containerd/containerd/api/services/tasks/v1"
	"github.com/containerd/containerd/api/types"
	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	tasktypes "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/flotilla/flotilla/services/filters"
	"github.com/flotilla/flotilla/taskd/checkpoint"
	"github.com/flotilla/flotilla/taskd/runtime"
)

// Containers finds container records.
type Containers interface {
	// Get returns container id in the namespace carried by ctx, or NotFound.
	Get(ctx context.Context, id string) (*containersapi.Container, error)
}

// Service serves containerd's Tasks API over a runtime manager.
type Service struct {
	api.UnimplementedTasksServer
	containers Containers
	runtime    *runtime.Manager
	content    checkpoint.Ingester
	log        *slog.Logger

	// checkpointer finds the task Checkpoint dumps and criuUsable says
	// whether CRIU can dump it: runtime.Manager.Get and runtime.CRIUUsable,
	// replaced in this package's tests.
	checkpointer func(ctx context.Context, id string) (checkpointer, error)
	criuUsable   func(ctx context.Context) error
}

// checkpointer is the part of a runtime.Task that Checkpoint uses.
type checkpointer interface {
	// Checkpoint dumps the task's container with CRIU into dir.
	Checkpoint(ctx context.Context, dir string, options *anypb.Any) error
}

// NewService returns the Tasks service creating tasks for the containers
// found in containers, through runtime. Checkpoints are stored through
// content (contentd); with a nil content, Checkpoint can only write to an
// image path the client gives.
func NewService(containers Containers, rt *runtime.Manager, content checkpoint.Ingester, log *slog.Logger) *Service {
	if log == nil {
		log = slog.Default()
	}
	s := &Service{containers: containers, runtime: rt, content: content, log: log, criuUsable: runtime.CRIUUsable}
	s.checkpointer = func(ctx context.Context, id string) (checkpointer, error) { return s.runtime.Get(ctx, id) }
	return s
}

// Create implements api.TasksServer.
func (s *Service) Create(ctx context.Context, req *api.CreateTaskRequest) (*api.CreateTaskResponse, error) {
	if req.GetContainerID() == "" {
		return nil, fmt.Errorf("container id is required: %w", errdefs.ErrInvalidArgument)
	}
	if req.GetCheckpoint() != nil {
		return nil, fmt.Errorf("create task %q from a checkpoint: %w", req.ContainerID, errdefs.ErrNotImplemented)
	}
	c, err := s.containers.Get(ctx, req.ContainerID)
	if err != nil {
		return nil, err
	}
	if c.GetSpec() == nil {
		return nil, fmt.Errorf("container %q has no spec: %w", c.ID, errdefs.ErrInvalidArgument)
	}
	t, err := s.runtime.Create(ctx, runtime.CreateOpts{
		ID:             c.ID,
		Runtime:        c.GetRuntime().GetName(),
		RuntimePath:    req.GetRuntimePath(),
		RuntimeOptions: c.GetRuntime().GetOptions(),
		TaskOptions:    req.GetOptions(),
		Spec:           c.Spec.GetValue(),
		Rootfs:         req.GetRootfs(),
		Stdin:          req.GetStdin(),
		Stdout:         req.GetStdout(),
		Stderr:         req.GetStderr(),
		Terminal:       req.GetTerminal(),
	})
	if err != nil {
		return nil, err
	}
	return &api.CreateTaskResponse{ContainerID: c.ID, Pid: t.Pid()}, nil
}

// Start implements api.TasksServer.
func (s *Service) Start(ctx context.Context, req *api.StartRequest) (*api.StartResponse, error) {
	t, err := s.runtime.Get(ctx, req.GetContainerID())
	if err != nil {
		return nil, err
	}
	pid, err := t.Start(ctx, req.GetExecID())
	if err != nil {
		return nil, err
	}
	return &api.StartResponse{Pid: pid}, nil
}

// Delete implements api.TasksServer.
func (s *Service) Delete(ctx context.Context, req *api.DeleteTaskRequest) (*api.DeleteResponse, error) {
	resp, err := s.runtime.Delete(ctx, req.GetContainerID())
	if err != nil {
		return nil, err
	}
	return &api.DeleteResponse{ID: req.ContainerID, Pid: resp.Pid, ExitStatus: resp.ExitStatus, ExitedAt: resp.ExitedAt}, nil
}

// DeleteProcess implements api.TasksServer.
func (s *Service) DeleteProcess(ctx context.Context, req *api.DeleteProcessRequest) (*api.DeleteResponse, error) {
	if req.GetExecID() == "" {
		return nil, fmt.Errorf("exec id is required (delete the task to delete its init process): %w", errdefs.ErrInvalidArgument)
	}
	t, err := s.runtime.Get(ctx, req.GetContainerID())
	if err != nil {
		return nil, err
	}
	resp, err := t.DeleteProcess(ctx, req.ExecID)
	if err != nil {
		return nil, err
	}
	return &api.DeleteResponse{ID: req.ExecID, Pid: resp.Pid, ExitStatus: resp.ExitStatus, ExitedAt: resp.ExitedAt}, nil
}

// Get implements api.TasksServer.
func (s *Service) Get(ctx context.Context, req *api.GetRequest) (*api.GetResponse, error) {
	t, err := s.runtime.Get(ctx, req.GetContainerID())
	if err != nil {
		return nil, err
	}
	p, err := process(ctx, t, req.GetExecID())
	if err != nil {
		return nil, err
	}
	return &api.GetResponse{Process: p}, nil
}

// List implements api.TasksServer. Like containerd, it ignores the filter.
func (s *Service) List(ctx context.Context, _ *api.ListTasksRequest) (*api.ListTasksResponse, error) {
	list, err := s.runtime.List(ctx)
	if err != nil {
		return nil, err
	}
	resp := &api.ListTasksResponse{}
	for _, t := range list {
		p, err := process(ctx, t, "")
		if err != nil {
			if !errdefs.IsNotFound(err) {
				logging.Or(ctx, s.log).Warn("list tasks: state", "container", t.ID(), "error", err)
			}
			continue
		}
		resp.Tasks = append(resp.Tasks, p)
	}
	return resp, nil
}

func process(ctx context.Context, t *runtime.Task, execID string) (*tasktypes.Process, error) {
	st, err := t.State(ctx, execID)
	if err != nil {
		return nil, err
	}
	id := execID
	if id == "" {
		id = t.ID()
	}
	return &tasktypes.Process{
		ContainerID: t.ID(), ID: id, Pid: st.Pid, Status: st.Status,
		Stdin: st.Stdin, Stdout: st.Stdout, Stderr: st.Stderr, Terminal: st.Terminal,
		ExitStatus: st.ExitStatus, ExitedAt: st.ExitedAt,
	}, nil
}

// Kill implements api.TasksServer.
func (s *Service) Kill(ctx context.Context, req *api.KillRequest) (*emptypb.Empty, error) {
	t, err := s.runtime.Get(ctx, req.GetContainerID())
	if err != nil {
		return nil, err
	}
	if err := t.Kill(ctx, req.GetExecID(), req.GetSignal(), req.GetAll()); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

// Exec implements api.TasksServer.
func (s *Service) Exec(ctx context.Context, req *api.ExecProcessRequest) (*emptypb.Empty, error) {
	if req.GetExecID() == "" {
		return nil, fmt.Errorf("exec id is required: %w", errdefs.ErrInvalidArgument)
	}
	if req.GetSpec() == nil {
		return nil, fmt.Errorf("exec %q: process spec is required: %w", req.ExecID, errdefs.ErrInvalidArgument)
	}
	t, err := s.runtime.Get(ctx, req.GetContainerID())
	if err != nil {
		return nil, err
	}
	if err := t.Exec(ctx, runtime.ExecOpts{ExecID: req.ExecID, Spec: req.Spec,
		Stdin: req.Stdin, Stdout: req.Stdout, Stderr: req.Stderr, Terminal: req.Terminal}); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

// ResizePty implements api.TasksServer.
func (s *Service) ResizePty(ctx context.Context, req *api.ResizePtyRequest) (*emptypb.Empty, error) {
	t, err := s.runtime.Get(ctx, req.GetContainerID())
	if err != nil {
		return nil, err
	}
	if err := t.ResizePty(ctx, req.GetExecID(), req.GetWidth(), req.GetHeight()); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

// CloseIO implements api.TasksServer.
func (s *Service) CloseIO(ctx context.Context, req *api.CloseIORequest) (*emptypb.Empty, error) {
	t, err := s.runtime.Get(ctx, req.GetContainerID())
	if err != nil {
		return nil, err
	}
	if err := t.CloseIO(ctx, req.GetExecID(), req.GetStdin()); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

// Pause implements api.TasksServer.
func (s *Service) Pause(ctx context.Context, req *api.PauseTaskRequest) (*emptypb.Empty, error) {
	t, err := s.runtime.Get(ctx, req.GetContainerID())
	if err != nil {
		return nil, err
	}
	if err := t.Pause(ctx); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

// Resume implements api.TasksServer.
func (s *Service) Resume(ctx context.Context, req *api.ResumeTaskRequest) (*emptypb.Empty, error) {
	t, err := s.runtime.Get(ctx, req.GetContainerID())
	if err != nil {
		return nil, err
	}
	if err := t.Resume(ctx); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

// ListPids implements api.TasksServer.
func (s *Service) ListPids(ctx context.Context, req *api.ListPidsRequest) (*api.ListPidsResponse, error) {
	t, err := s.runtime.Get(ctx, req.GetContainerID())
	if err != nil {
		return nil, err
	}
	procs, err := t.Pids(ctx)
	if err != nil {
		return nil, err
	}
	return &api.ListPidsResponse{Processes: procs}, nil
}

// Checkpoint implements api.TasksServer as containerd does. It needs a
// working CRIU (FailedPrecondition otherwise). The shim dumps the container
// into a temporary directory, which is stored in contentd as an
// uncompressed tar, next to the container's spec; the answer holds the two
// descriptors. The blobs are written in the caller's namespace and under
// its lease, so the client can reference them before the lease ends. When
// the runc options name an image path, the dump stays there and nothing is
// stored, as with containerd.
func (s *Service) Checkpoint(ctx context.Context, req *api.CheckpointTaskRequest) (*api.CheckpointTaskResponse, error) {
	id := req.GetContainerID()
	c, err := s.containers.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	t, err := s.checkpointer(ctx, id)
	if err != nil {
		return nil, err
	}
	if err := s.criuUsable(ctx); err != nil {
		return nil, fmt.Errorf("checkpoint task %q: %w", id, err)
	}
	if path := imagePath(req.GetOptions()); path != "" {
		if err := t.Checkpoint(ctx, path, req.GetOptions()); err != nil {
			return nil, fmt.Errorf("checkpoint task %q: %w", id, err)
		}
		return &api.CheckpointTaskResponse{}, nil
	}
	if s.content == nil {
		return nil, fmt.Errorf("checkpoint task %q: taskd has no content store to keep checkpoints in: %w", id, errdefs.ErrFailedPrecondition)
	}
	dir, err := os.MkdirTemp("", "taskd-checkpoint-")
	if err != nil {
		return nil, fmt.Errorf("checkpoint task %q: %w", id, err)
	}
	defer func() {
		if err := os.RemoveAll(dir); err != nil {
			logging.Or(ctx, s.log).Warn("checkpoint: remove image directory", "dir", dir, "error", err)
		}
	}()
	if err := t.Checkpoint(ctx, dir, req.GetOptions()); err != nil {
		return nil, fmt.Errorf("checkpoint task %q: %w", id, err)
	}
	// The directory's name makes the ingest refs unique, as containerd
	// uses its image path.
	descs, err := checkpoint.Store(ctx, s.content, filepath.Base(dir), dir, c.GetSpec())
	if err != nil {
		return nil, fmt.Errorf("checkpoint task %q: %w", id, err)
	}
	return &api.CheckpointTaskResponse{Descriptors: descs}, nil
}

// imagePath is the directory runc checkpoint options ask the dump to be
// left in, or "" (other options, or none).
func imagePath(options *anypb.Any) string {
	var o runcoptions.CheckpointOptions
	if options == nil || !options.MessageIs(&o) {
		return ""
	}
	if err := options.UnmarshalTo(&o); err != nil {
		return "" // the shim reports options it cannot read
	}
	return o.GetImagePath()
}

// Update implements api.TasksServer.
func (s *Service) Update(ctx context.Context, req *api.UpdateTaskRequest) (*emptypb.Empty, error) {
	t, err := s.runtime.Get(ctx, req.GetContainerID())
	if err != nil {
		return nil, err
	}
	if err := t.Update(ctx, req.GetResources(), req.GetAnnotations()); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

// Metrics implements api.TasksServer: the cgroup statistics of each task
// matching the filters (fields id and namespace).
func (s *Service) Metrics(ctx context.Context, req *api.MetricsRequest) (*api.MetricsResponse, error) {
	f, err := filters.ParseAll(req.GetFilters()...)
	if err != nil {
		return nil, err
	}
	list, err := s.runtime.List(ctx)
	if err != nil {
		return nil, err
	}
	resp := &api.MetricsResponse{}
	for _, t := range list {
		if !f.Match(taskFields(t)) {
			continue
		}
		stats, err := t.Stats(ctx)
		if err != nil {
			if !errdefs.IsNotFound(err) && !errdefs.IsFailedPrecondition(err) {
				logging.Or(ctx, s.log).Warn("metrics", "container", t.ID(), "error", err)
			}
			continue
		}
		resp.Metrics = append(resp.Metrics, &types.Metric{Timestamp: timestamppb.Now(), ID: t.ID(), Data: stats})
	}
	return resp, nil
}

func taskFields(t *runtime.Task) filters.Adaptor {
	return filters.AdapterFunc(func(path []string) (string, bool) {
		if len(path) == 0 {
			return "", false
		}
		switch path[0] {
		case "id":
			return t.ID(), true
		case "namespace":
			return t.Namespace(), true
		}
		return "", false
	})
}

// Wait implements api.TasksServer.
func (s *Service) Wait(ctx context.Context, req *api.WaitRequest) (*api.WaitResponse, error) {
	t, err := s.runtime.Get(ctx, req.GetContainerID())
	if err != nil {
		return nil, err
	}
	resp, err := t.Wait(ctx, req.GetExecID())
	if err != nil {
		return nil, err
	}
	return &api.WaitResponse{ExitStatus: resp.ExitStatus, ExitedAt: resp.ExitedAt}, nil
}
