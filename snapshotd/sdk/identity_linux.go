package sdk

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// A process ID names a process only until it exits: the kernel gives the
// number to the next process it starts. So a plugin is known by its pid
// together with its start time (in clock ticks since boot, /proc/PID/stat
// field 22), which no later process with that pid shares, and is signalled
// through a pidfd opened before the identity is checked, so that the
// process checked is the process signalled.

// errNotSame is returned when a pid now names another process.
var errNotSame = errors.New("the process id now names another process")

// startTime returns when process pid started, in clock ticks since boot.
func startTime(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name, in parentheses, may hold spaces: count fields
	// after its closing parenthesis, which is field 2; state is field 3.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f)+2)
	}
	return strconv.ParseUint(f[19], 10, 64)
}

// Same reports whether r's pid still names the process r was recorded for:
// the same start time when r has one, and, when path is set, the same
// executable. A process that is gone, or a zombie, is not the same.
func Same(r Reattach, path string) bool {
	if !Alive(r.Pid) {
		return false
	}
	if r.StartTime != 0 {
		st, err := startTime(r.Pid)
		if err != nil || st != r.StartTime {
			return false
		}
	}
	return path == "" || isExecutable(r.Pid, path)
}

func isExecutable(pid int, path string) bool {
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	return err == nil && strings.TrimSuffix(exe, " (deleted)") == path
}

// Signal sends sig to the process r describes if it is still that
// process (see Same); otherwise it sends nothing and returns an error.
func Signal(r Reattach, path string, sig syscall.Signal) error {
	fd, err := unix.PidfdOpen(r.Pid, 0)
	if err != nil {
		return fmt.Errorf("process %d: %w", r.Pid, err)
	}
	defer unix.Close(fd)
	// fd pins the process that had the pid now: if that is still the
	// plugin, the signal reaches it even if it exits and the pid is reused
	// meanwhile.
	if !Same(r, path) {
		return fmt.Errorf("process %d: %w", r.Pid, errNotSame)
	}
	return unix.PidfdSendSignal(fd, sig, nil, 0)
}
