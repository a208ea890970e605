// Package router decides which backend service owns each call that reaches
// the gateway, and builds the gateway's front door (package relay) that
// carries the calls there: unary calls and streams of every kind,
// undecoded, with the caller's metadata, deadline and cancellation, and the
// backend's headers, trailers and status returned to the caller unchanged.
package router

import (
	"fmt"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"google.golang.org/grpc/status"

	"golang.org/x/net/http2/hpack"

	snapshotterv1 "github.com/flotilla/flotilla/proto/snapshotter/v1"
	"github.com/flotilla/flotilla/services/mtls"
	"github.com/flotilla/flotilla/services/node"
	"github.com/flotilla/flotilla/services/server"

	"github.com/flotilla/flotilla/gateway/backend"
	"github.com/flotilla/flotilla/gateway/relay"
)

// servicePrefix starts the full name of every containerd API service.
const servicePrefix = "containerd.services."

// flotillaPrefix starts the full name of Flotilla's own services, which
// name the component serving them: flotilla.<component>.v1.<Service>.
const flotillaPrefix = "flotilla."

// Router maps containerd service IDs to the backends that own them.
type Router struct {
	routes     map[string]*backend.Backend
	components map[string]*backend.Backend // by backend name, for flotilla.<component>.*
	upstreams  map[*backend.Backend]*relay.Upstream
	shapes     map[string]shape
	node       string
	stall      time.Duration
}

// New returns a router with no routes.
func New() *Router {
	return &Router{
		routes:     make(map[string]*backend.Backend),
		components: make(map[string]*backend.Backend),
		upstreams:  make(map[*backend.Backend]*relay.Upstream),
		shapes:     make(map[string]shape),
	}
}

// SetNode names the node this gateway serves: every relayed call carries
// it as metadata (node.MetadataKey), so backends acting for the caller's
// node (contentd unpacking on its snapshotd) know which one. Call it before
// Route.
func (r *Router) SetNode(name string) { r.node = name }

// SetStallTimeout has the front door fail the calls on a backend
// connection that sends nothing for d, answering no PING (relay.WithStallTimeout);
// 0 waits as long as TCP does. Call it before FrontDoor.
func (r *Router) SetStallTimeout(d time.Duration) { r.stall = d }

// Route sends the calls of every service b owns to b. Routes are set up
// before the server serves; Route must not be called once calls arrive.
func (r *Router) Route(b *backend.Backend) {
	r.components[b.Name()] = b
	u := &relay.Upstream{Name: fmt.Sprintf("%s (%s)", b.Name(), b.Target()), Dial: b.DialContext}
	if r.node != "" {
		u.Header = []hpack.HeaderField{{Name: node.MetadataKey, Value: r.node}}
	}
	r.upstreams[b] = u
	for _, id := range b.Services() {
		r.routes[id] = b
		maps.Copy(r.shapes, shapesOf(id))
	}
}

// FrontDoor returns the gateway's front door for srv: a relay that sends
// each call to the backend owning it, and the calls of the services srv
// serves itself (Version, Introspection, Stack, health) to srv's own gRPC
// server. Relayed calls are counted in srv's call metrics.
func (r *Router) FrontDoor(srv *server.Server) server.FrontDoor {
	self := &relay.Upstream{Name: "gateway", Dial: srv.DialLocal}
	var once sync.Once
	var local map[string]bool // services srv serves, known once calls arrive
	isLocal := func(method string) bool {
		once.Do(func() {
			local = make(map[string]bool)
			for name := range srv.GRPC().GetServiceInfo() {
				local[name] = true
			}
		})
		return local[serviceOf(method)]
	}
	route := func(method string) (*relay.Upstream, error) {
		if isLocal(method) {
			return self, nil
		}
		b, err := r.Lookup(method)
		if err != nil {
			// The relay answers it without reaching any backend, whose
			// kit would log it: the gateway logs it, once.
			srv.Logger().Info("call failed", "method", method, "code", status.Code(errgrpc.ToGRPC(err)).String(), "error", err)
			return nil, err
		}
		return r.upstreams[b], nil
	}
	authorize := func(conn net.Conn, method string) error {
		if !slices.Contains(AdminMethods, method) {
			return nil
		}
		caller, err := mtls.CallerOfConn(conn)
		if err == nil {
			err = srv.Admin().Allow(caller)
		}
		if err != nil {
			srv.Logger().Info("call failed", "method", method, "code", status.Code(errgrpc.ToGRPC(err)).String(), "error", err)
			return fmt.Errorf("%s: %w", method, err)
		}
		return nil
	}
	opts := []relay.Option{
		relay.WithAuthorizer(authorize),
		relay.WithObserver(newCallMetrics(srv.CallMetrics(), r.shapes, isLocal)),
		relay.WithReadyWait(backend.DefaultReadyWait),
		relay.WithLongLived(server.IsLongLived),
		relay.WithLogger(srv.Logger()),
		relay.WithStallTimeout(r.stall),
	}
	if tp := srv.Tracing(); tp.Enabled() {
		opts = append(opts, relay.WithCallTracer(callTracer{tracer: tp.Tracer()}))
	}
	return relay.New(route, opts...)
}

// AdminMethods are the methods that run programs as root or read the host:
// only an admin caller (mtls.AdminPolicy) may call them through the
// gateway, as snapshotd allows them to admins only.
var AdminMethods = []string{
	snapshotterv1.Snapshotters_Add_FullMethodName,
	snapshotterv1.Snapshotters_Replace_FullMethodName,
	snapshotterv1.Snapshotters_Remove_FullMethodName,
}

// serviceOf is the service of a full method name:
// "containerd.services.content.v1.Content" for
// "/containerd.services.content.v1.Content/Write".
func serviceOf(fullMethod string) string {
	service := strings.TrimPrefix(fullMethod, "/")
	if i := strings.LastIndexByte(service, '/'); i >= 0 {
		service = service[:i]
	}
	return service
}

// Lookup returns the backend serving fullMethod
// ("/containerd.services.content.v1.Content/Write"), or, for Flotilla's own
// services, the backend named by their package
// ("/flotilla.snapshotd.v1.Snapshotters/List" is snapshotd's).
func (r *Router) Lookup(fullMethod string) (*backend.Backend, error) {
	service := serviceOf(fullMethod)
	if component, ok := strings.CutPrefix(service, flotillaPrefix); ok {
		component, _, _ = strings.Cut(component, ".")
		if b, ok := r.components[component]; ok {
			return b, nil
		}
		return nil, fmt.Errorf("%s: no Flotilla backend is called %q: %w", service, component, errdefs.ErrNotImplemented)
	}
	id, ok := strings.CutPrefix(service, servicePrefix)
	if !ok {
		return nil, fmt.Errorf("unknown service %s: the Flotilla gateway serves containerd's API (%s*): %w",
			service, servicePrefix, errdefs.ErrNotImplemented)
	}
	if i := strings.IndexByte(id, '.'); i >= 0 {
		id = id[:i]
	}
	b, ok := r.routes[id]
	if !ok {
		return nil, fmt.Errorf("%s: no Flotilla service serves containerd's %q API: %w",
			service, id, errdefs.ErrNotImplemented)
	}
	return b, nil
}
