package router_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	namespacesapi "github.com/containerd/containerd/api/services/namespaces/v1"
	"github.com/containerd/errdefs"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/flotilla/flotilla/services/config"
	"github.com/flotilla/flotilla/services/dial"
	"github.com/flotilla/flotilla/services/namespace"
	"github.com/flotilla/flotilla/services/server"

	"github.com/flotilla/flotilla/gateway/backend"
	"github.com/flotilla/flotilla/gateway/internal/sockdir"
	"github.com/flotilla/flotilla/gateway/router"
)

// serve runs a kit server named name on addr until the returned stop is
// called (or the test ends), once register has added its services.
func serve(tb testing.TB, name, addr string, register func(*grpc.Server), opts ...server.Option) (stop func()) {
	tb.Helper()
	return serveLogging(tb, name, addr, slog.New(slog.NewTextHandler(io.Discard, nil)), register, opts...)
}

// serveLogging is serve with the server logging to log.
func serveLogging(tb testing.TB, name, addr string, log *slog.Logger, register func(*grpc.Server), opts ...server.Option) (stop func()) {
	tb.Helper()
	cfg := config.Common{Address: addr, ShutdownTimeout: config.Duration(time.Second)}
	srv := server.New(name, cfg, log, opts...)
	register(srv.GRPC())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	waitSocket(tb, addr, done)
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("%s: %v", name, err)
		}
	}
	tb.Cleanup(stop)
	return stop
}

func waitSocket(tb testing.TB, addr string, done <-chan error) {
	tb.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(addr); err == nil {
			return
		}
		select {
		case err := <-done:
			tb.Fatalf("server on %s stopped: %v", addr, err)
		case <-time.After(5 * time.Millisecond):
		}
	}
	tb.Fatalf("server on %s did not come up", addr)
}

// fakeContentd serves containerd's Namespaces service and the content
// service's Read (server stream) and Write (bidi stream), enough to watch the
// gateway carry every kind of call.
type fakeContentd struct{}

func (fakeContentd) register(s *grpc.Server) {
	namespacesapi.RegisterNamespacesServer(s, fakeNamespaces{})
	contentapi.RegisterContentServer(s, fakeContent{})
}

type fakeNamespaces struct {
	namespacesapi.UnimplementedNamespacesServer
}

type fakeContent struct {
	contentapi.UnimplementedContentServer
}

// Get answers any name but "missing", with labels telling what the call
// carried: the caller's namespace and lease. It sets a header and a trailer.
func (fakeNamespaces) Get(ctx context.Context, req *namespacesapi.GetNamespaceRequest) (*namespacesapi.GetNamespaceResponse, error) {
	grpc.SetHeader(ctx, metadata.Pairs("x-backend-header", "h"))
	grpc.SetTrailer(ctx, metadata.Pairs("x-backend-trailer", "t"))
	if req.Name == "missing" {
		return nil, fmt.Errorf("namespace %q: %w", req.Name, errdefs.ErrNotFound)
	}
	labels := map[string]string{}
	if ns, ok := namespace.FromContext(ctx); ok {
		labels["caller-namespace"] = ns
	}
	if lease, ok := namespace.LeaseFromContext(ctx); ok {
		labels["caller-lease"] = lease
	}
	return &namespacesapi.GetNamespaceResponse{Namespace: &namespacesapi.Namespace{Name: req.Name, Labels: labels}}, nil
}

func (fakeNamespaces) List(context.Context, *namespacesapi.ListNamespacesRequest) (*namespacesapi.ListNamespacesResponse, error) {
	return &namespacesapi.ListNamespacesResponse{Namespaces: []*namespacesapi.Namespace{{Name: "default"}}}, nil
}

// readChunk is the size of each message Read sends: large enough that gRPC
// carries it in pooled buffers.
const readChunk = 64 << 10

// Read sends req.Size bytes in readChunk messages, byte i being i%251.
func (fakeContent) Read(req *contentapi.ReadContentRequest, stream contentapi.Content_ReadServer) error {
	if req.Size < 0 {
		return fmt.Errorf("size %d: %w", req.Size, errdefs.ErrInvalidArgument)
	}
	for off := int64(0); off < req.Size; off += readChunk {
		n := min(readChunk, req.Size-off)
		data := make([]byte, n)
		for i := range data {
			data[i] = byte((off + int64(i)) % 251)
		}
		if err := stream.Send(&contentapi.ReadContentResponse{Offset: off, Data: data}); err != nil {
			return err
		}
	}
	return nil
}

// Write answers each request with the offset reached so far, and fails the
// stream with FailedPrecondition on a request whose ref is "fail".
func (fakeContent) Write(stream contentapi.Content_WriteServer) error {
	var offset int64
	for {
		req, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if req.Ref == "fail" {
			return fmt.Errorf("ref %q: %w", req.Ref, errdefs.ErrFailedPrecondition)
		}
		offset += int64(len(req.Data))
		if err := stream.Send(&contentapi.WriteContentResponse{Action: req.Action, Offset: offset}); err != nil {
			return err
		}
	}
}

// stack is a fake contentd behind a gateway, both on unix sockets.
type stack struct {
	backendAddr string
	gatewayAddr string
	stopBackend func()
	direct      *grpc.ClientConn
	gateway     *grpc.ClientConn
}

func newStack(tb testing.TB) *stack {
	tb.Helper()
	return newStackLogging(tb, slog.New(slog.NewTextHandler(io.Discard, nil)))
}

// newStackLogging is newStack with the gateway logging to log.
func newStackLogging(tb testing.TB, log *slog.Logger) *stack {
	tb.Helper()
	dir := sockdir.New(tb)
	s := &stack{
		backendAddr: filepath.Join(dir, "contentd.sock"),
		gatewayAddr: filepath.Join(dir, "flotilla.sock"),
	}
	s.stopBackend = serve(tb, "contentd", s.backendAddr, fakeContentd{}.register)

	b, err := backend.Dial("contentd", s.backendAddr, []string{"content", "namespaces"})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { b.Close() })
	r := router.New()
	r.Route(b)
	serveLogging(tb, "gateway", s.gatewayAddr, log, func(*grpc.Server) {}, server.WithFrontDoor(r.FrontDoor))

	s.direct = clientConn(tb, s.backendAddr)
	s.gateway = clientConn(tb, s.gatewayAddr)
	return s
}

// restartBackend serves a new fake contentd on the same socket.
func (s *stack) restartBackend(tb testing.TB) {
	s.stopBackend = serve(tb, "contentd", s.backendAddr, fakeContentd{}.register)
}

// clientConn is a plain gRPC client, as containerd's own client would be:
// no interceptors, statuses as they come.
func clientConn(tb testing.TB, addr string) *grpc.ClientConn {
	tb.Helper()
	target, err := dial.Target(addr)
	if err != nil {
		tb.Fatal(err)
	}
	conn, err := grpc.NewClient(target, dial.Options()...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close() })
	return conn
}

func withNamespace(ctx context.Context, ns string, kv ...string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, append([]string{namespace.MetadataKey, ns}, kv...)...)
}
