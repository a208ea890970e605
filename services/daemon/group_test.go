package daemon

import (
	"context"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	servicev1 "github.com/flotilla/flotilla/proto/service/v1"
	"github.com/flotilla/flotilla/services/config"
	"github.com/flotilla/flotilla/services/dial"
	"github.com/flotilla/flotilla/services/server"
	"github.com/flotilla/flotilla/services/tracing"
	"github.com/flotilla/flotilla/services/tracing/tracingtest"
)

type testConfig struct {
	config.Common
	Peer string `toml:"peer"`
}

// testSpec is a component named name whose Setup reports srv on started
// and whose stop is recorded in stops.
func testSpec(name string, cfg *testConfig, started chan<- *server.Server, stops *[]string, mu *sync.Mutex) Spec {
	return Spec{
		Name:    name,
		Summary: "a test component",
		Config:  cfg,
		Common:  &cfg.Common,
		Flags: func(fs *flag.FlagSet) {
			fs.StringVar(&cfg.Peer, "peer", "", "another component's address")
		},
		Setup: func(_ context.Context, srv *server.Server) error {
			srv.OnStop(func() { mu.Lock(); *stops = append(*stops, name); mu.Unlock() })
			started <- srv
			return nil
		},
	}
}

func TestGroupRunsComponentsInOneProcessAndStopsThemInReverseOrder(t *testing.T) {
	dir, err := os.MkdirTemp("", "grp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	var (
		mu     sync.Mutex
		stops  []string
		first  testConfig
		second testConfig
	)
	started := make(chan *server.Server, 2)
	g := Group{Name: "test", Specs: []Spec{
		testSpec("first", &first, started, &stops, &mu),
		testSpec("second", &second, started, &stops, &mu),
	}}
	args := []string{"--components", "first,second", "--second.peer", filepath.Join(dir, "first.sock")}
	for _, name := range []string{"first", "second"} {
		args = append(args, "--"+name+".address", filepath.Join(dir, name+".sock"),
			"--"+name+".root", filepath.Join(dir, name, "root"), "--"+name+".state", filepath.Join(dir, name, "state"),
			"--"+name+".log-level", "error")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- RunGroup(ctx, g, args) }()
	var srvs []*server.Server
	for range 2 {
		select {
		case srv := <-started:
			srvs = append(srvs, srv)
		case err := <-done:
			t.Fatalf("group stopped: %v", err)
		}
	}
	for _, srv := range srvs {
		<-srv.Serving()
	}
	if second.Peer != filepath.Join(dir, "first.sock") || first.Address != filepath.Join(dir, "first.sock") {
		t.Fatalf("flags not read into the components' configs: first %+v, second %+v", first, second)
	}

	t.Run("calls between components skip the socket", func(t *testing.T) {
		// With its socket file gone, first is reached only in memory.
		if err := os.Remove(first.Address); err != nil {
			t.Fatal(err)
		}
		conn, err := dial.Dial(second.Peer)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
		defer ccancel()
		resp, err := healthpb.NewHealthClient(conn).Check(cctx, &healthpb.HealthCheckRequest{})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("health of first in process: %v %v", resp, err)
		}
	})

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("group: %v", err)
	}
	if !slices.Equal(stops, []string{"second", "first"}) {
		t.Fatalf("stopped in order %v, want second then first", stops)
	}
	if _, ok, _ := server.DialInProcess(context.Background(), first.Address); ok {
		t.Fatal("a stopped component is still offered in process")
	}
}

func TestGroupRefusesUnknownComponentsAndFlagsOfComponentsNotRun(t *testing.T) {
	var a, b testConfig
	var mu sync.Mutex
	var stops []string
	started := make(chan *server.Server, 2)
	g := Group{Name: "test", Specs: []Spec{
		testSpec("first", &a, started, &stops, &mu),
		testSpec("second", &b, started, &stops, &mu),
	}}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--components", "third"}, `no component "third"`},
		{[]string{"--components", "first", "--second.peer", "x"}, "flags for second given, but it is not among --components"},
		{[]string{"--first.shutdown-timeout", "-1s"}, "must not be negative"},
	} {
		_, err := g.parse(tc.args)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v, want one saying %q", tc.args, err, tc.want)
		}
	}
}

func TestGroupComponentsTraceAndDialEachAsItself(t *testing.T) {
	t.Setenv(tracing.EndpointEnv, "")
	receiver := tracingtest.Start(t)
	dir, err := os.MkdirTemp("", "grp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	var (
		mu     sync.Mutex
		stops  []string
		first  testConfig
		second testConfig
	)
	started := make(chan *server.Server, 2)
	g := Group{Name: "test", Specs: []Spec{
		testSpec("first", &first, started, &stops, &mu),
		testSpec("second", &second, started, &stops, &mu),
	}}
	args := []string{"--components", "all", "--second.peer", filepath.Join(dir, "first.sock")}
	for _, name := range []string{"first", "second"} {
		args = append(args, "--"+name+".address", filepath.Join(dir, name+".sock"),
			"--"+name+".root", filepath.Join(dir, name, "root"), "--"+name+".state", filepath.Join(dir, name, "state"),
			"--"+name+".log-level", "error", "--"+name+".otlp-endpoint", receiver.Endpoint)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- RunGroup(ctx, g, args) }()
	srvs := map[string]*server.Server{}
	for range 2 {
		select {
		case srv := <-started:
			srvs[srv.Config().Address] = srv
		case err := <-done:
			t.Fatalf("group stopped: %v", err)
		}
	}
	firstSrv, secondSrv := srvs[first.Address], srvs[second.Address]
	<-firstSrv.Serving()
	<-secondSrv.Serving()

	t.Run("each component has its own tracing and none is the process's", func(t *testing.T) {
		if !firstSrv.Tracing().Enabled() || !secondSrv.Tracing().Enabled() || firstSrv.Tracing() == secondSrv.Tracing() {
			t.Fatalf("tracing of first %p, second %p: want one each", firstSrv.Tracing(), secondSrv.Tracing())
		}
		if tracing.Process() != nil || dial.Process().Tracing != nil {
			t.Fatal("a component of a group made its tracing the process's")
		}
	})

	// second calls first as itself: the client's span is second's, the
	// server's first's, although first started before second.
	conn, err := dial.For(secondSrv).Dial(second.Peer)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
	defer ccancel()
	if _, err := servicev1.NewInfoClient(conn).Get(cctx, &servicev1.GetInfoRequest{}); err != nil {
		t.Fatalf("info of first: %v", err)
	}
	cancel() // stopping flushes each component's spans
	if err := <-done; err != nil {
		t.Fatalf("group: %v", err)
	}
	const method = "flotilla.service.v1.Info/Get"
	got := receiver.WaitFor(t, 10*time.Second,
		tracingtest.Span{Service: "second", Name: method, Kind: "client"},
		tracingtest.Span{Service: "first", Name: method, Kind: "server"})
	for _, s := range got {
		if s.Name == method && (s.Kind == "client") != (s.Service == "second") {
			t.Errorf("%s span of the call sent as %q", s.Kind, s.Service)
		}
	}
}
