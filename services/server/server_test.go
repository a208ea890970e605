package server

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	namespacesapi "github.com/containerd/containerd/api/services/namespaces/v1"
	"github.com/containerd/errdefs"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/services/config"
	"github.com/flotilla/flotilla/services/namespace"
)

// shortDir returns a directory whose paths fit a unix socket's 108 bytes.
func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "srv")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// echoNamespaces answers Get with the namespace the call carried, and
// fails with NotFound for the name "missing".
type echoNamespaces struct {
	namespacesapi.UnimplementedNamespacesServer
	release chan struct{}
}

func (e *echoNamespaces) Get(ctx context.Context, req *namespacesapi.GetNamespaceRequest) (*namespacesapi.GetNamespaceResponse, error) {
	if req.Name == "missing" {
		return nil, errdefs.ErrNotFound
	}
	if req.Name == "slow" {
		select {
		case <-e.release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	ns, err := namespace.Required(ctx)
	if err != nil {
		return nil, err
	}
	return &namespacesapi.GetNamespaceResponse{Namespace: &namespacesapi.Namespace{Name: ns}}, nil
}

func startServer(t *testing.T, cfg config.Common) (*Server, *echoNamespaces, context.CancelFunc, <-chan error) {
	t.Helper()
	return startServerWith(t, cfg, nil)
}

// startServerWith is startServer with configure called on the server
// before it runs.
func startServerWith(t *testing.T, cfg config.Common, configure func(*Server)) (*Server, *echoNamespaces, context.CancelFunc, <-chan error) {
	t.Helper()
	srv := New("testd", cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if configure != nil {
		configure(srv)
	}
	svc := &echoNamespaces{release: make(chan struct{})}
	namespacesapi.RegisterNamespacesServer(srv.GRPC(), svc)
	ctx, cancel := context.WithCancel(context.Background())
	result := make(chan error, 1)
	done := make(chan error, 1)
	go func() { result <- srv.Run(ctx) }()
	// The test may wait for Run's result itself; cleanup waits only for Run to end.
	finished := make(chan struct{})
	go func() { err := <-result; close(finished); done <- err }()
	t.Cleanup(func() { cancel(); <-finished })
	waitSocket(t, cfg.Address)
	return srv, svc, cancel, done
}

func waitSocket(t *testing.T, path string) {
	t.Helper()
	for i := 0; i < 200; i++ {
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("nothing serves on %s", path)
}

func client(t *testing.T, sock string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func freePort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func TestServer(t *testing.T) {
	dir := shortDir(t)
	sock := filepath.Join(dir, "testd.sock")
	metricsAddr := freePort(t)
	_, _, _, _ = startServer(t, config.Common{Address: sock, MetricsAddress: metricsAddr, ShutdownTimeout: config.Duration(time.Second)})
	conn := client(t, sock)
	ns := namespacesapi.NewNamespacesClient(conn)

	t.Run("socket is mode 0660", func(t *testing.T) {
		fi, err := os.Stat(sock)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o660 {
			t.Fatalf("mode = %v", fi.Mode().Perm())
		}
	})
	t.Run("namespace from metadata reaches the handler", func(t *testing.T) {
		ctx := metadata.AppendToOutgoingContext(context.Background(), namespace.MetadataKey, "team-a")
		resp, err := ns.Get(ctx, &namespacesapi.GetNamespaceRequest{Name: "x"})
		if err != nil {
			t.Fatal(err)
		}
		if resp.Namespace.Name != "team-a" {
			t.Fatalf("handler saw namespace %q", resp.Namespace.Name)
		}
	})
	t.Run("invalid namespace is InvalidArgument before the handler", func(t *testing.T) {
		ctx := metadata.AppendToOutgoingContext(context.Background(), namespace.MetadataKey, "-bad")
		_, err := ns.Get(ctx, &namespacesapi.GetNamespaceRequest{Name: "x"})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "-bad") {
			t.Fatalf("err = %v, want InvalidArgument naming the namespace", err)
		}
	})
	t.Run("missing namespace is FailedPrecondition when required", func(t *testing.T) {
		_, err := ns.Get(context.Background(), &namespacesapi.GetNamespaceRequest{Name: "x"})
		if status.Code(err) != codes.FailedPrecondition {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("errdefs kinds become gRPC codes", func(t *testing.T) {
		_, err := ns.Get(context.Background(), &namespacesapi.GetNamespaceRequest{Name: "missing"})
		if status.Code(err) != codes.NotFound {
			t.Fatalf("err = %v, want NotFound", err)
		}
	})
	t.Run("health is SERVING", func(t *testing.T) {
		resp, err := healthpb.NewHealthClient(conn).Check(context.Background(), &healthpb.HealthCheckRequest{})
		if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("health = %v, %v", resp, err)
		}
	})
	t.Run("metrics count calls by method and code", func(t *testing.T) {
		resp, err := http.Get("http://" + metricsAddr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		for _, want := range []string{
			`grpc_server_handled_total{grpc_code="NotFound",grpc_method="Get",grpc_service="containerd.services.namespaces.v1.Namespaces",grpc_type="unary"} 1`,
			`grpc_server_handling_seconds_bucket{grpc_method="Get"`,
			"go_goroutines",
			"process_resident_memory_bytes",
		} {
			if !strings.Contains(string(body), want) {
				t.Errorf("metrics lack %q", want)
			}
		}
	})
}

func TestStaleSocket(t *testing.T) {
	dir := shortDir(t)
	t.Run("socket left by a crashed run is replaced", func(t *testing.T) {
		sock := filepath.Join(dir, "stale.sock")
		l, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		l.(*net.UnixListener).SetUnlinkOnClose(false)
		l.Close() // the file stays, nobody serves: a crash's leftover
		l2, err := Listen(sock)
		if err != nil {
			t.Fatalf("Listen over a stale socket: %v", err)
		}
		l2.Close()
	})
	t.Run("socket in use is not stolen", func(t *testing.T) {
		sock := filepath.Join(dir, "busy.sock")
		l, err := Listen(sock)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
		if _, err := Listen(sock); err == nil || !strings.Contains(err.Error(), "another process") {
			t.Fatalf("second Listen = %v, want refusal", err)
		}
	})
	t.Run("a socket whose server goes away meanwhile is taken over", func(t *testing.T) {
		// A daemon killed just before: its socket answers for a moment more.
		sock := filepath.Join(dir, "dying.sock")
		l, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		l.(*net.UnixListener).SetUnlinkOnClose(false)
		time.AfterFunc(300*time.Millisecond, func() { l.Close() })
		l2, err := Listen(sock)
		if err != nil {
			t.Fatalf("Listen after the old server went away: %v", err)
		}
		l2.Close()
	})
	t.Run("a regular file is never removed", func(t *testing.T) {
		path := filepath.Join(dir, "file")
		os.WriteFile(path, []byte("data"), 0o644)
		if _, err := Listen(path); err == nil {
			t.Fatal("Listen replaced a regular file")
		}
		if b, _ := os.ReadFile(path); string(b) != "data" {
			t.Fatal("file changed")
		}
	})
}

func TestGracefulStop(t *testing.T) {
	dir := shortDir(t)
	sock := filepath.Join(dir, "g.sock")
	_, svc, cancel, done := startServer(t, config.Common{Address: sock, ShutdownTimeout: config.Duration(5 * time.Second)})
	ns := namespacesapi.NewNamespacesClient(client(t, sock))
	ctx := metadata.AppendToOutgoingContext(context.Background(), namespace.MetadataKey, "default")

	t.Run("in-flight call finishes after stop is asked", func(t *testing.T) {
		result := make(chan error, 1)
		go func() {
			_, err := ns.Get(ctx, &namespacesapi.GetNamespaceRequest{Name: "slow"})
			result <- err
		}()
		time.Sleep(100 * time.Millisecond) // let the call reach the handler
		cancel()
		time.Sleep(100 * time.Millisecond)
		close(svc.release)
		if err := <-result; err != nil {
			t.Fatalf("in-flight call failed: %v", err)
		}
		if err := <-done; err != nil {
			t.Fatalf("Run: %v", err)
		}
		if _, err := os.Stat(sock); !os.IsNotExist(err) {
			t.Fatalf("socket left behind after stop: %v", err)
		}
	})
}

func TestStopCutsCallsPastTheTimeout(t *testing.T) {
	dir := shortDir(t)
	sock := filepath.Join(dir, "c.sock")
	_, svc, cancel, done := startServer(t, config.Common{Address: sock, ShutdownTimeout: config.Duration(200 * time.Millisecond)})
	defer close(svc.release)
	ns := namespacesapi.NewNamespacesClient(client(t, sock))
	ctx := metadata.AppendToOutgoingContext(context.Background(), namespace.MetadataKey, "default")
	result := make(chan error, 1)
	go func() {
		_, err := ns.Get(ctx, &namespacesapi.GetNamespaceRequest{Name: "slow"})
		result <- err
	}()
	time.Sleep(100 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("server did not stop although its shutdown timeout passed")
	}
	if err := <-result; status.Code(err) != codes.Unavailable {
		t.Fatalf("cut call = %v, want Unavailable", err)
	}
}
