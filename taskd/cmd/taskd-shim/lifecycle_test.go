package main

// Task lifecycle races, as containerd's integration tests provoke them
// (TestIssue9103, TestIssue10589, TestContainerKillInitPidHost,
// TestKillContainerDeletedByRunc): an init that dies while runc creates it,
// execs started while the init dies, host-PID containers, a container that
// runc deleted behind the shim's back. The races are forced by a runtime
// wrapper (failpoints, as containerd's runc-fp) driven by files in the
// bundle, not by timing.

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	taskapi "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/api/types/runc/options"
	tasktypes "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/flotilla/flotilla/services/mount"
)

// Failpoints of the runtime wrapper, files in the bundle.
const (
	// fpKillInit: after `runc create` succeeded, SIGKILL the init and
	// return only once the shim reaped it (an OOM kill during create).
	fpKillInit = "fp-kill-init"
	// fpHoldExec: the first `runc exec` runs, then signals fpExecHeld and
	// waits for fpRelease before it returns.
	fpHoldExec = "fp-hold-exec"
	fpExecHeld = "fp-exec-held"
	fpRelease  = "fp-release"
)

const runcWrapper = `#!/bin/sh
# runc with failpoints; the bundle is where --log points.
log= pidfile= cmd= prev=
for a in "$@"; do
	case "$prev" in
	--log) log=$a ;;
	--pid-file) pidfile=$a ;;
	esac
	case "$a" in
	create|exec) [ -z "$cmd" ] && cmd=$a ;;
	esac
	prev=$a
done
dir=$(dirname "$log")
runc "$@"
rc=$?
[ $rc -eq 0 ] || exit $rc
if [ "$cmd" = create ] && [ -e "$dir/fp-kill-init" ]; then
	pid=$(cat "$pidfile")
	kill -9 "$pid"
	# until the shim has reaped it
	while [ -e "/proc/$pid" ]; do sleep 0.01; done
fi
if [ "$cmd" = exec ] && [ -e "$dir/fp-hold-exec" ] && mkdir "$dir/fp-exec-claimed" 2>/dev/null; then
	touch "$dir/fp-exec-held"
	while [ ! -e "$dir/fp-release" ]; do sleep 0.01; done
fi
exit 0
`

// wrapper writes the failpoint runtime and returns its path.
func wrapper(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "runc-fp")
	if err := os.WriteFile(path, []byte(runcWrapper), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// launchFP is launch with the failpoint runtime and the failpoints set.
func launchFP(t *testing.T, s *specs.Spec, failpoints ...string) (*bundle, taskapi.TTRPCTaskService, error) {
	t.Helper()
	b := newBundle(t, s)
	for _, fp := range failpoints {
		if err := os.WriteFile(filepath.Join(b.dir, fp), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	client := connect(t, b.start(t))
	opts, err := typeurl.MarshalAnyToProto(&options.Options{BinaryName: wrapper(t)})
	if err != nil {
		t.Fatal(err)
	}
	_, err = client.Create(ctxT(t), &taskapi.CreateTaskRequest{ID: b.id, Bundle: b.dir, Rootfs: b.rootfs, Options: opts})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = os.WriteFile(filepath.Join(b.dir, fpRelease), nil, 0o644)
		_, _ = client.Kill(ctx, &taskapi.KillRequest{ID: b.id, Signal: 9, All: true})
		_, _ = client.Wait(ctx, &taskapi.WaitRequest{ID: b.id})
		_, _ = client.Delete(ctx, &taskapi.DeleteRequest{ID: b.id})
		pid := b.shimPid(t)
		_, _ = client.Shutdown(ctx, &taskapi.ShutdownRequest{ID: b.id})
		for deadline := time.Now().Add(10 * time.Second); pid > 0 && alive(pid) && time.Now().Before(deadline); {
			time.Sleep(10 * time.Millisecond)
		}
	})
	return b, client, err
}

// waitFile waits until path exists (a failpoint reached).
func waitFile(t *testing.T, path string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, err := os.Stat(path); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never appeared", path)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestInitKilledDuringCreateIsStopped(t *testing.T) {
	needRoot(t)
	b, client, err := launchFP(t, spec("fp-create", "sleep", "1000"), fpKillInit)
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	ctx := ctxT(t)
	st, err := client.State(ctx, &taskapi.StateRequest{ID: b.id})
	if err != nil {
		t.Fatal(err)
	}
	if st.Status != tasktypes.Status_STOPPED || st.ExitStatus != 137 {
		t.Fatalf("state = %v, exit %d; want STOPPED, 137", st.Status, st.ExitStatus)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if w, err := client.Wait(wctx, &taskapi.WaitRequest{ID: b.id}); err != nil || w.ExitStatus != 137 {
		t.Fatalf("wait: %v %v", w, err)
	}
	_, err = client.Start(ctx, &taskapi.StartRequest{ID: b.id})
	wantCode(t, err, errdefs.IsFailedPrecondition, "start of a stopped task")
	if _, err := client.Delete(ctx, &taskapi.DeleteRequest{ID: b.id}); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if runcStateExists(b.id) {
		t.Error("runc still knows the container")
	}
	evs := b.waitEvents(t, 3)
	if got := strings.Join(topics(evs), " "); got != "/tasks/create /tasks/exit /tasks/delete" {
		t.Fatalf("events = %s", got)
	}
}

func TestExecStartDoesNotBlockTheContainer(t *testing.T) {
	needRoot(t)
	b, client, err := launchFP(t, spec("fp-exec-lock", "sleep", "1000"), fpHoldExec)
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	ctx := ctxT(t)
	if _, err := client.Start(ctx, &taskapi.StartRequest{ID: b.id}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"held", "other"} {
		if _, err := client.Exec(ctx, &taskapi.ExecProcessRequest{ID: b.id, ExecID: id, Spec: execSpec(t, "sleep", "1000")}); err != nil {
			t.Fatal(err)
		}
	}
	held := make(chan error, 1)
	go func() {
		_, err := client.Start(ctx, &taskapi.StartRequest{ID: b.id, ExecID: "held"})
		held <- err
	}()
	waitFile(t, filepath.Join(b.dir, fpExecHeld))

	// While one exec's start is under way, another exec starts and the
	// container can be paused and resumed.
	if _, err := client.Start(ctx, &taskapi.StartRequest{ID: b.id, ExecID: "other"}); err != nil {
		t.Fatalf("start of a second exec while the first one starts: %v", err)
	}
	if _, err := client.Pause(ctx, &taskapi.PauseRequest{ID: b.id}); err != nil {
		t.Fatalf("pause while an exec starts: %v", err)
	}
	if _, err := client.Resume(ctx, &taskapi.ResumeRequest{ID: b.id}); err != nil {
		t.Fatalf("resume while an exec starts: %v", err)
	}
	_, err = client.Start(ctx, &taskapi.StartRequest{ID: b.id, ExecID: "held"})
	wantCode(t, err, errdefs.IsFailedPrecondition, "second start of an exec being started")
	_, err = client.Delete(ctx, &taskapi.DeleteRequest{ID: b.id, ExecID: "held"})
	wantCode(t, err, errdefs.IsFailedPrecondition, "delete of an exec being started")

	if err := os.WriteFile(filepath.Join(b.dir, fpRelease), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := <-held; err != nil {
		t.Fatalf("start of the held exec: %v", err)
	}
}

func TestInitExitWaitsForExecsBeingStarted(t *testing.T) {
	needRoot(t)
	b, client, err := launchFP(t, spec("fp-exec-exit", "sleep", "1000"), fpHoldExec)
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	ctx := ctxT(t)
	initStart, err := client.Start(ctx, &taskapi.StartRequest{ID: b.id})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.Exec(ctx, &taskapi.ExecProcessRequest{ID: b.id, ExecID: "held", Spec: execSpec(t, "sleep", "1000")}); err != nil {
		t.Fatal(err)
	}
	held := make(chan error, 1)
	go func() {
		_, err := client.Start(ctx, &taskapi.StartRequest{ID: b.id, ExecID: "held"})
		held <- err
	}()
	// runc exec is done, its Start not: the init dies (and the exec with
	// it, as the PID namespace ends) before the shim knows the exec's pid.
	waitFile(t, filepath.Join(b.dir, fpExecHeld))
	if err := unix.Kill(int(initStart.Pid), unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitDead(t, int(initStart.Pid))
	_, err = client.Exec(ctx, &taskapi.ExecProcessRequest{ID: b.id, ExecID: "late", Spec: execSpec(t, "true")})
	if err == nil {
		_, err = client.Start(ctx, &taskapi.StartRequest{ID: b.id, ExecID: "late"})
	}
	wantCode(t, err, errdefs.IsFailedPrecondition, "an exec after the init died")
	if err := os.WriteFile(filepath.Join(b.dir, fpRelease), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := <-held; err != nil {
		t.Fatalf("start of the held exec: %v", err)
	}
	if w, err := client.Wait(ctx, &taskapi.WaitRequest{ID: b.id}); err != nil || w.ExitStatus != 137 {
		t.Fatalf("wait: %v %v", w, err)
	}
	evs := b.waitEvents(t, 6)
	want := "/tasks/create /tasks/start /tasks/exec-added /tasks/exec-started /tasks/exit /tasks/exit"
	if got := strings.Join(topics(evs), " "); !strings.HasPrefix(got, want) {
		t.Fatalf("events = %s\nwant     %s", got, want)
	}
	if x := evs[4].value.(*eventstypes.TaskExit); x.ID != "held" {
		t.Errorf("first exit is %v, want the exec's", x)
	}
	if x := evs[5].value.(*eventstypes.TaskExit); x.ID != b.id || x.ExitStatus != 137 {
		t.Errorf("last exit is %v, want the init's", x)
	}
}

// TestInitDiesAmidManyExecStarts is containerd's TestIssue10589 against the
// shim: execs are started while the init is killed; the init's exit must
// come, after the exits of every exec that started.
func TestInitDiesAmidManyExecStarts(t *testing.T) {
	needRoot(t)
	b, client := launch(t, spec("exec-storm", "sleep", "1000"), nil)
	ctx := ctxT(t)
	initStart, err := client.Start(ctx, &taskapi.StartRequest{ID: b.id})
	if err != nil {
		t.Fatal(err)
	}
	const n = 40
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("x%d", i)
			if _, err := client.Exec(ctx, &taskapi.ExecProcessRequest{ID: b.id, ExecID: id, Spec: execSpec(t, "true")}); err != nil {
				return
			}
			_, _ = client.Start(ctx, &taskapi.StartRequest{ID: b.id, ExecID: id})
		}()
		if i == n/2 {
			if err := unix.Kill(int(initStart.Pid), unix.SIGKILL); err != nil {
				t.Fatal(err)
			}
		}
	}
	wg.Wait()
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if w, err := client.Wait(wctx, &taskapi.WaitRequest{ID: b.id}); err != nil || w.ExitStatus != 137 {
		t.Fatalf("wait for the init: %v %v", w, err)
	}
	// The events reach the publisher a moment after Wait answers.
	var evs []event
	for deadline := time.Now().Add(15 * time.Second); ; {
		evs = b.events(t)
		if hasExitOf(evs, b.id) || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	started, exited := map[string]bool{}, map[string]bool{}
	var initExitAt = -1
	for i, e := range evs {
		switch v := e.value.(type) {
		case *eventstypes.TaskExecStarted:
			started[v.ExecID] = true
		case *eventstypes.TaskExit:
			if v.ID == b.id {
				initExitAt = i
				continue
			}
			if !started[v.ID] {
				t.Errorf("exit of exec %s before its start", v.ID)
			}
			if initExitAt >= 0 {
				t.Errorf("exit of exec %s after the init's", v.ID)
			}
			exited[v.ID] = true
		}
	}
	if initExitAt < 0 {
		t.Fatalf("no exit of the init in %v", topics(evs))
	}
	for id := range started {
		if !exited[id] {
			t.Errorf("exec %s started but its exit was not reported", id)
		}
	}
}

func hostPIDSpec(id string, args ...string) *specs.Spec {
	s := spec(id, args...)
	var nss []specs.LinuxNamespace
	for _, ns := range s.Linux.Namespaces {
		if ns.Type != specs.PIDNamespace {
			nss = append(nss, ns)
		}
	}
	s.Linux.Namespaces = nss
	// /proc of the host's PID namespace cannot be mounted in a new one.
	var mounts []specs.Mount
	for _, m := range s.Mounts {
		if m.Destination != "/proc" {
			mounts = append(mounts, m)
		}
	}
	s.Mounts = append(mounts, specs.Mount{Destination: "/proc", Type: "bind", Source: "/proc", Options: []string{"rbind", "nosuid", "noexec", "nodev"}})
	return s
}

func TestHostPIDContainerEndsWithItsInit(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		kill bool
		exit uint32
	}{
		{"killing the init kills its children", []string{"sh", "-c", "sleep 1000 & sleep 1000 & wait"}, true, 137},
		{"an init that exits takes its children along", []string{"sh", "-c", "sleep 1000 & sleep 1000 & read x; exit 3"}, false, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			needRoot(t)
			io := newStdio(t, true, false)
			b, client := launch(t, hostPIDSpec(fmt.Sprintf("hostpid-%v", tc.kill), tc.args...), io)
			ctx := ctxT(t)
			if _, err := client.Start(ctx, &taskapi.StartRequest{ID: b.id}); err != nil {
				t.Fatal(err)
			}
			var pids *taskapi.PidsResponse
			for deadline := time.Now().Add(10 * time.Second); ; {
				var err error
				if pids, err = client.Pids(ctx, &taskapi.PidsRequest{ID: b.id}); err != nil {
					t.Fatal(err)
				}
				if len(pids.Processes) >= 3 || time.Now().After(deadline) {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			if len(pids.Processes) < 3 {
				t.Fatalf("pids = %v, want sh and two sleeps", pids.Processes)
			}
			if tc.kill {
				if _, err := client.Kill(ctx, &taskapi.KillRequest{ID: b.id, Signal: 9}); err != nil {
					t.Fatalf("kill: %v", err)
				}
			} else {
				io.write(t, "go\n")
			}
			if w, err := client.Wait(ctx, &taskapi.WaitRequest{ID: b.id}); err != nil || w.ExitStatus != tc.exit {
				t.Fatalf("wait: %v %v, want %d", w, err, tc.exit)
			}
			// containerd sends SIGKILL to the rest before it reports the
			// init's exit; they are gone a moment later.
			for _, p := range pids.Processes {
				waitDead(t, int(p.Pid))
			}
		})
	}
}

func TestKillOfAContainerRuncDeletedIsNotFound(t *testing.T) {
	needRoot(t)
	b, client := launch(t, spec("runc-deleted", "sleep", "1000"), nil)
	ctx := ctxT(t)
	if _, err := client.Start(ctx, &taskapi.StartRequest{ID: b.id}); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("runc", "--root", filepath.Join(stateDir, "runc", testNamespace), "delete", "--force", b.id).CombinedOutput()
	if err != nil {
		t.Fatalf("runc delete: %v: %s", err, out)
	}
	_, err = client.Kill(ctx, &taskapi.KillRequest{ID: b.id, Signal: 9})
	wantCode(t, err, errdefs.IsNotFound, "kill of a container runc deleted")
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := client.Wait(wctx, &taskapi.WaitRequest{ID: b.id}); err != nil {
		t.Fatalf("wait: %v", err)
	}
}

func hasExitOf(evs []event, id string) bool {
	for _, e := range evs {
		if x, ok := e.value.(*eventstypes.TaskExit); ok && x.ID == id {
			return true
		}
	}
	return false
}

// TestRootfsMountTargetsStayInTheRootfs gives the shim a hostile rootfs: a
// symlink in it names a host directory, and a rootfs mount's Target goes
// through it. The mount must land inside the rootfs, never on the host,
// and everything mounted must be gone after Delete.
func TestRootfsMountTargetsStayInTheRootfs(t *testing.T) {
	for _, tc := range []struct {
		name       string
		inRootCopy bool // the rootfs has its own directory at the link's path
	}{
		{"a target through a symlink to a host directory lands in the rootfs", true},
		{"a target through a symlink to a path the rootfs lacks is not found", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			needRoot(t)
			host := t.TempDir()                           // any host directory
			t.Cleanup(func() { _ = mount.Unmount(host) }) // should the test fail
			b := newBundle(t, spec(fmt.Sprintf("hostile-%v", tc.inRootCopy), "sleep", "1000"))
			upper := filepath.Join(filepath.Dir(b.dir), "upper")
			if err := os.Symlink(host, filepath.Join(upper, "evil")); err != nil {
				t.Fatal(err)
			}
			if tc.inRootCopy {
				if err := os.MkdirAll(filepath.Join(upper, host), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			mounts := append(b.rootfs, &types.Mount{Type: "tmpfs", Source: "tmpfs", Target: "/evil", Options: []string{"size=1m"}})
			client := connect(t, b.start(t))
			ctx := ctxT(t)
			_, err := client.Create(ctx, &taskapi.CreateTaskRequest{ID: b.id, Bundle: b.dir, Rootfs: mounts})
			rootfs := filepath.Join(b.dir, "rootfs")
			if tc.inRootCopy {
				if err != nil {
					t.Fatalf("create: %v", err)
				}
				if !isMounted(t, filepath.Join(rootfs, host)) {
					t.Error("the tmpfs is not on the rootfs's own directory")
				}
			} else {
				wantCode(t, err, errdefs.IsNotFound, "create with a mount target outside the rootfs")
			}
			if isMounted(t, host) {
				t.Fatalf("a rootfs mount landed on the host directory %s", host)
			}
			if tc.inRootCopy {
				if _, err := client.Delete(ctx, &taskapi.DeleteRequest{ID: b.id}); err != nil {
					t.Fatalf("delete: %v", err)
				}
			}
			for _, p := range []string{filepath.Join(rootfs, host), rootfs, host} {
				if isMounted(t, p) {
					t.Errorf("%s is still mounted", p)
				}
			}
			shutdown(t, client, b)
		})
	}
}
