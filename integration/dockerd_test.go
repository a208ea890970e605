package integration

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// dockerd is a Docker Engine (Debian's dockerd) started by a test on its
// own data root, exec root, pid file and socket, with no bridge and no
// iptables, against an external containerd API socket. It never touches a
// dockerd it did not start.
type dockerd struct {
	t testing.TB
	// dir holds everything of this dockerd: data/, exec/, docker.sock, its log.
	dir        string
	containerd string
	extra      []string
	cli        string
	cmd        *exec.Cmd
	done       chan struct{}
	runs       int
}

// startDockerd starts dockerd against the containerd API at containerdSock,
// with extra flags (e.g. --live-restore), and waits until it answers. When
// the test ends, every container is removed, dockerd is stopped and its
// mounts are undone, even if the test failed.
func startDockerd(t testing.TB, containerdSock string, extra ...string) *dockerd {
	t.Helper()
	requireTool(t, "dockerd")
	requireTool(t, "runc")
	// Debian's client beside Debian's daemon, when both are there.
	cli := "/usr/bin/docker"
	if _, err := os.Stat(cli); err != nil {
		cli = requireTool(t, "docker")
	}
	// Short: dockerd and libnetwork keep unix sockets under it.
	dir, err := os.MkdirTemp("", "dk")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "daemon.json"), []byte("{}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	d := &dockerd{t: t, dir: dir, containerd: containerdSock, extra: extra, cli: cli}
	t.Cleanup(func() {
		if d.running() {
			// Containers outlive a live-restore dockerd; remove them first.
			if out, _, err := d.docker("ps", "-aq"); err == nil {
				if ids := strings.Fields(out); len(ids) > 0 {
					d.docker(append([]string{"rm", "-f"}, ids...)...)
				}
			}
			d.stop()
		}
		if t.Failed() {
			b, _ := os.ReadFile(d.logPath())
			t.Logf("--- dockerd log ---\n%s", lastLines(string(b), 40))
		}
		reapLeftovers(t, dir)
	})
	d.start()
	return d
}

func (d *dockerd) logPath() string { return filepath.Join(d.dir, "dockerd.log") }
func (d *dockerd) socket() string  { return filepath.Join(d.dir, "docker.sock") }

func (d *dockerd) running() bool {
	if d.done == nil {
		return false
	}
	select {
	case <-d.done:
		return false
	default:
		return true
	}
}

// start starts dockerd (again) and waits until it answers /_ping.
func (d *dockerd) start() {
	d.t.Helper()
	args := []string{
		"--containerd", d.containerd,
		"--data-root", filepath.Join(d.dir, "data"),
		"--exec-root", filepath.Join(d.dir, "exec"),
		"--pidfile", filepath.Join(d.dir, "docker.pid"),
		"--config-file", filepath.Join(d.dir, "daemon.json"),
		"-H", "unix://" + d.socket(),
		"--bridge", "none", "--iptables=false", "--ip6tables=false", "--ip-masq=false", "--ip-forward=false",
		"--userland-proxy=false", "--log-level", "debug",
	}
	args = append(args, d.extra...)
	logFile, err := os.OpenFile(d.logPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		d.t.Fatal(err)
	}
	defer logFile.Close()
	d.runs++
	cmd := exec.Command("dockerd", args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Dir = d.dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		d.t.Fatalf("start dockerd: %v", err)
	}
	d.cmd, d.done = cmd, make(chan struct{})
	done := d.done
	go func() { cmd.Wait(); close(done) }()

	client := http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", d.socket())
	}}, Timeout: time.Second}
	deadline := time.After(60 * time.Second)
	for {
		if resp, err := client.Get("http://docker/_ping"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-done:
			b, _ := os.ReadFile(d.logPath())
			d.t.Fatalf("dockerd exited before answering:\n%s", lastLines(string(b), 30))
		case <-deadline:
			d.t.Fatalf("dockerd did not answer on %s", d.socket())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// stop stops dockerd with SIGTERM (SIGKILL after 30 s) and waits until it is gone.
func (d *dockerd) stop() {
	d.t.Helper()
	if !d.running() {
		return
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(30 * time.Second):
		d.t.Errorf("dockerd ignored SIGTERM for 30 s; killing it")
		d.cmd.Process.Kill()
		<-d.done
	}
}

// command is the docker CLI talking to this dockerd, with its own client config.
func (d *dockerd) command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, d.cli, append([]string{"--host", "unix://" + d.socket()}, args...)...)
	cmd.Env = append(os.Environ(), "DOCKER_CONFIG="+filepath.Join(d.dir, "cli"), "DOCKER_BUILDKIT=0")
	return cmd
}

// docker runs the docker CLI and returns its stdout and stderr; err is an
// *exec.ExitError when it ran and failed.
func (d *dockerd) docker(args ...string) (stdout, stderr string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var out, errb bytes.Buffer
	cmd := d.command(ctx, args...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	return out.String(), errb.String(), err
}

// mustDocker runs the docker CLI, fails the test unless it succeeds and
// returns its stdout, trimmed.
func (d *dockerd) mustDocker(t testing.TB, args ...string) string {
	t.Helper()
	out, errOut, err := d.docker(args...)
	if err != nil {
		t.Fatalf("docker %s: %v\n%s%s", strings.Join(args, " "), err, out, errOut)
	}
	return strings.TrimSpace(out)
}
