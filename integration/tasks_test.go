package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/flotilla/flotilla/flotctl/stack"
	"github.com/flotilla/flotilla/integration/imagekit"
)

// specTypeURL is the type URL containerd gives an OCI runtime spec in an Any.
const specTypeURL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"

// runStack is a stack with the busybox test image pushed to a real
// docker-registry and pulled into namespace ns with `ctr images pull`.
type runStack struct {
	*Stack
	ns, ref string
}

// startRunStack starts a registry and a stack (configured by configure, if
// not nil), pushes busybox and pulls it with ctr.
func startRunStack(t testing.TB, ns string, configure func(*stack.Layout)) *runStack {
	t.Helper()
	requireTool(t, "ctr")
	requireTool(t, "runc")
	addr := imagekit.StartRegistry(t)
	img, err := imagekit.BuildBusybox()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { img.Close() })
	ref := addr + "/busybox:1"
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := img.Push(ctx, ref); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	s := startStackWith(t, configure)
	s.MustCtr(ns, "images", "pull", "--plain-http", ref)
	rs := &runStack{Stack: s, ns: ns, ref: ref}
	t.Cleanup(rs.removeAll)
	return rs
}

// removeAll kills and deletes every task and container left in the
// namespace, so that no container outlives the test.
func (s *runStack) removeAll() {
	out, _ := s.Ctr(s.ns, "tasks", "ls", "-q")
	for _, id := range strings.Fields(out) {
		s.Ctr(s.ns, "tasks", "kill", "-a", "-s", "SIGKILL", id)
	}
	for _, id := range strings.Fields(out) {
		for i := 0; i < 50; i++ {
			if _, err := s.Ctr(s.ns, "tasks", "delete", id); err == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	out, _ = s.Ctr(s.ns, "containers", "ls", "-q")
	for _, id := range strings.Fields(out) {
		s.Ctr(s.ns, "containers", "rm", id)
	}
	// The runtime removes a container's cgroups but not their parent, the
	// namespace's; remove it once empty.
	parents, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", s.ns))
	for _, dir := range append(parents, filepath.Join("/sys/fs/cgroup", s.ns)) {
		syscall.Rmdir(dir)
	}
	// containerd's shim keeps runc's state under /run/containerd/runc/<ns>.
	os.Remove(filepath.Join("/run/containerd/runc", s.ns))
}

// task is one row of `ctr tasks ls`.
type task struct {
	Pid    int
	Status string
}

func (s *runStack) tasks(t testing.TB) map[string]task {
	t.Helper()
	out := s.MustCtr(s.ns, "tasks", "ls")
	rows := map[string]task{}
	for _, line := range strings.Split(out, "\n")[1:] {
		f := strings.Fields(line)
		if len(f) != 3 {
			continue
		}
		pid, err := strconv.Atoi(f[1])
		if err != nil {
			t.Fatalf("tasks ls: pid %q in %q", f[1], line)
		}
		rows[f[0]] = task{Pid: pid, Status: f[2]}
	}
	return rows
}

// waitStatus waits until task id has status want and returns its row.
func (s *runStack) waitStatus(t testing.TB, id, want string) task {
	t.Helper()
	var got map[string]task
	for i := 0; i < 100; i++ {
		got = s.tasks(t)
		if got[id].Status == want {
			return got[id]
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("task %s never became %s: %v", id, want, got)
	return task{}
}

// ctrExitCode runs ctr and returns its exit code and combined output.
func (s *runStack) ctrExitCode(t testing.TB, args ...string) (int, string) {
	t.Helper()
	out, err := s.Ctr(s.ns, args...)
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, out
	case errors.As(err, &ee):
		return ee.ExitCode(), out
	}
	t.Fatalf("ctr %v: %v", args, err)
	return 0, ""
}

// leftovers lists what container id of namespace ns left behind: mounts
// under the stack's directories, a shim process, a bundle, cgroups.
func (s *runStack) leftovers(t testing.TB, id string) []string {
	t.Helper()
	var found []string
	base := filepath.Dir(s.Layout.State)
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(mi), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && strings.HasPrefix(f[4], base+"/") && strings.Contains(f[4], "/"+id+"/") {
			found = append(found, "mount "+f[4])
		}
	}
	if pid := shimOf(s.ns, id); pid > 0 {
		found = append(found, fmt.Sprintf("shim process %d", pid))
	}
	bundle := filepath.Join(s.Layout.State, "taskd", "tasks", s.ns, id)
	if _, err := os.Stat(bundle); err == nil {
		found = append(found, "bundle "+bundle)
	}
	cgroups, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", s.ns, id))
	if _, err := os.Stat(filepath.Join("/sys/fs/cgroup", s.ns, id)); err == nil {
		cgroups = append(cgroups, filepath.Join("/sys/fs/cgroup", s.ns, id))
	}
	for _, c := range cgroups {
		found = append(found, "cgroup "+c)
	}
	return found
}

// shimOf finds the shim process serving container id in namespace ns by
// its command line (-namespace NS … -id ID), or 0.
func shimOf(ns, id string) int {
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
		if gotNS == ns && gotID == id {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
			return pid
		}
	}
	return 0
}

// parentExe is the executable of the parent of process pid: a container's
// shim for its init process.
func parentExe(t testing.TB, pid int) (int, string) {
	t.Helper()
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	rest := string(st[bytes.LastIndexByte(st, ')')+2:])
	ppid, err := strconv.Atoi(strings.Fields(rest)[1])
	if err != nil {
		t.Fatal(err)
	}
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", ppid))
	if err != nil {
		t.Fatal(err)
	}
	return ppid, exe
}

func TestRunPrintsExitsAndEchoesThroughCtr(t *testing.T) {
	s := startRunStack(t, "run", nil)

	t.Run("echo hello prints hello", func(t *testing.T) {
		out := s.MustCtr(s.ns, "run", "--rm", s.ref, "t1", "echo", "hello")
		if !strings.Contains(out, "hello\n") {
			t.Fatalf("ctr run printed %q, want hello", out)
		}
	})
	t.Run("exit 7 makes ctr exit 7", func(t *testing.T) {
		code, out := s.ctrExitCode(t, "run", "--rm", s.ref, "t2", "sh", "-c", "exit 7")
		if code != 7 {
			t.Fatalf("ctr exited %d, want 7: %s", code, out)
		}
	})
	t.Run("a line written to cat's stdin comes back on stdout", func(t *testing.T) {
		cmd := exec.Command("ctr", "--address", s.Socket, "--namespace", s.ns, "run", "--rm", s.ref, "cat1", "cat")
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		defer stdin.Close()
		if _, err := io.WriteString(stdin, "a line for cat\n"); err != nil {
			t.Fatal(err)
		}
		line := make(chan string, 1)
		go func() {
			l, _ := bufio.NewReader(stdout).ReadString('\n')
			line <- l
		}()
		select {
		case l := <-line:
			if l != "a line for cat\n" {
				t.Fatalf("cat answered %q", l)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("no line back from cat; stderr: %s", stderr.String())
		}
		// ctr 1.6 keeps stdin open at EOF: end cat by killing it.
		s.waitStatus(t, "cat1", "RUNNING")
		s.MustCtr(s.ns, "tasks", "kill", "-s", "SIGKILL", "cat1")
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Fatal("ctr run did not return after the kill")
		}
		if left := s.leftovers(t, "cat1"); len(left) > 0 {
			t.Fatalf("left behind: %v", left)
		}
	})
	t.Run("run -t gives a shell on a terminal of the pty's size", func(t *testing.T) {
		ptmx, tty := openPty(t, 33, 101)
		cmd := exec.Command("ctr", "--address", s.Socket, "--namespace", s.ns, "run", "-t", "--rm", s.ref, "tty1", "sh")
		cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		tty.Close()
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		screen := &syncBuffer{}
		go io.Copy(screen, ptmx)

		s.waitStatus(t, "tty1", "RUNNING")
		io.WriteString(ptmx, "echo hi-$((1+1)); stty size; tty\r")
		screen.waitFor(t, regexp.MustCompile(`hi-2\r*\n33 101\r*\n/dev/pts/`))
		io.WriteString(ptmx, "exit\r")
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("ctr run -t: %v\n%s", err, screen.String())
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("ctr run -t did not end after exit\n%s", screen.String())
		}
	})
}

// openPty opens a pseudo-terminal of rows×cols and returns its master and
// its slave.
func openPty(t *testing.T, rows, cols uint16) (*os.File, *os.File) {
	t.Helper()
	ptmx, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ptmx.Close() })
	if err := unix.IoctlSetPointerInt(int(ptmx.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(ptmx.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	tty, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tty.Close() })
	if err := unix.IoctlSetWinsize(int(tty.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols}); err != nil {
		t.Fatal(err)
	}
	return ptmx, tty
}

// syncBuffer collects a stream that a test polls.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *syncBuffer) waitFor(t *testing.T, re *regexp.Regexp) {
	t.Helper()
	for i := 0; i < 300; i++ {
		if re.MatchString(b.String()) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("terminal never showed %s:\n%q", re, b.String())
}

func TestTasksAndContainersCommandsOnADetachedContainer(t *testing.T) {
	s := startRunStack(t, "detached", nil)
	// d1 ends on SIGTERM with status 3; d2 has three processes.
	s.MustCtr(s.ns, "run", "-d", s.ref, "d1", "sh", "-c", `trap "exit 3" TERM; while true; do sleep 0.1; done`)
	s.MustCtr(s.ns, "run", "-d", s.ref, "d2", "sh", "-c", "sleep 1000 & sleep 1001 & wait")
	var d1, d2 task

	t.Run("tasks ls shows both running with their pids", func(t *testing.T) {
		d1 = s.waitStatus(t, "d1", "RUNNING")
		d2 = s.waitStatus(t, "d2", "RUNNING")
		for id, tk := range map[string]task{"d1": d1, "d2": d2} {
			if _, err := os.Stat(fmt.Sprintf("/proc/%d", tk.Pid)); err != nil || tk.Pid <= 1 {
				t.Fatalf("%s: pid %d is not a live process: %v", id, tk.Pid, err)
			}
		}
	})
	t.Run("tasks ps lists the container's processes", func(t *testing.T) {
		var pids []int
		for i := 0; i < 50 && len(pids) < 3; i++ {
			pids = nil
			for _, line := range strings.Split(s.MustCtr(s.ns, "tasks", "ps", "d2"), "\n")[1:] {
				if f := strings.Fields(line); len(f) > 0 {
					pid, _ := strconv.Atoi(f[0])
					pids = append(pids, pid)
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
		if len(pids) != 3 || !containsInt(pids, d2.Pid) {
			t.Fatalf("tasks ps d2 listed %v, want 3 pids including %d", pids, d2.Pid)
		}
	})
	t.Run("tasks exec runs a process and reports its output and status", func(t *testing.T) {
		out := s.MustCtr(s.ns, "tasks", "exec", "--exec-id", "e1", "d2", "sh", "-c", "echo exec-out-$((40+2))")
		if !strings.Contains(out, "exec-out-42") {
			t.Fatalf("exec printed %q", out)
		}
		code, out := s.ctrExitCode(t, "tasks", "exec", "--exec-id", "e2", "d2", "sh", "-c", "exit 5")
		if code != 5 {
			t.Fatalf("exec exited %d, want 5: %s", code, out)
		}
	})
	t.Run("pause and resume change the status", func(t *testing.T) {
		s.MustCtr(s.ns, "tasks", "pause", "d2")
		if got := s.tasks(t)["d2"]; got.Status != "PAUSED" || got.Pid != d2.Pid {
			t.Fatalf("after pause: %+v", got)
		}
		if _, err := s.Ctr(s.ns, "tasks", "pause", "d2"); err == nil {
			t.Fatal("pausing a paused task succeeded")
		}
		s.MustCtr(s.ns, "tasks", "resume", "d2")
		if got := s.tasks(t)["d2"]; got.Status != "RUNNING" {
			t.Fatalf("after resume: %+v", got)
		}
	})
	t.Run("metrics print a table of cgroup statistics", func(t *testing.T) {
		out := s.MustCtr(s.ns, "tasks", "metrics", "d2")
		for _, want := range []string{"METRIC", "VALUE", "memory.", "pids.current"} {
			if !strings.Contains(out, want) {
				t.Fatalf("metrics lack %q:\n%s", want, out)
			}
		}
		if !regexp.MustCompile(`pids\.current\s+3\b`).MatchString(out) {
			t.Fatalf("metrics do not count 3 processes:\n%s", out)
		}
	})
	t.Run("checkpoint needs a usable CRIU and the task runs on", func(t *testing.T) {
		out, err := s.Ctr(s.ns, "tasks", "checkpoint", "d2")
		if exec.Command("criu", "check").Run() == nil {
			// CRIU works here: the checkpoint is stored as an image.
			if err != nil {
				t.Fatalf("checkpoint with a working CRIU failed: %v\n%s", err, out)
			}
		} else if err == nil || !strings.Contains(out, "failed precondition") || !strings.Contains(out, "CRIU") {
			t.Fatalf("checkpoint without a usable CRIU: err=%v, want FailedPrecondition naming CRIU:\n%s", err, out)
		}
		s.waitStatus(t, "d2", "RUNNING")
	})
	t.Run("a running container holds a shim, a bundle, a mount and cgroups", func(t *testing.T) {
		// The check that later finds nothing left does find these.
		left := strings.Join(s.leftovers(t, "d1"), "\n")
		for _, want := range []string{"mount ", "shim process ", "bundle ", "cgroup "} {
			if !strings.Contains(left, want) {
				t.Fatalf("no %q among what d1 holds:\n%s", want, left)
			}
		}
	})
	t.Run("a running task cannot be deleted, nor its container removed", func(t *testing.T) {
		if out, err := s.Ctr(s.ns, "tasks", "delete", "d1"); err == nil || !strings.Contains(out, "failed precondition") {
			t.Fatalf("tasks delete of a running task: %v: %s", err, out)
		}
		if _, err := s.Ctr(s.ns, "containers", "rm", "d1"); err == nil {
			t.Fatal("containers rm of a running container succeeded")
		}
	})
	t.Run("kill sends SIGTERM and the task stops with its status", func(t *testing.T) {
		s.MustCtr(s.ns, "tasks", "kill", "d1")
		if got := s.waitStatus(t, "d1", "STOPPED"); got.Pid != d1.Pid {
			t.Fatalf("stopped d1 has pid %d, want %d", got.Pid, d1.Pid)
		}
		out := s.MustCtr(s.ns, "tasks", "delete", "d1")
		if !strings.Contains(out, "exit code 3") {
			t.Fatalf("tasks delete d1 did not report exit code 3: %q", out)
		}
	})
	t.Run("kill -a stops every process", func(t *testing.T) {
		s.MustCtr(s.ns, "tasks", "kill", "-a", "-s", "SIGKILL", "d2")
		s.waitStatus(t, "d2", "STOPPED")
		if out := s.MustCtr(s.ns, "tasks", "delete", "d2"); !strings.Contains(out, "exit code 137") {
			t.Fatalf("tasks delete d2 did not report exit code 137: %q", out)
		}
		if _, ok := s.tasks(t)["d2"]; ok {
			t.Fatal("d2 still listed after delete")
		}
	})
	t.Run("containers ls, info and label show the records", func(t *testing.T) {
		ls := s.MustCtr(s.ns, "containers", "ls")
		if !regexp.MustCompile(`(?m)^d1\s+` + regexp.QuoteMeta(s.ref) + `\s+io\.containerd\.runc\.v2\s*$`).MatchString(ls) {
			t.Fatalf("containers ls:\n%s", ls)
		}
		if out := s.MustCtr(s.ns, "containers", "label", "d1", "team=flotilla"); !strings.Contains(out, "team=flotilla") {
			t.Fatalf("containers label printed %q", out)
		}
		var info struct {
			ID      string
			Image   string
			Labels  map[string]string
			Runtime struct{ Name string }
			Spec    struct {
				Process struct{ Args []string }
			}
			Snapshotter, SnapshotKey string
		}
		out := s.MustCtr(s.ns, "containers", "info", "d1")
		if err := json.Unmarshal([]byte(out), &info); err != nil {
			t.Fatalf("containers info: %v\n%s", err, out)
		}
		if info.ID != "d1" || info.Image != s.ref || info.Labels["team"] != "flotilla" ||
			info.Runtime.Name != "io.containerd.runc.v2" || info.SnapshotKey != "d1" || info.Snapshotter == "" ||
			len(info.Spec.Process.Args) != 3 || info.Spec.Process.Args[0] != "sh" {
			t.Fatalf("containers info:\n%s", out)
		}
	})
	t.Run("containers rm removes stopped containers and leaves nothing", func(t *testing.T) {
		s.MustCtr(s.ns, "containers", "rm", "d1", "d2")
		if out := s.MustCtr(s.ns, "containers", "ls", "-q"); strings.TrimSpace(out) != "" {
			t.Fatalf("containers left: %q", out)
		}
		for _, id := range []string{"d1", "d2"} {
			if left := s.leftovers(t, id); len(left) > 0 {
				t.Fatalf("%s left behind: %v", id, left)
			}
		}
	})
}

func containsInt(list []int, v int) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}

func TestOomKilledContainerIsReportedAndExitsNonZero(t *testing.T) {
	s := startRunStack(t, "oom", nil)
	lines := subscribe(t, s.Stack)
	// dd's 100 MiB buffer does not fit in 32 MiB.
	code, out := s.ctrExitCode(t, "run", "--rm", "--memory-limit", strconv.Itoa(32<<20), s.ref, "oom1",
		"dd", "if=/dev/zero", "of=/dev/null", "bs=100M", "count=1")
	if code == 0 {
		t.Fatalf("an out-of-memory container exited 0: %s", out)
	}
	// The kill is announced before the exit it caused, as containerd does.
	var topics []string
	timeout := time.After(20 * time.Second)
	for !slices.Contains(topics, "/tasks/exit") {
		select {
		case ev := <-lines:
			if ev.Namespace == s.ns && strings.Contains(ev.Event, `"container_id":"oom1"`) {
				topics = append(topics, ev.Topic)
			}
		case <-timeout:
			t.Fatalf("no /tasks/exit of oom1; saw %v", topics)
		}
	}
	if i := slices.Index(topics, "/tasks/oom"); i < 0 || i > slices.Index(topics, "/tasks/exit") {
		t.Fatalf("events of oom1: %v, want /tasks/oom before /tasks/exit", topics)
	}
	if left := s.leftovers(t, "oom1"); len(left) > 0 {
		t.Fatalf("left behind: %v", left)
	}
}

func TestTaskdRestartKeepsRunningTasksAndReportsTheExitOnce(t *testing.T) {
	s := startRunStack(t, "restart", nil)
	lines := subscribe(t, s.Stack)
	ids := []string{"r1", "r2", "r3", "r4", "r5"}
	for _, id := range ids[:4] {
		s.MustCtr(s.ns, "run", "-d", s.ref, id, "sleep", "1000")
	}
	s.MustCtr(s.ns, "run", "-d", s.ref, "r5", "sh", "-c", `trap "exit 4" TERM; while true; do sleep 0.1; done`)
	before := map[string]task{}
	for _, id := range ids {
		before[id] = s.waitStatus(t, id, "RUNNING")
	}

	s.Kill9("taskd")
	// r5 exits while taskd is down.
	if err := syscall.Kill(before["r5"].Pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", before["r5"].Pid)); errors.Is(err, os.ErrNotExist) {
			break
		}
		if i == 100 {
			t.Fatal("r5 did not exit on SIGTERM")
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.Up()
	if oneProcess() {
		// eventd died with taskd, and the subscription with it: a
		// subscriber subscribes again. r5's exit, announced while the
		// process starts, may come before it is attached.
		lines = subscribe(t, s.Stack)
	}

	after := s.tasks(t)
	for _, id := range ids[:4] {
		if after[id] != (task{Pid: before[id].Pid, Status: "RUNNING"}) {
			t.Errorf("%s after the restart: %+v, want RUNNING with pid %d", id, after[id], before[id].Pid)
		}
	}
	if after["r5"] != (task{Pid: before["r5"].Pid, Status: "STOPPED"}) {
		t.Errorf("r5 after the restart: %+v, want STOPPED with pid %d", after["r5"], before["r5"].Pid)
	}
	if out := s.MustCtr(s.ns, "tasks", "delete", "r5"); !strings.Contains(out, "exit code 4") {
		t.Errorf("tasks delete r5 did not report exit code 4: %q", out)
	}
	for _, id := range ids[:4] {
		s.MustCtr(s.ns, "tasks", "kill", "-s", "SIGKILL", id)
		s.waitStatus(t, id, "STOPPED")
		s.MustCtr(s.ns, "tasks", "delete", id)
	}
	for _, id := range ids {
		s.MustCtr(s.ns, "containers", "rm", id)
		if left := s.leftovers(t, id); len(left) > 0 {
			t.Errorf("%s left behind: %v", id, left)
		}
	}

	// Count the exits, once all deletions have been announced.
	exits := map[string]int{}
	deleted := map[string]bool{}
	timeout := time.After(20 * time.Second)
	quiet := time.After(time.Hour)
	for done := false; !done; {
		select {
		case ev := <-lines:
			if ev.Namespace != s.ns {
				continue
			}
			var body struct {
				ContainerID string `json:"container_id"`
				ExitStatus  int    `json:"exit_status"`
			}
			json.Unmarshal([]byte(ev.Event), &body)
			switch ev.Topic {
			case "/tasks/exit":
				exits[body.ContainerID]++
				if body.ContainerID == "r5" && body.ExitStatus != 4 {
					t.Errorf("r5's exit event has status %d, want 4: %s", body.ExitStatus, ev.Event)
				}
			case "/tasks/delete":
				deleted[body.ContainerID] = true
				if len(deleted) == len(ids) {
					quiet = time.After(2 * time.Second) // late duplicates would arrive now
				}
			}
		case <-quiet:
			done = true
		case <-timeout:
			t.Fatalf("not every deletion was announced: deleted %v, exits %v", deleted, exits)
		}
	}
	for _, id := range ids {
		if oneProcess() && id == "r5" && exits[id] == 0 {
			continue // announced before the new subscription (above)
		}
		if exits[id] != 1 {
			t.Errorf("%s: %d /tasks/exit events, want exactly 1 (all: %v)", id, exits[id], exits)
		}
	}
}

func TestShimFromContainerdRunsContainersUnderTaskd(t *testing.T) {
	shim := requireTool(t, "containerd-shim-runc-v2")
	config := filepath.Join(t.TempDir(), "taskd.toml")
	toml := fmt.Sprintf("[runtimes.%q]\npath = %q\n", "io.containerd.runc.v2", shim)
	if err := os.WriteFile(config, []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	s := startRunStack(t, "runcshim", func(l *stack.Layout) {
		l.ExtraArgs = map[string][]string{"taskd": {"--config", config}}
	})

	t.Run("run --rm prints hello", func(t *testing.T) {
		if out := s.MustCtr(s.ns, "run", "--rm", s.ref, "h1", "echo", "hello"); !strings.Contains(out, "hello\n") {
			t.Fatalf("ctr run printed %q", out)
		}
		code, out := s.ctrExitCode(t, "run", "--rm", s.ref, "h2", "sh", "-c", "exit 7")
		if code != 7 {
			t.Fatalf("ctr exited %d, want 7: %s", code, out)
		}
	})
	t.Run("the container's parent is containerd-shim-runc-v2", func(t *testing.T) {
		s.MustCtr(s.ns, "run", "-d", s.ref, "p1", "sleep", "1000")
		tk := s.waitStatus(t, "p1", "RUNNING")
		ppid, exe := parentExe(t, tk.Pid)
		if exe != shim {
			t.Fatalf("the container's parent %d is %s, want %s", ppid, exe, shim)
		}
		if out := s.MustCtr(s.ns, "tasks", "exec", "--exec-id", "x1", "p1", "echo", "exec-under-runc-shim"); !strings.Contains(out, "exec-under-runc-shim") {
			t.Fatalf("exec printed %q", out)
		}
		s.MustCtr(s.ns, "tasks", "kill", "-s", "SIGKILL", "p1")
		s.waitStatus(t, "p1", "STOPPED")
		s.MustCtr(s.ns, "tasks", "delete", "p1")
		s.MustCtr(s.ns, "containers", "rm", "p1")
		if left := s.leftovers(t, "p1"); len(left) > 0 {
			t.Fatalf("left behind: %v", left)
		}
	})
}

func TestTaskCreateRejectsBadInputAndLeavesNothing(t *testing.T) {
	s := startRunStack(t, "bad", nil)
	conn := s.Conn()
	containers := containersapi.NewContainersClient(conn)
	tasks := tasksapi.NewTasksClient(conn)
	ctx := inNamespace(context.Background(), s.ns)

	noProcess := filepath.Join(t.TempDir(), "no-process.json")
	if err := os.WriteFile(noProcess, []byte(`{"ociVersion":"1.0.2","root":{"path":"/"}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	ctrCases := []struct {
		name string
		id   string
		args []string // between "run --rm" and the command
		want string   // in ctr's output
	}{
		{"a missing rootfs is not found", "norootfs", []string{"--rootfs", "/nonexistent/rootfs", "norootfs", "true"}, "not found"},
		{"a spec without a process is invalid", "noproc", []string{"--config", noProcess, "noproc"}, "invalid argument"},
		{"an unknown runtime is not found", "nope", []string{"--runtime", "io.containerd.nope.v1", s.ref, "nope", "true"}, "not found"},
		{"a runtime name that is no runtime is invalid", "badname", []string{"--runtime", "nope", s.ref, "badname", "true"}, "invalid argument"},
		{"a missing binary fails the create", "nobin", []string{s.ref, "nobin", "/no/such/binary"}, "no such file"},
	}
	for _, c := range ctrCases {
		t.Run(c.name, func(t *testing.T) {
			args := append([]string{"run", "--rm"}, c.args...)
			out, err := s.Ctr(s.ns, args...)
			if err == nil {
				t.Fatalf("ctr %v succeeded: %s", args, out)
			}
			if !strings.Contains(out, c.want) {
				t.Fatalf("ctr %v: want %q in:\n%s", args, c.want, out)
			}
			if left := s.leftovers(t, c.id); len(left) > 0 {
				t.Fatalf("left behind: %v", left)
			}
		})
	}

	t.Run("a duplicate container id already exists", func(t *testing.T) {
		s.MustCtr(s.ns, "run", "-d", s.ref, "dup", "sleep", "1000")
		out, err := s.Ctr(s.ns, "run", "-d", s.ref, "dup", "sleep", "1000")
		if err == nil || !strings.Contains(out, "already exists") {
			t.Fatalf("second run of dup: %v: %s", err, out)
		}
		// The first is untouched: one task, one shim.
		if got := s.tasks(t)["dup"]; got.Status != "RUNNING" {
			t.Fatalf("dup after the second run: %+v", got)
		}
		_, err = tasks.Create(ctx, &tasksapi.CreateTaskRequest{ContainerID: "dup"})
		if status.Code(err) != codes.AlreadyExists {
			t.Fatalf("second task of dup: %v, want AlreadyExists", err)
		}
		s.MustCtr(s.ns, "tasks", "kill", "-s", "SIGKILL", "dup")
		s.waitStatus(t, "dup", "STOPPED")
		s.MustCtr(s.ns, "tasks", "delete", "dup")
		s.MustCtr(s.ns, "containers", "rm", "dup")
		if left := s.leftovers(t, "dup"); len(left) > 0 {
			t.Fatalf("left behind: %v", left)
		}
	})

	apiCases := []struct {
		name string
		id   string
		spec string
		mod  func(*containersapi.Container)
		req  *tasksapi.CreateTaskRequest
		want codes.Code
	}{
		{name: "a spec that is not JSON is invalid", id: "garbage", spec: "{not json",
			req: &tasksapi.CreateTaskRequest{}, want: codes.InvalidArgument},
		{name: "a rootfs path that does not exist is not found", id: "apinoroot",
			spec: `{"ociVersion":"1.0.2","process":{"args":["true"],"cwd":"/"},"root":{"path":"/nonexistent/rootfs"}}`,
			req:  &tasksapi.CreateTaskRequest{}, want: codes.NotFound},
		{name: "an unknown runtime through the API is not found", id: "apinope",
			spec: `{"ociVersion":"1.0.2","process":{"args":["true"],"cwd":"/"},"root":{"path":"/"}}`,
			mod:  func(c *containersapi.Container) { c.Runtime.Name = "io.containerd.nope.v1" },
			req:  &tasksapi.CreateTaskRequest{}, want: codes.NotFound},
		{name: "a task of no container is not found", id: "ghost", req: &tasksapi.CreateTaskRequest{}, want: codes.NotFound},
	}
	for _, c := range apiCases {
		t.Run(c.name, func(t *testing.T) {
			if c.spec != "" {
				rec := &containersapi.Container{ID: c.id, Spec: &anypb.Any{TypeUrl: specTypeURL, Value: []byte(c.spec)},
					Runtime: &containersapi.Container_Runtime{Name: "io.containerd.runc.v2"}}
				if c.mod != nil {
					c.mod(rec)
				}
				_, err := containers.Create(ctx, &containersapi.CreateContainerRequest{Container: rec})
				if err != nil {
					if status.Code(err) != c.want {
						t.Fatalf("containers.Create: %v, want %s", err, c.want)
					}
					return
				}
				t.Cleanup(func() { containers.Delete(ctx, &containersapi.DeleteContainerRequest{ID: c.id}) })
			}
			c.req.ContainerID = c.id
			_, err := tasks.Create(ctx, c.req)
			if status.Code(err) != c.want {
				t.Fatalf("tasks.Create: %v, want %s", err, c.want)
			}
			if left := s.leftovers(t, c.id); len(left) > 0 {
				t.Fatalf("left behind: %v", left)
			}
		})
	}
}
