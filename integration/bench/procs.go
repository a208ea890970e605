package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Cleanups is a stack of undo steps: everything the bench starts or creates
// pushes how to stop or remove it, and Run pops them all, last first, when it
// returns — also after an error or an interrupt.
type Cleanups struct {
	steps []func()
}

// Push adds an undo step.
func (c *Cleanups) Push(step func()) { c.steps = append(c.steps, step) }

// Run runs every step, last pushed first, and forgets them.
func (c *Cleanups) Run() {
	for i := len(c.steps) - 1; i >= 0; i-- {
		c.steps[i]()
	}
	c.steps = nil
}

// daemon is a background process the bench started, with its output in a log file.
type daemon struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
}

// startDaemon starts bin with args, its output appended to logPath. The
// process gets SIGKILL should the bench die without cleaning up.
func startDaemon(name, logPath string, env []string, bin string, args ...string) (*daemon, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("%s log: %w", name, err)
	}
	defer logFile.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	d := &daemon{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		d.err = cmd.Wait()
		close(d.done)
	}()
	return d, nil
}

// stop sends SIGTERM and waits up to timeout before SIGKILL.
func (d *daemon) stop(timeout time.Duration) {
	select {
	case <-d.done:
		return
	default:
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(timeout):
		d.cmd.Process.Kill()
		<-d.done
	}
}

// waitSocket returns once something accepts connections on the unix socket
// path, or fails when d exits or ctx ends first.
func (d *daemon) waitSocket(ctx context.Context, path string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		if c, err := dialUnix(path); err == nil {
			c.Close()
			return nil
		}
		select {
		case <-d.done:
			return fmt.Errorf("%s exited before serving %s: %v\n%s", d.name, path, d.err, tail(d.log, 1500))
		case <-ctx.Done():
			return fmt.Errorf("%s does not serve %s: %w\n%s", d.name, path, ctx.Err(), tail(d.log, 1500))
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// run runs a command to its end and returns its combined output; the error
// carries the output's tail.
func run(ctx context.Context, bin string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		s := string(out)
		if len(s) > 1500 {
			s = s[len(s)-1500:]
		}
		return string(out), fmt.Errorf("%s %s: %w\n%s", filepath.Base(bin), strings.Join(args, " "), err, s)
	}
	return string(out), nil
}

// reap kills every process that runs from under dir (by working directory,
// command line or environment: shims and snapshotter plugins outlive their
// daemons by design), unmounts everything under dir, deepest first, and
// removes it.
func reap(dir string) error {
	procs, _ := filepath.Glob("/proc/[0-9]*")
	self := os.Getpid()
	for _, p := range procs {
		pid, _ := strconv.Atoi(filepath.Base(p))
		if pid == self {
			continue
		}
		cwd, _ := os.Readlink(p + "/cwd")
		cmdline, _ := os.ReadFile(p + "/cmdline")
		env, _ := os.ReadFile(p + "/environ")
		if strings.HasPrefix(cwd, dir+"/") || bytes.Contains(cmdline, []byte(dir+"/")) || bytes.Contains(env, []byte("="+dir+"/")) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	var errs []error
	mounts, err := mountsUnder(dir)
	if err != nil {
		errs = append(errs, err)
	}
	for i := len(mounts) - 1; i >= 0; i-- {
		if err := syscall.Unmount(mounts[i], syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", mounts[i], err))
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		errs = append(errs, fmt.Errorf("remove %s: %w", dir, err))
	}
	return errors.Join(errs...)
}

// mountsUnder lists the mount points at or under dir, in mount order.
func mountsUnder(dir string) ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && (fields[4] == dir || strings.HasPrefix(fields[4], dir+"/")) {
			out = append(out, fields[4])
		}
	}
	return out, sc.Err()
}

// pssKiB is the proportional set size of process pid, in KiB.
func pssKiB(pid int) (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0, fmt.Errorf("pss of %d: %w", pid, err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "Pss:" {
			return strconv.ParseInt(f[1], 10, 64)
		}
	}
	return 0, fmt.Errorf("pss of %d: no Pss line in smaps_rollup", pid)
}

// processTree returns roots and all their descendants.
func processTree(roots []int) []int {
	children := map[int][]int{}
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		stat, err := os.ReadFile(p + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces and parentheses.
		s := string(stat)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) < 2 {
			continue
		}
		pid, _ := strconv.Atoi(filepath.Base(p))
		ppid, _ := strconv.Atoi(f[1])
		children[ppid] = append(children[ppid], pid)
	}
	var out []int
	seen := map[int]bool{}
	var walk func(int)
	walk = func(pid int) {
		if seen[pid] {
			return
		}
		seen[pid] = true
		out = append(out, pid)
		for _, c := range children[pid] {
			walk(c)
		}
	}
	for _, r := range roots {
		walk(r)
	}
	return out
}

// processesNamed returns the pids of processes whose executable's base name
// is name and whose command line mentions marker.
func processesNamed(name, marker string) []int {
	var out []int
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		cmdline, err := os.ReadFile(p + "/cmdline")
		if err != nil || len(cmdline) == 0 {
			continue
		}
		argv0 := string(bytes.SplitN(cmdline, []byte{0}, 2)[0])
		if filepath.Base(argv0) != name || !bytes.Contains(cmdline, []byte(marker)) {
			continue
		}
		pid, _ := strconv.Atoi(filepath.Base(p))
		out = append(out, pid)
	}
	return out
}

// sumPSSMiB adds up the PSS of pids, in MiB.
func sumPSSMiB(pids []int) (float64, error) {
	var kib int64
	for _, pid := range pids {
		n, err := pssKiB(pid)
		if err != nil {
			if _, statErr := os.Stat(fmt.Sprintf("/proc/%d", pid)); statErr != nil {
				continue // gone meanwhile
			}
			return 0, err
		}
		kib += n
	}
	return float64(kib) / 1024, nil
}

func readPid(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

func tail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	if len(data) > n {
		data = data[len(data)-n:]
	}
	return strings.TrimSpace(string(data))
}

// pssByName is the PSS of each of pids in MiB, keyed by the base name of its
// executable (a second process of one name gets "name#2").
func pssByName(pids []int) map[string]float64 {
	out := map[string]float64{}
	for _, pid := range pids {
		kib, err := pssKiB(pid)
		if err != nil {
			continue
		}
		exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		name := filepath.Base(exe)
		key := name
		for i := 2; ; i++ {
			if _, taken := out[key]; !taken {
				break
			}
			key = fmt.Sprintf("%s#%d", name, i)
		}
		out[key] = float64(kib) / 1024
	}
	return out
}
