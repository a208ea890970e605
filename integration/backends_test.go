package integration

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// backend is a server of containerd's API that a real client is pointed at:
// Flotilla's gateway, or a containerd started as the reference.
type backend struct {
	// Name names the backend in subtests: "flotilla", "containerd1.6".
	Name string
	// Socket is where its containerd API answers.
	Socket string
}

// backendKind starts one kind of backend for a test, stopped when it ends.
type backendKind struct {
	name  string
	start func(t testing.TB) backend
}

// clientBackends are the backends every real-client test runs against:
// Flotilla, and Debian's containerd 1.6 as the reference it must match.
var clientBackends = []backendKind{
	{"flotilla", func(t testing.TB) backend { return backend{Name: "flotilla", Socket: startStack(t).Socket} }},
	{"containerd1.6", func(t testing.TB) backend {
		return backend{Name: "containerd1.6", Socket: startContainerd(t, requireTool(t, "containerd"), "")}
	}},
}

// startContainerd starts the containerd binary on a temporary root, state
// and socket, with CRI disabled, and returns its socket once it answers.
// shimDir, when not empty, is put first on its PATH so that it runs the shim
// found there. It is stopped, and whatever it left running killed and
// unmounted, when the test ends.
func startContainerd(t testing.TB, binary, shimDir string) string {
	t.Helper()
	requireTool(t, "runc")
	dir, err := os.MkdirTemp("", "ctd")
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "c.sock")
	config := fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = %[3]q
[ttrpc]
  address = "%[3]s.ttrpc"
[debug]
  address = %[4]q
[metrics]
  address = ""
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), sock, filepath.Join(dir, "debug.sock"))
	configPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(configPath, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "containerd.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cmd := exec.Command(binary, "--config", configPath, "--log-level", "debug")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Dir = dir
	cmd.Env = os.Environ()
	if shimDir != "" {
		cmd.Env = append(cmd.Env, "PATH="+shimDir+":"+os.Getenv("PATH"))
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", binary, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("--- containerd log ---\n%s", lastLines(string(b), 40))
		}
		// Shims run from their bundles under dir; reap them and their mounts.
		reapLeftovers(t, dir)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return sock
		}
		select {
		case <-done:
			b, _ := os.ReadFile(logPath)
			t.Fatalf("%s exited before answering:\n%s", binary, lastLines(string(b), 40))
		case <-ctx.Done():
			t.Fatalf("%s did not answer on %s", binary, sock)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// exitCode is the exit code of a command that ran, or -1.
func exitCode(err error) int {
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.ExitCode()
	}
	return -1
}
