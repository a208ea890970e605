package main

// End-to-end tests of the taskd-shim binary: each test starts the shim
// through its real command line (`start`, as containerd and taskd do),
// drives it over ttrpc with containerd's task API, and runs real containers
// with runc from a tiny busybox rootfs. Events go to a fake publish binary
// that appends what it receives to <address>.events. They need root, runc
// and /bin/busybox, and are skipped without them.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	cg1stats "github.com/containerd/cgroups/v3/cgroup1/stats"
	cg2stats "github.com/containerd/cgroups/v3/cgroup2/stats"
	eventstypes "github.com/containerd/containerd/api/events"
	taskapi "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/api/types/runc/options"
	tasktypes "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/fifo"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/flotilla/flotilla/services/mount"
)

const testNamespace = "shimtest"

var (
	shimBin     string // the built taskd-shim
	publishBin  string // fake publish binary
	lowerRootfs string // busybox rootfs, shared read-only
	stateDir    string // FLOTILLA_STATE for the shims
	skipReason  string
)

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	if os.Geteuid() != 0 {
		skipReason = "needs root"
	} else if _, err := exec.LookPath("runc"); err != nil {
		skipReason = "needs runc"
	} else if _, err := os.Stat("/bin/busybox"); err != nil {
		skipReason = "needs /bin/busybox"
	}
	if skipReason != "" {
		return m.Run()
	}
	work, err := os.MkdirTemp("", "shimtest")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(work)
	stateDir = filepath.Join(work, "state")
	os.Setenv("FLOTILLA_STATE", stateDir)

	shimBin = filepath.Join(work, "taskd-shim")
	build := exec.Command("go", "build", "-o", shimBin, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build taskd-shim:", err)
		return 1
	}
	publishBin = filepath.Join(work, "publish")
	script := `#!/bin/sh
# fake publish binary: --address ADDR publish --topic TOPIC --namespace NS
printf '%s %s %s\n' "$5" "$7" "$(base64 -w0)" >> "$2.events"
`
	if err := os.WriteFile(publishBin, []byte(script), 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	lowerRootfs = filepath.Join(work, "lower")
	if err := makeRootfs(lowerRootfs); err != nil {
		fmt.Fprintln(os.Stderr, "rootfs:", err)
		return 1
	}
	code := m.Run()
	for _, c := range []string{"cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids", "systemd", "unified", ""} {
		_ = os.Remove(filepath.Join("/sys/fs/cgroup", c, "flotilla-shimtest"))
	}
	return code
}

func makeRootfs(dir string) error {
	for _, d := range []string{"bin", "proc", "dev", "sys", "tmp", "etc", "root", "run"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	data, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "bin", "busybox"), data, 0o755); err != nil {
		return err
	}
	for _, name := range []string{"sh", "echo", "cat", "sleep", "true", "head", "tr", "stty", "test", "ps"} {
		if err := os.Symlink("busybox", filepath.Join(dir, "bin", name)); err != nil {
			return err
		}
	}
	return nil
}

func needRoot(t *testing.T) {
	t.Helper()
	if skipReason != "" {
		t.Skip(skipReason)
	}
}

// ---- bundles and specs ----

// spec is a container spec shaped like containerd's default for Linux.
func spec(id string, args ...string) *specs.Spec {
	caps := []string{"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
		"CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"}
	return &specs.Spec{
		Version: specs.Version,
		Process: &specs.Process{
			Args: args,
			Env:  []string{"PATH=/bin", "HOME=/root"},
			Cwd:  "/",
			Capabilities: &specs.LinuxCapabilities{
				Bounding: caps, Effective: caps, Permitted: caps,
			},
			Rlimits:         []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 1024, Soft: 1024}},
			NoNewPrivileges: true,
		},
		Root:     &specs.Root{Path: "rootfs"},
		Hostname: id,
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
			{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
			{Destination: "/run", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
		},
		Linux: &specs.Linux{
			CgroupsPath: "/flotilla-shimtest/" + id,
			Resources: &specs.LinuxResources{
				Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
			},
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace}, {Type: specs.UTSNamespace},
				{Type: specs.MountNamespace}, {Type: specs.NetworkNamespace},
			},
			MaskedPaths:   []string{"/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"},
			ReadonlyPaths: []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"},
		},
	}
}

type bundle struct {
	id, dir, address string
	rootfs           []*types.Mount
}

// newBundle writes config.json for s into a fresh bundle and prepares an
// overlay rootfs (busybox lower, private upper) for the shim to mount.
func newBundle(t *testing.T, s *specs.Spec) *bundle {
	t.Helper()
	id := s.Hostname
	base := t.TempDir()
	b := &bundle{id: id, dir: filepath.Join(base, "bundle"), address: filepath.Join(base, "containerd.sock")}
	for _, d := range []string{b.dir, filepath.Join(base, "upper"), filepath.Join(base, "work")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	data, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(b.dir, "config.json"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	b.rootfs = []*types.Mount{{
		Type:   "overlay",
		Source: "overlay",
		Options: []string{
			"lowerdir=" + lowerRootfs,
			"upperdir=" + filepath.Join(base, "upper"),
			"workdir=" + filepath.Join(base, "work"),
		},
	}}
	t.Cleanup(func() {
		// Whatever a failed test left: the container, the mount.
		_ = exec.Command("runc", "--root", filepath.Join(stateDir, "runc", testNamespace), "delete", "--force", id).Run()
		_ = mount.Unmount(filepath.Join(b.dir, "rootfs"))
	})
	return b
}

// shimArgs is the command line containerd uses.
func (b *bundle) shimArgs(action string) []string {
	return []string{"-namespace", testNamespace, "-address", b.address, "-publish-binary", publishBin, "-id", b.id, "-debug", action}
}

// start runs `taskd-shim … start` in the bundle and returns the address it printed.
func (b *bundle) start(t *testing.T) string {
	t.Helper()
	cmd := exec.Command(shimBin, b.shimArgs("start")...)
	cmd.Dir = b.dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("shim start: %v: %s", err, out)
	}
	address := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if pid := b.shimPid(t); pid > 0 {
			_ = unix.Kill(pid, unix.SIGKILL)
		}
	})
	return address
}

func (b *bundle) shimPid(t *testing.T) int {
	data, err := os.ReadFile(filepath.Join(b.dir, "shim.pid"))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	return pid
}

// connect dials the shim's ttrpc socket.
func connect(t *testing.T, address string) taskapi.TTRPCTaskService {
	t.Helper()
	conn, err := net.Dial("unix", strings.TrimPrefix(address, "unix://"))
	if err != nil {
		t.Fatalf("dial shim: %v", err)
	}
	client := ttrpc.NewClient(conn)
	t.Cleanup(func() { client.Close() })
	return taskapi.NewTTRPCTaskClient(client)
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// launch starts a shim for s and creates the task; it returns the bundle,
// the client and the stdio.
func launch(t *testing.T, s *specs.Spec, io *stdio) (*bundle, taskapi.TTRPCTaskService) {
	t.Helper()
	b := newBundle(t, s)
	client := connect(t, b.start(t))
	req := &taskapi.CreateTaskRequest{ID: b.id, Bundle: b.dir, Rootfs: b.rootfs}
	if io != nil {
		req.Stdin, req.Stdout, req.Stderr, req.Terminal = io.stdin, io.stdout, io.stderr, io.terminal
	}
	if _, err := client.Create(ctxT(t), req); err != nil {
		t.Fatalf("create: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, _ = client.Kill(ctx, &taskapi.KillRequest{ID: b.id, Signal: 9, All: true})
		_, _ = client.Wait(ctx, &taskapi.WaitRequest{ID: b.id})
		_, _ = client.Delete(ctx, &taskapi.DeleteRequest{ID: b.id})
		pid := b.shimPid(t)
		_, _ = client.Shutdown(ctx, &taskapi.ShutdownRequest{ID: b.id})
		// The shim delivers its last events before it exits.
		for deadline := time.Now().Add(10 * time.Second); pid > 0 && alive(pid) && time.Now().Before(deadline); {
			time.Sleep(10 * time.Millisecond)
		}
	})
	return b, client
}

// ---- stdio FIFOs ----

type stdio struct {
	stdin, stdout, stderr string
	terminal              bool
	in                    *os.File
	mu                    sync.Mutex
	out                   bytes.Buffer
	eof                   chan struct{}
}

// newStdio creates FIFOs as containerd's client does and starts reading
// stdout (stderr too, into the same buffer) before the task exists.
func newStdio(t *testing.T, withStdin, terminal bool) *stdio {
	t.Helper()
	dir := t.TempDir()
	s := &stdio{stdout: filepath.Join(dir, "stdout"), terminal: terminal, eof: make(chan struct{})}
	paths := []string{s.stdout}
	if !terminal {
		s.stderr = filepath.Join(dir, "stderr")
		paths = append(paths, s.stderr)
	}
	if withStdin {
		s.stdin = filepath.Join(dir, "stdin")
		paths = append(paths, s.stdin)
	}
	for _, p := range paths {
		if err := unix.Mkfifo(p, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	for _, p := range paths[:len(paths)-boolInt(withStdin)] {
		r, err := fifo.OpenFifo(context.Background(), p, unix.O_RDONLY|unix.O_NONBLOCK, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r.Close() })
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 4096)
			for {
				n, err := r.Read(buf)
				s.mu.Lock()
				s.out.Write(buf[:n])
				s.mu.Unlock()
				if err != nil {
					return
				}
			}
		}()
	}
	go func() { wg.Wait(); close(s.eof) }()
	if withStdin {
		// Open the write side in the background, as the client does.
		go func() {
			f, err := os.OpenFile(s.stdin, os.O_WRONLY, 0)
			if err == nil {
				s.mu.Lock()
				s.in = f
				s.mu.Unlock()
			}
		}()
		t.Cleanup(func() {
			s.mu.Lock()
			if s.in != nil {
				s.in.Close()
			}
			s.mu.Unlock()
		})
	}
	return s
}

// closeStdin closes the client's write end of the stdin FIFO.
func (s *stdio) closeStdin() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.in != nil {
		s.in.Close()
		s.in = nil
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func (s *stdio) write(t *testing.T, text string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s.mu.Lock()
		in := s.in
		s.mu.Unlock()
		if in != nil {
			if _, err := in.WriteString(text); err != nil {
				t.Fatalf("write stdin: %v", err)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("stdin fifo never opened by the shim")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (s *stdio) output() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.out.String()
}

// waitOutput waits until the output contains want.
func (s *stdio) waitOutput(t *testing.T, want string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(s.output(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("output %q never contained %q", s.output(), want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitEOF waits until the shim closed the output FIFOs.
func (s *stdio) waitEOF(t *testing.T) {
	t.Helper()
	select {
	case <-s.eof:
	case <-time.After(15 * time.Second):
		t.Fatalf("output never ended; got %q", s.output())
	}
}

// ---- events ----

type event struct {
	topic, namespace string
	value            any
}

func (e event) String() string { return fmt.Sprintf("%s %v", e.topic, e.value) }

// events reads what the fake publish binary received, in order.
func (b *bundle) events(t *testing.T) []event {
	t.Helper()
	f, err := os.Open(b.address + ".events")
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []event
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) != 3 {
			t.Fatalf("bad event line %q", sc.Text())
		}
		raw, err := base64.StdEncoding.DecodeString(fields[2])
		if err != nil {
			t.Fatal(err)
		}
		var a anypb.Any
		if err := proto.Unmarshal(raw, &a); err != nil {
			t.Fatalf("event %s: not a protobuf Any: %v", fields[0], err)
		}
		v, err := typeurl.UnmarshalAny(&a)
		if err != nil {
			t.Fatalf("event %s: %v", fields[0], err)
		}
		out = append(out, event{topic: fields[0], namespace: fields[1], value: v})
	}
	return out
}

// waitEvents waits until n events arrived and returns them.
func (b *bundle) waitEvents(t *testing.T, n int) []event {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		evs := b.events(t)
		if len(evs) >= n || time.Now().After(deadline) {
			return evs
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func topics(evs []event) []string {
	var out []string
	for _, e := range evs {
		out = append(out, e.topic)
	}
	return out
}

func isMounted(t *testing.T, dir string) bool {
	t.Helper()
	ok, err := mount.IsMountPoint(dir)
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

func runcStateExists(id string) bool {
	_, err := os.Stat(filepath.Join(stateDir, "runc", testNamespace, id))
	return err == nil
}

// alive reports whether pid runs; a zombie (an orphan the machine's init
// has not reaped yet) counts as dead.
func alive(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(data, ')')
	return i < 0 || i+2 >= len(data) || data[i+2] != 'Z'
}

func waitDead(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for alive(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("pid %d still alive", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// shutdown asks the shim to exit; like containerd, it takes a connection
// closed in answer as success.
// It waits for the shim to exit (it delivers its last events first).
func shutdown(t *testing.T, client taskapi.TTRPCTaskService, b *bundle) {
	t.Helper()
	pid := b.shimPid(t)
	_, err := client.Shutdown(ctxT(t), &taskapi.ShutdownRequest{ID: b.id})
	if err != nil && !errors.Is(err, ttrpc.ErrClosed) {
		t.Fatalf("shutdown: %v", err)
	}
	waitDead(t, pid)
}

func wantCode(t *testing.T, err error, is func(error) bool, what string) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: want an error, got none", what)
	}
	if native := errgrpc.ToNative(err); !is(native) {
		t.Fatalf("%s: wrong error kind: %v", what, err)
	}
}

// ---- tests ----

func TestLifecycleReportsExitStatusAndEventsOnce(t *testing.T) {
	needRoot(t)
	io := newStdio(t, false, false)
	b, client := launch(t, spec("exit7", "sh", "-c", "echo hello; exit 7"), io)
	ctx := ctxT(t)

	st, err := client.State(ctx, &taskapi.StateRequest{ID: b.id})
	if err != nil || st.Status != tasktypes.Status_CREATED || st.Pid == 0 {
		t.Fatalf("state after create: %v %v", st, err)
	}
	started, err := client.Start(ctx, &taskapi.StartRequest{ID: b.id})
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	w, err := client.Wait(ctx, &taskapi.WaitRequest{ID: b.id})
	if err != nil || w.ExitStatus != 7 {
		t.Fatalf("wait: status %v, err %v; want 7", w.GetExitStatus(), err)
	}
	io.waitEOF(t)
	if got := io.output(); got != "hello\n" {
		t.Fatalf("stdout = %q, want %q", got, "hello\n")
	}
	st, err = client.State(ctx, &taskapi.StateRequest{ID: b.id})
	if err != nil || st.Status != tasktypes.Status_STOPPED || st.ExitStatus != 7 || st.ExitedAt == nil {
		t.Fatalf("state after exit: %v %v", st, err)
	}
	_, err = client.Kill(ctx, &taskapi.KillRequest{ID: b.id, Signal: 9})
	wantCode(t, err, errdefs.IsNotFound, "kill of an exited task")

	if !isMounted(t, filepath.Join(b.dir, "rootfs")) {
		t.Fatal("rootfs not mounted while the task exists")
	}
	del, err := client.Delete(ctx, &taskapi.DeleteRequest{ID: b.id})
	if err != nil || del.ExitStatus != 7 || del.Pid != started.Pid || del.ExitedAt == nil {
		t.Fatalf("delete: %v %v", del, err)
	}
	if isMounted(t, filepath.Join(b.dir, "rootfs")) {
		t.Error("rootfs still mounted after delete")
	}
	if runcStateExists(b.id) {
		t.Error("runc state left after delete")
	}
	_, err = client.State(ctx, &taskapi.StateRequest{ID: b.id})
	wantCode(t, err, errdefs.IsNotFound, "state after delete")

	evs := b.waitEvents(t, 4)
	if got := strings.Join(topics(evs), " "); got != "/tasks/create /tasks/start /tasks/exit /tasks/delete" {
		t.Fatalf("events = %s", got)
	}
	for _, e := range evs {
		if e.namespace != testNamespace {
			t.Errorf("event %s in namespace %q", e.topic, e.namespace)
		}
	}
	if c := evs[0].value.(*eventstypes.TaskCreate); c.ContainerID != b.id || c.Pid != started.Pid || c.Bundle != b.dir || c.IO.Stdout != io.stdout {
		t.Errorf("create event = %v", c)
	}
	if x := evs[2].value.(*eventstypes.TaskExit); x.ExitStatus != 7 || x.ID != b.id || x.Pid != started.Pid {
		t.Errorf("exit event = %v", x)
	}
	if d := evs[3].value.(*eventstypes.TaskDelete); d.ExitStatus != 7 || d.ContainerID != b.id {
		t.Errorf("delete event = %v", d)
	}

	shutdown(t, client, b)
	if evs := b.events(t); len(evs) != 4 {
		t.Fatalf("events after shutdown = %v, want exactly 4", topics(evs))
	}
}

func TestStdinIsEchoedAndCloseIOEndsIt(t *testing.T) {
	needRoot(t)
	io := newStdio(t, true, false)
	b, client := launch(t, spec("cat", "cat"), io)
	ctx := ctxT(t)
	if _, err := client.Start(ctx, &taskapi.StartRequest{ID: b.id}); err != nil {
		t.Fatal(err)
	}
	io.write(t, "ping\n")
	io.waitOutput(t, "ping\n")
	// As containerd's clients do: close the FIFO's write end, then CloseIO
	// (the shim holds its own write end until then, as containerd's does).
	io.closeStdin()
	if _, err := client.CloseIO(ctx, &taskapi.CloseIORequest{ID: b.id, Stdin: true}); err != nil {
		t.Fatal(err)
	}
	w, err := client.Wait(ctx, &taskapi.WaitRequest{ID: b.id})
	if err != nil || w.ExitStatus != 0 {
		t.Fatalf("wait after CloseIO: %v %v", w, err)
	}
}

// A client whose stdin is short may close it before the exec it feeds has
// started (flotctl exec -i, nerdctl exec -i with a pipe): the exec still
// reads what was written, then end of file.
func TestCloseIOBeforeAnExecStartsEndsItsStdin(t *testing.T) {
	needRoot(t)
	b, client := launch(t, spec("closeio", "sleep", "1000"), nil)
	ctx := ctxT(t)
	if _, err := client.Start(ctx, &taskapi.StartRequest{ID: b.id}); err != nil {
		t.Fatal(err)
	}
	io := newStdio(t, true, false)
	if _, err := client.Exec(ctx, &taskapi.ExecProcessRequest{ID: b.id, ExecID: "cat", Stdin: io.stdin, Stdout: io.stdout, Stderr: io.stderr, Spec: execSpec(t, "cat")}); err != nil {
		t.Fatalf("exec: %v", err)
	}
	if _, err := client.CloseIO(ctx, &taskapi.CloseIORequest{ID: b.id, ExecID: "cat", Stdin: true}); err != nil {
		t.Fatalf("CloseIO before start: %v", err)
	}
	if _, err := client.Start(ctx, &taskapi.StartRequest{ID: b.id, ExecID: "cat"}); err != nil {
		t.Fatalf("start exec: %v", err)
	}
	io.write(t, "typed\n")
	io.closeStdin()
	w, err := client.Wait(ctx, &taskapi.WaitRequest{ID: b.id, ExecID: "cat"})
	if err != nil || w.ExitStatus != 0 {
		t.Fatalf("exec wait: %v %v, want 0 once stdin ended", w, err)
	}
	io.waitEOF(t)
	if got := io.output(); got != "typed\n" {
		t.Fatalf("exec stdout = %q, want what was written", got)
	}
	if _, err := client.Kill(ctx, &taskapi.KillRequest{ID: b.id, Signal: 9}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Wait(ctx, &taskapi.WaitRequest{ID: b.id}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Delete(ctx, &taskapi.DeleteRequest{ID: b.id}); err != nil {
		t.Fatal(err)
	}
	shutdown(t, client, b)
}

func TestTerminalResizesAndIsATTY(t *testing.T) {
	needRoot(t)
	io := newStdio(t, true, true)
	s := spec("tty", "sh", "-c", "read x; stty size; test -t 1 && echo is-a-tty")
	s.Process.Terminal = true
	b, client := launch(t, s, io)
	ctx := ctxT(t)
	if _, err := client.Start(ctx, &taskapi.StartRequest{ID: b.id}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.ResizePty(ctx, &taskapi.ResizePtyRequest{ID: b.id, Width: 100, Height: 40}); err != nil {
		t.Fatalf("resize: %v", err)
	}
	io.write(t, "go\n")
	io.waitOutput(t, "40 100")
	io.waitOutput(t, "is-a-tty")
	w, err := client.Wait(ctx, &taskapi.WaitRequest{ID: b.id})
	if err != nil || w.ExitStatus != 0 {
		t.Fatalf("wait: %v %v", w, err)
	}
	io.waitEOF(t)
}

func execSpec(t *testing.T, args ...string) *anypb.Any {
	t.Helper()
	data, err := json.Marshal(&specs.Process{Args: args, Env: []string{"PATH=/bin"}, Cwd: "/"})
	if err != nil {
		t.Fatal(err)
	}
	return &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Process", Value: data}
}

func TestExecReportsItsOwnExitAndPids(t *testing.T) {
	needRoot(t)
	b, client := launch(t, spec("exec", "sleep", "1000"), nil)
	ctx := ctxT(t)
	initStart, err := client.Start(ctx, &taskapi.StartRequest{ID: b.id})
	if err != nil {
		t.Fatal(err)
	}

	io := newStdio(t, false, false)
	if _, err := client.Exec(ctx, &taskapi.ExecProcessRequest{ID: b.id, ExecID: "e1", Stdout: io.stdout, Stderr: io.stderr, Spec: execSpec(t, "sh", "-c", "echo from-exec; exit 3")}); err != nil {
		t.Fatalf("exec: %v", err)
	}
	_, err = client.Exec(ctx, &taskapi.ExecProcessRequest{ID: b.id, ExecID: "e1", Spec: execSpec(t, "true")})
	wantCode(t, err, errdefs.IsAlreadyExists, "exec with a duplicate id")
	e1, err := client.Start(ctx, &taskapi.StartRequest{ID: b.id, ExecID: "e1"})
	if err != nil {
		t.Fatalf("start exec: %v", err)
	}
	w, err := client.Wait(ctx, &taskapi.WaitRequest{ID: b.id, ExecID: "e1"})
	if err != nil || w.ExitStatus != 3 {
		t.Fatalf("exec wait: %v %v, want 3", w, err)
	}
	io.waitEOF(t)
	if got := io.output(); got != "from-exec\n" {
		t.Fatalf("exec stdout = %q", got)
	}
	del, err := client.Delete(ctx, &taskapi.DeleteRequest{ID: b.id, ExecID: "e1"})
	if err != nil || del.ExitStatus != 3 {
		t.Fatalf("delete exec: %v %v", del, err)
	}

	// A second, long-running exec shows in Pids with its exec ID.
	if _, err := client.Exec(ctx, &taskapi.ExecProcessRequest{ID: b.id, ExecID: "e2", Spec: execSpec(t, "sleep", "1000")}); err != nil {
		t.Fatal(err)
	}
	e2, err := client.Start(ctx, &taskapi.StartRequest{ID: b.id, ExecID: "e2"})
	if err != nil {
		t.Fatal(err)
	}
	pids, err := client.Pids(ctx, &taskapi.PidsRequest{ID: b.id})
	if err != nil {
		t.Fatal(err)
	}
	found := map[uint32]string{}
	for _, p := range pids.Processes {
		found[p.Pid] = ""
		if p.Info != nil {
			var d options.ProcessDetails
			if err := typeurl.UnmarshalTo(p.Info, &d); err != nil {
				t.Fatal(err)
			}
			found[p.Pid] = d.ExecID
		}
	}
	if _, ok := found[initStart.Pid]; !ok {
		t.Errorf("pids %v lack init %d", found, initStart.Pid)
	}
	if found[e2.Pid] != "e2" {
		t.Errorf("pids %v lack exec e2 (%d)", found, e2.Pid)
	}
	_, err = client.Delete(ctx, &taskapi.DeleteRequest{ID: b.id, ExecID: "e2"})
	wantCode(t, err, errdefs.IsFailedPrecondition, "delete of a running exec")
	if _, err := client.Kill(ctx, &taskapi.KillRequest{ID: b.id, ExecID: "e2", Signal: 9}); err != nil {
		t.Fatal(err)
	}
	if w, err := client.Wait(ctx, &taskapi.WaitRequest{ID: b.id, ExecID: "e2"}); err != nil || w.ExitStatus != 137 {
		t.Fatalf("exec e2 wait: %v %v", w, err)
	}
	_, err = client.Delete(ctx, &taskapi.DeleteRequest{ID: b.id})
	wantCode(t, err, errdefs.IsFailedPrecondition, "delete of a running task")

	evs := b.waitEvents(t, 8)
	want := "/tasks/create /tasks/start /tasks/exec-added /tasks/exec-started /tasks/exit /tasks/exec-added /tasks/exec-started /tasks/exit"
	if got := strings.Join(topics(evs), " "); got != want {
		t.Fatalf("events = %s\nwant     %s", got, want)
	}
	if x := evs[4].value.(*eventstypes.TaskExit); x.ID != "e1" || x.ExitStatus != 3 || x.Pid != e1.Pid {
		t.Errorf("exec exit event = %v", x)
	}
	if s := evs[3].value.(*eventstypes.TaskExecStarted); s.ExecID != "e1" || s.Pid != e1.Pid {
		t.Errorf("exec started event = %v", s)
	}
}

func TestPauseResume(t *testing.T) {
	needRoot(t)
	b, client := launch(t, spec("pause", "sleep", "1000"), nil)
	ctx := ctxT(t)
	if _, err := client.Start(ctx, &taskapi.StartRequest{ID: b.id}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Pause(ctx, &taskapi.PauseRequest{ID: b.id}); err != nil {
		t.Fatalf("pause: %v", err)
	}
	if st, _ := client.State(ctx, &taskapi.StateRequest{ID: b.id}); st.GetStatus() != tasktypes.Status_PAUSED {
		t.Fatalf("state after pause = %v", st.GetStatus())
	}
	_, err := client.Pause(ctx, &taskapi.PauseRequest{ID: b.id})
	wantCode(t, err, errdefs.IsFailedPrecondition, "pause twice")
	if _, err := client.Resume(ctx, &taskapi.ResumeRequest{ID: b.id}); err != nil {
		t.Fatalf("resume: %v", err)
	}
	if st, _ := client.State(ctx, &taskapi.StateRequest{ID: b.id}); st.GetStatus() != tasktypes.Status_RUNNING {
		t.Fatalf("state after resume = %v", st.GetStatus())
	}
	evs := b.waitEvents(t, 4)
	if got := strings.Join(topics(evs), " "); got != "/tasks/create /tasks/start /tasks/paused /tasks/resumed" {
		t.Fatalf("events = %s", got)
	}
}

func TestKillAllStopsEveryProcess(t *testing.T) {
	needRoot(t)
	b, client := launch(t, spec("killall", "sh", "-c", "sleep 1000 & sleep 1000 & wait"), nil)
	ctx := ctxT(t)
	if _, err := client.Start(ctx, &taskapi.StartRequest{ID: b.id}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	var pids *taskapi.PidsResponse
	for {
		var err error
		pids, err = client.Pids(ctx, &taskapi.PidsRequest{ID: b.id})
		if err != nil {
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
	if _, err := client.Kill(ctx, &taskapi.KillRequest{ID: b.id, Signal: 9, All: true}); err != nil {
		t.Fatalf("kill all: %v", err)
	}
	w, err := client.Wait(ctx, &taskapi.WaitRequest{ID: b.id})
	if err != nil || w.ExitStatus != 137 {
		t.Fatalf("wait: %v %v", w, err)
	}
	for _, p := range pids.Processes {
		waitDead(t, int(p.Pid))
	}
}

func TestStatsAreCgroupMetricsAndUpdateChangesThem(t *testing.T) {
	needRoot(t)
	b, client := launch(t, spec("stats", "sleep", "1000"), nil)
	ctx := ctxT(t)
	if _, err := client.Start(ctx, &taskapi.StartRequest{ID: b.id}); err != nil {
		t.Fatal(err)
	}
	resp, err := client.Stats(ctx, &taskapi.StatsRequest{ID: b.id})
	if err != nil {
		t.Fatalf("stats: %v", err)
	}
	v, err := typeurl.UnmarshalAny(resp.Stats)
	if err != nil {
		t.Fatalf("stats type %s: %v", resp.Stats.GetTypeUrl(), err)
	}
	switch m := v.(type) {
	case *cg1stats.Metrics:
		if m.Memory == nil || m.Pids == nil || m.Pids.Current < 1 {
			t.Fatalf("v1 metrics lack memory or pids: %v", m)
		}
	case *cg2stats.Metrics:
		if m.Memory == nil || m.Pids == nil || m.Pids.Current < 1 {
			t.Fatalf("v2 metrics lack memory or pids: %v", m)
		}
	default:
		t.Fatalf("stats of type %T", v)
	}

	// Update changes the resources; the next Stats shows the new pids limit.
	pidsLimit := int64(42)
	res, err := json.Marshal(&specs.LinuxResources{Pids: &specs.LinuxPids{Limit: &pidsLimit}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.Update(ctx, &taskapi.UpdateTaskRequest{ID: b.id, Resources: &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources", Value: res}}); err != nil {
		t.Fatalf("update: %v", err)
	}
	resp, err = client.Stats(ctx, &taskapi.StatsRequest{ID: b.id})
	if err != nil {
		t.Fatal(err)
	}
	v, err = typeurl.UnmarshalAny(resp.Stats)
	if err != nil {
		t.Fatal(err)
	}
	var limit uint64
	switch m := v.(type) {
	case *cg1stats.Metrics:
		limit = m.GetPids().GetLimit()
	case *cg2stats.Metrics:
		limit = m.GetPids().GetLimit()
	}
	if limit != 42 {
		t.Fatalf("pids limit after update = %d, want 42", limit)
	}
}

func TestShimOutlivesItsParentAndAcceptsNewConnections(t *testing.T) {
	needRoot(t)
	b := newBundle(t, spec("orphan", "sleep", "1000"))
	// The parent runs `start` and lingers, like a taskd that is then killed.
	addrFile := filepath.Join(t.TempDir(), "addr")
	parent := exec.Command("sh", append([]string{"-c", `"$0" "$@" > ` + addrFile + `; exec sleep 1000`, shimBin}, b.shimArgs("start")...)...)
	parent.Dir = b.dir
	parent.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := parent.Start(); err != nil {
		t.Fatal(err)
	}
	var address string
	deadline := time.Now().Add(10 * time.Second)
	for address == "" {
		data, _ := os.ReadFile(addrFile)
		address = strings.TrimSpace(string(data))
		if address == "" && time.Now().After(deadline) {
			t.Fatal("start printed no address")
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Cleanup(func() {
		if pid := b.shimPid(t); pid > 0 {
			_ = unix.Kill(pid, unix.SIGKILL)
		}
	})
	client := connect(t, address)
	ctx := ctxT(t)
	if _, err := client.Create(ctx, &taskapi.CreateTaskRequest{ID: b.id, Bundle: b.dir, Rootfs: b.rootfs}); err != nil {
		t.Fatal(err)
	}
	started, err := client.Start(ctx, &taskapi.StartRequest{ID: b.id})
	if err != nil {
		t.Fatal(err)
	}

	_ = syscall.Kill(-parent.Process.Pid, syscall.SIGKILL)
	_ = parent.Wait()
	shimPid := b.shimPid(t)
	if sid, _ := unix.Getsid(shimPid); sid != shimPid {
		t.Errorf("shim %d is in session %d, want its own", shimPid, sid)
	}
	time.Sleep(100 * time.Millisecond)
	if !alive(shimPid) {
		t.Fatal("shim died with its parent")
	}

	again := connect(t, address)
	resp, err := again.Connect(ctx, &taskapi.ConnectRequest{ID: b.id})
	if err != nil || resp.ShimPid != uint32(shimPid) || resp.TaskPid != started.Pid {
		t.Fatalf("connect after parent died: %v %v (shim %d, task %d)", resp, err, shimPid, started.Pid)
	}
	if st, err := again.State(ctx, &taskapi.StateRequest{ID: b.id}); err != nil || st.Status != tasktypes.Status_RUNNING {
		t.Fatalf("state after parent died: %v %v", st, err)
	}
	// `start` again finds the running shim and answers its address.
	if a := b.start(t); a != address {
		t.Fatalf("second start = %q, want the running shim's %q", a, address)
	}
	if _, err := again.Kill(ctx, &taskapi.KillRequest{ID: b.id, Signal: 9}); err != nil {
		t.Fatal(err)
	}
	if w, err := again.Wait(ctx, &taskapi.WaitRequest{ID: b.id}); err != nil || w.ExitStatus != 137 {
		t.Fatalf("wait: %v %v", w, err)
	}
	if _, err := again.Delete(ctx, &taskapi.DeleteRequest{ID: b.id}); err != nil {
		t.Fatal(err)
	}
	shutdown(t, again, b)
}

func TestDeleteCommandCleansUpAfterADeadShim(t *testing.T) {
	needRoot(t)
	b, client := launch(t, spec("deadshim", "sleep", "1000"), nil)
	ctx := ctxT(t)
	started, err := client.Start(ctx, &taskapi.StartRequest{ID: b.id})
	if err != nil {
		t.Fatal(err)
	}
	shimPid := b.shimPid(t)
	if err := unix.Kill(shimPid, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitDead(t, shimPid)

	cmd := exec.Command(shimBin, b.shimArgs("delete")...)
	cmd.Dir = b.dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("delete command: %v: %s", err, stderr.String())
	}
	var resp taskapi.DeleteResponse
	if err := proto.Unmarshal(out, &resp); err != nil {
		t.Fatalf("delete output is not a DeleteResponse: %v", err)
	}
	if resp.Pid != started.Pid || resp.ExitStatus != 137 || resp.ExitedAt == nil {
		t.Fatalf("delete response = %v, want pid %d status 137", &resp, started.Pid)
	}
	waitDead(t, int(started.Pid))
	if isMounted(t, filepath.Join(b.dir, "rootfs")) {
		t.Error("rootfs still mounted")
	}
	if runcStateExists(b.id) {
		t.Error("runc state left")
	}
}

func TestOOMKillIsReported(t *testing.T) {
	needRoot(t)
	s := spec("oom", "sh", "-c", `x=$(head -c 64m /dev/zero | tr "\0" a); echo survived`)
	limit := int64(16 << 20)
	s.Linux.Resources.Memory = &specs.LinuxMemory{Limit: &limit, Swap: &limit}
	io := newStdio(t, false, false)
	b, client := launch(t, s, io)
	ctx := ctxT(t)
	if _, err := client.Start(ctx, &taskapi.StartRequest{ID: b.id}); err != nil {
		t.Fatal(err)
	}
	w, err := client.Wait(ctx, &taskapi.WaitRequest{ID: b.id})
	if err != nil || w.ExitStatus == 0 {
		t.Fatalf("wait: %v %v (output %q), want a non-zero exit", w, err, io.output())
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		n := 0
		for _, e := range b.events(t) {
			if e.topic == "/tasks/oom" {
				if o := e.value.(*eventstypes.TaskOOM); o.ContainerID != b.id {
					t.Fatalf("oom event for %q", o.ContainerID)
				}
				n++
			}
		}
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no /tasks/oom event; events: %v", topics(b.events(t)))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestCreateErrorsLeaveNothingBehind(t *testing.T) {
	needRoot(t)
	ctx := ctxT(t)

	t.Run("a missing rootfs source is NotFound", func(t *testing.T) {
		b := newBundle(t, spec("norootfs", "true"))
		client := connect(t, b.start(t))
		_, err := client.Create(ctx, &taskapi.CreateTaskRequest{ID: b.id, Bundle: b.dir, Rootfs: []*types.Mount{{Type: "bind", Source: "/does/not/exist", Options: []string{"rbind"}}}})
		wantCode(t, err, errdefs.IsNotFound, "create with a missing rootfs")
		if isMounted(t, filepath.Join(b.dir, "rootfs")) || runcStateExists(b.id) {
			t.Fatal("failed create left a mount or runc state")
		}
		shutdown(t, client, b)
	})

	t.Run("a spec the runtime rejects fails and unmounts", func(t *testing.T) {
		s := spec("badspec", "/no/such/binary")
		s.Process.Cwd = "relative" // runc refuses a relative cwd
		b := newBundle(t, s)
		client := connect(t, b.start(t))
		_, err := client.Create(ctx, &taskapi.CreateTaskRequest{ID: b.id, Bundle: b.dir, Rootfs: b.rootfs})
		if err == nil {
			t.Fatal("create with an invalid spec succeeded")
		}
		if isMounted(t, filepath.Join(b.dir, "rootfs")) || runcStateExists(b.id) {
			t.Fatal("failed create left a mount or runc state")
		}
		shutdown(t, client, b)
	})

	t.Run("a duplicate id is AlreadyExists", func(t *testing.T) {
		b, client := launch(t, spec("dup", "sleep", "1000"), nil)
		_, err := client.Create(ctx, &taskapi.CreateTaskRequest{ID: b.id, Bundle: b.dir})
		wantCode(t, err, errdefs.IsAlreadyExists, "second create")
	})

	t.Run("a bind rootfs with runc named in the options works", func(t *testing.T) {
		b := newBundle(t, spec("bindroot", "sh", "-c", "exit 0"))
		client := connect(t, b.start(t))
		opts, err := typeurl.MarshalAnyToProto(&options.Options{BinaryName: "runc", Root: filepath.Join(stateDir, "runc", testNamespace)})
		if err != nil {
			t.Fatal(err)
		}
		req := &taskapi.CreateTaskRequest{ID: b.id, Bundle: b.dir, Options: opts,
			Rootfs: []*types.Mount{{Type: "bind", Source: lowerRootfs, Options: []string{"rbind", "ro"}}}}
		if _, err := client.Create(ctx, req); err != nil {
			t.Fatalf("create: %v", err)
		}
		if _, err := client.Start(ctx, &taskapi.StartRequest{ID: b.id}); err != nil {
			t.Fatal(err)
		}
		if w, err := client.Wait(ctx, &taskapi.WaitRequest{ID: b.id}); err != nil || w.ExitStatus != 0 {
			t.Fatalf("wait: %v %v", w, err)
		}
		if _, err := client.Delete(ctx, &taskapi.DeleteRequest{ID: b.id}); err != nil {
			t.Fatal(err)
		}
		if isMounted(t, filepath.Join(b.dir, "rootfs")) {
			t.Fatal("bind rootfs still mounted")
		}
		shutdown(t, client, b)
	})
}

func TestExecsThatExitAtOnceAreReportedOnceAfterTheirStart(t *testing.T) {
	needRoot(t)
	b, client := launch(t, spec("quick", "sleep", "1000"), nil)
	ctx := ctxT(t)
	if _, err := client.Start(ctx, &taskapi.StartRequest{ID: b.id}); err != nil {
		t.Fatal(err)
	}
	const n = 10
	for i := range n {
		id := fmt.Sprintf("q%d", i)
		if _, err := client.Exec(ctx, &taskapi.ExecProcessRequest{ID: b.id, ExecID: id, Spec: execSpec(t, "sh", "-c", "exit "+strconv.Itoa(i))}); err != nil {
			t.Fatal(err)
		}
		if _, err := client.Start(ctx, &taskapi.StartRequest{ID: b.id, ExecID: id}); err != nil {
			t.Fatal(err)
		}
		w, err := client.Wait(ctx, &taskapi.WaitRequest{ID: b.id, ExecID: id})
		if err != nil || w.ExitStatus != uint32(i) {
			t.Fatalf("exec %s: %v %v", id, w, err)
		}
	}
	evs := b.waitEvents(t, 2+3*n)
	seen := map[string][]string{}
	for _, e := range evs {
		switch v := e.value.(type) {
		case *eventstypes.TaskExecAdded:
			seen[v.ExecID] = append(seen[v.ExecID], "added")
		case *eventstypes.TaskExecStarted:
			seen[v.ExecID] = append(seen[v.ExecID], "started")
		case *eventstypes.TaskExit:
			seen[v.ID] = append(seen[v.ID], "exit")
		}
	}
	for i := range n {
		id := fmt.Sprintf("q%d", i)
		if got := strings.Join(seen[id], " "); got != "added started exit" {
			t.Errorf("exec %s events: %s", id, got)
		}
	}
}

// TestContainerdDrivesTheShim runs Debian's containerd 1.6 with taskd-shim
// as the runtime (an absolute runtime path) and checks ctr's view: output,
// exit status and events published through `containerd publish`.
func TestContainerdDrivesTheShim(t *testing.T) {
	needRoot(t)
	for _, bin := range []string{"containerd", "ctr"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("needs %s", bin)
		}
	}
	dir, err := os.MkdirTemp("", "ctrd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "c.sock")
	config := fmt.Sprintf("version = 2\nroot = %q\nstate = %q\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = %q\n[ttrpc]\n  address = %q\n",
		filepath.Join(dir, "root"), filepath.Join(dir, "state"), sock, sock+".ttrpc")
	if err := os.WriteFile(filepath.Join(dir, "config.toml"), []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	// containerd derives nothing from the name, but keep the usual one.
	runtime := filepath.Join(dir, "containerd-shim-taskd-v1")
	data, err := os.ReadFile(shimBin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(runtime, data, 0o755); err != nil {
		t.Fatal(err)
	}
	var daemonLog bytes.Buffer
	daemon := exec.Command("containerd", "--config", filepath.Join(dir, "config.toml"))
	daemon.Stdout, daemon.Stderr = &daemonLog, &daemonLog
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = daemon.Process.Signal(syscall.SIGTERM)
		_ = daemon.Wait()
		if t.Failed() {
			t.Logf("containerd log:\n%s", daemonLog.String())
		}
	})
	ctr := func(args ...string) *exec.Cmd {
		return exec.Command("ctr", append([]string{"-a", sock}, args...)...)
	}
	for deadline := time.Now().Add(20 * time.Second); ctr("version").Run() != nil; {
		if time.Now().After(deadline) {
			t.Fatal("containerd did not come up")
		}
		time.Sleep(100 * time.Millisecond)
	}
	events := &lockedBuffer{}
	watch := ctr("events")
	watch.Stdout = events
	if err := watch.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = watch.Process.Kill(); _ = watch.Wait() })
	time.Sleep(200 * time.Millisecond)

	run := ctr("run", "--rm", "--runtime", runtime, "--rootfs", lowerRootfs, "ctrd-exit7", "/bin/sh", "-c", "echo hello; exit 7")
	out, err := run.CombinedOutput()
	if code := run.ProcessState.ExitCode(); code != 7 || !strings.Contains(string(out), "hello") {
		t.Fatalf("ctr run: exit %d (%v), output %q; want 7 and hello", code, err, out)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(events.String(), "/tasks/delete") {
		if time.Now().After(deadline) {
			t.Fatalf("ctr events never showed /tasks/delete:\n%s", events.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, topic := range []string{"/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"} {
		if c := strings.Count(events.String(), topic+" "); c != 1 {
			t.Errorf("%s seen %d times in ctr events:\n%s", topic, c, events.String())
		}
	}
}

// lockedBuffer is a bytes.Buffer written by a command while a test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
