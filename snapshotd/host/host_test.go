package host

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/services/mount"
	"github.com/flotilla/flotilla/snapshotd/internal/plugintest"
	"github.com/flotilla/flotilla/snapshotd/sdk"
	"github.com/flotilla/flotilla/snapshotd/snapshotter"
)

func TestMain(m *testing.M) {
	code := m.Run()
	plugintest.Cleanup()
	os.Exit(code)
}

func pluginPath(t *testing.T, name string) string {
	t.Helper()
	p, err := plugintest.Path(name)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// rootDir is a root free of commas, which overlay options cannot carry.
func rootDir(t *testing.T) string {
	dir, err := os.MkdirTemp("", "host-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func open(t *testing.T, root string, defaults ...Spec) *Host {
	t.Helper()
	h, err := Open(context.Background(), Options{Root: root, Defaults: defaults, PollInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// shutdownOnCleanup stops the plugin processes of whatever host last ran
// on root, so that no test leaves processes behind.
func shutdownOnCleanup(t *testing.T, h **Host) {
	t.Cleanup(func() {
		if *h != nil {
			(*h).Shutdown()
		}
	})
}

func get(t *testing.T, h *Host, name string) snapshotter.Snapshotter {
	t.Helper()
	s, err := h.Get(name)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func pidOf(t *testing.T, h *Host, name string) int {
	t.Helper()
	st, err := h.Status(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	if st.Pid == 0 {
		t.Fatalf("%s has no process: %+v", name, st)
	}
	return st.Pid
}

// mountActive prepares key on s, mounts it and writes a file, returning
// the mount point; the mount goes at cleanup.
func mountActive(t *testing.T, s snapshotter.Snapshotter, key string) string {
	t.Helper()
	ms, err := s.Prepare(context.Background(), key, "")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := mount.All(sdk.MountsToProto(ms), dir); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mount.Unmount(dir) })
	if err := os.WriteFile(filepath.Join(dir, "held"), []byte("still here"), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func needRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounts need root")
	}
}

func TestAdoptAfterRestart(t *testing.T) {
	needRoot(t)
	root := rootDir(t)
	var h *Host
	shutdownOnCleanup(t, &h)
	h = open(t, root, Spec{"overlayfs", pluginPath(t, "overlayfs")}, Spec{"native", pluginPath(t, "native")})

	ctx := context.Background()
	dir := mountActive(t, get(t, h, "overlayfs"), "ns/work")
	f, err := os.Open(filepath.Join(dir, "held"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	pids := map[string]int{"overlayfs": pidOf(t, h, "overlayfs"), "native": pidOf(t, h, "native")}

	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	h = open(t, root) // no defaults: the saved set is used

	t.Run("restarted host adopts the same processes", func(t *testing.T) {
		for name, pid := range pids {
			if got := pidOf(t, h, name); got != pid {
				t.Errorf("%s: pid %d after restart, want the adopted %d", name, got, pid)
			}
		}
	})
	t.Run("mounts stay intact and the snapshot is served", func(t *testing.T) {
		b := make([]byte, 10)
		if _, err := f.ReadAt(b, 0); err != nil || string(b) != "still here" {
			t.Fatalf("held file reads %q, %v", b, err)
		}
		info, err := get(t, h, "overlayfs").Stat(ctx, "ns/work")
		if err != nil || info.Kind != snapshotter.KindActive {
			t.Fatalf("stat after adoption = %+v, %v", info, err)
		}
	})
}

func TestAddReplaceRemove(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	root := rootDir(t)
	var h *Host
	shutdownOnCleanup(t, &h)
	h = open(t, root)
	native := pluginPath(t, "native")

	t.Run("add starts a new backend under its name", func(t *testing.T) {
		st, err := h.Add(ctx, "native2", native)
		if err != nil {
			t.Fatal(err)
		}
		if st.State != StateRunning || st.Pid == 0 || st.Active != 0 || st.Path != native {
			t.Fatalf("status after add = %+v", st)
		}
	})
	t.Run("add of a taken name is AlreadyExists", func(t *testing.T) {
		_, err := h.Add(ctx, "native2", native)
		if !errdefs.IsAlreadyExists(err) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("add of a path that is not an executable is InvalidArgument", func(t *testing.T) {
		for _, p := range []string{"relative/path", "/no/such/file", root} {
			if _, err := h.Add(ctx, "bad", p); !errdefs.IsInvalidArgument(err) {
				t.Errorf("add %q: err = %v", p, err)
			}
		}
	})
	t.Run("add of a plugin that fails to start quotes its message", func(t *testing.T) {
		script := filepath.Join(root, "broken")
		os.WriteFile(script, []byte("#!/bin/sh\necho 'kernel says no' >&2\nexit 1\n"), 0o755)
		_, err := h.Add(ctx, "broken", script)
		if !errdefs.IsFailedPrecondition(err) || !contains(err.Error(), "kernel says no") {
			t.Fatalf("err = %v, want FailedPrecondition quoting the plugin", err)
		}
		if _, err := h.Get("broken"); !errdefs.IsInvalidArgument(err) {
			t.Fatalf("failed backend is registered: %v", err)
		}
	})

	dir := mountActive(t, get(t, h, "native2"), "ns/held")
	f, err := os.Open(filepath.Join(dir, "held"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	t.Run("replace swaps the process; the mounted file stays readable and snapshots unchanged", func(t *testing.T) {
		before := pidOf(t, h, "native2")
		copyPath := filepath.Join(root, "snapshotter-native-v2")
		copyFile(t, native, copyPath)
		st, err := h.Replace(ctx, "native2", copyPath)
		if err != nil {
			t.Fatal(err)
		}
		if st.Pid == before || st.Path != copyPath || st.Active != 1 {
			t.Fatalf("status after replace = %+v (old pid %d)", st, before)
		}
		b := make([]byte, 10)
		if _, err := f.ReadAt(b, 0); err != nil || string(b) != "still here" {
			t.Fatalf("held file reads %q, %v", b, err)
		}
		if _, err := get(t, h, "native2").Stat(ctx, "ns/held"); err != nil {
			t.Fatalf("stat on the new process: %v", err)
		}
	})
	t.Run("replace with a plugin that fails keeps the backend serving", func(t *testing.T) {
		_, err := h.Replace(ctx, "native2", filepath.Join(root, "broken"))
		if !errdefs.IsFailedPrecondition(err) {
			t.Fatalf("err = %v", err)
		}
		if _, err := get(t, h, "native2").Stat(ctx, "ns/held"); err != nil {
			t.Fatalf("stat after failed replace: %v", err)
		}
	})
	t.Run("remove is refused while active snapshots remain", func(t *testing.T) {
		if err := h.Remove(ctx, "native2", false); !errdefs.IsFailedPrecondition(err) {
			t.Fatalf("err = %v, want FailedPrecondition", err)
		}
	})
	t.Run("remove without active snapshots stops the process", func(t *testing.T) {
		pid := pidOf(t, h, "native2")
		s := get(t, h, "native2")
		mount.Unmount(dir)
		if err := s.Remove(ctx, "ns/held"); err != nil {
			t.Fatal(err)
		}
		if err := h.Remove(ctx, "native2", false); err != nil {
			t.Fatal(err)
		}
		if _, err := h.Get("native2"); !errdefs.IsInvalidArgument(err) {
			t.Fatalf("get after remove = %v", err)
		}
		if _, err := s.Stat(ctx, "x"); !errdefs.IsInvalidArgument(err) {
			t.Fatalf("call on a removed backend = %v", err)
		}
		waitGone(t, pid)
	})
	t.Run("forced remove removes a backend with active snapshots", func(t *testing.T) {
		if _, err := h.Add(ctx, "native3", native); err != nil {
			t.Fatal(err)
		}
		if _, err := get(t, h, "native3").Prepare(ctx, "ns/a", ""); err != nil {
			t.Fatal(err)
		}
		if err := h.Remove(ctx, "native3", true); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("the set of backends survives a restart", func(t *testing.T) {
		if _, err := h.Add(ctx, "kept", native); err != nil {
			t.Fatal(err)
		}
		h.Close()
		h = open(t, root)
		if got := h.Names(); len(got) != 1 || got[0] != "kept" {
			t.Fatalf("backends after restart = %v", got)
		}
	})
}

func TestReplaceLetsCallsInFlightFinish(t *testing.T) {
	ctx := context.Background()
	var h *Host
	shutdownOnCleanup(t, &h)
	h = open(t, rootDir(t), Spec{"native", pluginPath(t, "native")})
	s := get(t, h, "native")
	for _, k := range []string{"a", "b"} {
		if _, err := s.Prepare(ctx, k, ""); err != nil {
			t.Fatal(err)
		}
	}
	old := pidOf(t, h, "native")
	inWalk, release := make(chan struct{}), make(chan struct{})
	walked := make(chan error, 1)
	go func() {
		n := 0
		walked <- s.Walk(ctx, func(context.Context, snapshotter.Info) error {
			if n++; n == 1 {
				close(inWalk)
				<-release
			}
			return nil
		})
	}()
	<-inWalk
	replaced := make(chan error, 1)
	go func() {
		_, err := h.Replace(ctx, "native", pluginPath(t, "native"))
		replaced <- err
	}()
	// The replacement waits for the walk; a call made meanwhile waits too.
	statted := make(chan error, 1)
	go func() { _, err := s.Stat(ctx, "a"); statted <- err }()
	select {
	case err := <-replaced:
		t.Fatalf("replace finished while a call was in flight: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	if !sdkAlive(old) {
		t.Fatal("old process stopped while a call was in flight")
	}
	close(release)
	if err := <-walked; err != nil {
		t.Fatalf("walk in flight: %v", err)
	}
	if err := <-replaced; err != nil {
		t.Fatal(err)
	}
	if err := <-statted; err != nil {
		t.Fatalf("call made during the replacement: %v", err)
	}
	if pidOf(t, h, "native") == old {
		t.Fatal("same process after replace")
	}
}

func TestCrashedPluginIsRestarted(t *testing.T) {
	ctx := context.Background()
	var h *Host
	shutdownOnCleanup(t, &h)
	h = open(t, rootDir(t), Spec{"native", pluginPath(t, "native")})
	s := get(t, h, "native")
	if _, err := s.Prepare(ctx, "a", ""); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		pid := pidOf(t, h, "native")
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		// The next call succeeds within 5 s: it waits for the restart.
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		info, err := s.Stat(cctx, "a")
		cancel()
		if err != nil || info.Name != "a" {
			t.Fatalf("kill %d: stat after kill -9 = %+v, %v", i, info, err)
		}
		if got := pidOf(t, h, "native"); got == pid {
			t.Fatalf("kill %d: still pid %d", i, pid)
		}
	}
	st, _ := h.Status(ctx, "native")
	if st.Restarts != 3 {
		t.Errorf("restarts = %d, want 3", st.Restarts)
	}
}

func TestCallsWaitABoundedTime(t *testing.T) {
	ctx := context.Background()
	root := rootDir(t)
	var h *Host
	shutdownOnCleanup(t, &h)
	h, err := Open(ctx, Options{Root: root, CallWait: 300 * time.Millisecond, PollInterval: 50 * time.Millisecond,
		Defaults: []Spec{{"native", pluginPath(t, "native")}}})
	if err != nil {
		t.Fatal(err)
	}
	s := get(t, h, "native")
	// Break the executable so that restarts fail, then kill the process.
	path := filepath.Join(root, "gone")
	copyFile(t, pluginPath(t, "native"), path)
	if _, err := h.Replace(ctx, "native", path); err != nil {
		t.Fatal(err)
	}
	os.Remove(path)
	syscall.Kill(pidOf(t, h, "native"), syscall.SIGKILL)
	_, err = s.Stat(ctx, "a")
	if !errdefs.IsUnavailable(err) {
		t.Fatalf("call while the backend cannot start = %v, want Unavailable", err)
	}
}

func waitGone(t *testing.T, pid int) {
	t.Helper()
	for range 100 {
		if !sdkAlive(pid) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("process %d still runs", pid)
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

func sdkAlive(pid int) bool { return sdk.Alive(pid) }

func TestStartOnUseLeavesEmptyBackendsWithoutAProcess(t *testing.T) {
	root := rootDir(t)
	native := pluginPath(t, "native")
	opts := Options{Root: root, Defaults: []Spec{{Name: "native", Path: native}}, PollInterval: 50 * time.Millisecond, StartOnUse: true}
	var h *Host
	shutdownOnCleanup(t, &h)
	h, err := Open(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if st, _ := h.Status(ctx, "native"); st.State != StateIdle || st.Pid != 0 || st.Active != 0 {
		t.Fatalf("a default at first start: %+v, want idle without a process", st)
	}
	s := get(t, h, "native")

	t.Run("an idle backend answers that there is nothing, without a process", func(t *testing.T) {
		walked := 0
		if err := s.Walk(ctx, func(context.Context, snapshotter.Info) error { walked++; return nil }); err != nil || walked != 0 {
			t.Fatalf("walk: %d snapshots, %v", walked, err)
		}
		if _, err := s.Stat(ctx, "k"); !errdefs.IsNotFound(err) {
			t.Fatalf("stat: %v, want NotFound", err)
		}
		if err := s.Remove(ctx, "k"); !errdefs.IsNotFound(err) {
			t.Fatalf("remove: %v, want NotFound", err)
		}
		if st, _ := h.Status(ctx, "native"); st.Pid != 0 {
			t.Fatalf("a process was started for a read: %+v", st)
		}
	})

	t.Run("preparing a snapshot starts the process", func(t *testing.T) {
		if _, err := s.Prepare(ctx, "k", ""); err != nil {
			t.Fatal(err)
		}
		if st, _ := h.Status(ctx, "native"); st.State != StateRunning || st.Pid == 0 || st.Active != 1 {
			t.Fatalf("after prepare: %+v", st)
		}
	})

	t.Run("a backend holding a snapshot starts at once next time", func(t *testing.T) {
		if err := h.Shutdown(); err != nil {
			t.Fatal(err)
		}
		h, err = Open(ctx, opts)
		if err != nil {
			t.Fatal(err)
		}
		pidOf(t, h, "native")
		if _, err := get(t, h, "native").Stat(ctx, "k"); err != nil {
			t.Fatalf("stat of the snapshot made before: %v", err)
		}
	})

	t.Run("one emptied before shutdown is idle next time", func(t *testing.T) {
		if err := get(t, h, "native").Remove(ctx, "k"); err != nil {
			t.Fatal(err)
		}
		if err := h.Shutdown(); err != nil {
			t.Fatal(err)
		}
		h, err = Open(ctx, opts)
		if err != nil {
			t.Fatal(err)
		}
		if st, _ := h.Status(ctx, "native"); st.State != StateIdle || st.Pid != 0 {
			t.Fatalf("after a shutdown with no snapshots: %+v, want idle", st)
		}
	})
}

// TestAddRunsOnlyFromThePluginDirectory: with a plugin directory, Add and
// Replace run only executables that lie inside it, however the path a
// caller names gets there.
func TestAddRunsOnlyFromThePluginDirectory(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	base := rootDir(t)
	plugins, outside := filepath.Join(base, "plugins"), filepath.Join(base, "elsewhere")
	for _, d := range []string{plugins, outside} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	native, err := os.ReadFile(pluginPath(t, "native"))
	if err != nil {
		t.Fatal(err)
	}
	inside := filepath.Join(plugins, "snapshotter-native")
	stray := filepath.Join(outside, "snapshotter-native")
	for _, p := range []string{inside, stray} {
		if err := os.WriteFile(p, native, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// A link inside leading out, and one outside leading in: the path as
	// named and the file it leads to must both be inside.
	if err := os.Symlink(stray, filepath.Join(plugins, "snapshotter-escape")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(inside, filepath.Join(outside, "snapshotter-in")); err != nil {
		t.Fatal(err)
	}
	var h *Host
	shutdownOnCleanup(t, &h)
	h, err = Open(ctx, Options{Root: filepath.Join(base, "root"), PollInterval: 50 * time.Millisecond, PluginDir: plugins})
	if err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct{ what, path string }{
		{"an absolute path outside", stray},
		{"a path climbing out with ..", filepath.Join(plugins, "..", "elsewhere", "snapshotter-native")},
		{"a relative path climbing out", "../elsewhere/snapshotter-native"},
		{"a symlink inside that leads outside", filepath.Join(plugins, "snapshotter-escape")},
		{"a symlink outside that leads inside", filepath.Join(outside, "snapshotter-in")},
		{"a program of the system", "/bin/sh"},
		{"the plugin directory itself", plugins},
	} {
		t.Run("add of "+tc.what+" is refused", func(t *testing.T) {
			_, err := h.Add(ctx, "refused", tc.path)
			if !errdefs.IsInvalidArgument(err) {
				t.Fatalf("add %s = %v, want InvalidArgument", tc.path, err)
			}
			if tc.path != plugins && !strings.Contains(err.Error(), "outside the plugin directory") {
				t.Errorf("add %s: %v does not say the path is outside the plugin directory", tc.path, err)
			}
			if _, err := h.Get("refused"); err == nil {
				t.Error("a refused backend is registered")
			}
		})
	}
	t.Run("add by a name in the directory runs its real path", func(t *testing.T) {
		st, err := h.Add(ctx, "byname", "snapshotter-native")
		if err != nil {
			t.Fatal(err)
		}
		if st.Path != inside {
			t.Errorf("path = %s, want %s", st.Path, inside)
		}
	})
	t.Run("replace with a path outside is refused and the backend keeps running", func(t *testing.T) {
		if _, err := h.Replace(ctx, "byname", stray); !errdefs.IsInvalidArgument(err) {
			t.Fatalf("replace = %v, want InvalidArgument", err)
		}
		if _, err := h.Replace(ctx, "byname", filepath.Join(plugins, "snapshotter-escape")); !errdefs.IsInvalidArgument(err) {
			t.Fatalf("replace through an escaping symlink = %v, want InvalidArgument", err)
		}
		if _, err := get(t, h, "byname").Stat(ctx, "none"); !errdefs.IsNotFound(err) {
			t.Errorf("backend after refused replaces: Stat = %v, want NotFound", err)
		}
	})
}

// TestConnectionLost: a call is retried on the next process when it failed
// because the connection went away (Unavailable, or cancelled by snapshotd
// closing a dead process's connection mid-call), not when the caller
// cancelled it or the plugin answered.
func TestConnectionLost(t *testing.T) {
	live := context.Background()
	gone, cancel := context.WithCancel(context.Background())
	cancel()
	closing := errgrpc.ToNative(status.Error(codes.Canceled, "grpc: the client connection is closing"))
	for _, tc := range []struct {
		ctx  context.Context
		err  error
		want bool
	}{
		{live, errgrpc.ToNative(status.Error(codes.Unavailable, "error reading from server: EOF")), true},
		{live, closing, true},
		{gone, closing, false},
		{gone, errgrpc.ToNative(status.Error(codes.Unavailable, "x")), false},
		{live, errgrpc.ToNative(status.Error(codes.NotFound, "snapshot a")), false},
		{live, errdefs.ErrFailedPrecondition, false},
	} {
		if got := connectionLost(tc.ctx, tc.err); got != tc.want {
			t.Errorf("connectionLost(caller cancelled: %v, %v) = %v, want %v", tc.ctx.Err() != nil, tc.err, got, tc.want)
		}
	}
}
