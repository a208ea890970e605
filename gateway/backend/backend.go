// Package backend holds the gateway's connections to the services behind it:
// one long-lived gRPC connection per backend, which says within a bounded
// time whether the backend can be called, and finds a restarted backend again
// without the gateway being restarted.
package backend

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"

	"github.com/flotilla/flotilla/services/dial"
)

// DefaultReadyWait is how long a call waits for a backend that is not
// connected before it fails with Unavailable. It leaves room within the two
// seconds a client may wait for an answer naming the backend.
const DefaultReadyWait = 1500 * time.Millisecond

// Owner names a backend and the containerd API services it serves.
type Owner struct {
	// Name is the backend's component name (contentd, snapshotd, ...).
	Name string
	// Services are the containerd service IDs it owns: the component of
	// "containerd.services.<id>.v1.<Service>" ("content", "images", ...).
	Services []string
}

// Owners is Flotilla's division of containerd's API among its backends, in
// the order the gateway reports them.
var Owners = []Owner{
	{Name: "contentd", Services: []string{"content", "images", "leases", "namespaces", "transfer", "streaming"}},
	{Name: "snapshotd", Services: []string{"snapshots", "diff"}},
	{Name: "taskd", Services: []string{"containers", "tasks"}},
	{Name: "eventd", Services: []string{"events"}},
}

// Backend is one service behind the gateway and the connection to it.
// It is safe for concurrent use.
type Backend struct {
	name     string
	address  string
	target   string
	services []string
	conn     *grpc.ClientConn
	wait     time.Duration
	dialer   *dial.Dialer
}

// Option changes how Dial sets up a backend.
type Option func(*Backend)

// WithDialer has the gateway connect to the backend with d, the gateway's
// Dialer (dial.For(srv)): its identity, registry and tracing. Without it
// the process's (package dial's functions).
func WithDialer(d *dial.Dialer) Option { return func(b *Backend) { b.dialer = d } }

// WithReadyWait sets how long Ready waits for a connection (DefaultReadyWait
// otherwise).
func WithReadyWait(d time.Duration) Option { return func(b *Backend) { b.wait = d } }

// Dial returns backend name at address (a unix socket path, unix:///path or
// tcp://host:port) serving the given containerd services. It connects
// lazily: a backend that is down now is not an error here.
//
// The connection carries no interceptors: the gateway passes statuses and
// metadata through verbatim rather than converting them the way service
// clients built with dial.Dial do.
func Dial(name, address string, services []string, opts ...Option) (*Backend, error) {
	b := &Backend{
		name:     name,
		address:  address,
		services: services,
		wait:     DefaultReadyWait,
	}
	for _, opt := range opts {
		opt(b)
	}
	if b.dialer == nil {
		b.dialer = dial.Process()
	}
	target, err := b.dialer.Target(address)
	if err != nil {
		return nil, fmt.Errorf("backend %s: %w", name, err)
	}
	conn, err := grpc.NewClient(target, b.dialer.Options()...)
	if err != nil {
		return nil, fmt.Errorf("backend %s: dial %s: %w", name, address, err)
	}
	b.target, b.conn = target, conn
	return b, nil
}

// Name is the backend's component name.
func (b *Backend) Name() string { return b.name }

// Address is the address the backend was configured with.
func (b *Backend) Address() string { return b.address }

// Services are the containerd service IDs the backend owns.
func (b *Backend) Services() []string { return b.services }

// Target is the backend's address as a gRPC target (unix:///path,
// dns:///host:port), as errors name it.
func (b *Backend) Target() string { return b.target }

// DialContext opens a new connection to the backend, for the gateway's
// relay.
// A discover:// address is looked up in the registry; TCP goes over
// mutual TLS.
func (b *Backend) DialContext(ctx context.Context) (net.Conn, error) {
	return b.dialer.Conn(ctx, b.address)
}

// Conn is the connection to the backend, for calls made after Ready.
func (b *Backend) Conn() *grpc.ClientConn { return b.conn }

// Close closes the connection.
func (b *Backend) Close() error { return b.conn.Close() }

// Ready returns nil when the connection to the backend is up. Otherwise it
// asks for a connection at once (skipping any reconnect backoff) and waits
// for it up to the backend's ready wait or ctx's end, whichever comes first.
// A backend still not connected by then is an errdefs.ErrUnavailable error
// naming the backend, its address and why it could not be reached.
func (b *Backend) Ready(ctx context.Context) error {
	state := b.conn.GetState()
	if state == connectivity.Ready {
		return nil
	}
	b.conn.ResetConnectBackoff()
	b.conn.Connect()

	wctx, cancel := context.WithTimeout(ctx, b.wait)
	defer cancel()
	for {
		state = b.conn.GetState()
		switch state {
		case connectivity.Ready:
			return nil
		case connectivity.Idle:
			b.conn.Connect()
		case connectivity.Shutdown:
			return fmt.Errorf("%s (%s) is unavailable: the gateway closed its connection: %w",
				b.name, b.target, errdefs.ErrUnavailable)
		}
		if !b.conn.WaitForStateChange(wctx, state) {
			break
		}
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s (%s): waiting for a connection: %w", b.name, b.target, err)
	}
	return fmt.Errorf("%s (%s) is unavailable: %s: %w", b.name, b.target, b.reason(state), errdefs.ErrUnavailable)
}

// Connected reports whether the connection to the backend is up now.
func (b *Backend) Connected() bool { return b.conn.GetState() == connectivity.Ready }

// reason explains why the backend did not connect: the error of a direct
// dial when there is one (no such socket, connection refused), the gRPC
// connection's state otherwise.
func (b *Backend) reason(state connectivity.State) string {
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	c, err := b.dialer.Conn(ctx, b.address)
	if err != nil {
		return err.Error()
	}
	c.Close()
	return fmt.Sprintf("no gRPC connection after %s (connection %s)", b.wait, state)
}
