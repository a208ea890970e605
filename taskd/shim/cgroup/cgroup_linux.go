// Package cgroup reads the statistics of a container's cgroup and watches it
// for OOM kills, on cgroup v1 (legacy or hybrid hosts, as runc uses them) and
// on cgroup v2 (unified hosts).
package cgroup

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	"github.com/containerd/cgroups/v3/cgroup2"
	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// Unified reports whether the host uses cgroup v2 only. Hybrid hosts count
// as v1: runc puts containers in the v1 controllers there.
func Unified() bool { return cgroups.Mode() == cgroups.Unified }

// Metrics returns the statistics of the cgroup pid belongs to: a
// *cgroup1/stats.Metrics (type URL io.containerd.cgroups.v1.Metrics) on a v1
// or hybrid host, a *cgroup2/stats.Metrics (io.containerd.cgroups.v2.Metrics)
// on a unified one — what containerd's runc shim answers.
func Metrics(pid int) (any, error) {
	if Unified() {
		group, err := cgroup2.PidGroupPath(pid)
		if err != nil {
			return nil, fmt.Errorf("cgroup of pid %d: %w", pid, notFound(err))
		}
		m, err := cgroup2.Load(group)
		if err != nil {
			return nil, fmt.Errorf("load cgroup %s: %w", group, err)
		}
		st, err := m.Stat()
		if err != nil {
			return nil, fmt.Errorf("stat cgroup %s: %w", group, err)
		}
		return st, nil
	}
	cg, err := cgroup1.Load(cgroup1.PidPath(pid))
	if err != nil {
		return nil, fmt.Errorf("load cgroup of pid %d: %w", pid, notFound(err))
	}
	st, err := cg.Stat(cgroup1.IgnoreNotExist)
	if err != nil {
		return nil, fmt.Errorf("stat cgroup of pid %d: %w", pid, err)
	}
	return st, nil
}

func notFound(err error) error {
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("%w: %w", err, errdefs.ErrNotFound)
	}
	return err
}

// MemoryDir returns the host directory of pid's memory cgroup: the memory
// controller's directory on v1, the unified group's directory on v2.
func MemoryDir(pid int) (string, error) {
	groups, err := procCgroups(pid)
	if err != nil {
		return "", err
	}
	ctrl := "memory"
	if Unified() {
		ctrl = ""
	}
	path, ok := groups[ctrl]
	if !ok {
		return "", fmt.Errorf("pid %d has no %q cgroup: %w", pid, ctrl, errdefs.ErrNotFound)
	}
	mnt, root, err := mountFor(ctrl)
	if err != nil {
		return "", err
	}
	rel, err := filepath.Rel(root, path)
	if err != nil || strings.HasPrefix(rel, "..") {
		rel = path
	}
	return filepath.Join(mnt, rel), nil
}

// procCgroups parses /proc/PID/cgroup into controller → path ("" for v2).
func procCgroups(pid int) (map[string]string, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return nil, fmt.Errorf("cgroups of pid %d: %w", pid, notFound(err))
	}
	out := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		for _, c := range strings.Split(parts[1], ",") {
			out[c] = parts[2]
		}
	}
	return out, nil
}

// mountFor finds the mount point and mount root of a v1 controller's
// hierarchy, or of the v2 hierarchy when ctrl is "".
func mountFor(ctrl string) (mnt, root string, err error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, f := range fields {
			if f == "-" {
				sep = i
				break
			}
		}
		if sep < 5 || len(fields) < sep+3 {
			continue
		}
		fstype := fields[sep+1]
		switch {
		case ctrl == "" && fstype == "cgroup2":
			return fields[4], fields[3], nil
		case ctrl != "" && fstype == "cgroup" && len(fields) > sep+3:
			for _, o := range strings.Split(fields[sep+3], ",") {
				if o == ctrl {
					return fields[4], fields[3], nil
				}
			}
		}
	}
	return "", "", fmt.Errorf("no cgroup hierarchy for %q: %w", ctrl, errdefs.ErrNotFound)
}

// OOMKills reads the number of OOM kills the kernel counted for the memory
// cgroup at dir (memory.oom_control's oom_kill on v1, memory.events'
// oom_kill on v2).
func OOMKills(dir string) (uint64, error) {
	name := "memory.oom_control"
	if Unified() {
		name = "memory.events"
	}
	data, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		return 0, err
	}
	for _, line := range bytes.Split(data, []byte("\n")) {
		k, v, ok := bytes.Cut(line, []byte(" "))
		if ok && string(k) == "oom_kill" {
			return strconv.ParseUint(string(bytes.TrimSpace(v)), 10, 64)
		}
	}
	return 0, nil
}

// OOMWatch reports the OOM kills of one memory cgroup; see WatchOOM.
type OOMWatch struct {
	dir   string
	onOOM func()
	f     *os.File

	mu   sync.Mutex
	last uint64 // the oom_kill count last reported
}

// WatchOOM calls onOOM once for each time the kernel OOM-kills processes
// in the memory cgroup at dir, until the cgroup is removed or Stop is
// called. On v1 it waits on an eventfd registered for memory.oom_control; on
// v2 on inotify events for memory.events. Kills are counted from the
// cgroup's oom_kill counter, so a wake-up without a new kill reports nothing,
// and a kill is reported once whether the watcher or Check sees it first.
func WatchOOM(dir string, onOOM func()) (*OOMWatch, error) {
	last, err := OOMKills(dir)
	if err != nil {
		return nil, fmt.Errorf("read oom counter in %s: %w", dir, err)
	}
	var f *os.File
	if Unified() {
		f, err = inotifyFile(filepath.Join(dir, "memory.events"))
	} else {
		f, err = eventFile(dir)
	}
	if err != nil {
		return nil, err
	}
	w := &OOMWatch{dir: dir, onOOM: onOOM, f: f, last: last}
	go w.watch()
	return w, nil
}

func (w *OOMWatch) watch() {
	buf := make([]byte, 4096)
	for {
		if _, err := w.f.Read(buf); err != nil {
			return // closed by Stop
		}
		// The notification can come a moment before the counter moves.
		for range 10 {
			news, err := w.check()
			if err != nil {
				w.f.Close()
				return // cgroup removed
			}
			if news {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// Check reports, through onOOM, a kill the watcher has not reported yet.
// The shim calls it when the container's init exits, while its cgroup is
// still there, so that an OOM kill is announced before the exit it caused
// and is not lost when the cgroup is removed right after.
func (w *OOMWatch) Check() {
	_, _ = w.check()
}

func (w *OOMWatch) check() (bool, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n, err := OOMKills(w.dir)
	if err != nil || n <= w.last {
		return false, err
	}
	w.last = n
	w.onOOM()
	return true, nil
}

// Stop stops watching.
func (w *OOMWatch) Stop() { w.f.Close() }

// eventFile registers an eventfd for OOM notifications on a v1 memory
// cgroup and returns it as a pollable file.
func eventFile(dir string) (*os.File, error) {
	ctl, err := os.Open(filepath.Join(dir, "memory.oom_control"))
	if err != nil {
		return nil, fmt.Errorf("open oom control: %w", err)
	}
	defer ctl.Close()
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	reg := fmt.Sprintf("%d %d", efd, ctl.Fd())
	if err := os.WriteFile(filepath.Join(dir, "cgroup.event_control"), []byte(reg), 0o200); err != nil {
		unix.Close(efd)
		return nil, fmt.Errorf("register oom eventfd: %w", err)
	}
	return os.NewFile(uintptr(efd), "oom-eventfd"), nil
}

// inotifyFile watches path for modifications and returns the inotify
// instance as a pollable file.
func inotifyFile(path string) (*os.File, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("inotify: %w", err)
	}
	if _, err := unix.InotifyAddWatch(fd, path, unix.IN_MODIFY); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("watch %s: %w", path, err)
	}
	return os.NewFile(uintptr(fd), "oom-inotify"), nil
}

// Join moves process pid into the cgroup at path (absolute, as the runc
// options' ShimCgroup gives it): the unified group on a v2 host; on a v1
// host the group of that path in every controller hierarchy that has it.
// A path that no hierarchy has is NotFound.
func Join(path string, pid int) error {
	if !filepath.IsAbs(path) {
		return fmt.Errorf("cgroup %q: the path must be absolute: %w", path, errdefs.ErrInvalidArgument)
	}
	if Unified() {
		m, err := cgroup2.Load(path)
		if err != nil {
			return fmt.Errorf("load cgroup %s: %w", path, notFound(err))
		}
		if err := m.AddProc(uint64(pid)); err != nil {
			return fmt.Errorf("join cgroup %s: %w", path, notFound(err))
		}
		return nil
	}
	cg, err := cgroup1.Load(cgroup1.StaticPath(path))
	if err != nil {
		if errors.Is(err, cgroup1.ErrCgroupDeleted) {
			err = fmt.Errorf("%w: %w", err, errdefs.ErrNotFound)
		}
		return fmt.Errorf("load cgroup %s: %w", path, notFound(err))
	}
	if err := cg.AddProc(uint64(pid)); err != nil {
		return fmt.Errorf("join cgroup %s: %w", path, notFound(err))
	}
	return nil
}
