package integration

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/flotilla/flotilla/flotctl/stack"
)

// binDir holds the binaries under test: $FLOTILLA_BIN (make test sets it),
// or ../bin built by TestMain.
var binDir string

// mode is how the stacks the tests start run: each daemon a process of its
// own (the default), or with FLOTILLA_MODE=one every component in one
// flotilla process. make test runs the suite both ways.
var mode = stack.Separate

func init() {
	if v := os.Getenv("FLOTILLA_MODE"); v != "" {
		m, err := stack.ParseMode(v)
		if err != nil {
			panic(err)
		}
		mode = m
	}
}

// oneProcess reports whether the tests run against one-process stacks.
func oneProcess() bool { return mode == stack.OneProcess }

// skipInOneProcess skips a test whose scenario does not exist when the
// whole node is one process (one component down while the others serve),
// saying why.
func skipInOneProcess(t testing.TB, why string) {
	t.Helper()
	if oneProcess() {
		t.Skipf("not in one-process mode: %s", why)
	}
}

func TestMain(m *testing.M) {
	binDir = os.Getenv("FLOTILLA_BIN")
	if binDir == "" {
		root, _ := filepath.Abs("..")
		cmd := exec.Command("make", "-C", root, "build")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "make build:", err)
			os.Exit(1)
		}
		binDir = filepath.Join(root, "bin")
	}
	startWatchdog()
	os.Exit(m.Run())
}

// requireTool fails the test when a tool it needs is missing in CI, and
// skips it elsewhere.
func requireTool(t testing.TB, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s is required in CI: %v", name, err)
	}
	t.Skipf("%s not installed", name)
	return ""
}

// Stack is one node's Flotilla stack started from binDir on temporary
// directories, stopped and removed when the test ends.
type Stack struct {
	Layout stack.Layout
	// Socket is the gateway's socket, the one clients use.
	Socket string
	t      testing.TB
}

// startStack starts every daemon and waits until all are healthy.
func startStack(t testing.TB) *Stack {
	t.Helper()
	return startStackWith(t, nil)
}

// startStackWith is startStack with the layout adjusted by configure (when
// not nil) before anything starts, e.g. to give a daemon extra flags.
func startStackWith(t testing.TB, configure func(*stack.Layout)) *Stack {
	t.Helper()
	// Unix socket paths must stay under 108 bytes: use a short /tmp dir.
	dir, err := os.MkdirTemp("", "fl")
	if err != nil {
		t.Fatal(err)
	}
	l := stack.DefaultLayout(binDir)
	l.Root = filepath.Join(dir, "root")
	l.State = filepath.Join(dir, "state")
	l.MetricsBasePort = freePortRange(t, len(stack.Order))
	l.LogLevel = "debug"
	l.Mode = mode
	if configure != nil {
		configure(&l)
	}
	s := &Stack{Layout: l, Socket: l.GatewaySocket(), t: t}
	t.Cleanup(func() {
		if err := stack.Down(l, 10*time.Second); err != nil {
			t.Errorf("stack down: %v", err)
		}
		if t.Failed() {
			for _, name := range append(stack.Order, stack.ProcessName) {
				b, _ := os.ReadFile(l.LogFile(name))
				t.Logf("--- %s log ---\n%s", name, lastLines(string(b), 30))
			}
		}
		reapLeftovers(t, dir)
	})
	s.Up()
	return s
}

// Up starts the daemons that are not running and waits until all are healthy.
func (s *Stack) Up() {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := stack.Up(ctx, s.Layout, 30*time.Second); err != nil {
		s.t.Fatalf("stack up: %v", err)
	}
}

// Service returns the stack's daemon called name.
func (s *Stack) Service(name string) stack.Service {
	for _, svc := range s.Layout.Services() {
		if svc.Name == name {
			return svc
		}
	}
	s.t.Fatalf("no service %s", name)
	return stack.Service{}
}

// Pid returns the pid of daemon name from its pid file: in one-process mode
// the pid of the process running every component.
func (s *Stack) Pid(name string) int {
	s.t.Helper()
	if s.Layout.Mode == stack.OneProcess {
		name = stack.ProcessName
	}
	b, err := os.ReadFile(s.Layout.PidFile(name))
	if err != nil {
		s.t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		s.t.Fatal(err)
	}
	return pid
}

// LogFile is where daemon name logs: in one-process mode, the log of the
// process running every component.
func (s *Stack) LogFile(name string) string {
	if s.Layout.Mode == stack.OneProcess {
		name = stack.ProcessName
	}
	return s.Layout.LogFile(name)
}

// Kill9 kills daemon name with SIGKILL and waits until it is gone. In
// one-process mode a component cannot die alone: the whole process is
// killed, as a crash of any component would take it down, and Up starts it
// again.
func (s *Stack) Kill9(name string) {
	s.t.Helper()
	pid := s.Pid(name)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		s.t.Fatalf("kill %s: %v", name, err)
	}
	for i := 0; i < 500; i++ {
		if stack.Exited(pid) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	s.t.Fatalf("%s (pid %d) still alive after SIGKILL", name, pid)
}

// Conn is a gRPC connection to the gateway, closed when the test ends.
func (s *Stack) Conn() *grpc.ClientConn {
	s.t.Helper()
	conn, err := grpc.NewClient("unix://"+s.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() { conn.Close() })
	return conn
}

// Ctr runs Debian's ctr against the gateway in namespace ns and returns its
// combined output.
func (s *Stack) Ctr(ns string, args ...string) (string, error) {
	s.t.Helper()
	requireTool(s.t, "ctr")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	all := append([]string{"--address", s.Socket, "--namespace", ns}, args...)
	out, err := exec.CommandContext(ctx, "ctr", all...).CombinedOutput()
	return string(out), err
}

// MustCtr is Ctr that fails the test on error.
func (s *Stack) MustCtr(ns string, args ...string) string {
	s.t.Helper()
	out, err := s.Ctr(ns, args...)
	if err != nil {
		s.t.Fatalf("ctr %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// reapLeftovers kills what a stack under dir may leave by design — shims and
// snapshotter plugins outlive their daemons, and a test may have killed a
// daemon — then unmounts everything under dir and removes it.
func reapLeftovers(t testing.TB, dir string) {
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		pid, _ := strconv.Atoi(filepath.Base(p))
		if pid == os.Getpid() {
			continue
		}
		cwd, _ := os.Readlink(p + "/cwd")
		env, _ := os.ReadFile(p + "/environ")
		if strings.HasPrefix(cwd, dir+"/") || bytes.Contains(env, []byte("="+dir+"/")) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	mountinfo, _ := os.ReadFile("/proc/self/mountinfo")
	var mounts []string
	for _, line := range strings.Split(string(mountinfo), "\n") {
		if f := strings.Fields(line); len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			mounts = append(mounts, f[4])
		}
	}
	for i := len(mounts) - 1; i >= 0; i-- {
		if err := syscall.Unmount(mounts[i], syscall.MNT_DETACH); err != nil {
			t.Logf("unmount %s: %v", mounts[i], err)
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Logf("remove %s: %v", dir, err)
	}
}

// freePortRange finds n consecutive free TCP ports on 127.0.0.1.
func freePortRange(t testing.TB, n int) int {
	t.Helper()
	for attempt := 0; attempt < 100; attempt++ {
		base := 20000 + rand.IntN(30000)
		ok := true
		for p := base; p < base+n; p++ {
			l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
			if err != nil {
				ok = false
				break
			}
			l.Close()
		}
		if ok {
			return base
		}
	}
	t.Fatal("no free port range")
	return 0
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
