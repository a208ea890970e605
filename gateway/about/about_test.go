package about_test

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	introspectionapi "github.com/containerd/containerd/api/services/introspection/v1"
	versionapi "github.com/containerd/containerd/api/services/version/v1"
	"github.com/containerd/errdefs"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	gatewayv1 "github.com/flotilla/flotilla/proto/gateway/v1"
	"github.com/flotilla/flotilla/services/config"
	"github.com/flotilla/flotilla/services/dial"
	"github.com/flotilla/flotilla/services/introspect"
	"github.com/flotilla/flotilla/services/server"
	"github.com/flotilla/flotilla/services/version"

	"github.com/flotilla/flotilla/gateway/about"
	"github.com/flotilla/flotilla/gateway/backend"
	"github.com/flotilla/flotilla/gateway/internal/sockdir"
)

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

// serve runs a kit server named name on addr for the rest of the test.
func serve(t *testing.T, name, addr string, register func(*grpc.Server)) {
	t.Helper()
	srv := server.New(name, config.Common{Address: addr, ShutdownTimeout: config.Duration(time.Second)}, discard)
	register(srv.GRPC())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("%s: %v", name, err)
		}
	})
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if _, err := os.Stat(addr); err == nil {
			return
		}
	}
	t.Fatalf("%s did not come up on %s", name, addr)
}

// fixture is a gateway's own services in front of a live contentd (serving
// Introspection with two plugins) and a taskd that is not running.
type fixture struct {
	dir         string
	contentAddr string
	taskAddr    string
	gateway     *grpc.ClientConn
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	dir := sockdir.New(t)
	f := &fixture{
		dir:         dir,
		contentAddr: filepath.Join(dir, "contentd.sock"),
		taskAddr:    filepath.Join(dir, "taskd.sock"),
	}
	serve(t, "contentd", f.contentAddr, func(s *grpc.Server) {
		// contentd's "content" plugin stands in for one that gives extra
		// information (taskd's runtime does): it echoes the options.
		echo := func(_ context.Context, typ, id string, options *anypb.Any) (*anypb.Any, error) {
			if id != "content" {
				return nil, errdefs.ErrNotImplemented
			}
			return options, nil
		}
		intro, err := introspect.New(filepath.Join(dir, "contentd"), introspect.Services("content", "namespaces"), echo)
		if err != nil {
			t.Fatal(err)
		}
		introspectionapi.RegisterIntrospectionServer(s, intro)
	})

	wait := backend.WithReadyWait(300 * time.Millisecond)
	content := dialBackend(t, "contentd", f.contentAddr, []string{"content", "namespaces"}, wait)
	tasks := dialBackend(t, "taskd", f.taskAddr, []string{"containers", "tasks"}, wait)
	gatewayAddr := filepath.Join(dir, "flotilla.sock")
	self := dialBackend(t, "gateway", gatewayAddr, []string{"version", "introspection"}, wait)

	intro, err := about.NewIntrospection(filepath.Join(dir, "gateway"), []*backend.Backend{content, tasks}, discard)
	if err != nil {
		t.Fatal(err)
	}
	serve(t, "gateway", gatewayAddr, func(s *grpc.Server) {
		versionapi.RegisterVersionServer(s, about.Version{})
		introspectionapi.RegisterIntrospectionServer(s, intro)
		gatewayv1.RegisterStackServer(s, about.NewStack(self, content, tasks))
	})
	target, _ := dial.Target(gatewayAddr)
	f.gateway, err = grpc.NewClient(target, dial.Options()...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.gateway.Close() })
	return f
}

func dialBackend(t *testing.T, name, addr string, services []string, opts ...backend.Option) *backend.Backend {
	t.Helper()
	b, err := backend.Dial(name, addr, services, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func TestVersion(t *testing.T) {
	f := newFixture(t)
	resp, err := versionapi.NewVersionClient(f.gateway).Version(context.Background(), &emptypb.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Version != version.Containerd() || resp.Revision != version.Revision {
		t.Errorf("got %s %s, want %s %s", resp.Version, resp.Revision, version.Containerd(), version.Revision)
	}
}

func TestIntrospectionServer(t *testing.T) {
	f := newFixture(t)
	client := introspectionapi.NewIntrospectionClient(f.gateway)
	resp, err := client.Server(context.Background(), &emptypb.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Pid != uint64(os.Getpid()) {
		t.Errorf("pid %d, want %d", resp.Pid, os.Getpid())
	}
	t.Run("uuid is the one kept under the gateway's root", func(t *testing.T) {
		again, err := about.NewIntrospection(filepath.Join(f.dir, "gateway"), nil, discard)
		if err != nil {
			t.Fatal(err)
		}
		r, _ := again.Server(context.Background(), &emptypb.Empty{})
		if resp.UUID == "" || r.UUID != resp.UUID {
			t.Errorf("uuid %q after reload, want %q", r.UUID, resp.UUID)
		}
	})
}

func TestIntrospectionPlugins(t *testing.T) {
	f := newFixture(t)
	client := introspectionapi.NewIntrospectionClient(f.gateway)

	t.Run("lists the gateway's and every backend's plugins, an unreachable backend's with InitErr", func(t *testing.T) {
		resp, err := client.Plugins(context.Background(), &introspectionapi.PluginsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, p := range resp.Plugins {
			if p.Type != introspect.GRPCPluginType {
				t.Errorf("plugin %s has type %s", p.ID, p.Type)
			}
			ids = append(ids, p.ID)
			reachable := !slices.Contains([]string{"containers", "tasks"}, p.ID)
			if got := p.InitErr == nil; got != reachable {
				t.Errorf("plugin %s: InitErr %v", p.ID, p.InitErr)
			}
			if !reachable && (codes.Code(p.InitErr.Code) != codes.Unavailable || !strings.Contains(p.InitErr.Message, "taskd (unix://")) {
				t.Errorf("plugin %s: InitErr %v, want Unavailable naming taskd", p.ID, p.InitErr)
			}
		}
		want := []string{"version", "introspection", "content", "namespaces", "containers", "tasks"}
		if !slices.Equal(ids, want) {
			t.Errorf("plugins %v, want %v", ids, want)
		}
	})

	for _, tc := range []struct {
		name    string
		filters []string
		want    []string
	}{
		{"filter by id keeps that plugin", []string{"id==namespaces"}, []string{"namespaces"}},
		{"filters are alternatives", []string{"id==version", "id==tasks"}, []string{"version", "tasks"}},
		{"filter matching nothing lists nothing", []string{"type==io.containerd.snapshotter.v1"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := client.Plugins(context.Background(), &introspectionapi.PluginsRequest{Filters: tc.filters})
			if err != nil {
				t.Fatal(err)
			}
			var ids []string
			for _, p := range resp.Plugins {
				ids = append(ids, p.ID)
			}
			if !slices.Equal(ids, tc.want) {
				t.Errorf("plugins %v, want %v", ids, tc.want)
			}
		})
	}

	for _, tc := range []struct {
		name    string
		req     *introspectionapi.PluginInfoRequest
		code    codes.Code
		message string
	}{
		{"the gateway's own plugin is answered by the gateway",
			&introspectionapi.PluginInfoRequest{Type: introspect.GRPCPluginType, ID: "version"}, codes.OK, ""},
		{"a backend's plugin is answered by that backend",
			&introspectionapi.PluginInfoRequest{Type: introspect.GRPCPluginType, ID: "content"}, codes.OK, ""},
		{"options are answered with the plugin's extra information from its backend",
			&introspectionapi.PluginInfoRequest{Type: introspect.GRPCPluginType, ID: "content", Options: mustAny(t, "extra")}, codes.OK, ""},
		{"options to a plugin giving no extra information are Unimplemented",
			&introspectionapi.PluginInfoRequest{Type: introspect.GRPCPluginType, ID: "version", Options: mustAny(t, "x")}, codes.Unimplemented, "extra information"},
		{"a plugin no reachable backend has is Unavailable while one cannot be asked",
			&introspectionapi.PluginInfoRequest{Type: "io.containerd.runtime.v2", ID: "task"}, codes.Unavailable, "taskd"},
	} {
		t.Run("PluginInfo: "+tc.name, func(t *testing.T) {
			resp, err := client.PluginInfo(context.Background(), tc.req)
			if status.Code(err) != tc.code {
				t.Fatalf("got %v, want %s", err, tc.code)
			}
			if err != nil {
				if !strings.Contains(err.Error(), tc.message) {
					t.Errorf("error %q does not say %q", err, tc.message)
				}
				return
			}
			if p := resp.GetPlugin(); p.GetType() != tc.req.Type || p.GetID() != tc.req.ID {
				t.Errorf("answered plugin %s.%s", p.GetType(), p.GetID())
			}
			if tc.req.Options != nil && !proto.Equal(resp.GetExtra(), tc.req.Options) {
				t.Errorf("extra = %v, want %v", resp.GetExtra(), tc.req.Options)
			}
		})
	}
}

func mustAny(t *testing.T, v string) *anypb.Any {
	t.Helper()
	a, err := anypb.New(wrapperspb.String(v))
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestStackStatus(t *testing.T) {
	f := newFixture(t)
	resp, err := gatewayv1.NewStackClient(f.gateway).Status(context.Background(), &gatewayv1.StackStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]*gatewayv1.ServiceStatus{}
	var names []string
	for _, s := range resp.Services {
		byName[s.Name] = s
		names = append(names, s.Name)
	}
	if want := []string{"gateway", "contentd", "taskd"}; !slices.Equal(names, want) {
		t.Fatalf("services %v, want %v", names, want)
	}

	for _, tc := range []struct {
		name, service, health string
		services              []string
	}{
		{"gateway reports itself serving", "gateway", "SERVING", []string{"version", "introspection"}},
		{"live backend is serving with its info", "contentd", "SERVING", []string{"content", "namespaces"}},
		{"stopped backend is unreachable with the reason", "taskd", about.Unreachable, []string{"containers", "tasks"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := byName[tc.service]
			if s.Health != tc.health {
				t.Errorf("health %s (error %q), want %s", s.Health, s.Error, tc.health)
			}
			if !slices.Equal(s.Services, tc.services) {
				t.Errorf("services %v, want %v", s.Services, tc.services)
			}
			if tc.health == about.Unreachable {
				if s.Info != nil || !strings.Contains(s.Error, tc.service+" (unix://") {
					t.Errorf("info %v, error %q; want no info and an error naming %s", s.Info, s.Error, tc.service)
				}
				return
			}
			if s.Error != "" || s.Info.GetName() != tc.service || s.Info.GetPid() != int64(os.Getpid()) || s.Info.GetVersion() != version.Version {
				t.Errorf("info %v, error %q", s.Info, s.Error)
			}
		})
	}
}
