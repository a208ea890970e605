package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	apievents "github.com/containerd/containerd/api/events"
	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	introspection "github.com/containerd/containerd/api/services/introspection/v1"
	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
)

func TestContainersAPI(t *testing.T) {
	needRuntime(t)
	s := newStack(t)
	for _, id := range []string{"alpha1", "bravo1"} {
		s.createContainer(id, "true")
	}
	_, err := s.containers.Update(s.ctx, &containersapi.UpdateContainerRequest{
		Container:  &containersapi.Container{ID: "bravo1", Labels: map[string]string{"role": "db"}},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"labels.role"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Run("list filters by label", func(t *testing.T) {
		l, err := s.containers.List(s.ctx, &containersapi.ListContainersRequest{Filters: []string{"labels.role==db"}})
		if err != nil || len(l.Containers) != 1 || l.Containers[0].ID != "bravo1" {
			t.Fatalf("list: %v, %v", l, err)
		}
	})
	t.Run("list stream sends each container", func(t *testing.T) {
		stream, err := s.containers.ListStream(s.ctx, &containersapi.ListContainersRequest{})
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for {
			m, err := stream.Recv()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, m.Container.ID)
		}
		if !slices.Equal(ids, []string{"alpha1", "bravo1"}) {
			t.Fatalf("stream: %v", ids)
		}
	})
	t.Run("the spec comes back as stored", func(t *testing.T) {
		c, err := s.containers.Get(s.ctx, &containersapi.GetContainerRequest{ID: "alpha1"})
		if err != nil || !proto.Equal(c.Container.Spec, specAny(t, s.spec("alpha1", "true"))) {
			t.Fatalf("get: %v", err)
		}
	})
	t.Run("introspection lists containers, tasks and the runtime", func(t *testing.T) {
		p, err := introspection.NewIntrospectionClient(s.conn).Plugins(s.ctx, &introspection.PluginsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, pl := range p.Plugins {
			got = append(got, pl.Type+"/"+pl.ID)
		}
		for _, want := range []string{"io.containerd.grpc.v1/containers", "io.containerd.grpc.v1/tasks", "io.containerd.runtime.v2/task"} {
			if !slices.Contains(got, want) {
				t.Errorf("plugins %v lack %s", got, want)
			}
		}
	})
	if _, err := s.containers.Delete(s.ctx, &containersapi.DeleteContainerRequest{ID: "alpha1"}); err != nil {
		t.Fatal(err)
	}
	s.waitEvents("alpha1", "/containers/create", "/containers/delete")
}

func TestPublishSubcommandForwardsToEventd(t *testing.T) {
	needRuntime(t)
	s := newStack(t)
	a, err := typeurl.MarshalAnyToProto(&apievents.TaskOOM{ContainerID: "oomer"})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := proto.Marshal(a)
	// As a shim runs it: the global --address before the command.
	cmd := exec.Command(taskdBin, "--address", s.address, "publish", "--topic", "/tasks/oom", "--namespace", s.ns)
	cmd.Stdin = bytes.NewReader(body)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("publish: %v: %s", err, out)
	}
	s.waitEvents("oomer", "/tasks/oom")
}

func TestTwentyTasksAtOnce(t *testing.T) {
	needRuntime(t)
	s := newStack(t)
	runConcurrently(t, s, 20, "t")
}

// runConcurrently runs n containers of /bin/true at once, each through
// create, start, wait and delete.
func runConcurrently(tb testing.TB, s *stack, n int, prefix string) {
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- s.runTrue(fmt.Sprintf("%s%d", prefix, i))
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			tb.Fatal(err)
		}
	}
}

// runTrue runs /bin/true in a new container and removes it.
func (s *stack) runTrue(id string) error {
	ctx, cancel := context.WithTimeout(s.ctx, 60*time.Second)
	defer cancel()
	_, err := s.containers.Create(ctx, &containersapi.CreateContainerRequest{Container: &containersapi.Container{
		ID: id, Spec: specAny(s.t, s.spec(id, "true")), Runtime: &containersapi.Container_Runtime{Name: "io.containerd.runc.v2"}}})
	if err != nil {
		return err
	}
	if _, err := s.tasks.Create(ctx, &tasksapi.CreateTaskRequest{ContainerID: id, Rootfs: rootfsMounts()}); err != nil {
		return fmt.Errorf("create %s: %w", id, err)
	}
	if _, err := s.tasks.Start(ctx, &tasksapi.StartRequest{ContainerID: id}); err != nil {
		return fmt.Errorf("start %s: %w", id, err)
	}
	w, err := s.tasks.Wait(ctx, &tasksapi.WaitRequest{ContainerID: id})
	if err != nil || w.ExitStatus != 0 {
		return fmt.Errorf("wait %s: %v, %v", id, w, err)
	}
	if _, err := s.tasks.Delete(ctx, &tasksapi.DeleteTaskRequest{ContainerID: id}); err != nil {
		return fmt.Errorf("delete %s: %w", id, err)
	}
	_, err = s.containers.Delete(ctx, &containersapi.DeleteContainerRequest{ID: id})
	return err
}

// BenchmarkRunTrue is one container's whole life through taskd and its shim.
func BenchmarkRunTrue(b *testing.B) {
	if skipWhy != "" {
		b.Skip(skipWhy)
	}
	s := newStack(b)
	b.ResetTimer()
	for i := range b.N {
		if err := s.runTrue(fmt.Sprintf("b%d", i)); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRun20Concurrently starts 20 containers at once per iteration.
func BenchmarkRun20Concurrently(b *testing.B) {
	if skipWhy != "" {
		b.Skip(skipWhy)
	}
	s := newStack(b)
	b.ResetTimer()
	for i := range b.N {
		runConcurrently(b, s, 20, fmt.Sprintf("c%d-", i))
	}
}

// BenchmarkRuncRunFloor is bare `runc run` of the same bundle: the floor.
func BenchmarkRuncRunFloor(b *testing.B) {
	if skipWhy != "" {
		b.Skip(skipWhy)
	}
	dir := b.TempDir()
	s := &stack{ns: "taskd-bench-floor"}
	b.Cleanup(func() { removeNamespaceDirs(s.ns) })
	spec := s.spec("floor", "true")
	spec.Root = nil
	cfg := specAny(b, spec).Value
	cfg = bytes.Replace(cfg, []byte(`{"ociVersion"`), []byte(fmt.Sprintf(`{"root":{"path":%q,"readonly":true},"ociVersion"`, rootfs)), 1)
	if err := os.WriteFile(filepath.Join(dir, "config.json"), cfg, 0o644); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := range b.N {
		if out, err := exec.Command("runc", "run", "--bundle", dir, fmt.Sprintf("floor%d", i)).CombinedOutput(); err != nil {
			b.Fatalf("runc run: %v: %s", err, out)
		}
	}
}

// BenchmarkShimRSS reports the resident memory of the shim of one running
// container (the shim under test: $TASKD_TEST_SHIM or containerd's).
func BenchmarkShimRSS(b *testing.B) {
	if skipWhy != "" {
		b.Skip(skipWhy)
	}
	s := newStack(b)
	s.run("rss", "sleep", "1000")
	pid := shimPid(b, s, "rss")
	var kb float64
	for range b.N {
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			b.Fatal(err)
		}
		for _, line := range bytes.Split(status, []byte("\n")) {
			if v, ok := bytes.CutPrefix(line, []byte("VmRSS:")); ok {
				fmt.Sscan(string(v), &kb)
			}
		}
	}
	b.ReportMetric(kb, "shim-rss-kB")
}
