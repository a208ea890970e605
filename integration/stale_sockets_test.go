package integration

import (
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla/flotilla/flotctl/stack"
)

// shimSockets lists the sockets in the stack's shim socket directory.
func shimSockets(t *testing.T, s *runStack) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(s.Layout.State, "s"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if e.Type()&os.ModeSocket != 0 {
			out = append(out, filepath.Join(s.Layout.State, "s", e.Name()))
		}
	}
	return out
}

// shimSocket is the socket of container id's shim, from its bundle.
func shimSocket(t *testing.T, s *runStack, id string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(s.Layout.State, "taskd", "tasks", s.ns, id, "address"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimPrefix(strings.TrimSpace(string(b)), "unix://")
}

// killPid sends SIGKILL to pid and waits until it has exited, every thread.
func killPid(t *testing.T, pid int) {
	t.Helper()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for range 500 {
		if stack.Exited(pid) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("pid %d survived SIGKILL", pid)
}

// TestKilledShimsLeaveNoSockets kills shims with SIGKILL, while taskd runs
// and while it is down, and checks that no socket of a dead shim stays in
// the state directory: taskd removes it when it notices the shim died, and
// at start-up removes every shim socket nobody serves.
func TestKilledShimsLeaveNoSockets(t *testing.T) {
	s := startRunStack(t, "stalesock", nil)
	for _, id := range []string{"live", "dies", "dies-offline"} {
		s.MustCtr(s.ns, "run", "-d", s.ref, id, "sleep", "1000")
		s.waitStatus(t, id, "RUNNING")
	}
	live, dies, diesOffline := shimSocket(t, s, "live"), shimSocket(t, s, "dies"), shimSocket(t, s, "dies-offline")

	t.Run("a shim killed while taskd runs", func(t *testing.T) {
		killPid(t, shimOf(s.ns, "dies"))
		s.waitStatus(t, "dies", "STOPPED")
		if _, err := os.Lstat(dies); !os.IsNotExist(err) {
			t.Fatalf("the dead shim's socket %s is still there (%v)", dies, err)
		}
	})

	t.Run("a shim killed while taskd is down, and a socket nobody owns", func(t *testing.T) {
		s.Kill9("taskd")
		killPid(t, shimOf(s.ns, "dies-offline"))
		// A shim that died before any bundle named its socket.
		orphan := filepath.Join(s.Layout.State, "s", "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
		l, err := net.Listen("unix", orphan)
		if err != nil {
			t.Fatal(err)
		}
		l.(*net.UnixListener).SetUnlinkOnClose(false)
		l.Close()
		s.Up()
		s.waitStatus(t, "dies-offline", "STOPPED")
		left := shimSockets(t, s)
		if !slices.Contains(left, live) {
			t.Errorf("the live shim's socket %s was removed: %v", live, left)
		}
		for _, stale := range []string{diesOffline, orphan} {
			if slices.Contains(left, stale) {
				t.Errorf("stale socket %s is still there after taskd started: %v", stale, left)
			}
		}
		if out := s.MustCtr(s.ns, "tasks", "ls"); !strings.Contains(out, "live") {
			t.Errorf("the live task is gone:\n%s", out)
		}
	})
}
