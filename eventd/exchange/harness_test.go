package exchange_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	api "github.com/containerd/containerd/api/services/events/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"

	"github.com/flotilla/flotilla/eventd/bus"
	"github.com/flotilla/flotilla/eventd/exchange"
	"github.com/flotilla/flotilla/services/config"
	"github.com/flotilla/flotilla/services/dial"
	"github.com/flotilla/flotilla/services/events"
	"github.com/flotilla/flotilla/services/server"
)

const redisBinary = "/usr/bin/redis-server"

// redisServer is a redis-server process on a unix socket, which the test
// can kill and start again on the same address.
type redisServer struct {
	t    testing.TB
	sock string
	cmd  *exec.Cmd
	done chan struct{}
}

// startRedis starts redis-server for the test. It skips only when the binary
// is missing outside CI; in CI (CI=true) a missing binary fails the test.
func startRedis(t testing.TB) *redisServer {
	t.Helper()
	if _, err := os.Stat(redisBinary); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("redis-server is required in CI: %v", err)
		}
		t.Skipf("redis-server not installed: %v", err)
	}
	dir, err := os.MkdirTemp("", "eventd-redis-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	r := &redisServer{t: t, sock: filepath.Join(dir, "redis.sock")}
	r.start()
	t.Cleanup(r.stop)
	return r
}

func (r *redisServer) URL() string { return "unix://" + r.sock }

func (r *redisServer) start() {
	r.t.Helper()
	cmd := exec.Command(redisBinary, "--port", "0", "--unixsocket", r.sock, "--unixsocketperm", "700",
		"--save", "", "--appendonly", "no", "--dir", filepath.Dir(r.sock))
	if err := cmd.Start(); err != nil {
		r.t.Fatalf("start redis-server: %v", err)
	}
	r.cmd, r.done = cmd, make(chan struct{})
	go func(done chan struct{}) { cmd.Wait(); close(done) }(r.done)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if c, err := net.Dial("unix", r.sock); err == nil {
			fmt.Fprint(c, "PING\r\n")
			line, _ := bufio.NewReader(c).ReadString('\n')
			c.Close()
			if strings.HasPrefix(line, "+PONG") {
				return
			}
		}
		if time.Now().After(deadline) {
			r.t.Fatal("redis-server did not answer PING within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// kill stops redis-server at once, as a crash would.
func (r *redisServer) kill() {
	if r.cmd == nil {
		return
	}
	r.cmd.Process.Kill()
	<-r.done
	r.cmd = nil
}

func (r *redisServer) stop() { r.kill() }

// syncBuffer collects a daemon's log lines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// eventd is one eventd server run in process with the kit's server package.
type eventd struct {
	addr string
	srv  *server.Server
	log  *syncBuffer
	conn *grpc.ClientConn // plain gRPC, no kit interceptors
}

func (e *eventd) Events() api.EventsClient { return api.NewEventsClient(e.conn) }

func (e *eventd) Registry() *prometheus.Registry { return e.srv.Registry() }

// startEventd serves eventd on a new unix socket until the test ends, on
// Redis when redisURL is set, and waits for its Events service to be healthy.
func startEventd(t testing.TB, name, redisURL string, opts ...bus.Option) *eventd {
	t.Helper()
	dir, err := os.MkdirTemp("", "eventd-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cfg := config.Common{
		Address:         filepath.Join(dir, "eventd.sock"),
		Root:            dir,
		State:           dir,
		LogLevel:        "info",
		ShutdownTimeout: config.Duration(2 * time.Second),
	}
	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, nil)).With("component", name)
	srv := server.New(name, cfg, log)
	if err := exchange.Setup(exchange.Config{RedisURL: redisURL, BusOptions: opts})(context.Background(), srv); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan error, 1)
	go func() { stopped <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-stopped; err != nil {
			t.Errorf("%s: %v", name, err)
		}
		if t.Failed() {
			t.Logf("%s log:\n%s", name, logs.String())
		}
	})

	target, err := dial.Target(cfg.Address)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	e := &eventd{addr: cfg.Address, srv: srv, log: logs, conn: conn}
	e.waitHealth(t, healthpb.HealthCheckResponse_SERVING, 10*time.Second)
	return e
}

func (e *eventd) health(ctx context.Context) healthpb.HealthCheckResponse_ServingStatus {
	resp, err := healthpb.NewHealthClient(e.conn).Check(ctx, &healthpb.HealthCheckRequest{Service: exchange.ServiceName}, grpc.WaitForReady(true))
	if err != nil {
		return healthpb.HealthCheckResponse_UNKNOWN
	}
	return resp.Status
}

func (e *eventd) waitHealth(t testing.TB, want healthpb.HealthCheckResponse_ServingStatus, within time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	for {
		if got := e.health(ctx); got == want {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: events service did not become %v within %v", e.addr, want, within)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// subscribe opens a subscription and returns once eventd has it in place.
func subscribe(t testing.TB, e *eventd, filters ...string) <-chan *types.Envelope {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	stream, err := e.Events().Subscribe(ctx, &api.SubscribeRequest{Filters: filters})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Header(); err != nil {
		t.Fatalf("subscribe %v: %v", filters, err)
	}
	ch := make(chan *types.Envelope, 100000)
	go func() {
		defer close(ch)
		for {
			env, err := stream.Recv()
			if err != nil {
				return
			}
			ch <- env
		}
	}()
	return ch
}

// next returns the next envelope, failing the test if none comes in time.
func next(t testing.TB, ch <-chan *types.Envelope, within time.Duration) *types.Envelope {
	t.Helper()
	select {
	case env, ok := <-ch:
		if !ok {
			t.Fatal("subscription ended")
		}
		return env
	case <-time.After(within):
		t.Fatalf("no event within %v", within)
	}
	return nil
}

func withNamespace(ns string) context.Context {
	return metadata.AppendToOutgoingContext(context.Background(), "containerd-namespace", ns)
}

func metric(t testing.TB, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue metrics
				}
			}
			switch {
			case m.GetCounter() != nil:
				sum += m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				sum += m.GetGauge().GetValue()
			}
		}
	}
	return sum
}

func prometheusRegistry(t testing.TB, pub *events.Remote) *prometheus.Registry {
	t.Helper()
	reg := prometheus.NewRegistry()
	if err := pub.Register(reg); err != nil {
		t.Fatal(err)
	}
	return reg
}
