// Package dial opens client connections from one Flotilla service to
// another, over a unix socket or TCP, so components can run on different
// hosts. Calls carry the namespace and lease of their context, and errors
// come back as errdefs kinds.
package dial

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	"github.com/flotilla/flotilla/services/discovery"
	"github.com/flotilla/flotilla/services/mtls"
	"github.com/flotilla/flotilla/services/namespace"
	"github.com/flotilla/flotilla/services/server"
	"github.com/flotilla/flotilla/services/tracing"
)

// A Dialer opens one component's connections: presenting its mutual TLS
// identity, resolving discover:// addresses through its service registry,
// and tracing the calls with its tracer provider. In a process that runs
// several components (cmd/flotilla) each has its own, For(srv); the zero
// Dialer dials unix sockets only, resolves nothing and does not trace.
type Dialer struct {
	// Identity is the certificate every TCP connection presents, and the
	// CA its servers are checked against (nil: no TCP at all).
	Identity *mtls.Identity
	// Registry resolves discover:// addresses (nil: none).
	Registry *discovery.Registry
	// Tracing traces every call (nil: off).
	Tracing *tracing.Provider
}

// For is the Dialer of the component srv serves: its identity, registry
// and tracing.
func For(srv *server.Server) *Dialer {
	return &Dialer{Identity: srv.Identity(), Registry: srv.Discovery(), Tracing: srv.Tracing()}
}

// The process's Dialer, for a process that makes one component's
// connections (a single daemon, flotctl): the package-level functions use
// it. Set once at start-up, before any connection is made.
var (
	identity atomic.Pointer[mtls.Identity]
	registry atomic.Pointer[discovery.Registry]
)

// SetIdentity makes id the certificate every TCP connection of the
// process-wide functions presents and trusts the servers of (nil: no TCP).
func SetIdentity(id *mtls.Identity) { identity.Store(id) }

// Identity is the process's mutual TLS identity, nil without one.
func Identity() *mtls.Identity { return identity.Load() }

// SetRegistry makes r resolve the discover:// addresses of the
// process-wide functions.
func SetRegistry(r *discovery.Registry) { registry.Store(r) }

// Registry is the process's service registry, nil without one.
func Registry() *discovery.Registry { return registry.Load() }

// Process is the process's Dialer as set now: SetIdentity's identity,
// SetRegistry's registry and tracing.Init's provider.
func Process() *Dialer {
	return &Dialer{Identity: identity.Load(), Registry: registry.Load(), Tracing: tracing.Process()}
}

// Credentials are the transport credentials of the process's connections.
func Credentials() *mtls.Credentials { return Process().Credentials() }

// Target is Dialer.Target with the process's Dialer.
func Target(addr string) (string, error) { return Process().Target(addr) }

// Options is Dialer.Options with the process's Dialer.
func Options() []grpc.DialOption { return Process().Options() }

// Conn is Dialer.Conn with the process's Dialer.
func Conn(ctx context.Context, addr string) (net.Conn, error) { return Process().Conn(ctx, addr) }

// Dial is Dialer.Dial with the process's Dialer.
func Dial(addr string, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	return Process().Dial(addr, opts...)
}

// Credentials are the transport credentials of d's connections: unix
// sockets as they are, TCP over mutual TLS with d's identity.
func (d *Dialer) Credentials() *mtls.Credentials { return mtls.NewCredentials(d.Identity, nil) }

// Target turns an address as Flotilla's flags take it ("/run/x.sock",
// "unix:///run/x.sock", "tcp://host:port", "host:port",
// "discover://service?node=n") into a gRPC target.
func (d *Dialer) Target(addr string) (string, error) {
	if _, ok, err := discovery.ParseAddress(addr); ok {
		if err != nil {
			return "", err
		}
		if d.Registry == nil {
			return "", fmt.Errorf("address %s: no service registry is configured (--discovery): %w", addr, errdefs.ErrFailedPrecondition)
		}
		return addr, nil
	}
	network, address, err := server.SplitAddress(addr)
	if err != nil {
		return "", err
	}
	if network == "unix" {
		return "unix://" + address, nil
	}
	return "passthrough:///" + address, nil
}

// Options are the dial options every connection between services uses:
// unix sockets in the clear (their mode says who may connect, as
// containerd trusts its socket), TCP only over mutual TLS; discover://
// targets resolved through the registry; a reconnect backoff capped at
// one second so that a restarted service is found again promptly; and
// tracing when it is on.
func (d *Dialer) Options() []grpc.DialOption {
	opts := append([]grpc.DialOption{
		grpc.WithTransportCredentials(d.Credentials()),
		grpc.WithContextDialer(dialAddress),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: time.Second,
		}),
		grpc.WithInitialWindowSize(server.StreamWindow),
		grpc.WithInitialConnWindowSize(server.ConnWindow),
		grpc.WithReadBufferSize(server.IOBuffer),
		grpc.WithWriteBufferSize(server.IOBuffer),
		grpc.WithDefaultCallOptions(grpc.ForceCodecV2(server.Codec{}),
			grpc.MaxCallRecvMsgSize(server.MaxMsgSize), grpc.MaxCallSendMsgSize(server.MaxMsgSize)),
	}, d.Tracing.DialOptions()...)
	if d.Registry != nil {
		opts = append(opts, grpc.WithResolvers(d.Registry.Builder()))
	}
	return opts
}

// dialAddress connects to one resolved address: a unix socket path
// (unix:// or not) or a TCP host:port (tcp:// or not); in memory when a
// server of this process serves it (server.EnableInProcess), which is
// decided at each (re)connect, so a connection made before that server
// started, or one that outlives it, still finds its way.
func dialAddress(ctx context.Context, addr string) (net.Conn, error) {
	if c, ok, err := server.DialInProcess(ctx, addr); ok || err != nil {
		return c, err
	}
	network, address, err := server.SplitAddress(addr)
	if err != nil {
		return nil, err
	}
	var d net.Dialer
	return d.DialContext(ctx, network, address)
}

// Conn opens a raw connection to the service at addr for a caller that
// speaks HTTP/2 itself (the gateway's relay): a discover:// address is
// looked up in the registry (the newest instance), a TCP connection is
// handshaken over mutual TLS.
func (d *Dialer) Conn(ctx context.Context, addr string) (net.Conn, error) {
	if t, ok, err := discovery.ParseAddress(addr); ok {
		if err != nil {
			return nil, err
		}
		r := d.Registry
		if r == nil {
			return nil, fmt.Errorf("address %s: no service registry is configured (--discovery): %w", addr, errdefs.ErrFailedPrecondition)
		}
		insts, err := r.Lookup(ctx, t)
		if err != nil {
			return nil, err
		}
		addr = insts[0].Address
	}
	conn, err := dialAddress(ctx, addr)
	if err != nil {
		return nil, err
	}
	network, address, _ := server.SplitAddress(addr)
	if network != "tcp" || !isTCP(conn) {
		// A unix socket, or the in-process socket pair of a server of
		// this process: the peer credentials tell who calls.
		return conn, nil
	}
	return d.Credentials().ClientTLS(ctx, address, conn)
}

// Dial returns a lazily connecting client for the service at addr.
func (d *Dialer) Dial(addr string, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	target, err := d.Target(addr)
	if err != nil {
		return nil, err
	}
	all := append(d.Options(),
		grpc.WithChainUnaryInterceptor(unaryClient),
		grpc.WithChainStreamInterceptor(streamClient),
	)
	conn, err := grpc.NewClient(target, append(all, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	return conn, nil
}

func unaryClient(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	return errgrpc.ToNative(invoker(namespace.ToOutgoing(ctx), method, req, reply, cc, opts...))
}

func streamClient(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	cs, err := streamer(namespace.ToOutgoing(ctx), desc, cc, method, opts...)
	if err != nil {
		return nil, errgrpc.ToNative(err)
	}
	return &nativeErrStream{ClientStream: cs}, nil
}

// nativeErrStream converts errors received on a stream back to errdefs kinds.
type nativeErrStream struct{ grpc.ClientStream }

// RecvMsg keeps io.EOF as it is: it is how a stream says it has ended.
func (s *nativeErrStream) RecvMsg(m any) error { return nativeUnlessEOF(s.ClientStream.RecvMsg(m)) }

func nativeUnlessEOF(err error) error {
	if err == nil || errors.Is(err, io.EOF) {
		return err
	}
	return errgrpc.ToNative(err)
}

// SendMsg returns io.EOF when the server has ended the stream; RecvMsg then tells why.
func (s *nativeErrStream) SendMsg(m any) error { return nativeUnlessEOF(s.ClientStream.SendMsg(m)) }

// isTCP reports whether conn goes over the network.
func isTCP(conn net.Conn) bool {
	a := conn.LocalAddr()
	return a != nil && (a.Network() == "tcp" || a.Network() == "tcp4" || a.Network() == "tcp6")
}
