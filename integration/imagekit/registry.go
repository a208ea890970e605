package imagekit

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

// RegistryBinary is Debian's docker-registry (distribution 2.x), which [RunRegistry] starts.
const RegistryBinary = "/usr/bin/docker-registry"

// Registry is a docker-registry process serving plain HTTP on the loopback address.
type Registry struct {
	// Addr is host:port, e.g. "127.0.0.1:40123"; image references are Addr + "/name:tag".
	Addr string
	// Dir holds config.yml, the log (registry.log) and the storage (data/).
	Dir string

	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// registryConfig is docker-registry's config: filesystem storage under dir, deletes allowed,
// no auth, no health checks, plain HTTP on addr, and an access log (one line per request, in
// registry.log) that tests read to see what was fetched.
func registryConfig(dir, addr string) string {
	return fmt.Sprintf(`version: 0.1
log:
  level: warn
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: %s
  secret: flotilla-test-registry
`, filepath.Join(dir, "data"), addr)
}

// RunRegistry starts [RegistryBinary] with its config, storage and log in dir, on a free
// port of 127.0.0.1, and returns once GET /v2/ answers 200. The caller stops it with
// [Registry.Stop]; the process also dies with the caller's process (parent-death signal).
// It fails with errdefs.ErrNotFound when the binary is not installed.
func RunRegistry(ctx context.Context, dir string) (*Registry, error) {
	if _, err := os.Stat(RegistryBinary); err != nil {
		return nil, fmt.Errorf("docker-registry: %w: %w", err, errdefs.ErrNotFound)
	}
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		r, err := startRegistry(ctx, dir)
		if err == nil {
			return r, nil
		}
		lastErr = err
		if ctx.Err() != nil {
			break
		}
	}
	return nil, lastErr
}

func startRegistry(ctx context.Context, dir string) (*Registry, error) {
	addr, err := freePort()
	if err != nil {
		return nil, err
	}
	return startRegistryOn(ctx, dir, addr)
}

// Restart starts a stopped registry again on the same address and storage, returning once it
// answers.
func (r *Registry) Restart(ctx context.Context) error {
	select {
	case <-r.done:
	default:
		return fmt.Errorf("docker-registry on %s is still running: %w", r.Addr, errdefs.ErrFailedPrecondition)
	}
	nr, err := startRegistryOn(ctx, r.Dir, r.Addr)
	if err != nil {
		return err
	}
	*r = *nr
	return nil
}

// AccessLog returns the request lines of the registry's access log so far
// ("GET /v2/name/blobs/sha256:... HTTP/1.1" 200 ...), one per request.
func (r *Registry) AccessLog() ([]string, error) {
	data, err := os.ReadFile(filepath.Join(r.Dir, "registry.log"))
	if err != nil {
		return nil, fmt.Errorf("docker-registry access log: %w", err)
	}
	var lines []string
	for _, l := range strings.Split(string(data), "\n") {
		if strings.Contains(l, "\"GET ") || strings.Contains(l, "\"HEAD ") || strings.Contains(l, "\"PUT ") ||
			strings.Contains(l, "\"POST ") || strings.Contains(l, "\"PATCH ") {
			lines = append(lines, l)
		}
	}
	return lines, nil
}

func startRegistryOn(ctx context.Context, dir, addr string) (*Registry, error) {
	configPath := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(configPath, []byte(registryConfig(dir, addr)), 0o644); err != nil {
		return nil, fmt.Errorf("docker-registry config: %w", err)
	}
	logPath := filepath.Join(dir, "registry.log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("docker-registry log: %w", err)
	}
	defer logFile.Close()
	cmd := exec.Command(RegistryBinary, "serve", configPath)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start docker-registry: %w", err)
	}
	r := &Registry{Addr: addr, Dir: dir, cmd: cmd, done: make(chan struct{})}
	go func() {
		r.err = cmd.Wait()
		close(r.done)
	}()
	if err := r.waitReady(ctx, 15*time.Second); err != nil {
		r.Stop()
		return nil, fmt.Errorf("docker-registry on %s: %w\n%s", addr, err, tail(logPath, 2000))
	}
	return r, nil
}

func (r *Registry) waitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	client := &http.Client{Timeout: time.Second}
	url := "http://" + r.Addr + "/v2/"
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-r.done:
			return fmt.Errorf("exited before answering: %v", r.err)
		case <-ctx.Done():
			return fmt.Errorf("GET %s did not answer 200: %w", url, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Stop terminates the registry (SIGTERM, then SIGKILL after 5 s) and waits for it to exit.
// Stopping a stopped registry does nothing.
func (r *Registry) Stop() error {
	select {
	case <-r.done:
		return nil
	default:
	}
	if err := r.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stop docker-registry: %w", err)
	}
	select {
	case <-r.done:
	case <-time.After(5 * time.Second):
		r.cmd.Process.Kill()
		<-r.done
	}
	return nil
}

// StartRegistry runs a registry for a test in a temporary directory and returns its address
// ("127.0.0.1:PORT"); the registry stops when the test ends. When docker-registry is not
// installed the test is skipped, except in CI (CI=true), where it fails.
func StartRegistry(t testing.TB) string {
	t.Helper()
	if _, err := os.Stat(RegistryBinary); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is required in CI: %v", RegistryBinary, err)
		}
		t.Skipf("%s not installed: %v", RegistryBinary, err)
	}
	r, err := RunRegistry(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := r.Stop(); err != nil {
			t.Errorf("stop registry: %v", err)
		}
	})
	return r.Addr
}

func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find a free port: %w", err)
	}
	addr := l.Addr().String()
	return addr, l.Close()
}

// tail returns the last n bytes of the file at path, for error messages.
func tail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	if len(data) > n {
		data = data[len(data)-n:]
	}
	return strings.TrimSpace(string(data))
}
