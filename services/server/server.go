// Package server is the start-up and shutdown every Flotilla daemon shares:
// it serves gRPC on a unix socket or TCP with containerd's namespace and error
// conventions, gRPC health, Prometheus metrics on HTTP, the daemon's Info and
// Introspection, and stops gracefully on SIGTERM or SIGINT.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"syscall"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/types/known/timestamppb"

	servicev1 "github.com/flotilla/flotilla/proto/service/v1"
	"github.com/flotilla/flotilla/services/config"
	"github.com/flotilla/flotilla/services/discovery"
	"github.com/flotilla/flotilla/services/mtls"
	"github.com/flotilla/flotilla/services/tracing"
	"github.com/flotilla/flotilla/services/version"
)

// Flow-control windows and socket buffers for calls between services (dial
// uses the same on its side).
const (
	StreamWindow = 4 << 20
	ConnWindow   = 16 << 20
	IOBuffer     = 256 << 10
)

// MaxMsgSize bounds every message a server or client of the kit sends or
// receives: containerd's 16 MiB, so a message containerd takes (a large
// content read, a big list) is not refused with "received message larger
// than max" as under gRPC's 4 MiB default.
const MaxMsgSize = 16 << 20

// Server is one daemon's gRPC server with everything around it.
type Server struct {
	name     string
	cfg      config.Common
	log      *slog.Logger
	grpc     *grpc.Server
	health   *health.Server
	metrics  *grpcprom.ServerMetrics
	registry *prometheus.Registry
	started  time.Time
	onStop   []func()

	frontDoor FrontDoor      // nil: the gRPC server serves the socket
	signals   bool           // Run stops on SIGTERM/SIGINT
	serving   chan struct{}  // closed once Run serves
	local     *localListener // the gRPC server's side of DialLocal
	stopping  *stopping      // ends long-lived calls when the server stops

	creds     *mtls.Credentials // unix peers by SO_PEERCRED, TCP peers by mutual TLS
	identity  *mtls.Identity
	discovery *discovery.Registry
	tracing   *tracing.Provider
	admin     *adminMethods
	onServe   []func(ctx context.Context)
}

type options struct {
	grpcOpts  []grpc.ServerOption
	frontDoor func(*Server) FrontDoor
	identity  *mtls.Identity
	discovery *discovery.Registry
	tracing   *tracing.Provider
	noSignals bool
}

// WithIdentity gives the server its mutual TLS identity, without which it
// refuses to serve TCP. The daemon's connections present it too.
func WithIdentity(id *mtls.Identity) Option {
	return func(o *options) { o.identity = id }
}

// WithDiscovery gives the daemon its service registry, through which its
// connections resolve discover:// addresses.
func WithDiscovery(r *discovery.Registry) Option {
	return func(o *options) { o.discovery = r }
}

// WithTracing traces the calls the server takes, and the daemon's own, with
// p (nil: off).
func WithTracing(p *tracing.Provider) Option {
	return func(o *options) { o.tracing = p }
}

// Option changes how New builds the server.
type Option func(*options)

// A FrontDoor serves a daemon's socket in place of its gRPC server: the
// gateway's relay. The gRPC server then serves only the connections the
// front door makes to it with Server.DialLocal.
type FrontDoor interface {
	Serve(net.Listener) error
	// Shutdown stops taking calls and waits for those in flight until ctx
	// ends, then cuts them.
	Shutdown(ctx context.Context) error
}

// WithFrontDoor has the server's socket served by the front door that
// build returns for it.
func WithFrontDoor(build func(*Server) FrontDoor) Option {
	return func(o *options) { o.frontDoor = build }
}

// WithoutSignals has Run stop only when its context ends, not on SIGTERM or
// SIGINT: for a process running several servers, which stops them itself in
// an order.
func WithoutSignals() Option {
	return func(o *options) { o.noSignals = true }
}

// WithGRPCOptions adds options to the gRPC server.
func WithGRPCOptions(opts ...grpc.ServerOption) Option {
	return func(o *options) { o.grpcOpts = append(o.grpcOpts, opts...) }
}

// New builds the server of daemon name. Register services on GRPC() before Run.
func New(name string, cfg config.Common, log *slog.Logger, opts ...Option) *Server {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	registry := prometheus.NewRegistry()
	registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	metrics := grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram(
		grpcprom.WithHistogramBuckets([]float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}),
	))
	registry.MustRegister(metrics)
	stop := newStopping(name)
	creds := mtls.NewCredentials(o.identity, log)
	admin := newAdminMethods()

	// Metrics sit outermost so they count the gRPC code the client sees;
	// errors are converted before that, namespaces are read first of all.
	grpcOpts := append([]grpc.ServerOption{
		grpc.Creds(creds),
		grpc.ChainUnaryInterceptor(metrics.UnaryServerInterceptor(), errorsUnary, logUnary(log), admin.unary, namespaceUnary, stop.unary),
		grpc.ChainStreamInterceptor(metrics.StreamServerInterceptor(), errorsStream, logStream(log), admin.stream, namespaceStream, stop.stream),
		grpc.MaxRecvMsgSize(MaxMsgSize),
		grpc.MaxSendMsgSize(MaxMsgSize),
		// Blobs and layers move in 1 MiB messages: windows that hold several
		// of them keep a sender from stalling on flow control, and larger
		// buffers cut the syscalls per message.
		grpc.InitialWindowSize(StreamWindow),
		grpc.InitialConnWindowSize(ConnWindow),
		grpc.ReadBufferSize(IOBuffer),
		grpc.WriteBufferSize(IOBuffer),
		grpc.ForceServerCodecV2(Codec{}),
		// The gateway checks a quiet backend connection with PINGs, as
		// often as every half second (gateway --stall-timeout): gRPC's
		// default policy would take them for abuse and close it.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 500 * time.Millisecond, PermitWithoutStream: true}),
	}, o.grpcOpts...)
	grpcOpts = append(grpcOpts, o.tracing.ServerOptions()...)

	s := &Server{
		name:      name,
		cfg:       cfg,
		log:       log,
		grpc:      grpc.NewServer(grpcOpts...),
		health:    health.NewServer(),
		metrics:   metrics,
		registry:  registry,
		started:   time.Now(),
		stopping:  stop,
		creds:     creds,
		identity:  o.identity,
		discovery: o.discovery,
		tracing:   o.tracing,
		admin:     admin,
		signals:   !o.noSignals,
		serving:   make(chan struct{}),
	}
	healthpb.RegisterHealthServer(s.grpc, s.health)
	servicev1.RegisterInfoServer(s.grpc, &infoService{s: s})
	if o.frontDoor != nil {
		s.local = newLocalListener()
		s.frontDoor = o.frontDoor(s)
	}
	return s
}

// Identity is the daemon's mutual TLS identity, nil without one.
func (s *Server) Identity() *mtls.Identity { return s.identity }

// Discovery is the daemon's service registry, nil without one.
func (s *Server) Discovery() *discovery.Registry { return s.discovery }

// Tracing is the daemon's tracing (nil: off), for its own spans and the
// calls it makes.
func (s *Server) Tracing() *tracing.Provider { return s.tracing }

// CallMetrics are the Prometheus metrics of the calls the server handles,
// for a front door to count the calls it relays in the same series.
func (s *Server) CallMetrics() *grpcprom.ServerMetrics { return s.metrics }

// DialLocal connects to the gRPC server of a server built WithFrontDoor.
func (s *Server) DialLocal(ctx context.Context) (net.Conn, error) {
	if s.local == nil {
		return nil, errors.New("no front door: dial the server's address")
	}
	return s.local.dial(ctx)
}

// Serving is closed once Run serves the server's socket.
func (s *Server) Serving() <-chan struct{} { return s.serving }

// GRPC is the server to register the daemon's services on.
func (s *Server) GRPC() *grpc.Server { return s.grpc }

// Registry is where the daemon registers its own Prometheus metrics.
func (s *Server) Registry() *prometheus.Registry { return s.registry }

// Logger is the daemon's logger.
func (s *Server) Logger() *slog.Logger { return s.log }

// Config is the daemon's common configuration.
func (s *Server) Config() config.Common { return s.cfg }

// SetServing reports one service's health ("" is the whole daemon).
func (s *Server) SetServing(service string, serving bool) {
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if serving {
		st = healthpb.HealthCheckResponse_SERVING
	}
	s.health.SetServingStatus(service, st)
}

// AdminOnly restricts the given methods ("/pkg.Service/Method", or
// "/pkg.Service/" for all of a service's) to callers the admin policy
// allows (mtls.AdminPolicy): an admin certificate on TCP; root, the
// daemon's user or the socket's group locally. Others get PermissionDenied.
func (s *Server) AdminOnly(methods ...string) { s.admin.add(methods...) }

// Admin is the policy AdminOnly methods are checked against, for a front
// door that checks its callers itself.
func (s *Server) Admin() mtls.AdminPolicy { return s.admin.policy() }

// Credentials are the server's transport credentials, for a front door
// wrapping its listener (Credentials.Listener) or checking callers.
func (s *Server) Credentials() *mtls.Credentials { return s.creds }

// OnServe registers f to run once the server listens and serves (such as
// registering it with discovery); ctx ends when the server stops.
func (s *Server) OnServe(f func(ctx context.Context)) { s.onServe = append(s.onServe, f) }

// OnStop registers f to run after the gRPC server has stopped, such as
// closing a database. They run in reverse order of registration.
func (s *Server) OnStop(f func()) { s.onStop = append(s.onStop, f) }

// Run serves until ctx ends or SIGTERM/SIGINT arrives, then stops taking new
// calls, lets in-flight ones finish within the shutdown timeout, cuts the
// rest, and runs the OnStop functions.
func (s *Server) Run(ctx context.Context) error {
	if s.signals {
		var stop context.CancelFunc
		ctx, stop = signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
		defer stop()
	}
	defer func() {
		for i := len(s.onStop) - 1; i >= 0; i-- {
			s.onStop[i]()
		}
	}()

	network, _, err := SplitAddress(s.cfg.Address)
	if err != nil {
		return err
	}
	if network == "tcp" && s.identity == nil {
		return fmt.Errorf("serve on %s: %w", s.cfg.Address, mtls.ErrNoIdentity)
	}
	l, err := Listen(s.cfg.Address)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", s.cfg.Address, err)
	}
	if err := s.admin.setSocket(l); err != nil {
		l.Close()
		return err
	}
	// Other components of this process call without the socket (a front
	// door's socket is for clients, so it is not offered to them).
	var il net.Listener
	if s.frontDoor == nil && InProcessEnabled() {
		if il, err = listenInProcess(s.cfg.Address); err != nil {
			l.Close()
			return err
		}
	}
	s.metrics.InitializeMetrics(s.grpc)

	var metricsSrv *http.Server
	if s.cfg.MetricsAddress != "" {
		ml, err := net.Listen("tcp", s.cfg.MetricsAddress)
		if err != nil {
			l.Close()
			if il != nil {
				il.Close()
			}
			return fmt.Errorf("metrics listen on %s: %w", s.cfg.MetricsAddress, err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(s.registry, promhttp.HandlerOpts{Registry: s.registry}))
		if s.cfg.Pprof {
			// Profiles, as containerd serves them on its debug address:
			// only when asked for, and never to other hosts (they show
			// memory and cost CPU).
			mux.Handle("/debug/pprof/", loopbackOnly(http.HandlerFunc(pprof.Index)))
			mux.Handle("/debug/pprof/profile", loopbackOnly(http.HandlerFunc(pprof.Profile)))
			mux.Handle("/debug/pprof/symbol", loopbackOnly(http.HandlerFunc(pprof.Symbol)))
			mux.Handle("/debug/pprof/trace", loopbackOnly(http.HandlerFunc(pprof.Trace)))
		}
		metricsSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := metricsSrv.Serve(ml); err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.log.Error("metrics server stopped", "error", err)
			}
		}()
	}

	served := make(chan error, 3)
	if s.frontDoor != nil {
		go func() { served <- s.grpc.Serve(s.local) }()
		go func() { served <- s.frontDoor.Serve(s.creds.Listener(l)) }()
	} else {
		go func() { served <- s.grpc.Serve(l) }()
		if il != nil {
			go func() { served <- s.grpc.Serve(il) }()
		}
	}
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	close(s.serving)
	s.log.Info("serving", "address", s.cfg.Address, "metrics", s.cfg.MetricsAddress,
		"version", version.Version, "revision", version.Revision, "pid", os.Getpid())

	serveCtx, endServe := context.WithCancel(ctx)
	defer endServe()
	for _, f := range s.onServe {
		f(serveCtx)
	}

	select {
	case err := <-served:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	endServe()
	s.log.Info("shutting down", "timeout", s.cfg.ShutdownTimeout.String())
	s.health.Shutdown()
	// Calls that would last as long as their clients stay (subscriptions,
	// waits) end now, answering Unavailable; the others get the timeout.
	s.stopping.stop()
	if s.frontDoor != nil {
		sctx, cancel := context.WithTimeout(context.Background(), time.Duration(s.cfg.ShutdownTimeout))
		if err := s.frontDoor.Shutdown(sctx); err != nil {
			s.log.Warn("in-flight calls did not finish in time; cutting them", "timeout", s.cfg.ShutdownTimeout.String())
		}
		cancel()
	}
	s.stopGRPC(time.Duration(s.cfg.ShutdownTimeout))
	if metricsSrv != nil {
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		metricsSrv.Shutdown(sctx)
		cancel()
	}
	s.log.Info("stopped")
	return nil
}

// loopbackOnly answers 403 Forbidden to requests that do not come from
// the loopback interface.
func loopbackOnly(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, err := net.SplitHostPort(r.RemoteAddr)
		if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
			http.Error(w, "profiles are served to loopback clients only", http.StatusForbidden)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// stopGRPC waits up to timeout for in-flight calls, then cuts what is left
// (long-lived streams such as event subscriptions never end by themselves).
func (s *Server) stopGRPC(timeout time.Duration) {
	done := make(chan struct{})
	go func() {
		s.grpc.GracefulStop()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(timeout):
		s.log.Warn("in-flight calls did not finish in time; cutting them", "timeout", timeout)
		s.grpc.Stop()
		// Stop cancels every call's context; a handler that ignores its
		// context must not keep the daemon from exiting.
		select {
		case <-done:
		case <-time.After(time.Second):
			s.log.Error("handlers still running after their calls were cut; exiting anyway")
		}
	}
}

type infoService struct {
	servicev1.UnimplementedInfoServer
	s *Server
}

func (i *infoService) Get(context.Context, *servicev1.GetInfoRequest) (*servicev1.GetInfoResponse, error) {
	return &servicev1.GetInfoResponse{
		Name:           i.s.name,
		Version:        version.Version,
		Revision:       version.Revision,
		Address:        i.s.cfg.Address,
		MetricsAddress: i.s.cfg.MetricsAddress,
		Pid:            int64(os.Getpid()),
		StartedAt:      timestamppb.New(i.s.started),
	}, nil
}
