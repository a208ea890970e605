package host

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/flotilla/flotilla/snapshotd/sdk"
)

// A change that meets a dead process is not sent again to its successor:
// it may have taken effect. Reads are.
func TestOnlyReadsAreRetriedAfterACrash(t *testing.T) {
	ctx := context.Background()
	var h *Host
	shutdownOnCleanup(t, &h)
	h, err := Open(ctx, Options{Root: rootDir(t), Defaults: []Spec{{"native", pluginPath(t, "native")}},
		// The watcher must not notice the death first: the call does.
		PollInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	s := get(t, h, "native")
	if _, err := s.Prepare(ctx, "a", ""); err != nil {
		t.Fatal(err)
	}
	kill := func() {
		t.Helper()
		// A read waits for the process a previous kill's restart starts.
		if _, err := s.Stat(ctx, "a"); err != nil && !errdefs.IsNotFound(err) {
			t.Fatal(err)
		}
		pid := pidOf(t, h, "native")
		syscall.Kill(pid, syscall.SIGKILL)
		waitGone(t, pid)
	}
	changes := []struct {
		name string
		call func() error
	}{
		{"prepare", func() error { _, err := s.Prepare(ctx, "b", ""); return err }},
		{"view", func() error { _, err := s.View(ctx, "v", ""); return err }},
		{"commit", func() error { return s.Commit(ctx, "c", "a") }},
		{"remove", func() error { return s.Remove(ctx, "a") }},
	}
	for _, c := range changes {
		t.Run(c.name+" is not retried and is Unavailable", func(t *testing.T) {
			kill()
			if err := c.call(); !errdefs.IsUnavailable(err) {
				t.Fatalf("%s after the process died = %v, want Unavailable", c.name, err)
			}
		})
	}
	t.Run("nothing was changed behind the caller's back", func(t *testing.T) {
		for _, key := range []string{"b", "v", "c"} {
			if _, err := s.Stat(ctx, key); !errdefs.IsNotFound(err) {
				t.Errorf("stat %s = %v, want NotFound", key, err)
			}
		}
		if _, err := s.Stat(ctx, "a"); err != nil {
			t.Errorf("stat a = %v", err)
		}
	})
	t.Run("stat is retried on the new process", func(t *testing.T) {
		kill()
		if info, err := s.Stat(ctx, "a"); err != nil || info.Name != "a" {
			t.Fatalf("stat after the process died = %+v, %v", info, err)
		}
	})
}

// holdingPlugin writes a script that runs the native plugin, but when dir
// holds a file named hold, first reports its pid on the fifo dir/started
// and waits for a line on the fifo dir/go.
func holdingPlugin(t *testing.T, dir string) string {
	t.Helper()
	for _, f := range []string{"started", "go"} {
		if err := syscall.Mkfifo(filepath.Join(dir, f), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	script := filepath.Join(dir, "plugin.sh")
	body := fmt.Sprintf("#!/bin/sh\nif [ -e %[1]s/hold ]; then\n  echo $$ > %[1]s/started\n  read x < %[1]s/go\nfi\nexec %[2]s\n",
		dir, pluginPath(t, "native"))
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	return script
}

func TestNoRestartCompletesAfterShutdown(t *testing.T) {
	for _, stop := range []struct {
		name string
		fn   func(*Host) error
	}{{"shutdown", (*Host).Shutdown}, {"close", (*Host).Close}} {
		t.Run(stop.name+" waits for a restart under way, which leaves no process", func(t *testing.T) {
			dir := rootDir(t)
			var h *Host
			shutdownOnCleanup(t, &h)
			h = open(t, filepath.Join(dir, "root"), Spec{"native", holdingPlugin(t, dir)})
			if err := os.WriteFile(filepath.Join(dir, "hold"), nil, 0o600); err != nil {
				t.Fatal(err)
			}
			syscall.Kill(pidOf(t, h, "native"), syscall.SIGKILL)

			// The restart has started the plugin, which waits.
			started, err := os.Open(filepath.Join(dir, "started"))
			if err != nil {
				t.Fatal(err)
			}
			line, err := bufio.NewReader(started).ReadString('\n')
			started.Close()
			if err != nil {
				t.Fatal(err)
			}
			pid, err := strconv.Atoi(strings.TrimSpace(line))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })

			done := make(chan error, 1)
			go func() { done <- stop.fn(h) }()
			// Let the plugin go on while snapshotd stops.
			if err := os.WriteFile(filepath.Join(dir, "go"), []byte("go\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if sdkAlive(pid) {
				// Stopping a process takes a moment; a process kept runs on.
				waitGone(t, pid)
			}
			if got := h.Describe(); len(got) != 1 || got[0].Pid != 0 {
				t.Errorf("after %s: %+v, want no process", stop.name, got)
			}
		})
	}
}

// Every crash releases the dead process's connection and go-plugin client.
func TestCrashesLeakNothing(t *testing.T) {
	ctx := context.Background()
	var h *Host
	shutdownOnCleanup(t, &h)
	h = open(t, rootDir(t), Spec{"native", pluginPath(t, "native")})
	s := get(t, h, "native")
	crash := func() {
		t.Helper()
		pid := pidOf(t, h, "native")
		syscall.Kill(pid, syscall.SIGKILL)
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		for pidOf(t, h, "native") == pid || h.Describe()[0].State != StateRunning {
			if _, err := s.Stat(cctx, "none"); cctx.Err() != nil {
				t.Fatalf("no restart: %v", err)
			}
		}
	}
	crash() // warm up whatever is started once
	base := runtime.NumGoroutine()
	const crashes = 5
	for range crashes {
		crash()
	}
	// Goroutines of released clients end on their own shortly.
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > base+2 && time.Now().Before(deadline) {
		runtime.Gosched()
		time.Sleep(20 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > base+2 {
		t.Errorf("%d goroutines after %d more crashes, %d before: what each crash leaves is kept", n, crashes, base)
	}
}

// A saved pid that now names another process, even one of the same
// executable, is left alone when adoption fails.
func TestAdoptionSparesAProcessThatReusedThePid(t *testing.T) {
	ctx := context.Background()
	root := rootDir(t)
	path := pluginPath(t, "native")
	// Another snapshotd's plugin: same executable, its own data.
	other, err := sdk.Start(ctx, sdk.Config{Path: path, Root: filepath.Join(root, "other")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(other.Stop)
	rc := other.Reattach()
	rc.StartTime++           // the plugin recorded was another process with this pid
	rc.Address = "/nonexist" // and cannot be reached
	st := savedState{Snapshotters: []savedBackend{{Name: "native", Path: path, Reattach: &rc}}}
	b, _ := json.Marshal(st)
	if err := os.MkdirAll(filepath.Join(root, "snapshotters"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, stateFile), b, 0o600); err != nil {
		t.Fatal(err)
	}
	var h *Host
	shutdownOnCleanup(t, &h)
	h = open(t, root)
	if !other.Alive() {
		t.Fatal("adoption killed a process that only has the saved pid")
	}
	if got := pidOf(t, h, "native"); got == rc.Pid {
		t.Errorf("adopted pid %d, which is another process", got)
	}
}

func TestSignalChecksIdentity(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	sleep, _ := exec.LookPath("sleep")
	sleep, _ = filepath.EvalSymlinks(sleep)
	start, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(start)[strings.LastIndexByte(string(start), ')')+1:])
	started, _ := strconv.ParseUint(f[19], 10, 64)
	rc := sdk.Reattach{Pid: cmd.Process.Pid, StartTime: started}

	for _, c := range []struct {
		name string
		rc   sdk.Reattach
		path string
	}{
		{"another start time", sdk.Reattach{Pid: rc.Pid, StartTime: started + 1}, ""},
		{"another executable", rc, "/usr/bin/not-sleep"},
	} {
		t.Run("a pid with "+c.name+" is not signalled", func(t *testing.T) {
			if err := sdk.Signal(c.rc, c.path, syscall.SIGKILL); err == nil {
				t.Fatal("signalled")
			}
			if !sdk.Same(rc, "") {
				t.Fatal("the process is gone")
			}
		})
	}
	t.Run("the same process is signalled", func(t *testing.T) {
		if err := sdk.Signal(rc, sleep, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-exited
	})
}
