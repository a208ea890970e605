package discovery

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// startRedis runs redis-server on a unix socket for the test; it is
// required in CI.
func startRedis(t *testing.T) string {
	t.Helper()
	const bin = "/usr/bin/redis-server"
	if _, err := os.Stat(bin); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("redis-server is required in CI: %v", err)
		}
		t.Skipf("redis-server not installed: %v", err)
	}
	dir, err := os.MkdirTemp("", "disc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "redis.sock")
	cmd := exec.Command(bin, "--port", "0", "--unixsocket", sock, "--unixsocketperm", "700", "--save", "", "--appendonly", "no", "--dir", dir)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	deadline := time.Now().Add(10 * time.Second)
	for {
		if c, err := net.Dial("unix", sock); err == nil {
			fmt.Fprint(c, "PING\r\n")
			line, _ := bufio.NewReader(c).ReadString('\n')
			c.Close()
			if strings.HasPrefix(line, "+PONG") {
				return "unix://" + sock
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("redis-server did not answer PING")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func open(t *testing.T, interval time.Duration) *Registry {
	t.Helper()
	r, err := Open(startRedis(t), nil, interval, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func TestRegisterListDeregister(t *testing.T) {
	r := open(t, time.Second)
	ctx := context.Background()
	deregA, err := r.Register(ctx, Instance{Service: "snapshotd", Node: "a", Address: "10.0.0.1:7001"})
	if err != nil {
		t.Fatal(err)
	}
	deregB, err := r.Register(ctx, Instance{Service: "snapshotd", Node: "b", Address: "10.0.0.2:7001"})
	if err != nil {
		t.Fatal(err)
	}
	defer deregB()
	if _, err := r.Register(ctx, Instance{Service: "contentd", Node: "a", Address: "10.0.0.1:7000"}); err != nil {
		t.Fatal(err)
	}

	got, err := r.List(ctx, "snapshotd")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Node != "a" || got[1].Node != "b" || got[0].Address != "10.0.0.1:7001" {
		t.Fatalf("List(snapshotd) = %+v", got)
	}
	t.Run("a registration lives three intervals", func(t *testing.T) {
		ttl, err := r.rdb.TTL(ctx, key("snapshotd", got[0].ID)).Result()
		if err != nil || ttl <= 0 || ttl > Lifetimes*time.Second {
			t.Fatalf("TTL = %v, %v", ttl, err)
		}
	})
	t.Run("lookup by node", func(t *testing.T) {
		insts, err := r.Lookup(ctx, Target{Service: "snapshotd", Node: "b"})
		if err != nil || len(insts) != 1 || insts[0].Address != "10.0.0.2:7001" {
			t.Fatalf("Lookup(snapshotd on b) = %+v, %v", insts, err)
		}
		if _, err := r.Lookup(ctx, Target{Service: "snapshotd", Node: "z"}); !errdefs.IsNotFound(err) {
			t.Fatalf("Lookup on an unknown node = %v, want NotFound", err)
		}
	})
	t.Run("deregister removes the instance at once", func(t *testing.T) {
		deregA()
		insts, err := r.List(ctx, "snapshotd")
		if err != nil || len(insts) != 1 || insts[0].Node != "b" {
			t.Fatalf("after deregistering a: %+v, %v", insts, err)
		}
	})
	t.Run("every service", func(t *testing.T) {
		all, err := r.List(ctx, "")
		if err != nil || len(all) != 2 || all[0].Service != "contentd" {
			t.Fatalf("List() = %+v, %v", all, err)
		}
	})
}

func TestParseAddress(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Target
		ok   bool
		bad  bool
	}{
		{in: "discover://contentd", want: Target{Service: "contentd"}, ok: true},
		{in: "discover://snapshotd?node=b", want: Target{Service: "snapshotd", Node: "b"}, ok: true},
		{in: "discover://", ok: true, bad: true},
		{in: "discover://x/y", ok: true, bad: true},
		{in: "/run/x.sock"},
		{in: "tcp://h:1"},
	} {
		got, ok, err := ParseAddress(tc.in)
		if ok != tc.ok || (err != nil) != tc.bad || got != tc.want {
			t.Errorf("ParseAddress(%q) = %+v, %v, %v", tc.in, got, ok, err)
		}
		if tc.ok && !tc.bad && got.Address() != tc.in {
			t.Errorf("Address() of %q = %q", tc.in, got.Address())
		}
	}
}

// serveHealth serves gRPC health on a unix socket, reporting SERVING for
// the service called name only, so a client can tell which server answered.
func serveHealth(t *testing.T, name string) (addr string, stop func()) {
	t.Helper()
	dir, err := os.MkdirTemp("", "disc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	addr = filepath.Join(dir, name+".sock")
	l, err := net.Listen("unix", addr)
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	h := health.NewServer()
	h.SetServingStatus(name, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(s, h)
	go s.Serve(l)
	t.Cleanup(s.Stop)
	return addr, s.Stop
}

func TestResolverFollowsTheRegistry(t *testing.T) {
	r := open(t, 100*time.Millisecond)
	ctx := context.Background()
	first, stopFirst := serveHealth(t, "first")
	second, _ := serveHealth(t, "second")
	deregFirst, err := r.Register(ctx, Instance{Service: "contentd", Node: "a", Address: first})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("discover://contentd", grpc.WithResolvers(r.Builder()),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", addr)
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	answers := func(name string) bool {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		resp, err := hc.Check(cctx, &healthpb.HealthCheckRequest{Service: name})
		return err == nil && resp.Status == healthpb.HealthCheckResponse_SERVING
	}
	if !answers("first") {
		t.Fatal("the registered instance does not answer through discover://contentd")
	}

	// contentd moves: the old one deregisters and stops, a new one
	// registers elsewhere; the same connection follows.
	deregFirst()
	stopFirst()
	if _, err := r.Register(ctx, Instance{Service: "contentd", Node: "a", Address: second}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !answers("second") {
		if time.Now().After(deadline) {
			t.Fatal("the connection never reached the instance registered in place of the first")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
