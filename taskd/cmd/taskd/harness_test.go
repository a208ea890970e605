package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	eventsapi "github.com/containerd/containerd/api/services/events/v1"
	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/fifo"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/flotilla/flotilla/services/dial"
	"github.com/flotilla/flotilla/services/namespace"
)

// The tests run the real taskd binary, as root, with runc and a shim:
// $TASKD_TEST_SHIM, or Debian's containerd-shim-runc-v2.
var (
	taskdBin string
	shimBin  string
	rootfs   string // a busybox root filesystem
	skipWhy  string
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "taskd-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	taskdBin = filepath.Join(dir, "taskd")
	build := []string{"build", "-o", taskdBin}
	if os.Getenv("TASKD_TEST_RACE") != "" {
		build = append(build, "-race")
	}
	if out, err := exec.Command("go", append(build, ".")...).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build taskd: %v\n%s", err, out)
		return 1
	}
	shimBin = os.Getenv("TASKD_TEST_SHIM")
	if shimBin == "" {
		shimBin = "/usr/bin/containerd-shim-runc-v2"
	}
	switch {
	case os.Geteuid() != 0:
		skipWhy = "needs root"
	case !haveExec("runc"):
		skipWhy = "needs runc"
	case !haveExec(shimBin):
		skipWhy = "needs a shim: " + shimBin
	case !haveExec("/bin/busybox"):
		skipWhy = "needs /bin/busybox"
	}
	if skipWhy == "" {
		rootfs = filepath.Join(dir, "rootfs")
		if err := makeRootfs(rootfs); err != nil {
			fmt.Fprintln(os.Stderr, "busybox rootfs:", err)
			return 1
		}
	}
	return m.Run()
}

func haveExec(name string) bool {
	_, err := exec.LookPath(name)
	return err == nil
}

func needRuntime(t *testing.T) {
	t.Helper()
	if skipWhy != "" {
		t.Skip(skipWhy)
	}
}

// makeRootfs lays out busybox and its applets, and the mount points runc
// needs in a read-only root.
func makeRootfs(dir string) error {
	for _, d := range []string{"bin", "proc", "dev", "sys", "tmp", "etc", "root"} {
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
	out, err := exec.Command("/bin/busybox", "--list").Output()
	if err != nil {
		return err
	}
	for _, name := range strings.Fields(string(out)) {
		if name == "busybox" {
			continue
		}
		if err := os.Symlink("busybox", filepath.Join(dir, "bin", name)); err != nil {
			return err
		}
	}
	return nil
}

// fakeEventd records what taskd forwards to eventd.
type fakeEventd struct {
	eventsapi.UnimplementedEventsServer
	mu  sync.Mutex
	got []*types.Envelope
}

func (f *fakeEventd) Forward(_ context.Context, req *eventsapi.ForwardRequest) (*emptypb.Empty, error) {
	f.mu.Lock()
	f.got = append(f.got, req.GetEnvelope())
	f.mu.Unlock()
	return &emptypb.Empty{}, nil
}

// topics returns the topics of ns's events about container id, in order.
func (f *fakeEventd) topics(ns, id string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, env := range f.got {
		if env.Namespace == ns && bytes.Contains(env.Event.GetValue(), []byte(id)) {
			out = append(out, env.Topic)
		}
	}
	return out
}

func startFakeEventd(t testing.TB, dir string) (*fakeEventd, string) {
	t.Helper()
	path := filepath.Join(dir, "eventd.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeEventd{}
	srv := grpc.NewServer()
	eventsapi.RegisterEventsServer(srv, f)
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	return f, path
}

// stack is one taskd with its fake eventd and clients.
type stack struct {
	t          testing.TB
	dir        string
	address    string
	events     *fakeEventd
	cmd        *exec.Cmd
	log        *bytes.Buffer
	conn       *grpc.ClientConn
	containers containersapi.ContainersClient
	tasks      tasksapi.TasksClient
	ns         string
	ctx        context.Context
}

func newStack(t testing.TB) *stack {
	t.Helper()
	dir := t.TempDir()
	events, eventdAddr := startFakeEventd(t, dir)
	cfg := fmt.Sprintf("eventd = %q\n[runtimes.%q]\npath = %q\n", eventdAddr, "io.containerd.runc.v2", shimBin)
	if err := os.WriteFile(filepath.Join(dir, "taskd.toml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	ns := "taskd-" + strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name()))
	s := &stack{t: t, dir: dir, address: filepath.Join(dir, "taskd.sock"), events: events, ns: ns,
		ctx: namespace.WithNamespace(context.Background(), ns)}
	s.start()
	conn, err := dial.Dial(s.address)
	if err != nil {
		t.Fatal(err)
	}
	s.conn = conn
	s.containers = containersapi.NewContainersClient(conn)
	s.tasks = tasksapi.NewTasksClient(conn)
	t.Cleanup(s.cleanup)
	return s
}

// start runs taskd and waits until it answers.
func (s *stack) start() {
	s.t.Helper()
	s.log = &bytes.Buffer{}
	s.cmd = exec.Command(taskdBin, "--config", filepath.Join(s.dir, "taskd.toml"), "--address", s.address,
		"--root", filepath.Join(s.dir, "root"), "--state", filepath.Join(s.dir, "state"), "--log-level", "debug")
	s.cmd.Stdout, s.cmd.Stderr = s.log, s.log
	if err := s.cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("unix", s.address); err == nil {
			c.Close()
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.t.Fatalf("taskd did not start:\n%s", s.log)
}

// stop stops taskd with sig and waits for it.
func (s *stack) stop(sig syscall.Signal) {
	s.cmd.Process.Signal(sig)
	s.cmd.Wait()
}

// cleanup kills and deletes every task left, stops taskd, and removes the
// namespace's cgroups.
func (s *stack) cleanup() {
	if s.cmd.ProcessState == nil {
		ctx, cancel := context.WithTimeout(s.ctx, 20*time.Second)
		if list, err := s.tasks.List(ctx, &tasksapi.ListTasksRequest{}); err == nil {
			for _, p := range list.Tasks {
				s.tasks.Kill(ctx, &tasksapi.KillRequest{ContainerID: p.ID, Signal: 9, All: true})
				wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
				s.tasks.Wait(wctx, &tasksapi.WaitRequest{ContainerID: p.ID})
				wcancel()
				s.tasks.Delete(ctx, &tasksapi.DeleteTaskRequest{ContainerID: p.ID})
			}
		}
		cancel()
		s.stop(syscall.SIGTERM)
	}
	s.conn.Close()
	removeNamespaceDirs(s.ns)
	if s.t.Failed() || os.Getenv("TASKD_TEST_LOG") != "" {
		s.t.Logf("taskd log:\n%s", s.log)
	}
}

var cgroupControllers = []string{"pids", "memory", "freezer", "cpu", "cpuacct", "cpuset", "blkio", "devices", "systemd"}

// removeNamespaceDirs removes what a namespace leaves by design once its
// tasks are gone: the cgroup parents and runc's root of the namespace.
func removeNamespaceDirs(ns string) {
	dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", ns))
	for _, d := range append(dirs, filepath.Join("/run/containerd/runc", ns)) {
		os.Remove(d)
	}
}

// spec is a container's runtime spec, as containerd's default one, running args.
func (s *stack) spec(id string, args ...string) *specs.Spec {
	return &specs.Spec{
		Version: specs.Version,
		Process: &specs.Process{
			Args: args, Cwd: "/", Env: []string{"PATH=/bin"},
			Capabilities: &specs.LinuxCapabilities{
				Bounding:  []string{"CAP_KILL", "CAP_CHOWN", "CAP_SETUID", "CAP_SETGID"},
				Effective: []string{"CAP_KILL", "CAP_CHOWN", "CAP_SETUID", "CAP_SETGID"},
				Permitted: []string{"CAP_KILL", "CAP_CHOWN", "CAP_SETUID", "CAP_SETGID"},
			},
			Rlimits:         []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 1024, Soft: 1024}},
			NoNewPrivileges: true,
		},
		Root:     &specs.Root{Path: "rootfs", Readonly: true},
		Hostname: id,
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
			{Destination: "/tmp", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "nodev", "mode=1777"}},
		},
		Linux: &specs.Linux{
			CgroupsPath: "/" + s.ns + "/" + id,
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace}, {Type: specs.UTSNamespace},
				{Type: specs.MountNamespace}, {Type: specs.NetworkNamespace},
			},
			MaskedPaths:   []string{"/proc/kcore", "/proc/keys", "/sys/firmware"},
			ReadonlyPaths: []string{"/proc/sys", "/proc/sysrq-trigger"},
		},
	}
}

func specAny(t testing.TB, s any) *anypb.Any {
	t.Helper()
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	return &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Spec", Value: b}
}

// createContainer stores container id running args.
func (s *stack) createContainer(id string, args ...string) {
	s.t.Helper()
	_, err := s.containers.Create(s.ctx, &containersapi.CreateContainerRequest{Container: &containersapi.Container{
		ID: id, Image: "example.com/busybox:1", Spec: specAny(s.t, s.spec(id, args...)),
		Runtime: &containersapi.Container_Runtime{Name: "io.containerd.runc.v2"},
	}})
	if err != nil {
		s.t.Fatalf("create container %s: %v", id, err)
	}
}

func rootfsMounts() []*types.Mount {
	return []*types.Mount{{Type: "bind", Source: rootfs, Options: []string{"rbind", "ro"}}}
}

// stdio makes FIFOs for a process's stdout and stderr (containerd's shim
// wants both) and returns their paths and what was written to stdout, once
// the writer closes it.
func (s *stack) stdio(name string) (stdout, stderr string, out <-chan string) {
	s.t.Helper()
	stdout, o := s.fifo(name + ".stdout")
	stderr, _ = s.fifo(name + ".stderr")
	return stdout, stderr, o
}

func (s *stack) fifo(name string) (string, <-chan string) {
	path := filepath.Join(s.dir, name)
	f, err := fifo.OpenFifo(context.Background(), path, unix.O_RDONLY|unix.O_CREAT|unix.O_NONBLOCK, 0o700)
	if err != nil {
		s.t.Fatal(err)
	}
	out := make(chan string, 1)
	go func() {
		defer f.Close()
		b, _ := io.ReadAll(f)
		out <- string(b)
	}()
	return path, out
}

// run creates container id running args and its task, and starts it.
func (s *stack) run(id string, args ...string) uint32 {
	s.t.Helper()
	s.createContainer(id, args...)
	if _, err := s.tasks.Create(s.ctx, &tasksapi.CreateTaskRequest{ContainerID: id, Rootfs: rootfsMounts()}); err != nil {
		s.t.Fatalf("create task %s: %v", id, err)
	}
	resp, err := s.tasks.Start(s.ctx, &tasksapi.StartRequest{ContainerID: id})
	if err != nil {
		s.t.Fatalf("start task %s: %v", id, err)
	}
	return resp.Pid
}

// waitEvents waits until container id has had the topics wanted, in order,
// and fails if it has had others or more.
func (s *stack) waitEvents(id string, want ...string) {
	s.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	var got []string
	for time.Now().Before(deadline) {
		got = s.events.topics(s.ns, id)
		if len(got) >= len(want) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		s.t.Fatalf("events of %s: got %v, want %v", id, got, want)
	}
}

// leftovers lists what a task of container id left behind: its bundle, a
// mount, a shim, a cgroup.
func (s *stack) leftovers(id string) []string {
	var out []string
	bundle := filepath.Join(s.dir, "state", "tasks", s.ns, id)
	if _, err := os.Stat(bundle); err == nil {
		out = append(out, "bundle "+bundle)
	}
	if mi, err := os.ReadFile("/proc/self/mountinfo"); err == nil && bytes.Contains(mi, []byte(bundle)) {
		out = append(out, "mount under "+bundle)
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		cl, err := os.ReadFile(p)
		if err == nil && bytes.Contains(cl, []byte("-namespace\x00"+s.ns+"\x00")) && bytes.Contains(cl, []byte("-id\x00"+id+"\x00")) {
			out = append(out, "shim process "+filepath.Base(filepath.Dir(p)))
		}
	}
	for _, c := range cgroupControllers {
		cg := filepath.Join("/sys/fs/cgroup", c, s.ns, id)
		if _, err := os.Stat(cg); err == nil {
			out = append(out, "cgroup "+cg)
		}
	}
	return out
}
