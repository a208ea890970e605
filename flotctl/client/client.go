// Package client connects flotctl to a containerd API endpoint — Flotilla's
// gateway or containerd itself — and turns connection failures into errors
// that say what to do.
package client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	contentapi "github.com/containerd/containerd/api/services/content/v1"
	diffapi "github.com/containerd/containerd/api/services/diff/v1"
	eventsapi "github.com/containerd/containerd/api/services/events/v1"
	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	introspectionapi "github.com/containerd/containerd/api/services/introspection/v1"
	leasesapi "github.com/containerd/containerd/api/services/leases/v1"
	namespacesapi "github.com/containerd/containerd/api/services/namespaces/v1"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	streamingapi "github.com/containerd/containerd/api/services/streaming/v1"
	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	transferapi "github.com/containerd/containerd/api/services/transfer/v1"
	versionapi "github.com/containerd/containerd/api/services/version/v1"
	"github.com/containerd/errdefs"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/flotilla/flotilla/services/config"
	"github.com/flotilla/flotilla/services/dial"
	"github.com/flotilla/flotilla/services/namespace"
	"github.com/flotilla/flotilla/services/server"
)

// DefaultNamespace is the namespace used when neither --namespace nor
// CONTAINERD_NAMESPACE names one, as in ctr and nerdctl.
const DefaultNamespace = "default"

// DefaultAddress is CONTAINERD_ADDRESS when set, else the gateway's socket
// under $FLOTILLA_STATE.
func DefaultAddress() string {
	if v := os.Getenv("CONTAINERD_ADDRESS"); v != "" {
		return v
	}
	return filepath.Join(config.DefaultState(), "flotilla.sock")
}

// DefaultNamespaceFromEnv is CONTAINERD_NAMESPACE when set, else "default".
func DefaultNamespaceFromEnv() string {
	if v := os.Getenv("CONTAINERD_NAMESPACE"); v != "" {
		return v
	}
	return DefaultNamespace
}

// Client holds one connection and a client for each containerd service.
// Every call carries the client's namespace, unless its context names
// another (WithNamespace of the services' namespace package).
type Client struct {
	Address   string
	Namespace string

	conn *grpc.ClientConn

	Containers    containersapi.ContainersClient
	Content       contentapi.ContentClient
	Diff          diffapi.DiffClient
	Events        eventsapi.EventsClient
	Images        imagesapi.ImagesClient
	Introspection introspectionapi.IntrospectionClient
	Leases        leasesapi.LeasesClient
	Namespaces    namespacesapi.NamespacesClient
	Snapshots     snapshotsapi.SnapshotsClient
	Streaming     streamingapi.StreamingClient
	Tasks         tasksapi.TasksClient
	Transfer      transferapi.TransferClient
	Version       versionapi.VersionClient
}

// New returns a client for the endpoint at address (a unix socket path,
// unix://, tcp:// or host:port). It connects lazily: the first call reports
// an unreachable endpoint (see Explain).
func New(address, ns string) (*Client, error) {
	withNS := func(ctx context.Context) context.Context {
		md, _ := metadata.FromOutgoingContext(ctx)
		if len(md.Get(namespace.MetadataKey)) > 0 || ns == "" {
			return ctx
		}
		return metadata.AppendToOutgoingContext(ctx, namespace.MetadataKey, ns)
	}
	conn, err := dial.Dial(address,
		grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			return invoker(withNS(ctx), method, req, reply, cc, opts...)
		}),
		grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			return streamer(withNS(ctx), desc, cc, method, opts...)
		}),
	)
	if err != nil {
		return nil, err
	}
	return &Client{
		Address:       address,
		Namespace:     ns,
		conn:          conn,
		Containers:    containersapi.NewContainersClient(conn),
		Content:       contentapi.NewContentClient(conn),
		Diff:          diffapi.NewDiffClient(conn),
		Events:        eventsapi.NewEventsClient(conn),
		Images:        imagesapi.NewImagesClient(conn),
		Introspection: introspectionapi.NewIntrospectionClient(conn),
		Leases:        leasesapi.NewLeasesClient(conn),
		Namespaces:    namespacesapi.NewNamespacesClient(conn),
		Snapshots:     snapshotsapi.NewSnapshotsClient(conn),
		Streaming:     streamingapi.NewStreamingClient(conn),
		Tasks:         tasksapi.NewTasksClient(conn),
		Transfer:      transferapi.NewTransferClient(conn),
		Version:       versionapi.NewVersionClient(conn),
	}, nil
}

// Conn is the underlying connection.
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// WithNamespace returns ctx carrying the client's namespace.
func (c *Client) WithNamespace(ctx context.Context) context.Context {
	return namespace.WithNamespace(ctx, c.Namespace)
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Explain rewrites err, as returned by a call through a client for address,
// into one line that says what went wrong and what to do about it. Errors
// flotctl cannot say more about are returned as they are.
func Explain(err error, address, ns string) error {
	if err == nil {
		return nil
	}
	var hinted *Hinted
	if errors.As(err, &hinted) {
		return err
	}
	switch {
	case errdefs.IsUnavailable(err) && !reachable(address):
		return &Hinted{Err: err, Msg: fmt.Sprintf("cannot reach Flotilla at %s: is the stack up? (make up, or set --address / CONTAINERD_ADDRESS)", address)}
	case errdefs.IsNotImplemented(err):
		return &Hinted{Err: err, Msg: fmt.Sprintf("%s: the server at %s does not implement this call (yet)", firstLine(err), address)}
	case errdefs.IsPermissionDenied(err):
		return &Hinted{Err: err, Msg: fmt.Sprintf("%s: run flotctl as root or as a user allowed on %s", firstLine(err), address)}
	}
	return err
}

// reachable reports whether anything accepts connections at address. An
// Unavailable answer from a reachable gateway is about one of its backends,
// and its own message says which.
func reachable(address string) bool {
	network, addr, err := server.SplitAddress(address)
	if err != nil {
		return false
	}
	c, err := net.DialTimeout(network, addr, 2*time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// Hinted is an error with a one-line message for people; Unwrap keeps the
// error's kind for errdefs.
type Hinted struct {
	Err error
	Msg string
}

func (h *Hinted) Error() string { return h.Msg }
func (h *Hinted) Unwrap() error { return h.Err }

func firstLine(err error) string {
	s := err.Error()
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
