// Package reaper makes the calling process a child subreaper and collects the
// exit status of every child (and orphaned descendant) it inherits.
//
// Exits of commands started through the reaper's Monitor (runc, the publish
// binary) go back to whoever waits on that command; every other exit (the
// container's processes, re-parented to the shim when runc exits) goes to
// the Exits channel, in the order the kernel reported them.
package reaper

import (
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"sync"
	"time"

	runc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"
)

// Exit is one reaped process.
type Exit = runc.Exit

// Reaper reaps children on SIGCHLD.
type Reaper struct {
	mu      sync.Mutex
	waiters map[int]chan Exit // commands started through Monitor, by pid

	qmu   sync.Mutex
	qcond *sync.Cond
	queue []Exit
	out   chan Exit
}

// Start makes the process a child subreaper and starts reaping. Exits of
// processes not started through the Monitor are delivered on Exits().
func Start() (*Reaper, error) {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return nil, fmt.Errorf("set child subreaper: %w", err)
	}
	r := &Reaper{waiters: map[int]chan Exit{}, out: make(chan Exit)}
	r.qcond = sync.NewCond(&r.qmu)
	sigc := make(chan os.Signal, 32)
	signal.Notify(sigc, unix.SIGCHLD)
	go func() {
		for range sigc {
			r.reap()
		}
	}()
	go r.deliver()
	// A child may have exited before the handler was installed.
	r.reap()
	return r, nil
}

// Exits delivers the exits of processes that were not started through the
// Monitor. The channel is unbuffered but the reaper queues without bound, so a
// slow reader never stalls reaping.
func (r *Reaper) Exits() <-chan Exit { return r.out }

func (r *Reaper) reap() {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if err == unix.EINTR {
			continue
		}
		if pid <= 0 || err != nil {
			return
		}
		e := Exit{Timestamp: time.Now(), Pid: pid, Status: exitStatus(ws)}
		r.mu.Lock()
		ch, ok := r.waiters[pid]
		if ok {
			delete(r.waiters, pid)
		}
		r.mu.Unlock()
		if ok {
			ch <- e // buffered, one send per waiter
			continue
		}
		r.qmu.Lock()
		r.queue = append(r.queue, e)
		r.qcond.Signal()
		r.qmu.Unlock()
	}
}

func (r *Reaper) deliver() {
	for {
		r.qmu.Lock()
		for len(r.queue) == 0 {
			r.qcond.Wait()
		}
		e := r.queue[0]
		r.queue = r.queue[1:]
		r.qmu.Unlock()
		r.out <- e
	}
}

// exitStatus maps a wait status to the shell convention: the exit code, or
// 128+signal for a process killed by a signal.
func exitStatus(ws unix.WaitStatus) int {
	if ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}

// Monitor returns a go-runc ProcessMonitor whose commands are reaped by r.
// Install it with `runc.Monitor = r.Monitor()` before running any command.
func (r *Reaper) Monitor() runc.ProcessMonitor { return monitor{r} }

// Run runs cmd to completion under the reaper and returns its exit status.
// It is exec.Cmd.Run for a process whose children are reaped by r.
func (r *Reaper) Run(cmd *exec.Cmd) (int, error) {
	m := monitor{r}
	ch, err := m.Start(cmd)
	if err != nil {
		return -1, err
	}
	return m.Wait(cmd, ch)
}

type monitor struct{ r *Reaper }

// Start starts c and registers it before the reaper can see its exit: the
// reaper looks up waiters under the same lock held across c.Start.
func (m monitor) Start(c *exec.Cmd) (chan Exit, error) {
	ch := make(chan Exit, 1)
	m.r.mu.Lock()
	defer m.r.mu.Unlock()
	if err := c.Start(); err != nil {
		return nil, err
	}
	m.r.waiters[c.Process.Pid] = ch
	return ch, nil
}

func (m monitor) StartLocked(c *exec.Cmd) (chan Exit, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	return m.Start(c)
}

func (m monitor) Wait(c *exec.Cmd, ch chan Exit) (int, error) {
	e := <-ch
	// The process is already reaped, so Wait fails with ECHILD; it still
	// waits for the goroutines copying the command's output and closes them.
	_ = c.Wait()
	return e.Status, nil
}
