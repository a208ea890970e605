package integration

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
)

// shimsOf lists the containers of namespace ns that have a shim process.
func shimsOf(ns string) []string {
	var ids []string
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if !strings.Contains(filepath.Base(args[0]), "shim") {
			continue
		}
		var gotNS, gotID string
		for i := 0; i+1 < len(args); i++ {
			switch args[i] {
			case "-namespace":
				gotNS = args[i+1]
			case "-id":
				gotID = args[i+1]
			}
		}
		if gotNS == ns && gotID != "" {
			ids = append(ids, gotID)
		}
	}
	sort.Strings(ids)
	return ids
}

// taskIDs lists the tasks of the namespace through the API.
func (s *runStack) taskIDs(t testing.TB) []string {
	t.Helper()
	var ids []string
	for id := range s.tasks(t) {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// TestCancelledTaskCreatesLeaveNoShim cancels Tasks.Create calls at random
// points (as a client's deadline, a ctrl-C or a crashed gateway does): each
// creation must finish or be undone, so every shim left belongs to a task
// the API lists, before and after taskd restarts.
func TestCancelledTaskCreatesLeaveNoShim(t *testing.T) {
	s := startRunStack(t, "cancelcreate", nil)
	conn := s.Conn()
	containers := containersapi.NewContainersClient(conn)
	snapshots := snapshotsapi.NewSnapshotsClient(conn)
	tasks := tasksapi.NewTasksClient(conn)
	ctx := inNamespace(context.Background(), s.ns)

	const n = 16
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rnd := rand.New(rand.NewPCG(seed, 0))
	type attempt struct {
		id    string
		after time.Duration
	}
	var attempts []attempt
	for i := range n {
		id := fmt.Sprintf("cc%d", i)
		s.MustCtr(s.ns, "containers", "create", s.ref, id, "sleep", "1000")
		// From at once to well past a whole creation.
		attempts = append(attempts, attempt{id, time.Duration(rnd.IntN(6000)) * time.Millisecond})
	}
	requests := map[string]*tasksapi.CreateTaskRequest{}
	for _, a := range attempts {
		c, err := containers.Get(ctx, &containersapi.GetContainerRequest{ID: a.id})
		if err != nil {
			t.Fatal(err)
		}
		m, err := snapshots.Mounts(ctx, &snapshotsapi.MountsRequest{Snapshotter: c.Container.Snapshotter, Key: c.Container.SnapshotKey})
		if err != nil {
			t.Fatal(err)
		}
		requests[a.id] = &tasksapi.CreateTaskRequest{ContainerID: a.id, Rootfs: m.Mounts}
	}

	var wg sync.WaitGroup
	var mu sync.Mutex
	var cancelled int
	for _, a := range attempts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, a.after)
			defer cancel()
			if _, err := tasks.Create(cctx, requests[a.id]); err != nil {
				mu.Lock()
				cancelled++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	t.Logf("%d of %d creates were cut short by their caller", cancelled, n)

	// taskd finishes or undoes what the callers left: wait for it, then
	// every shim must be a task's.
	consistent := func() ([]string, []string, bool) {
		shims, ids := shimsOf(s.ns), s.taskIDs(t)
		return shims, ids, slices.Equal(shims, ids)
	}
	var shims, ids []string
	var ok bool
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if shims, ids, ok = consistent(); ok || time.Now().After(deadline) {
			break
		}
	}
	if !ok {
		t.Fatalf("shims %v, but tasks %v: a shim no task owns", shims, ids)
	}
	for _, a := range attempts {
		if slices.Contains(ids, a.id) {
			continue
		}
		if left := s.leftovers(t, a.id); len(left) > 0 {
			t.Errorf("%s has no task but left behind: %v", a.id, left)
		}
	}

	s.Kill9("taskd")
	s.Up()
	if shims, ids, ok := consistent(); !ok {
		t.Fatalf("after taskd restarted: shims %v, but tasks %v", shims, ids)
	}
	for _, id := range ids {
		if out, err := s.Ctr(s.ns, "tasks", "delete", "-f", id); err != nil {
			t.Errorf("delete task %s after the restart: %v: %s", id, err, out)
		}
	}
	if left := shimsOf(s.ns); len(left) > 0 {
		for _, id := range left {
			t.Errorf("shim of %s (pid %s) outlived its task", id, strconv.Itoa(shimOf(s.ns, id)))
		}
	}
}

// TestTaskdCrashAmidCreatesLeavesNoInvisibleShim kills taskd while task
// creations are under way: once it is back, every shim belongs to a task the
// API lists (to be deleted like any other), and deleting them all leaves no
// shim.
func TestTaskdCrashAmidCreatesLeavesNoInvisibleShim(t *testing.T) {
	s := startRunStack(t, "crashcreate", nil)
	conn := s.Conn()
	containers := containersapi.NewContainersClient(conn)
	snapshots := snapshotsapi.NewSnapshotsClient(conn)
	tasks := tasksapi.NewTasksClient(conn)
	ctx := inNamespace(context.Background(), s.ns)

	const n = 10
	var reqs []*tasksapi.CreateTaskRequest
	for i := range n {
		id := fmt.Sprintf("kc%d", i)
		s.MustCtr(s.ns, "containers", "create", s.ref, id, "sleep", "1000")
		c, err := containers.Get(ctx, &containersapi.GetContainerRequest{ID: id})
		if err != nil {
			t.Fatal(err)
		}
		m, err := snapshots.Mounts(ctx, &snapshotsapi.MountsRequest{Snapshotter: c.Container.Snapshotter, Key: c.Container.SnapshotKey})
		if err != nil {
			t.Fatal(err)
		}
		reqs = append(reqs, &tasksapi.CreateTaskRequest{ContainerID: id, Rootfs: m.Mounts})
	}
	var wg sync.WaitGroup
	started := make(chan struct{}, n)
	for _, r := range reqs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			started <- struct{}{}
			_, _ = tasks.Create(ctx, r)
		}()
	}
	for range n / 2 {
		<-started
	}
	// Some creations are done, some under way, some not begun.
	for deadline := time.Now().Add(30 * time.Second); len(shimsOf(s.ns)) == 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	s.Kill9("taskd")
	wg.Wait()
	s.Up()

	var shims, ids []string
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		shims, ids = shimsOf(s.ns), s.taskIDs(t)
		if missing := without(shims, ids); len(missing) == 0 || time.Now().After(deadline) {
			break
		}
	}
	if missing := without(shims, ids); len(missing) > 0 {
		t.Fatalf("after taskd restarted: shims of %v, which no task the API lists owns (tasks %v)", missing, ids)
	}
	for _, id := range ids {
		if out, err := s.Ctr(s.ns, "tasks", "delete", "-f", id); err != nil {
			t.Errorf("delete task %s: %v: %s", id, err, out)
		}
	}
	for deadline := time.Now().Add(15 * time.Second); len(shimsOf(s.ns)) > 0 && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
	}
	if left := shimsOf(s.ns); len(left) > 0 {
		t.Errorf("shims of %v outlived their tasks", left)
	}
}

// without is a minus b.
func without(a, b []string) []string {
	var out []string
	for _, x := range a {
		if !slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}
