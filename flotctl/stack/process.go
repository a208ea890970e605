package stack

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// Up starts every daemon of the stack that is not already running, in
// order, each in its own session so it outlives the caller, and returns once
// each one answers its health check as SERVING. A daemon that does not come
// up within timeout is named in the error, with the end of its log. In
// OneProcess mode it starts the flotilla process, unless it runs, and waits
// for every service of it the same way. A stack running in the other mode
// is not touched: Up fails, naming what runs.
func Up(ctx context.Context, l Layout, timeout time.Duration) error {
	for _, dir := range []string{filepath.Dir(l.PidFile("x")), l.Root} {
		if err := os.MkdirAll(dir, 0o711); err != nil {
			return err
		}
	}
	// Logs show what the daemons did, names and paths included: for root's eyes.
	if err := os.MkdirAll(filepath.Dir(l.LogFile("x")), 0o700); err != nil {
		return err
	}
	if err := os.Chmod(filepath.Dir(l.LogFile("x")), 0o700); err != nil {
		return err
	}
	mode, err := ParseMode(string(l.Mode))
	if err != nil {
		return err
	}
	if mode == OneProcess {
		return l.upOne(ctx, timeout)
	}
	if pid, ok := l.running(ProcessName); ok {
		return fmt.Errorf("the stack runs in one process (%s, pid %d): stop it before starting it in %s mode", ProcessName, pid, mode)
	}
	for _, s := range l.Services() {
		if pid, ok := l.running(s.Name); ok {
			if err := waitHealthy(ctx, s, timeout); err != nil {
				return fmt.Errorf("%s (pid %d) is running but not healthy: %w", s.Name, pid, err)
			}
			continue
		}
		exited, err := l.start(s)
		if err != nil {
			return fmt.Errorf("start %s: %w", s.Name, err)
		}
		wctx, cancel := context.WithCancelCause(ctx)
		go func() {
			select {
			case err := <-exited:
				cancel(fmt.Errorf("%s exited: %v", s.Name, err))
			case <-wctx.Done():
			}
		}()
		err = waitHealthy(wctx, s, timeout)
		cancel(nil)
		if err != nil {
			return fmt.Errorf("%s did not come up: %w\n--- last lines of %s ---\n%s", s.Name, err, l.LogFile(s.Name), tail(l.LogFile(s.Name), 15))
		}
	}
	return nil
}

// upOne is Up in OneProcess mode.
func (l Layout) upOne(ctx context.Context, timeout time.Duration) error {
	for _, name := range Order {
		if pid, ok := l.running(name); ok {
			return fmt.Errorf("%s runs on its own (pid %d): the stack is up in %s mode; stop it before starting it in one process", name, pid, Separate)
		}
	}
	wctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	if pid, ok := l.running(ProcessName); ok {
		for _, s := range l.Services() {
			if err := waitHealthy(wctx, s, timeout); err != nil {
				return fmt.Errorf("%s (pid %d) is running but %s is not healthy: %w", ProcessName, pid, s.Name, err)
			}
		}
		return nil
	}
	exited, err := l.start(Service{Name: ProcessName, Args: l.OneProcessArgs()})
	if err != nil {
		return fmt.Errorf("start %s: %w", ProcessName, err)
	}
	go func() {
		select {
		case err := <-exited:
			cancel(fmt.Errorf("%s exited: %v", ProcessName, err))
		case <-wctx.Done():
		}
	}()
	for _, s := range l.Services() {
		if err := waitHealthy(wctx, s, timeout); err != nil {
			return fmt.Errorf("%s did not come up in %s: %w\n--- last lines of %s ---\n%s", s.Name, ProcessName, err, l.LogFile(ProcessName), tail(l.LogFile(ProcessName), 15))
		}
	}
	return nil
}

// start starts daemon s; the channel it returns receives its exit status
// should it stop while we are still watching.
func (l Layout) start(s Service) (<-chan error, error) {
	bin := filepath.Join(l.Bin, s.Name)
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("binary: %w (run make build)", err)
	}
	logf, err := os.OpenFile(l.LogFile(s.Name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(bin, s.Args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "FLOTILLA_ROOT="+l.Root, "FLOTILLA_STATE="+l.State)
	// A session of its own: the daemon survives the shell and make that started it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	exited := make(chan error, 1)
	// Reap it if it dies while we wait for it, so it leaves no zombie behind.
	go func() { exited <- cmd.Wait() }()
	return exited, os.WriteFile(l.PidFile(s.Name), []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644)
}

// running reports the pid of daemon name if its pid file names a live
// process that is that daemon (a pid left by a kill -9 may have been reused).
func (l Layout) running(name string) (int, bool) {
	b, err := os.ReadFile(l.PidFile(name))
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, false
	}
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil || filepath.Base(strings.TrimSuffix(exe, " (deleted)")) != name {
		return 0, false
	}
	if Exited(pid) {
		return 0, false
	}
	return pid, true
}

// Exited reports whether process pid has exited: it is gone, or its main
// thread is a zombie and no other thread of it is left. A killed daemon's
// main thread turns zombie while its other threads may still be exiting,
// with its descriptors (its listening sockets) still open until the last
// one is gone; a daemon started again before that finds its socket served.
func Exited(pid int) bool {
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ESRCH) {
		return true
	}
	if err != nil || !isZombie(string(st)) {
		return false
	}
	threads, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	return err != nil || len(threads) <= 1
}

func isZombie(stat string) bool {
	// The state follows the command, which is in parentheses and may hold spaces.
	i := strings.LastIndexByte(stat, ')')
	return i >= 0 && i+2 < len(stat) && stat[i+2] == 'Z'
}

// Down stops every running daemon of the stack with SIGTERM, in reverse
// start order, waiting up to timeout for each to exit before it is killed;
// whichever mode the stack runs in, the flotilla process too. Pid files of
// daemons already gone (a kill -9) are cleaned up.
func Down(l Layout, timeout time.Duration) error {
	var errs []error
	names := append([]string{ProcessName}, Order...)
	for i := len(names) - 1; i >= 0; i-- {
		name := names[i]
		pid, ok := l.running(name)
		if !ok {
			os.Remove(l.PidFile(name))
			continue
		}
		if err := stopProcess(pid, timeout); err != nil {
			errs = append(errs, fmt.Errorf("stop %s (pid %d): %w", name, pid, err))
			continue
		}
		os.Remove(l.PidFile(name))
	}
	return errors.Join(errs...)
}

func stopProcess(pid int, timeout time.Duration) error {
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		if errors.Is(err, syscall.ESRCH) {
			return nil
		}
		return err
	}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if !alive(pid) {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return err
	}
	for i := 0; i < 100 && alive(pid); i++ {
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("did not stop within %s; killed", timeout)
}

func alive(pid int) bool { return !Exited(pid) }

// waitHealthy polls the daemon's gRPC health until it answers SERVING.
func waitHealthy(ctx context.Context, s Service, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		st, err := Health(ctx, s.Socket)
		if err == nil && st == healthpb.HealthCheckResponse_SERVING {
			return nil
		}
		if err != nil {
			last = err
		} else {
			last = fmt.Errorf("health is %s", st)
		}
		select {
		case <-ctx.Done():
			if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.DeadlineExceeded) && !errors.Is(cause, context.Canceled) {
				return cause
			}
			return fmt.Errorf("no healthy answer on %s within %s: %w", s.Socket, timeout, last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Health asks the daemon on socket for its overall gRPC health.
func Health(ctx context.Context, socket string) (healthpb.HealthCheckResponse_ServingStatus, error) {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	cctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	resp, err := healthpb.NewHealthClient(conn).Check(cctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return 0, err
	}
	return resp.GetStatus(), nil
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
