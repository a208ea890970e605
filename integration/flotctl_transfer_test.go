package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla/flotilla/integration/imagekit"
)

// containerd2Dir is where containerd 2.x's binaries are: $CONTAINERD2_BIN,
// by default /opt/containerd-2.4.2/bin.
func containerd2Dir(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("CONTAINERD2_BIN")
	if dir == "" {
		dir = "/opt/containerd-2.4.2/bin"
	}
	for _, b := range []string{"containerd", "containerd-shim-runc-v2"} {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("containerd 2.x is required in CI: %v", err)
			}
			t.Skipf("containerd 2.x not installed: %v", err)
		}
	}
	return dir
}

// startReferenceContainerd starts containerd 2.x's own daemon on temporary
// directories, with its runc shim, as the reference flotctl's client side
// is proven against; it returns the daemon's socket.
func startReferenceContainerd(t *testing.T) string {
	t.Helper()
	bin := containerd2Dir(t)
	requireTool(t, "runc")
	dir, err := os.MkdirTemp("", "c2")
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "c.sock")
	cfg := fmt.Sprintf(`version = 3
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime", "io.containerd.internal.v1.restart"]
[grpc]
  address = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), sock)
	if err := os.WriteFile(filepath.Join(dir, "config.toml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "containerd.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(bin, "containerd"), "--config", filepath.Join(dir, "config.toml"))
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its shim is found on PATH: the 2.x one, not Debian's.
	cmd.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("--- containerd 2.x log ---\n%s", lastLines(string(b), 30))
		}
		logf.Close()
		reapLeftovers(t, dir)
	})
	for deadline := time.Now().Add(30 * time.Second); ; {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(logf.Name())
			t.Fatalf("containerd 2.x did not serve %s within 30s:\n%s", sock, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return sock
}

// transferTarget is an endpoint flotctl's Transfer commands are tested on.
type transferTarget struct {
	name  string
	start func(t *testing.T) string
	// logs is whether the endpoint's shim takes file:// log URIs, which
	// `run -d` needs.
	logs bool
}

var transferTargets = []transferTarget{
	{"containerd 2.4", startReferenceContainerd, true},
	{"flotilla", func(t *testing.T) string {
		s := startStack(t)
		stopPluginsOnCleanup(t, s)
		return s.Socket
	}, true},
}

// imageTarget reads one image's target digest from `flotctl images ls`.
func (f flotctlOn) imageTarget(name string) string {
	f.t.Helper()
	var rows []struct {
		Name   string `json:"name"`
		Target struct {
			Digest string `json:"digest"`
		} `json:"target"`
	}
	f.mustJSON(&rows, "images", "ls")
	for _, r := range rows {
		if r.Name == name {
			return r.Target.Digest
		}
	}
	f.t.Fatalf("images ls in %s does not list %s", f.ns, name)
	return ""
}

func TestFlotctlPullPushImportExportThroughTransfer(t *testing.T) {
	requireRootForMounts(t)
	reg := imagekit.StartRegistry(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	refs := map[string]string{}
	for _, kind := range []imagekit.Kind{imagekit.KindBusybox, imagekit.KindMultiarch, imagekit.KindLayers} {
		img, err := imagekit.Build(kind)
		if err != nil {
			t.Fatal(err)
		}
		defer img.Close()
		refs[string(kind)] = reg + "/flotctl-" + string(kind) + ":1"
		if err := img.Push(ctx, refs[string(kind)]); err != nil {
			t.Fatal(err)
		}
	}
	for _, target := range transferTargets {
		t.Run(target.name, func(t *testing.T) {
			addr := target.start(t)
			fc := flotctlOn{t: t, address: addr, ns: "flotctl-pull"}
			t.Cleanup(func() { fc.run(nil, "rm", "-f", "life") })

			t.Run("pull prints progress lines and totals, then run prints hi", func(t *testing.T) {
				for _, kind := range []string{"busybox", "multiarch", "layers"} {
					out := fc.must("pull", "--plain-http", refs[kind])
					// Not a terminal: one line per state change of each blob, then totals.
					if !regexp.MustCompile(`(?m)^pulled `+regexp.QuoteMeta(refs[kind])+`: \d+ blobs, .* in .*s$`).MatchString(out) ||
						!regexp.MustCompile(`(?m)^(layer|manifest|config) [0-9a-f]{12}: `).MatchString(out) {
						t.Errorf("pull %s printed:\n%s", kind, out)
					}
				}
				for _, kind := range []string{"busybox", "multiarch"} {
					if r := fc.run(nil, "run", "--rm", refs[kind], "echo", "hi"); r.code != 0 || r.stdout != "hi\n" {
						t.Errorf("run %s: exit %d, stdout %q, stderr %q", kind, r.code, r.stdout, r.stderr)
					}
				}
			})
			t.Run("pull --platform picks that platform's manifest", func(t *testing.T) {
				fc2 := flotctlOn{t: t, address: addr, ns: "flotctl-arm"}
				fc2.must("pull", "--plain-http", "--platform", "linux/arm64", refs["multiarch"])
				var got []struct {
					Content struct {
						Config struct {
							Architecture string `json:"architecture"`
						} `json:"config"`
					} `json:"content"`
				}
				if err := json.Unmarshal([]byte(fc2.must("images", "inspect", "--platform", "linux/arm64", refs["multiarch"])), &got); err != nil || len(got) != 1 || got[0].Content.Config.Architecture != "arm64" {
					t.Errorf("inspect of the arm64 pull: %+v (%v)", got, err)
				}
			})
			t.Run("run (-d where logs are kept), ps, logs, exec, kill, rm", func(t *testing.T) {
				testLifecycle(t, fc, refs["busybox"], target.logs)
			})
			t.Run("push, then pull back the same digest elsewhere", func(t *testing.T) {
				pushed := reg + "/flotctl-pushed/" + strings.ReplaceAll(target.name, " ", "-") + ":1"
				fc.must("images", "tag", refs["layers"], pushed)
				out := fc.must("push", "--plain-http", pushed)
				if !strings.Contains(out, "pushed "+pushed) {
					t.Errorf("push printed:\n%s", out)
				}
				other := flotctlOn{t: t, address: addr, ns: "flotctl-pushed"}
				other.must("pull", "--plain-http", "-q", pushed)
				if a, b := fc.imageTarget(refs["layers"]), other.imageTarget(pushed); a != b {
					t.Errorf("pulled back %s, pushed %s", b, a)
				}
			})
			t.Run("export, then import in another namespace runs the same image", func(t *testing.T) {
				archive := filepath.Join(t.TempDir(), "busybox.tar")
				fc.must("images", "export", archive, refs["busybox"])
				other := flotctlOn{t: t, address: addr, ns: "flotctl-imported"}
				other.must("images", "import", archive)
				if a, b := fc.imageTarget(refs["busybox"]), other.imageTarget(refs["busybox"]); a != b {
					t.Errorf("imported %s, exported %s", b, a)
				}
				if r := other.run(nil, "run", "--rm", refs["busybox"], "echo", "hi"); r.code != 0 || r.stdout != "hi\n" {
					t.Errorf("run of the imported image: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
				}
			})
			t.Run("a reference that is not there fails on one line naming it", func(t *testing.T) {
				r := fc.run(nil, "pull", "--plain-http", "-q", reg+"/nothing:1")
				if r.code != 1 || !strings.HasPrefix(r.stderr, "flotctl: pull "+reg+"/nothing:1: ") || strings.Count(r.stderr, "\n") != 1 {
					t.Errorf("exit %d, stderr %q", r.code, r.stderr)
				}
			})
		})
	}
}
