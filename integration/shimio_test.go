package integration

// Shim I/O and runtime options, each checked on Flotilla and, where the
// same test can run there, on Debian's containerd 1.6 as the reference.

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
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	"github.com/containerd/containerd/api/types/runc/options"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/flotilla/flotilla/integration/imagekit"
)

// target is a containerd API endpoint under test: a Flotilla gateway or the
// reference containerd.
type target struct {
	name   string
	socket string
	// bundle is the directory of container id's bundle in namespace ns.
	bundle func(ns, id string) string
	// runcRoot is the runtime state root the shim uses by default (before
	// the namespace is appended).
	runcRoot string
}

func flotillaTarget(s *Stack) target {
	return target{
		name:     "flotilla",
		socket:   s.Socket,
		bundle:   func(ns, id string) string { return filepath.Join(s.Layout.State, "taskd", "tasks", ns, id) },
		runcRoot: filepath.Join(s.Layout.State, "runc"),
	}
}

// startContainerd16 starts Debian's containerd (1.6) on temporary
// directories and sockets, stopped and cleaned up when the test ends.
func startContainerd16(t *testing.T) target {
	t.Helper()
	bin := requireTool(t, "containerd")
	requireTool(t, "containerd-shim-runc-v2")
	requireTool(t, "runc")
	dir, err := os.MkdirTemp("", "ctd")
	if err != nil {
		t.Fatal(err)
	}
	root, state := filepath.Join(dir, "root"), filepath.Join(dir, "state")
	socket := filepath.Join(dir, "containerd.sock")
	config := filepath.Join(dir, "config.toml")
	toml := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = %q
[ttrpc]
  address = %q
`, root, state, socket, socket+".ttrpc")
	if err := os.WriteFile(config, []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--config", config)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	booted := make(chan struct{})
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			log.WriteString(sc.Text() + "\n")
			if strings.Contains(sc.Text(), "containerd successfully booted") {
				close(booted)
			}
		}
	}()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		<-drained
		if t.Failed() {
			t.Logf("--- containerd 1.6 log ---\n%s", lastLines(log.String(), 30))
		}
		reapLeftovers(t, dir)
	})
	select {
	case <-booted:
	case <-drained:
		t.Fatalf("containerd exited:\n%s", log.String())
	case <-time.After(60 * time.Second):
		t.Fatal("containerd did not boot in 60s")
	}
	return target{
		name:     "containerd 1.6",
		socket:   socket,
		bundle:   func(ns, id string) string { return filepath.Join(state, "io.containerd.runtime.v2.task", ns, id) },
		runcRoot: "/run/containerd/runc",
	}
}

func (tg target) conn(t *testing.T) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+tg.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// ctr runs Debian's ctr against the target in namespace ns.
func (tg target) ctr(t *testing.T, ns string, args ...string) (string, error) {
	t.Helper()
	requireTool(t, "ctr")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ctr", append([]string{"--address", tg.socket, "--namespace", ns}, args...)...).CombinedOutput()
	return string(out), err
}

func (tg target) mustCtr(t *testing.T, ns string, args ...string) string {
	t.Helper()
	out, err := tg.ctr(t, ns, args...)
	if err != nil {
		t.Fatalf("%s: ctr %s: %v\n%s", tg.name, strings.Join(args, " "), err, out)
	}
	return out
}

// cleanNamespace removes every task and container of ns, and what the
// runtime leaves of the namespace.
func (tg target) cleanNamespace(t *testing.T, ns string) {
	out, _ := tg.ctr(t, ns, "tasks", "ls", "-q")
	for _, id := range strings.Fields(out) {
		tg.ctr(t, ns, "tasks", "kill", "-a", "-s", "SIGKILL", id)
		for range 50 {
			if _, err := tg.ctr(t, ns, "tasks", "delete", id); err == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	out, _ = tg.ctr(t, ns, "containers", "ls", "-q")
	for _, id := range strings.Fields(out) {
		tg.ctr(t, ns, "containers", "rm", id)
	}
	parents, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", ns))
	for _, dir := range append(parents, filepath.Join("/sys/fs/cgroup", ns)) {
		syscall.Rmdir(dir)
	}
	os.Remove(filepath.Join(tg.runcRoot, ns))
}

// busyboxRootfs makes a root filesystem directory from Debian's
// busybox-static under dir, with the applets the tests use.
func busyboxRootfs(t *testing.T, dir string) string {
	t.Helper()
	rootfs := filepath.Join(dir, "rootfs")
	for _, d := range []string{"bin", "proc", "dev", "sys", "tmp", "etc"} {
		if err := os.MkdirAll(filepath.Join(rootfs, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	data, err := os.ReadFile(imagekit.DefaultBusybox)
	if err != nil {
		t.Skipf("busybox-static: %v", err)
	}
	if err := os.WriteFile(filepath.Join(rootfs, "bin", "busybox"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, applet := range []string{"sh", "echo", "sleep", "stty", "tty", "cat", "seq", "true"} {
		if err := os.Symlink("busybox", filepath.Join(rootfs, "bin", applet)); err != nil {
			t.Fatal(err)
		}
	}
	return rootfs
}

// ociSpec is `runc spec` with rootfs as a writable root, the terminal flag
// and the command args.
func ociSpec(t *testing.T, rootfs string, terminal bool, args ...string) []byte {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command(requireTool(t, "runc"), "spec", "--bundle", dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("runc spec: %v: %s", err, out)
	}
	data, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	var spec map[string]any
	if err := json.Unmarshal(data, &spec); err != nil {
		t.Fatal(err)
	}
	process := spec["process"].(map[string]any)
	process["terminal"] = terminal
	process["args"] = args
	spec["root"] = map[string]any{"path": rootfs, "readonly": false}
	out, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// apiContainer creates container id with spec through the Containers API
// and returns a Tasks client; the container and its task are removed when
// the test ends.
func apiContainer(t *testing.T, tg target, ns, id string, spec []byte) (context.Context, tasksapi.TasksClient) {
	t.Helper()
	conn := tg.conn(t)
	ctx := inNamespace(context.Background(), ns)
	containers := containersapi.NewContainersClient(conn)
	tasks := tasksapi.NewTasksClient(conn)
	_, err := containers.Create(ctx, &containersapi.CreateContainerRequest{Container: &containersapi.Container{
		ID:      id,
		Spec:    &anypb.Any{TypeUrl: specTypeURL, Value: spec},
		Runtime: &containersapi.Container_Runtime{Name: "io.containerd.runc.v2"},
	}})
	if err != nil {
		t.Fatalf("%s: create container %s: %v", tg.name, id, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if _, err := tasks.Kill(ctx, &tasksapi.KillRequest{ContainerID: id, Signal: uint32(unix.SIGKILL), All: true}); err == nil {
			tasks.Wait(ctx, &tasksapi.WaitRequest{ContainerID: id})
		}
		tasks.Delete(ctx, &tasksapi.DeleteTaskRequest{ContainerID: id})
		containers.Delete(ctx, &containersapi.DeleteContainerRequest{ID: id})
		tg.cleanNamespace(t, ns)
	})
	return ctx, tasks
}

func mkfifo(t *testing.T, path string) string {
	t.Helper()
	if err := unix.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// openFifoReader opens a FIFO's read end as containerd's client does
// (without waiting for a writer); reads give up after a minute.
func openFifoReader(t *testing.T, path string) *os.File {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.SetReadDeadline(time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	return f
}

// readLine reads one line, without its "\r\n" or "\n".
func readLine(t *testing.T, r *bufio.Reader) (string, error) {
	t.Helper()
	line, err := r.ReadString('\n')
	return strings.TrimRight(line, "\r\n"), err
}

// TestOutputIsKeptWhileTheReaderIsAway: a container writes a numbered line
// every 100 ms; its reader closes the output FIFO for a while and opens it
// again; every line arrives, in order, and the container never sees its
// output fail.
func TestOutputIsKeptWhileTheReaderIsAway(t *testing.T) {
	requireTool(t, "runc")
	targets := []func(t *testing.T) target{
		func(t *testing.T) target { return flotillaTarget(startStack(t)) },
		startContainerd16,
	}
	for i, start := range targets {
		tg := start(t)
		for _, terminal := range []bool{false, true} {
			name := fmt.Sprintf("%s/terminal=%v", tg.name, terminal)
			t.Run(name, func(t *testing.T) {
				checkOutputKept(t, tg, fmt.Sprintf("keep%d", i), terminal)
			})
		}
	}
}

func checkOutputKept(t *testing.T, tg target, ns string, terminal bool) {
	const lines, awayFrom, awayUntil = 40, 5, 25
	dir := t.TempDir()
	rootfs := busyboxRootfs(t, dir)
	// The container reports each line written on a FIFO of its own, which
	// the test keeps open (read and write: never at end of file).
	progressPath := mkfifo(t, filepath.Join(rootfs, "progress"))
	progressFile, err := os.OpenFile(progressPath, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer progressFile.Close()
	progressFile.SetReadDeadline(time.Now().Add(time.Minute))
	progress := bufio.NewReader(progressFile)

	script := fmt.Sprintf(`i=1; while [ $i -le %d ]; do echo "line $i" || exit 3; echo $i >/progress; i=$((i+1)); sleep 0.1; done`, lines)
	id := fmt.Sprintf("keep-%v", terminal)
	ctx, tasks := apiContainer(t, tg, ns, id, ociSpec(t, rootfs, terminal, "sh", "-c", script))

	stdoutPath := mkfifo(t, filepath.Join(dir, "stdout"))
	req := &tasksapi.CreateTaskRequest{ContainerID: id, Stdout: stdoutPath, Terminal: terminal}
	stdout := openFifoReader(t, stdoutPath)
	defer func() { stdout.Close() }()
	if !terminal {
		req.Stderr = mkfifo(t, filepath.Join(dir, "stderr"))
		stderr := openFifoReader(t, req.Stderr)
		defer stderr.Close()
		go io.Copy(io.Discard, stderr)
	}
	if _, err := tasks.Create(ctx, req); err != nil {
		t.Fatalf("create task: %v", err)
	}
	if _, err := tasks.Start(ctx, &tasksapi.StartRequest{ContainerID: id}); err != nil {
		t.Fatalf("start: %v", err)
	}

	var got []string
	r := bufio.NewReader(stdout)
	for len(got) < awayFrom {
		line, err := readLine(t, r)
		if err != nil {
			t.Fatalf("reading line %d: %v", len(got)+1, err)
		}
		got = append(got, line)
	}
	// Away: nothing reads the FIFO while the container writes on.
	stdout.Close()
	for {
		n, err := readLine(t, progress)
		if err != nil {
			t.Fatalf("progress: %v", err)
		}
		if v, _ := strconv.Atoi(n); v >= awayUntil {
			break
		}
	}
	stdout = openFifoReader(t, stdoutPath)
	r = bufio.NewReader(stdout)
	for {
		line, err := readLine(t, r)
		if line != "" {
			got = append(got, line)
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("reading after reopening: %v (have %d lines)", err, len(got))
		}
	}
	var want []string
	for i := 1; i <= lines; i++ {
		want = append(want, fmt.Sprintf("line %d", i))
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("%s: read %d lines, want %d in order:\n%s", tg.name, len(got), lines, strings.Join(got, "\n"))
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := tasks.Wait(wctx, &tasksapi.WaitRequest{ContainerID: id})
	if err != nil {
		t.Fatalf("wait: %v", err)
	}
	if resp.ExitStatus != 0 {
		t.Fatalf("%s: the container exited %d: its output failed while the reader was away", tg.name, resp.ExitStatus)
	}
}

// pushBusybox pushes the test-image kit's busybox to a fresh registry and
// returns its reference.
func pushBusybox(t *testing.T) string {
	t.Helper()
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
	return ref
}

// bothTargets starts a Flotilla stack and the reference containerd, with
// busybox pulled into ns on both.
func bothTargets(t *testing.T, ns string) ([]target, string) {
	t.Helper()
	requireTool(t, "ctr")
	requireTool(t, "runc")
	ref := pushBusybox(t)
	targets := []target{flotillaTarget(startStack(t)), startContainerd16(t)}
	for _, tg := range targets {
		tg.mustCtr(t, ns, "images", "pull", "--plain-http", ref)
		t.Cleanup(func() { tg.cleanNamespace(t, ns) })
	}
	return targets, ref
}

// TestCtrRunWithLogURIs: `ctr run --log-uri` with binary:// (a logger
// binary handed the output) and file:// (appended to a file): every line
// of both streams arrives.
func TestCtrRunWithLogURIs(t *testing.T) {
	logger := filepath.Join(binDir, "flotilla-testlogger")
	if _, err := os.Stat(logger); err != nil {
		t.Fatalf("the test logger is built by make build: %v", err)
	}
	const ns = "loguri"
	targets, ref := bothTargets(t, ns)
	const n = 200
	script := fmt.Sprintf(`i=1; while [ $i -le %d ]; do echo "out $i"; echo "err $i" >&2; i=$((i+1)); done`, n)
	lines := func(prefix string) string {
		var b strings.Builder
		for i := 1; i <= n; i++ {
			fmt.Fprintf(&b, "%s %d\n", prefix, i)
		}
		return b.String()
	}
	for _, tg := range targets {
		t.Run(tg.name+"/binary", func(t *testing.T) {
			dir := t.TempDir()
			id := "logbin"
			tg.mustCtr(t, ns, "run", "--rm", "--log-uri", "binary://"+logger+"?dir="+dir, ref, id, "sh", "-c", script)
			for ext, prefix := range map[string]string{".stdout": "out", ".stderr": "err"} {
				data, err := os.ReadFile(filepath.Join(dir, ns+"-"+id+ext))
				if err != nil {
					t.Fatalf("%s: the logger wrote no %s: %v", tg.name, ext, err)
				}
				if string(data) != lines(prefix) {
					t.Fatalf("%s: the logger got %d bytes of %s, want %d lines:\n%s", tg.name, len(data), ext, n, lastLines(string(data), 5))
				}
			}
		})
		t.Run(tg.name+"/binary with a terminal", func(t *testing.T) {
			// ctr has no way to ask for both; the Tasks API has.
			dir := t.TempDir()
			id := "logtty"
			rootfs := busyboxRootfs(t, t.TempDir())
			ctx, tasks := apiContainer(t, tg, ns, id, ociSpec(t, rootfs, true, "sh", "-c", script))
			uri := "binary://" + logger + "?dir=" + dir
			if _, err := tasks.Create(ctx, &tasksapi.CreateTaskRequest{ContainerID: id, Terminal: true, Stdout: uri, Stderr: uri}); err != nil {
				t.Fatalf("%s: create: %v", tg.name, err)
			}
			if _, err := tasks.Start(ctx, &tasksapi.StartRequest{ContainerID: id}); err != nil {
				t.Fatal(err)
			}
			wctx, cancel := context.WithTimeout(ctx, time.Minute)
			defer cancel()
			if _, err := tasks.Wait(wctx, &tasksapi.WaitRequest{ContainerID: id}); err != nil {
				t.Fatal(err)
			}
			if _, err := tasks.Delete(wctx, &tasksapi.DeleteTaskRequest{ContainerID: id}); err != nil {
				t.Fatal(err)
			}
			data, err := os.ReadFile(filepath.Join(dir, ns+"-"+id+".stdout"))
			if err != nil {
				t.Fatalf("%s: the logger wrote no stdout: %v", tg.name, err)
			}
			// Both streams come through the terminal, each in order.
			var out, errs strings.Builder
			for _, line := range strings.SplitAfter(strings.ReplaceAll(string(data), "\r\n", "\n"), "\n") {
				switch {
				case strings.HasPrefix(line, "out "):
					out.WriteString(line)
				case strings.HasPrefix(line, "err "):
					errs.WriteString(line)
				}
			}
			if out.String() != lines("out") || errs.String() != lines("err") {
				t.Fatalf("%s: the logger got %d bytes through the terminal:\n%s", tg.name, len(data), lastLines(string(data), 5))
			}
		})
		t.Run(tg.name+"/file", func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "logs", "c.log")
			tg.mustCtr(t, ns, "run", "--rm", "--log-uri", "file://"+path, ref, "logfile", "sh", "-c", script)
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%s: no log file: %v", tg.name, err)
			}
			var out, errs strings.Builder
			for _, line := range strings.SplitAfter(string(data), "\n") {
				switch {
				case strings.HasPrefix(line, "out "):
					out.WriteString(line)
				case strings.HasPrefix(line, "err "):
					errs.WriteString(line)
				}
			}
			if out.String() != lines("out") || errs.String() != lines("err") {
				t.Fatalf("%s: the log file lacks lines (%d bytes):\n%s", tg.name, len(data), lastLines(string(data), 5))
			}
		})
	}
}

// TestExecWithATerminalResizedBeforeStart: an exec asks for a terminal in a
// container created without one, and is resized before it starts, as
// nerdctl exec -t does; a process without a terminal can be resized too.
func TestExecWithATerminalResizedBeforeStart(t *testing.T) {
	requireTool(t, "runc")
	targets := []func(t *testing.T) target{
		func(t *testing.T) target { return flotillaTarget(startStack(t)) },
		startContainerd16,
	}
	for _, start := range targets {
		tg := start(t)
		t.Run(tg.name, func(t *testing.T) {
			dir := t.TempDir()
			rootfs := busyboxRootfs(t, dir)
			ctx, tasks := apiContainer(t, tg, "execpty", "host", ociSpec(t, rootfs, false, "sleep", "1000"))
			if _, err := tasks.Create(ctx, &tasksapi.CreateTaskRequest{ContainerID: "host"}); err != nil {
				t.Fatal(err)
			}
			if _, err := tasks.ResizePty(ctx, &tasksapi.ResizePtyRequest{ContainerID: "host", Width: 100, Height: 30}); err != nil {
				t.Fatalf("%s: resizing a process without a terminal: %v", tg.name, err)
			}
			if _, err := tasks.Start(ctx, &tasksapi.StartRequest{ContainerID: "host"}); err != nil {
				t.Fatal(err)
			}
			// The exec's spec says no terminal; the request says terminal.
			process, err := json.Marshal(map[string]any{"args": []string{"sh", "-c", "tty; stty size"}, "cwd": "/", "env": []string{"PATH=/bin"}, "terminal": false})
			if err != nil {
				t.Fatal(err)
			}
			stdoutPath := mkfifo(t, filepath.Join(dir, "exec-stdout"))
			stdout := openFifoReader(t, stdoutPath)
			defer stdout.Close()
			_, err = tasks.Exec(ctx, &tasksapi.ExecProcessRequest{ContainerID: "host", ExecID: "pty", Terminal: true, Stdout: stdoutPath,
				Spec: &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Process", Value: process}})
			if err != nil {
				t.Fatalf("exec: %v", err)
			}
			if _, err := tasks.ResizePty(ctx, &tasksapi.ResizePtyRequest{ContainerID: "host", ExecID: "pty", Width: 123, Height: 45}); err != nil {
				t.Fatalf("%s: resize before start: %v", tg.name, err)
			}
			if _, err := tasks.Start(ctx, &tasksapi.StartRequest{ContainerID: "host", ExecID: "pty"}); err != nil {
				t.Fatalf("%s: start the exec: %v", tg.name, err)
			}
			out, err := io.ReadAll(stdout)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(out), "/dev/pts/") {
				t.Fatalf("%s: the exec has no terminal: %q", tg.name, out)
			}
			// containerd drops a size set before the start; Flotilla keeps it.
			if tg.name == "flotilla" && !strings.Contains(string(out), "45 123") {
				t.Fatalf("the size set before the start was not applied: %q", out)
			}
		})
	}
}

// TestRuncRootGetsTheNamespace: the runtime's state root, the default one
// or the runc options' Root (ctr run --runc-root), has the namespace
// appended, so `runc --root <root>/<ns> list` finds the container.
func TestRuncRootGetsTheNamespace(t *testing.T) {
	const ns = "runcroot"
	targets, ref := bothTargets(t, ns)
	for _, tg := range targets {
		t.Run(tg.name, func(t *testing.T) {
			custom := filepath.Join(t.TempDir(), "runc")
			for _, c := range []struct {
				id, root string
				args     []string
			}{
				{"default-root", tg.runcRoot, nil},
				{"options-root", custom, []string{"--runc-root", custom}},
			} {
				args := append(append([]string{"run", "-d"}, c.args...), ref, c.id, "sleep", "1000")
				tg.mustCtr(t, ns, args...)
				out, err := exec.Command("runc", "--root", filepath.Join(c.root, ns), "list", "-q").CombinedOutput()
				if err != nil || !strings.Contains(string(out), c.id) {
					t.Fatalf("%s: runc --root %s list: %v: %q, want %s", tg.name, filepath.Join(c.root, ns), err, out, c.id)
				}
				tg.mustCtr(t, ns, "tasks", "kill", "-s", "SIGKILL", c.id)
			}
		})
	}
}

// TestUserNamespacedContainerRuns: with UID/GID mappings (ctr run --uidmap
// --gidmap: a remapped snapshot, the mappings in the spec) the container
// runs; its bundle is 0710 with the remapped root group.
func TestUserNamespacedContainerRuns(t *testing.T) {
	const ns = "userns"
	targets, ref := bothTargets(t, ns)
	for _, tg := range targets {
		t.Run(tg.name, func(t *testing.T) {
			// The remapped root must reach the bundle through the
			// temporary directories above it, as through /run on a host.
			for dir := filepath.Dir(tg.bundle(ns, "x")); dir != "/tmp" && dir != "/"; dir = filepath.Dir(dir) {
				if fi, err := os.Stat(dir); err == nil {
					os.Chmod(dir, fi.Mode().Perm()|0o011)
				}
			}
			maps := []string{"--uidmap", "0:1000:65535", "--gidmap", "0:2000:65535"}
			tg.mustCtr(t, ns, append(append([]string{"run", "-d"}, maps...), ref, "mapped", "sleep", "1000")...)
			fi, err := os.Stat(tg.bundle(ns, "mapped"))
			if err != nil {
				t.Fatal(err)
			}
			if gid := fi.Sys().(*syscall.Stat_t).Gid; fi.Mode().Perm() != 0o710 || gid != 2000 {
				t.Fatalf("%s: bundle mode %o group %d, want 0710 group 2000", tg.name, fi.Mode().Perm(), gid)
			}
			tg.mustCtr(t, ns, "tasks", "kill", "-s", "SIGKILL", "mapped")

			args := append(append([]string{"run", "--rm"}, maps...), ref, "exit7", "sh", "-c", "exit 7")
			out, err := tg.ctr(t, ns, args...)
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 7 {
				t.Fatalf("%s: user-namespaced run: %v, want exit 7:\n%s", tg.name, err, out)
			}
		})
	}
}

// TestShimJoinsTheShimCgroupOfTheOptions: the runc options' ShimCgroup (the
// client's WithShimCgroup) puts the shim in that cgroup.
func TestShimJoinsTheShimCgroupOfTheOptions(t *testing.T) {
	requireTool(t, "runc")
	targets := []func(t *testing.T) target{
		func(t *testing.T) target { return flotillaTarget(startStack(t)) },
		startContainerd16,
	}
	for i, start := range targets {
		tg := start(t)
		t.Run(tg.name, func(t *testing.T) {
			group := fmt.Sprintf("/flotilla-shimcg-%d-%d", os.Getpid(), i)
			procs := makeCgroup(t, group)
			rootfs := busyboxRootfs(t, t.TempDir())
			ctx, tasks := apiContainer(t, tg, "shimcg", "cg", ociSpec(t, rootfs, false, "sleep", "1000"))
			opts, err := proto.Marshal(&options.Options{ShimCgroup: group})
			if err != nil {
				t.Fatal(err)
			}
			// As containerd's client sends it (typeurl: the message's name).
			any := &anypb.Any{TypeUrl: "containerd.runc.v1.Options", Value: opts}
			if _, err := tasks.Create(ctx, &tasksapi.CreateTaskRequest{ContainerID: "cg", Options: any}); err != nil {
				t.Fatalf("%s: create: %v", tg.name, err)
			}
			data, err := os.ReadFile(procs)
			if err != nil {
				t.Fatal(err)
			}
			if len(strings.Fields(string(data))) == 0 {
				t.Fatalf("%s: no process in the shim cgroup %s", tg.name, group)
			}
		})
	}
}

// makeCgroup creates group (in the pids hierarchy on a v1 host, in the
// unified one on v2), removed when the test ends, and returns its
// cgroup.procs file.
func makeCgroup(t *testing.T, group string) string {
	t.Helper()
	var dirs []string
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		dirs = []string{filepath.Join("/sys/fs/cgroup", group)}
	} else {
		for _, ctrl := range []string{"pids", "memory", "cpu", "devices"} {
			if _, err := os.Stat(filepath.Join("/sys/fs/cgroup", ctrl)); err == nil {
				dirs = append(dirs, filepath.Join("/sys/fs/cgroup", ctrl, group))
			}
		}
	}
	if len(dirs) == 0 {
		t.Skip("no cgroup hierarchy found")
	}
	for _, d := range dirs {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for _, d := range dirs {
			// The shim may still be leaving: move what is left out first.
			data, _ := os.ReadFile(filepath.Join(d, "cgroup.procs"))
			for _, pid := range strings.Fields(string(data)) {
				os.WriteFile(filepath.Join(filepath.Dir(d), "cgroup.procs"), []byte(pid), 0o644)
			}
			if err := syscall.Rmdir(d); err != nil {
				t.Logf("remove cgroup %s: %v", d, err)
			}
		}
	})
	return filepath.Join(dirs[0], "cgroup.procs")
}

// startContainerd2 starts containerd 2.x ($CONTAINERD2_BIN) with its own
// runc shim, as a reference for what 1.6 lacks.
func startContainerd2(t *testing.T) target {
	t.Helper()
	dir := filepath.Dir(ctr2Bin(t))
	sock := startContainerd(t, filepath.Join(dir, "containerd"), dir)
	state := filepath.Join(filepath.Dir(sock), "state")
	return target{
		name:     "containerd 2",
		socket:   sock,
		bundle:   func(ns, id string) string { return filepath.Join(state, "io.containerd.runtime.v2.task", ns, id) },
		runcRoot: "/run/containerd/runc",
	}
}

// TestIDMappedRootfs: ctr 2's run --uidmap --gidmap --remap-labels asks the
// overlay snapshotter for an ID-mapped snapshot (labels, no chown of the
// image): the container's root owns the image's files and its "/".
func TestIDMappedRootfs(t *testing.T) {
	requireTool(t, "ctr")
	requireTool(t, "runc")
	const ns = "idmapped"
	ref := pushBusybox(t)
	for _, start := range []func(t *testing.T) target{
		func(t *testing.T) target { return flotillaTarget(startStack(t)) },
		startContainerd2,
	} {
		tg := start(t)
		t.Run(tg.name, func(t *testing.T) {
			tg.mustCtr(t, ns, "images", "pull", "--plain-http", ref)
			t.Cleanup(func() { tg.cleanNamespace(t, ns) })
			// The mapped root must reach the bundle, as through /run.
			for dir := filepath.Dir(tg.bundle(ns, "x")); dir != "/tmp" && dir != "/"; dir = filepath.Dir(dir) {
				if fi, err := os.Stat(dir); err == nil {
					os.Chmod(dir, fi.Mode().Perm()|0o011)
				}
			}
			// ctr 2's client mounts ID-mapped snapshots (to read the
			// image's /etc/passwd); 1.6's does not know the options.
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			b, err := exec.CommandContext(ctx, ctr2Bin(t), "--address", tg.socket, "--namespace", ns,
				"run", "--rm", "--uidmap", "0:1000:65535", "--gidmap", "0:2000:65535", "--remap-labels",
				ref, "idmapped", "sh", "-c", "touch /new && ls -ln /bin/busybox /new").CombinedOutput()
			out := string(b)
			if err != nil {
				t.Fatalf("%s: ctr 2 run --remap-labels: %v\n%s", tg.name, err, out)
			}
			var lines []string // without containerd 2's log lines
			for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
				if !strings.HasPrefix(l, "time=") {
					lines = append(lines, l)
				}
			}
			if len(lines) != 2 {
				t.Fatalf("%s: ls printed %q", tg.name, out)
			}
			for _, line := range lines {
				f := strings.Fields(line)
				if len(f) < 4 || f[2] != "0" || f[3] != "0" {
					t.Fatalf("%s: in the container %q is not root's: the rootfs is not ID-mapped", tg.name, line)
				}
			}
			// The snapshotter did it, not a chowned copy made by the client:
			// the snapshot's mounts carry the mappings and no other snapshot
			// than the image's layer and the container's exists.
			b, err = exec.CommandContext(ctx, ctr2Bin(t), "--address", tg.socket, "--namespace", ns,
				"run", "-d", "--uidmap", "0:1000:65535", "--gidmap", "0:2000:65535", "--remap-labels",
				ref, "idmapped-d", "sleep", "1000").CombinedOutput()
			if err != nil {
				t.Fatalf("%s: ctr 2 run -d --remap-labels: %v\n%s", tg.name, err, b)
			}
			mounts := tg.mustCtr(t, ns, "snapshots", "mounts", "/mnt", "idmapped-d")
			if !strings.Contains(mounts, "uidmap=0:1000:65535") || !strings.Contains(mounts, "gidmap=0:2000:65535") {
				t.Fatalf("%s: the snapshot's mounts lack the ID mappings: %s", tg.name, mounts)
			}
			if snaps := strings.Split(strings.TrimSpace(tg.mustCtr(t, ns, "snapshots", "ls")), "\n"); len(snaps) != 3 {
				t.Fatalf("%s: want the header, one layer and the container's snapshot:\n%s", tg.name, strings.Join(snaps, "\n"))
			}
			tg.mustCtr(t, ns, "tasks", "kill", "-s", "SIGKILL", "idmapped-d")
		})
	}
}
