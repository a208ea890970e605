package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc/metadata"

	snapshotterv1 "github.com/flotilla/flotilla/proto/snapshotter/v1"
	"github.com/flotilla/flotilla/services/dial"
	"github.com/flotilla/flotilla/services/namespace"
	"github.com/flotilla/flotilla/snapshotd/internal/plugintest"
	"github.com/flotilla/flotilla/snapshotd/sdk"
)

var snapshotdBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "snapshotd-bin-")
	if err != nil {
		panic(err)
	}
	snapshotdBin = filepath.Join(dir, "snapshotd")
	if out, err := exec.Command("go", "build", "-o", snapshotdBin, ".").CombinedOutput(); err != nil {
		panic(fmt.Sprintf("build snapshotd: %v\n%s", err, out))
	}
	code := m.Run()
	os.RemoveAll(dir)
	plugintest.Cleanup()
	os.Exit(code)
}

// testDaemon is a snapshotd process run by a test on its own directories.
type testDaemon struct {
	dir, sock string
	cmd       *exec.Cmd
	log       *os.File
}

func newDaemon(t *testing.T) *testDaemon {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("snapshotd needs root")
	}
	if _, err := exec.LookPath("ctr"); err != nil {
		t.Skip("ctr is not installed")
	}
	dir, err := os.MkdirTemp("", "sd-")
	if err != nil {
		t.Fatal(err)
	}
	d := &testDaemon{dir: dir, sock: filepath.Join(dir, "snapshotd.sock")}
	t.Cleanup(func() {
		d.stop(t, syscall.SIGKILL)
		// Whatever plugins the last snapshotd left are ours to stop.
		killSavedPlugins(t, filepath.Join(dir, "root"))
		unmountUnder(dir)
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, "snapshotd.log"))
			t.Logf("snapshotd log:\n%s", b)
		}
		os.RemoveAll(dir)
	})
	return d
}

func (d *testDaemon) start(t *testing.T, extra ...string) {
	t.Helper()
	plugins, err := plugintest.Binaries()
	if err != nil {
		t.Fatal(err)
	}
	log, err := os.OpenFile(filepath.Join(d.dir, "snapshotd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	d.log = log
	d.cmd = exec.Command(snapshotdBin, "--address", d.sock, "--root", filepath.Join(d.dir, "root"),
		"--state", filepath.Join(d.dir, "state"), "--metrics-address", "", "--plugin-dir", plugins)
	d.cmd.Args = append(d.cmd.Args, extra...)
	d.cmd.Stdout, d.cmd.Stderr = log, log
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for range 200 {
		if c, err := net.Dial("unix", d.sock); err == nil {
			c.Close()
			return
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatal("snapshotd did not come up")
}

func (d *testDaemon) stop(t *testing.T, sig syscall.Signal) {
	if d.cmd == nil || d.cmd.Process == nil {
		return
	}
	d.cmd.Process.Signal(sig)
	d.cmd.Wait()
	d.log.Close()
	d.cmd = nil
}

func (d *testDaemon) ctr(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("ctr", append([]string{"--address", d.sock}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("ctr %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func (d *testDaemon) ctrFails(t *testing.T, want string, args ...string) {
	t.Helper()
	out, err := exec.Command("ctr", append([]string{"--address", d.sock}, args...)...).CombinedOutput()
	if err == nil || !strings.Contains(string(out), want) {
		t.Fatalf("ctr %s = %v\n%s\nwant a failure saying %q", strings.Join(args, " "), err, out, want)
	}
}

func (d *testDaemon) admin(t *testing.T) snapshotterv1.SnapshottersClient {
	t.Helper()
	conn, err := dial.Dial(d.sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return snapshotterv1.NewSnapshottersClient(conn)
}

func pids(t *testing.T, c snapshotterv1.SnapshottersClient) map[string]int64 {
	t.Helper()
	resp, err := c.List(context.Background(), &snapshotterv1.ListSnapshottersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]int64)
	for _, s := range resp.Snapshotters {
		out[s.Name] = s.Pid
	}
	return out
}

func killSavedPlugins(t *testing.T, root string) {
	b, err := os.ReadFile(filepath.Join(root, "snapshotters.json"))
	if err != nil {
		return
	}
	var st struct {
		Snapshotters []struct {
			Reattach *sdk.Reattach `json:"reattach"`
		} `json:"snapshotters"`
	}
	json.Unmarshal(b, &st)
	for _, s := range st.Snapshotters {
		if s.Reattach != nil && sdk.Alive(s.Reattach.Pid) {
			syscall.Kill(s.Reattach.Pid, syscall.SIGKILL)
		}
	}
}

func unmountUnder(dir string) {
	b, _ := os.ReadFile("/proc/self/mounts")
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 1 && strings.HasPrefix(f[1], dir) {
			syscall.Unmount(f[1], syscall.MNT_DETACH)
		}
	}
}

func TestCtrSnapshots(t *testing.T) {
	d := newDaemon(t)
	d.start(t)
	for _, sn := range []string{"overlayfs", "native"} {
		t.Run(sn, func(t *testing.T) {
			s := func(args ...string) string {
				return d.ctr(t, append([]string{"snapshots", "--snapshotter", sn}, args...)...)
			}
			s("prepare", "base-active")
			s("commit", "base", "base-active")
			s("prepare", "work", "base")
			s("view", "look", "base")
			if out := s("ls"); !strings.Contains(out, "work") || !strings.Contains(out, "Committed") || !strings.Contains(out, "View") {
				t.Fatalf("ls:\n%s", out)
			}
			if out := s("tree"); !strings.Contains(out, "\\_ work") {
				t.Fatalf("tree:\n%s", out)
			}
			s("label", "work", "team=a")
			if out := s("info", "work"); !strings.Contains(out, `"team": "a"`) || !strings.Contains(out, `"Parent": "base"`) {
				t.Fatalf("info:\n%s", out)
			}
			if out := s("mounts", "/mnt", "work"); !strings.HasPrefix(out, "mount -t") {
				t.Fatalf("mounts:\n%s", out)
			}
			if out := s("usage"); !strings.Contains(out, "base") {
				t.Fatalf("usage:\n%s", out)
			}
			d.ctrFails(t, "already exists", "snapshots", "--snapshotter", sn, "prepare", "work", "base")
			d.ctrFails(t, "not found", "snapshots", "--snapshotter", sn, "prepare", "x", "no-parent")
			d.ctrFails(t, "failed precondition", "snapshots", "--snapshotter", sn, "rm", "base")
			s("rm", "work", "look")
			s("rm", "base")
			if out := s("ls"); strings.Contains(out, "base") {
				t.Fatalf("ls after rm:\n%s", out)
			}
		})
	}
	t.Run("unknown snapshotter is refused", func(t *testing.T) {
		d.ctrFails(t, "snapshotter not loaded", "snapshots", "--snapshotter", "zfs", "ls")
	})
	t.Run("introspection lists each snapshotter as a plugin", func(t *testing.T) {
		out := d.ctr(t, "plugins", "ls")
		for _, want := range []string{"io.containerd.snapshotter.v1    overlayfs", "io.containerd.snapshotter.v1    native", "io.containerd.grpc.v1           snapshots"} {
			if !strings.Contains(out, want) {
				t.Errorf("plugins ls lacks %q:\n%s", want, out)
			}
		}
	})
}

func TestKilledSnapshotdAdoptsPlugins(t *testing.T) {
	d := newDaemon(t)
	// Every plugin started at once, so there is a process of each to adopt.
	d.start(t, "--start-on-use=false")
	before := pids(t, d.admin(t))
	if before["overlayfs"] == 0 || before["native"] == 0 {
		t.Fatalf("default plugins not running: %v", before)
	}
	d.ctr(t, "snapshots", "prepare", "base-active")
	d.ctr(t, "snapshots", "commit", "base", "base-active")
	d.ctr(t, "snapshots", "prepare", "rootfs", "base")
	target := filepath.Join(d.dir, "rootfs")
	os.Mkdir(target, 0o755)
	mountCmd := d.ctr(t, "snapshots", "mounts", target, "rootfs")
	if out, err := exec.Command("sh", "-c", mountCmd).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", mountCmd, err, out)
	}
	os.WriteFile(filepath.Join(target, "f"), []byte("kept"), 0o644)

	d.stop(t, syscall.SIGKILL)
	for name, pid := range before {
		if !sdk.Alive(int(pid)) {
			t.Fatalf("plugin %s (pid %d) died with snapshotd", name, pid)
		}
	}
	d.start(t)
	after := pids(t, d.admin(t))
	for name, pid := range before {
		if after[name] != pid {
			t.Errorf("%s: pid %d after restart, want the adopted %d", name, after[name], pid)
		}
	}
	if b, err := os.ReadFile(filepath.Join(target, "f")); err != nil || string(b) != "kept" {
		t.Fatalf("mounted file after restart: %q, %v", b, err)
	}
	if out := d.ctr(t, "snapshots", "ls"); !strings.Contains(out, "rootfs") {
		t.Fatalf("ls after restart:\n%s", out)
	}

	t.Run("killed plugin: the next call succeeds within 5s", func(t *testing.T) {
		syscall.Kill(int(after["overlayfs"]), syscall.SIGKILL)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, "ctr", "--address", d.sock, "snapshots", "info", "rootfs").CombinedOutput()
		if err != nil {
			t.Fatalf("ctr snapshots info after kill -9: %v\n%s", err, out)
		}
	})
	t.Run("remove is refused while the backend holds an active snapshot", func(t *testing.T) {
		_, err := d.admin(t).Remove(context.Background(), &snapshotterv1.RemoveSnapshotterRequest{Name: "overlayfs"})
		if !errdefs.IsFailedPrecondition(err) {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestGracefulStop(t *testing.T) {
	d := newDaemon(t)
	t.Run("a graceful stop stops the plugins", func(t *testing.T) {
		d.start(t, "--start-on-use=false")
		before := pids(t, d.admin(t))
		d.stop(t, syscall.SIGTERM)
		for name, pid := range before {
			if sdk.Alive(int(pid)) {
				t.Errorf("plugin %s (pid %d) outlived a graceful stop", name, pid)
			}
		}
	})
	t.Run("with --keep-plugins they are adopted by the next snapshotd", func(t *testing.T) {
		d.start(t, "--keep-plugins", "--start-on-use=false")
		before := pids(t, d.admin(t))
		d.stop(t, syscall.SIGTERM)
		d.start(t)
		after := pids(t, d.admin(t))
		for name, pid := range before {
			if after[name] != pid {
				t.Errorf("%s: pid %d, want the adopted %d", name, after[name], pid)
			}
		}
		d.stop(t, syscall.SIGTERM)
	})
}

// BenchmarkCycleThroughSnapshotd runs Prepare/Commit/Remove cycles through
// snapshotd's socket (service, host and plugin), and through a gateway in
// front of it; compare with BenchmarkCycle in the sdk package (in-process
// and plugin only), run in the same `go test -bench` invocation.
func BenchmarkCycleThroughSnapshotd(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("snapshotd needs root")
	}
	dir, err := os.MkdirTemp("", "sdb-")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(dir)
	plugins, err := plugintest.Binaries()
	if err != nil {
		b.Fatal(err)
	}
	sock := filepath.Join(dir, "snapshotd.sock")
	sd := exec.Command(snapshotdBin, "--address", sock, "--root", filepath.Join(dir, "root"),
		"--state", filepath.Join(dir, "state"), "--metrics-address", "", "--plugin-dir", plugins,
		"--log-level", "warn")
	if err := sd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { sd.Process.Signal(syscall.SIGTERM); sd.Wait() }()
	waitSocket(b, sock)

	addrs := map[string]string{"snapshotd": sock}
	gwBin := filepath.Join(dir, "gateway")
	if out, err := exec.Command("go", "build", "-o", gwBin, "github.com/flotilla/flotilla/gateway/cmd/gateway").CombinedOutput(); err == nil {
		gwSock := filepath.Join(dir, "gw.sock")
		gw := exec.Command(gwBin, "--address", gwSock, "--root", filepath.Join(dir, "gw"), "--state", filepath.Join(dir, "gws"),
			"--metrics-address", "", "--snapshotd", sock, "--log-level", "warn")
		if err := gw.Start(); err != nil {
			b.Fatal(err)
		}
		defer func() { gw.Process.Signal(syscall.SIGTERM); gw.Wait() }()
		waitSocket(b, gwSock)
		addrs["gateway"] = gwSock
	} else {
		b.Logf("no gateway benchmark: %v\n%s", err, out)
	}
	for _, via := range []string{"snapshotd", "gateway"} {
		addr, ok := addrs[via]
		if !ok {
			continue
		}
		for _, sn := range plugintest.Names {
			b.Run(via+"/"+sn, func(b *testing.B) {
				conn, err := dial.Dial(addr)
				if err != nil {
					b.Fatal(err)
				}
				defer conn.Close()
				s := sdk.NewNamedClient(conn, sn)
				ctx := namespaceCtx("bench-" + via)
				base := "base"
				if _, err := s.Prepare(ctx, "base-a", ""); err != nil {
					b.Fatal(err)
				}
				if err := s.Commit(ctx, base, "base-a"); err != nil {
					b.Fatal(err)
				}
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					key, name := fmt.Sprintf("k%d", i), fmt.Sprintf("n%d", i)
					if _, err := s.Prepare(ctx, key, base); err != nil {
						b.Fatal(err)
					}
					if err := s.Commit(ctx, name, key); err != nil {
						b.Fatal(err)
					}
					if err := s.Remove(ctx, name); err != nil {
						b.Fatal(err)
					}
				}
				b.StopTimer()
				s.Remove(ctx, base)
			})
		}
	}
}

func waitSocket(tb testing.TB, sock string) {
	tb.Helper()
	for range 400 {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return
		}
		time.Sleep(25 * time.Millisecond)
	}
	tb.Fatalf("nothing serves on %s", sock)
}

func namespaceCtx(ns string) context.Context {
	return metadata.AppendToOutgoingContext(context.Background(), namespace.MetadataKey, ns)
}
