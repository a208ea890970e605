package integration

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla/flotilla/flotctl/stack"
)

// attachCtrEvents starts `ctr events` on the gateway and returns once it
// has seen an event published after it started (so its subscription is in
// place); it is stopped when the test ends.
func attachCtrEvents(t *testing.T, s *Stack, probe string) {
	t.Helper()
	requireTool(t, "ctr")
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, "ctr", "--address", s.Socket, "events")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); cmd.Wait() })
	seen := make(chan string, 100)
	go func() {
		defer close(seen)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			seen <- sc.Text()
		}
	}()
	for i := 0; i < 100; i++ {
		ns := fmt.Sprintf("%s-%d", probe, i)
		s.MustCtr(ns, "namespaces", "create", ns)
		deadline := time.After(200 * time.Millisecond)
	wait:
		for {
			select {
			case line, ok := <-seen:
				if !ok {
					t.Fatal("ctr events exited")
				}
				if strings.Contains(line, "/namespaces/create") && strings.Contains(line, ns) {
					return
				}
			case <-deadline:
				break wait
			}
		}
	}
	t.Fatal("ctr events never reported a probe namespace")
}

// waitGone waits for process pid to exit, every thread, up to limit.
func waitGone(pid int, limit time.Duration) bool {
	end := time.Now().Add(limit)
	for time.Now().Before(end) {
		if stack.Exited(pid) {
			return true
		}
		time.Sleep(5 * time.Millisecond)
	}
	return false
}

// TestDaemonsStopPromptlyWithSubscribers: with `ctr events` attached
// through the gateway, every daemon stops on SIGTERM well before its 10 s
// shutdown timeout (a graceful stop used to wait for the subscription
// until the timeout cut it: eventd took 10.1 s).
func TestDaemonsStopPromptlyWithSubscribers(t *testing.T) {
	s := startStack(t)
	names := stack.Order
	if oneProcess() {
		names = []string{stack.ProcessName} // every component at once
	}
	for _, name := range names {
		t.Run(name+" stops promptly", func(t *testing.T) {
			s.Up() // what an earlier case stopped starts again
			attachCtrEvents(t, s, "stop-"+name)
			pid := s.Pid(name)
			start := time.Now()
			if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			// The shutdown timeout is 10 s: a daemon that waits for the
			// subscription takes all of it.
			if !waitGone(pid, 6*time.Second) {
				defer waitGone(pid, 15*time.Second) // before the next case starts it again
				t.Fatalf("%s still running %v after SIGTERM with a subscriber attached", name, time.Since(start))
			}
			t.Logf("%s exited %v after SIGTERM with ctr events attached", name, time.Since(start).Round(time.Millisecond))
		})
	}
}

// TestFilesAreTheDaemonsOwn: every daemon's data directory is 0700 and the
// logs 0600 (blobs, databases and logs are not for other local users, as
// containerd keeps its root 0700); state directories 0711 (crossed, not
// listed: a user-namespaced container reaches its bundle through taskd's),
// client sockets 0660.
func TestFilesAreTheDaemonsOwn(t *testing.T) {
	s := startStack(t)
	mode := func(p string) os.FileMode {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Mode().Perm()
	}
	for _, svc := range s.Layout.Services() {
		for _, c := range []struct {
			what string
			path string
			want os.FileMode
		}{
			{"data directory", filepath.Join(s.Layout.Root, svc.Name), 0o700},
			{"state directory", filepath.Join(s.Layout.State, svc.Name), 0o711},
			{"log", s.LogFile(svc.Name), 0o600},
			{"socket", svc.Socket, 0o660},
		} {
			if got := mode(c.path); got != c.want {
				t.Errorf("%s %s %s is %#o, want %#o", svc.Name, c.what, c.path, got, c.want)
			}
		}
	}
	if got := mode(filepath.Dir(s.Layout.LogFile("x"))); got != 0o700 {
		t.Errorf("log directory is %#o, want 0700", got)
	}
}

// TestPluginSocketsLiveInSnapshotdsState: snapshotter plugins make their
// sockets in snapshotd's state directory, not in /tmp, and those of killed
// plugins are removed when snapshotd starts again.
func TestPluginSocketsLiveInSnapshotdsState(t *testing.T) {
	s := startStack(t)
	dir := filepath.Join(s.Layout.State, "snapshotd", "plugins")
	sockets := func() []string {
		ents, err := os.ReadDir(dir)
		if err != nil {
			t.Fatalf("plugin socket directory: %v", err)
		}
		var out []string
		for _, e := range ents {
			if e.Type()&os.ModeSocket != 0 {
				out = append(out, filepath.Join(dir, e.Name()))
			}
		}
		return out
	}
	// A backend holding no snapshots has no process until it is used.
	if idle := sockets(); len(idle) != 0 {
		t.Fatalf("plugin sockets before any snapshotter was used: %v, want none", idle)
	}
	for _, sn := range []string{"overlayfs", "native"} {
		s.MustCtr("sockets", "snapshots", "--snapshotter", sn, "prepare", "first-use")
	}
	before := sockets()
	if len(before) != 2 {
		t.Fatalf("%d plugin sockets in %s, want one per default snapshotter (2): %v", len(before), dir, before)
	}

	// snapshotd and its plugins killed: nothing removes their sockets.
	s.Kill9("snapshotd")
	procs, _ := filepath.Glob("/proc/[0-9]*/environ")
	killed := 0
	for _, p := range procs {
		env, _ := os.ReadFile(p)
		if strings.Contains(string(env), "PLUGIN_UNIX_SOCKET_DIR="+dir+"\x00") {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
			syscall.Kill(pid, syscall.SIGKILL)
			waitGone(pid, 10*time.Second)
			killed++
		}
	}
	if killed != 2 {
		t.Fatalf("killed %d plugin processes, want 2", killed)
	}
	s.Up()
	after := sockets()
	for _, p := range after {
		c, err := net.Dial("unix", p)
		if err != nil {
			t.Errorf("stale plugin socket left after restart: %s (%v)", p, err)
			continue
		}
		c.Close()
	}
	if len(after) != 2 {
		t.Errorf("%d plugin sockets after restart, want 2: %v", len(after), after)
	}
}
