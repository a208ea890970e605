package integration

import (
	"context"
	"encoding/json"
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

// stopPluginsOnCleanup kills the snapshotter plugin processes snapshotd
// leaves running when it stops (for the next snapshotd to adopt).
func stopPluginsOnCleanup(t testing.TB, s *Stack) {
	state := filepath.Join(s.Layout.Root, "snapshotd", "snapshotters.json")
	t.Cleanup(func() {
		b, err := os.ReadFile(state)
		if err != nil {
			return
		}
		var st struct {
			Snapshotters []struct {
				Reattach *struct {
					Pid int `json:"pid"`
				} `json:"reattach"`
			} `json:"snapshotters"`
		}
		json.Unmarshal(b, &st)
		for _, sn := range st.Snapshotters {
			if sn.Reattach != nil && sn.Reattach.Pid > 0 {
				syscall.Kill(sn.Reattach.Pid, syscall.SIGKILL)
			}
		}
	})
}

func flotctl(t *testing.T, s *Stack, args ...string) (string, error) {
	t.Helper()
	all := append([]string{"--address", s.Socket}, args...)
	out, err := exec.Command(filepath.Join(binDir, "flotctl"), all...).CombinedOutput()
	return string(out), err
}

func mustFlotctl(t *testing.T, s *Stack, args ...string) string {
	t.Helper()
	out, err := flotctl(t, s, args...)
	if err != nil {
		t.Fatalf("flotctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// snapshotterPid reads backend name's pid from `flotctl snapshotters ls`.
func snapshotterPid(t *testing.T, s *Stack, name string) int {
	t.Helper()
	for _, line := range strings.Split(mustFlotctl(t, s, "snapshotters", "ls"), "\n") {
		if f := strings.Fields(line); len(f) > 2 && f[0] == name {
			pid, err := strconv.Atoi(f[1])
			if err != nil {
				t.Fatalf("%s has no pid: %q", name, line)
			}
			return pid
		}
	}
	t.Fatalf("snapshotter %s not listed", name)
	return 0
}

func TestCtrSnapshotsThroughGateway(t *testing.T) {
	requireTool(t, "ctr")
	s := startStack(t)
	stopPluginsOnCleanup(t, s)
	for _, sn := range []string{"overlayfs", "native"} {
		t.Run(sn, func(t *testing.T) {
			c := func(args ...string) string {
				return s.MustCtr("snap", append([]string{"snapshots", "--snapshotter", sn}, args...)...)
			}
			c("prepare", "base-a")
			c("commit", "base", "base-a")
			c("prepare", "work", "base")
			c("view", "look", "base")
			c("label", "work", "team=a")
			for _, check := range []struct {
				args []string
				want string
			}{
				{[]string{"ls"}, "Committed"},
				{[]string{"tree"}, `\_ work`},
				{[]string{"info", "work"}, `"team": "a"`},
				{[]string{"mounts", "/mnt", "work"}, "mount -t"},
				{[]string{"usage"}, "base"},
			} {
				if out := c(check.args...); !strings.Contains(out, check.want) {
					t.Errorf("ctr snapshots %s lacks %q:\n%s", strings.Join(check.args, " "), check.want, out)
				}
			}
			if out, err := s.Ctr("snap", "snapshots", "--snapshotter", sn, "rm", "base"); err == nil || !strings.Contains(out, "failed precondition") {
				t.Errorf("rm of a parent: %v\n%s", err, out)
			}
			if out := s.MustCtr("other", "snapshots", "--snapshotter", sn, "ls"); strings.Contains(out, "base") {
				t.Errorf("another namespace sees the snapshots:\n%s", out)
			}
			c("rm", "work", "look")
			c("rm", "base")
		})
	}
}

func TestSnapshottersAtRuntime(t *testing.T) {
	requireTool(t, "ctr")
	if os.Geteuid() != 0 {
		t.Skip("mounts need root")
	}
	// snapshotd runs backends only from its plugin directory: one of the
	// test's, outliving the subtests (restarts run what is there).
	plugins := t.TempDir()
	for _, name := range []string{"snapshotter-native", "snapshotter-overlayfs"} {
		b, err := os.ReadFile(filepath.Join(binDir, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(plugins, name), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	s := startStackWith(t, func(l *stack.Layout) {
		if l.ExtraArgs == nil {
			l.ExtraArgs = map[string][]string{}
		}
		l.ExtraArgs["snapshotd"] = append(l.ExtraArgs["snapshotd"], "--plugin-dir", plugins)
	})
	stopPluginsOnCleanup(t, s)
	native := filepath.Join(plugins, "snapshotter-native")

	t.Run("add of an executable outside the plugin directory is refused", func(t *testing.T) {
		escape := filepath.Join(plugins, "snapshotter-escape")
		if err := os.Symlink(filepath.Join(binDir, "snapshotter-native"), escape); err != nil {
			t.Fatal(err)
		}
		climb, err := filepath.Rel(plugins, filepath.Join(binDir, "snapshotter-native"))
		if err != nil {
			t.Fatal(err)
		}
		for _, path := range []string{
			filepath.Join(binDir, "snapshotter-native"),
			plugins + "/" + climb, // starts in the directory, climbs out with ..
			escape,
		} {
			out, err := flotctl(t, s, "snapshotters", "add", "evil", path)
			if err == nil || !strings.Contains(out, "outside the plugin directory") || !strings.Contains(out, "invalid argument") {
				t.Errorf("add %s: %v\n%s", path, err, out)
			}
		}
		if out := mustFlotctl(t, s, "snapshotters", "ls"); strings.Contains(out, "evil") {
			t.Errorf("a refused snapshotter is listed:\n%s", out)
		}
	})

	mustFlotctl(t, s, "snapshotters", "add", "native2", native)
	s.MustCtr("rt", "snapshots", "--snapshotter", "native2", "prepare", "held")
	target := t.TempDir()
	mountCmd := s.MustCtr("rt", "snapshots", "--snapshotter", "native2", "mounts", target, "held")
	if out, err := exec.Command("sh", "-c", mountCmd).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", mountCmd, err, out)
	}
	t.Cleanup(func() { syscall.Unmount(target, syscall.MNT_DETACH) })
	os.WriteFile(filepath.Join(target, "f"), []byte("kept"), 0o644)
	f, err := os.Open(filepath.Join(target, "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	before := s.MustCtr("rt", "snapshots", "--snapshotter", "native2", "ls")

	t.Run("replace while mounted and held open: new pid, file readable, ls unchanged", func(t *testing.T) {
		old := snapshotterPid(t, s, "native2")
		copyPath := filepath.Join(plugins, "snapshotter-native-v2")
		b, _ := os.ReadFile(native)
		os.WriteFile(copyPath, b, 0o755)
		mustFlotctl(t, s, "snapshotters", "replace", "native2", copyPath)
		if pid := snapshotterPid(t, s, "native2"); pid == old {
			t.Fatalf("same pid %d after replace", pid)
		}
		buf := make([]byte, 4)
		if _, err := f.ReadAt(buf, 0); err != nil || string(buf) != "kept" {
			t.Fatalf("held file reads %q, %v", buf, err)
		}
		if after := s.MustCtr("rt", "snapshots", "--snapshotter", "native2", "ls"); after != before {
			t.Fatalf("ls changed:\n%s\nwas:\n%s", after, before)
		}
	})
	t.Run("remove is refused while in use", func(t *testing.T) {
		out, err := flotctl(t, s, "snapshotters", "remove", "native2")
		if err == nil || !strings.Contains(out, "active snapshots") {
			t.Fatalf("remove in use: %v\n%s", err, out)
		}
	})
	t.Run("kill -9 of a plugin: the next call succeeds within 5s", func(t *testing.T) {
		syscall.Kill(snapshotterPid(t, s, "native2"), syscall.SIGKILL)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, "ctr", "--address", s.Socket, "-n", "rt",
			"snapshots", "--snapshotter", "native2", "info", "held").CombinedOutput()
		if err != nil {
			t.Fatalf("after kill -9: %v\n%s", err, out)
		}
	})
	t.Run("remove succeeds once its snapshots are gone", func(t *testing.T) {
		syscall.Unmount(target, syscall.MNT_DETACH)
		s.MustCtr("rt", "snapshots", "--snapshotter", "native2", "rm", "held")
		mustFlotctl(t, s, "snapshotters", "remove", "native2")
		if out, err := s.Ctr("rt", "snapshots", "--snapshotter", "native2", "ls"); err == nil {
			t.Fatalf("removed snapshotter still answers:\n%s", out)
		}
	})
}
