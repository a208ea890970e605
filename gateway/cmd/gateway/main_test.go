package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	namespacesapi "github.com/containerd/containerd/api/services/namespaces/v1"
	versionapi "github.com/containerd/containerd/api/services/version/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	gateway "github.com/flotilla/flotilla/gateway/daemon"
	"github.com/flotilla/flotilla/gateway/internal/sockdir"
	gatewayv1 "github.com/flotilla/flotilla/proto/gateway/v1"
	"github.com/flotilla/flotilla/services/daemon"
	"github.com/flotilla/flotilla/services/dial"
	"github.com/flotilla/flotilla/services/version"
)

// runGateway runs the gateway daemon with args (plus its address and
// directories under dir) for the rest of the test, and returns a client.
func runGateway(t *testing.T, dir string, args ...string) *grpc.ClientConn {
	t.Helper()
	addr := filepath.Join(dir, "flotilla.sock")
	args = append([]string{"--address", addr, "--root", filepath.Join(dir, "root"), "--state", filepath.Join(dir, "state"), "--log-level", "error"}, args...)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- daemon.Run(ctx, gateway.Spec(new(gateway.Config)), args) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("gateway: %v", err)
		}
	})
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if _, err := os.Stat(addr); err == nil {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("gateway stopped: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("gateway did not come up")
		}
	}
	target, _ := dial.Target(addr)
	conn, err := grpc.NewClient(target, dial.Options()...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func TestGatewayWithNoBackends(t *testing.T) {
	dir := sockdir.New(t)
	t.Setenv("FLOTILLA_STATE", dir)
	conn := runGateway(t, dir)
	ctx := context.Background()

	t.Run("answers version itself", func(t *testing.T) {
		resp, err := versionapi.NewVersionClient(conn).Version(ctx, &emptypb.Empty{})
		if err != nil || resp.Version != version.Containerd() {
			t.Fatalf("got %v, %v", resp, err)
		}
	})

	t.Run("routed call fails Unavailable naming contentd at its default address", func(t *testing.T) {
		_, err := namespacesapi.NewNamespacesClient(conn).List(ctx, &namespacesapi.ListNamespacesRequest{})
		want := "contentd (unix://" + filepath.Join(dir, "contentd.sock") + ") is unavailable"
		if status.Code(err) != codes.Unavailable || !strings.Contains(status.Convert(err).Message(), want) {
			t.Fatalf("got %v, want Unavailable containing %q", err, want)
		}
	})

	t.Run("stack status lists the gateway serving and each backend unreachable", func(t *testing.T) {
		resp, err := gatewayv1.NewStackClient(conn).Status(ctx, &gatewayv1.StackStatusRequest{})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, s := range resp.Services {
			got = append(got, s.Name+" "+s.Health+" "+s.Address)
		}
		want := []string{
			"gateway SERVING " + filepath.Join(dir, "flotilla.sock"),
			"contentd UNREACHABLE " + filepath.Join(dir, "contentd.sock"),
			"snapshotd UNREACHABLE " + filepath.Join(dir, "snapshotd.sock"),
			"taskd UNREACHABLE " + filepath.Join(dir, "taskd.sock"),
			"eventd UNREACHABLE " + filepath.Join(dir, "eventd.sock"),
		}
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	})
}

func TestBackendAddresses(t *testing.T) {
	dir := sockdir.New(t)
	cfgFile := filepath.Join(dir, "gateway.toml")
	if err := os.WriteFile(cfgFile, []byte("contentd = \"tcp://127.0.0.1:1\"\neventd = \"unix:///from/config/eventd.sock\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	conn := runGateway(t, dir, "--config", cfgFile, "--eventd", "/from/flag/eventd.sock", "--taskd", "/from/flag/taskd.sock")
	resp, err := gatewayv1.NewStackClient(conn).Status(context.Background(), &gatewayv1.StackStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	addresses := map[string]string{}
	for _, s := range resp.Services {
		addresses[s.Name] = s.Address
	}
	for name, want := range map[string]string{
		"contentd": "tcp://127.0.0.1:1",      // from the config file
		"eventd":   "/from/flag/eventd.sock", // the flag wins over the file
		"taskd":    "/from/flag/taskd.sock",
	} {
		if addresses[name] != want {
			t.Errorf("%s address %q, want %q", name, addresses[name], want)
		}
	}
}
