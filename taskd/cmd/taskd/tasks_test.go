package main

import (
	"context"
	"encoding/json"
	"strings"
	"syscall"
	"testing"
	"time"

	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	"github.com/containerd/containerd/api/types"
	tasktypes "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/anypb"
)

func TestTaskRunsToItsExitStatus(t *testing.T) {
	needRuntime(t)
	s := newStack(t)
	s.createContainer("c1", "sh", "-c", "echo hello; exit 7")
	stdout, stderr, out := s.stdio("c1")
	created, err := s.tasks.Create(s.ctx, &tasksapi.CreateTaskRequest{ContainerID: "c1", Rootfs: rootfsMounts(), Stdout: stdout, Stderr: stderr})
	if err != nil {
		t.Fatal(err)
	}
	if created.Pid == 0 {
		t.Fatal("create answered no pid")
	}
	got, err := s.tasks.Get(s.ctx, &tasksapi.GetRequest{ContainerID: "c1"})
	if err != nil || got.Process.Status != tasktypes.Status_CREATED {
		t.Fatalf("get after create: %v, %v", got, err)
	}
	wait := make(chan *tasksapi.WaitResponse, 1)
	go func() {
		w, err := s.tasks.Wait(s.ctx, &tasksapi.WaitRequest{ContainerID: "c1"})
		if err != nil {
			t.Error(err)
		}
		wait <- w
	}()
	time.Sleep(100 * time.Millisecond) // let Wait be waiting before the process runs
	if _, err := s.tasks.Start(s.ctx, &tasksapi.StartRequest{ContainerID: "c1"}); err != nil {
		t.Fatal(err)
	}
	if w := <-wait; w == nil || w.ExitStatus != 7 {
		t.Fatalf("wait: %v, want exit status 7", w)
	}
	if o := <-out; o != "hello\n" {
		t.Fatalf("stdout %q, want %q", o, "hello\n")
	}
	got, err = s.tasks.Get(s.ctx, &tasksapi.GetRequest{ContainerID: "c1"})
	if err != nil || got.Process.Status != tasktypes.Status_STOPPED || got.Process.ExitStatus != 7 {
		t.Fatalf("get after exit: %v, %v", got, err)
	}
	if _, err := s.containers.Delete(s.ctx, &containersapi.DeleteContainerRequest{ID: "c1"}); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("delete container with a task: %v, want FailedPrecondition", err)
	}
	del, err := s.tasks.Delete(s.ctx, &tasksapi.DeleteTaskRequest{ContainerID: "c1"})
	if err != nil || del.ExitStatus != 7 || del.ExitedAt == nil || del.Pid != created.Pid {
		t.Fatalf("delete: %v, %v; want exit status 7 of pid %d", del, err, created.Pid)
	}
	s.waitEvents("c1", "/containers/create", "/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete")
	if _, err := s.tasks.Get(s.ctx, &tasksapi.GetRequest{ContainerID: "c1"}); !errdefs.IsNotFound(err) {
		t.Fatalf("get after delete: %v, want NotFound", err)
	}
	if left := s.leftovers("c1"); len(left) > 0 {
		t.Fatalf("left behind: %v", left)
	}
	if _, err := s.containers.Delete(s.ctx, &containersapi.DeleteContainerRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
}

func TestRunningTaskExecPauseMetricsKill(t *testing.T) {
	needRuntime(t)
	s := newStack(t)
	pid := s.run("c2", "sleep", "1000")

	t.Run("exec runs a process with its own stdout and exit status", func(t *testing.T) {
		stdout, stderr, out := s.stdio("exec1")
		proc, _ := json.Marshal(specs.Process{Args: []string{"sh", "-c", "echo from exec; exit 3"}, Cwd: "/", Env: []string{"PATH=/bin"}})
		_, err := s.tasks.Exec(s.ctx, &tasksapi.ExecProcessRequest{ContainerID: "c2", ExecID: "exec1", Stdout: stdout, Stderr: stderr,
			Spec: &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Process", Value: proc}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.tasks.Start(s.ctx, &tasksapi.StartRequest{ContainerID: "c2", ExecID: "exec1"}); err != nil {
			t.Fatal(err)
		}
		w, err := s.tasks.Wait(s.ctx, &tasksapi.WaitRequest{ContainerID: "c2", ExecID: "exec1"})
		if err != nil || w.ExitStatus != 3 {
			t.Fatalf("wait exec: %v, %v", w, err)
		}
		if o := <-out; o != "from exec\n" {
			t.Fatalf("exec stdout %q", o)
		}
		d, err := s.tasks.DeleteProcess(s.ctx, &tasksapi.DeleteProcessRequest{ContainerID: "c2", ExecID: "exec1"})
		if err != nil || d.ExitStatus != 3 || d.ID != "exec1" {
			t.Fatalf("delete process: %v, %v", d, err)
		}
	})
	t.Run("pause and resume change the status", func(t *testing.T) {
		for _, step := range []struct {
			do   func() error
			want tasktypes.Status
		}{
			{func() error {
				_, err := s.tasks.Pause(s.ctx, &tasksapi.PauseTaskRequest{ContainerID: "c2"})
				return err
			}, tasktypes.Status_PAUSED},
			{func() error {
				_, err := s.tasks.Resume(s.ctx, &tasksapi.ResumeTaskRequest{ContainerID: "c2"})
				return err
			}, tasktypes.Status_RUNNING},
		} {
			if err := step.do(); err != nil {
				t.Fatal(err)
			}
			got, err := s.tasks.Get(s.ctx, &tasksapi.GetRequest{ContainerID: "c2"})
			if err != nil || got.Process.Status != step.want {
				t.Fatalf("status %v (%v), want %v", got.GetProcess().GetStatus(), err, step.want)
			}
		}
	})
	t.Run("pids lists the init process", func(t *testing.T) {
		ps, err := s.tasks.ListPids(s.ctx, &tasksapi.ListPidsRequest{ContainerID: "c2"})
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, p := range ps.Processes {
			found = found || p.Pid == pid
		}
		if !found {
			t.Fatalf("pids %v lack init pid %d", ps.Processes, pid)
		}
	})
	t.Run("metrics come from the cgroup", func(t *testing.T) {
		m, err := s.tasks.Metrics(s.ctx, &tasksapi.MetricsRequest{Filters: []string{"id==c2"}})
		if err != nil {
			t.Fatal(err)
		}
		if len(m.Metrics) != 1 || m.Metrics[0].ID != "c2" || !strings.Contains(m.Metrics[0].Data.GetTypeUrl(), "cgroups") {
			t.Fatalf("metrics: %v", m.Metrics)
		}
	})
	t.Run("list shows the running task", func(t *testing.T) {
		l, err := s.tasks.List(s.ctx, &tasksapi.ListTasksRequest{})
		if err != nil || len(l.Tasks) != 1 || l.Tasks[0].Pid != pid || l.Tasks[0].Status != tasktypes.Status_RUNNING {
			t.Fatalf("list: %v, %v", l, err)
		}
	})
	t.Run("a running task cannot be deleted", func(t *testing.T) {
		if _, err := s.tasks.Delete(s.ctx, &tasksapi.DeleteTaskRequest{ContainerID: "c2"}); !errdefs.IsFailedPrecondition(err) {
			t.Fatalf("delete running: %v, want FailedPrecondition", err)
		}
	})
	t.Run("kill all ends the task", func(t *testing.T) {
		if _, err := s.tasks.Kill(s.ctx, &tasksapi.KillRequest{ContainerID: "c2", Signal: uint32(syscall.SIGKILL), All: true}); err != nil {
			t.Fatal(err)
		}
		w, err := s.tasks.Wait(s.ctx, &tasksapi.WaitRequest{ContainerID: "c2"})
		if err != nil || w.ExitStatus != 137 {
			t.Fatalf("wait: %v, %v", w, err)
		}
		if _, err := s.tasks.Delete(s.ctx, &tasksapi.DeleteTaskRequest{ContainerID: "c2"}); err != nil {
			t.Fatal(err)
		}
		if left := s.leftovers("c2"); len(left) > 0 {
			t.Fatalf("left behind: %v", left)
		}
	})
	s.waitEvents("c2", "/containers/create", "/tasks/create", "/tasks/start",
		"/tasks/exec-added", "/tasks/exec-started", "/tasks/exit",
		"/tasks/paused", "/tasks/resumed", "/tasks/exit", "/tasks/delete")
}

func TestBadInputLeavesNothing(t *testing.T) {
	needRuntime(t)
	s := newStack(t)
	validSpec := func(id string) *anypb.Any { return specAny(t, s.spec(id, "true")) }
	for _, tc := range []struct {
		name      string
		container *containersapi.Container
		mounts    []*types.Mount
		want      func(error) bool
	}{
		{
			name:      "a missing rootfs directory is NotFound",
			container: &containersapi.Container{ID: "nofs", Spec: validSpec("nofs"), Runtime: &containersapi.Container_Runtime{Name: "io.containerd.runc.v2"}},
			mounts:    []*types.Mount{{Type: "bind", Source: "/nonexistent/rootfs", Options: []string{"rbind", "ro"}}},
			want:      errdefs.IsNotFound,
		},
		{
			name:      "no rootfs at all is InvalidArgument",
			container: &containersapi.Container{ID: "nomounts", Spec: validSpec("nomounts"), Runtime: &containersapi.Container_Runtime{Name: "io.containerd.runc.v2"}},
			want:      errdefs.IsInvalidArgument,
		},
		{
			name: "a spec that is not JSON is InvalidArgument",
			container: &containersapi.Container{ID: "badspec", Runtime: &containersapi.Container_Runtime{Name: "io.containerd.runc.v2"},
				Spec: &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Spec", Value: []byte("{not json")}},
			mounts: rootfsMounts(),
			want:   errdefs.IsInvalidArgument,
		},
		{
			name:      "an unknown runtime is NotFound",
			container: &containersapi.Container{ID: "nort", Spec: validSpec("nort"), Runtime: &containersapi.Container_Runtime{Name: "io.containerd.nosuch.v9"}},
			mounts:    rootfsMounts(),
			want:      errdefs.IsNotFound,
		},
		{
			name:      "a malformed runtime name is InvalidArgument",
			container: &containersapi.Container{ID: "badrt", Spec: validSpec("badrt"), Runtime: &containersapi.Container_Runtime{Name: "runc"}},
			mounts:    rootfsMounts(),
			want:      errdefs.IsInvalidArgument,
		},
		{
			name:      "a process the runtime cannot start fails and is cleaned up",
			container: &containersapi.Container{ID: "noexe", Spec: specAny(t, s.spec("noexe", "/no/such/binary")), Runtime: &containersapi.Container_Runtime{Name: "io.containerd.runc.v2"}},
			mounts:    rootfsMounts(),
			want:      func(err error) bool { return err != nil },
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := s.containers.Create(s.ctx, &containersapi.CreateContainerRequest{Container: tc.container}); err != nil {
				t.Fatal(err)
			}
			_, err := s.tasks.Create(s.ctx, &tasksapi.CreateTaskRequest{ContainerID: tc.container.ID, Rootfs: tc.mounts})
			if !tc.want(err) {
				t.Fatalf("create task: %v", err)
			}
			t.Logf("error: %v", err)
			if left := s.leftovers(tc.container.ID); len(left) > 0 {
				t.Fatalf("left behind: %v", left)
			}
			if _, err := s.tasks.Get(s.ctx, &tasksapi.GetRequest{ContainerID: tc.container.ID}); !errdefs.IsNotFound(err) {
				t.Fatalf("task after failed create: %v", err)
			}
			if _, err := s.containers.Delete(s.ctx, &containersapi.DeleteContainerRequest{ID: tc.container.ID}); err != nil {
				t.Fatal(err)
			}
		})
	}
	t.Run("a duplicate container id is AlreadyExists", func(t *testing.T) {
		s.createContainer("dup", "true")
		_, err := s.containers.Create(s.ctx, &containersapi.CreateContainerRequest{Container: &containersapi.Container{
			ID: "dup", Spec: validSpec("dup"), Runtime: &containersapi.Container_Runtime{Name: "io.containerd.runc.v2"}}})
		if !errdefs.IsAlreadyExists(err) {
			t.Fatalf("second create: %v", err)
		}
	})
	t.Run("a second task for a container is AlreadyExists", func(t *testing.T) {
		s.run("dup2", "sleep", "100")
		_, err := s.tasks.Create(s.ctx, &tasksapi.CreateTaskRequest{ContainerID: "dup2", Rootfs: rootfsMounts()})
		if !errdefs.IsAlreadyExists(err) {
			t.Fatalf("second task: %v", err)
		}
	})
	t.Run("a task for a missing container is NotFound", func(t *testing.T) {
		_, err := s.tasks.Create(s.ctx, &tasksapi.CreateTaskRequest{ContainerID: "ghost", Rootfs: rootfsMounts()})
		if !errdefs.IsNotFound(err) {
			t.Fatalf("create: %v", err)
		}
	})
}

// Shims outlive taskd: five containers run, taskd is killed, one container
// exits while it is down; the restarted taskd shows the four running with
// their pids and the fifth stopped with its status, and announces each exit
// exactly once.
func TestRestartAdoptsShimsAndReconcilesExits(t *testing.T) {
	needRuntime(t)
	s := newStack(t)
	ids := []string{"r1", "r2", "r3", "r4", "r5"}
	pids := map[string]uint32{}
	for _, id := range ids[:4] {
		pids[id] = s.run(id, "sleep", "1000")
	}
	pids["r5"] = s.run("r5", "sh", "-c", `trap "exit 3" TERM; while true; do sleep 0.1; done`)
	time.Sleep(300 * time.Millisecond) // let the trap be set

	s.stop(syscall.SIGKILL)
	if err := syscall.Kill(int(pids["r5"]), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	s.start()

	l, err := s.tasks.List(s.ctx, &tasksapi.ListTasksRequest{})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]*tasktypes.Process{}
	for _, p := range l.Tasks {
		got[p.ID] = p
	}
	for _, id := range ids[:4] {
		if p := got[id]; p == nil || p.Status != tasktypes.Status_RUNNING || p.Pid != pids[id] {
			t.Errorf("%s after restart: %v, want running with pid %d", id, p, pids[id])
		}
	}
	if p := got["r5"]; p == nil || p.Status != tasktypes.Status_STOPPED || p.ExitStatus != 3 {
		t.Errorf("r5 after restart: %v, want stopped with exit status 3", p)
	}
	w, err := s.tasks.Wait(s.ctx, &tasksapi.WaitRequest{ContainerID: "r5"})
	if err != nil || w.ExitStatus != 3 {
		t.Fatalf("wait r5: %v, %v", w, err)
	}
	// The shim retries the exit event it could not deliver; give it time to.
	time.Sleep(4 * time.Second)
	s.waitEvents("r5", "/containers/create", "/tasks/create", "/tasks/start", "/tasks/exit")

	for _, id := range ids {
		ctx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
		if _, err := s.tasks.Kill(ctx, &tasksapi.KillRequest{ContainerID: id, Signal: 9}); err != nil && id != "r5" {
			t.Fatalf("kill %s: %v", id, err)
		}
		if _, err := s.tasks.Wait(ctx, &tasksapi.WaitRequest{ContainerID: id}); err != nil {
			t.Fatalf("wait %s: %v", id, err)
		}
		if _, err := s.tasks.Delete(ctx, &tasksapi.DeleteTaskRequest{ContainerID: id}); err != nil {
			t.Fatalf("delete %s: %v", id, err)
		}
		cancel()
	}
	for _, id := range ids {
		s.waitEvents(id, "/containers/create", "/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete")
		if left := s.leftovers(id); len(left) > 0 {
			t.Errorf("%s left behind: %v", id, left)
		}
	}
}

// A shim killed under a running task: the task is reported stopped with
// the kill's status, its exit announced once, and it can be deleted.
func TestDeadShimIsCleanedUp(t *testing.T) {
	needRuntime(t)
	s := newStack(t)
	s.run("d1", "sleep", "1000")
	// Shims publish asynchronously; kill it once it has told of the start.
	s.waitEvents("d1", "/containers/create", "/tasks/create", "/tasks/start")
	shim := shimPid(t, s, "d1")
	if err := syscall.Kill(shim, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	w, err := s.tasks.Wait(s.ctx, &tasksapi.WaitRequest{ContainerID: "d1"})
	if err != nil || w.ExitStatus != 137 {
		t.Fatalf("wait: %v, %v", w, err)
	}
	got, err := s.tasks.Get(s.ctx, &tasksapi.GetRequest{ContainerID: "d1"})
	if err != nil || got.Process.Status != tasktypes.Status_STOPPED {
		t.Fatalf("get: %v, %v", got, err)
	}
	if _, err := s.tasks.Delete(s.ctx, &tasksapi.DeleteTaskRequest{ContainerID: "d1"}); err != nil {
		t.Fatal(err)
	}
	s.waitEvents("d1", "/containers/create", "/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete")
	if left := s.leftovers("d1"); len(left) > 0 {
		t.Fatalf("left behind: %v", left)
	}
}
