// Package router forwards containerd API calls from the gateway to the
// backend service that owns them: unary calls and streams of every kind,
// undecoded, with the caller's metadata, deadline and cancellation, and the
// backend's headers, trailers and status returned to the caller unchanged.
package router

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"runtime"
	"strings"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/gateway/backend"
)

// servicePrefix starts the full name of every containerd API service.
const servicePrefix = "containerd.services."

// flotillaPrefix starts the full name of Flotilla's own services, which
// name the component serving them: flotilla.<component>.v1.<Service>.
const flotillaPrefix = "flotilla."

// Descriptors of the backend streams for calls of each shape. The unary
// shape uses ClientConn.Invoke instead, which is cheaper.
var (
	streamsDesc      = &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}
	serverStreamDesc = &grpc.StreamDesc{ServerStreams: true}
)

// Router maps containerd service IDs to the backends that own them.
type Router struct {
	routes     map[string]*backend.Backend
	components map[string]*backend.Backend // by backend name, for flotilla.<component>.*
	shapes     map[string]shape
}

// New returns a router with no routes.
func New() *Router {
	return &Router{routes: make(map[string]*backend.Backend), components: make(map[string]*backend.Backend), shapes: make(map[string]shape)}
}

// Route sends the calls of every service b owns to b. Routes are set up
// before the server serves; Route must not be called once calls arrive.
func (r *Router) Route(b *backend.Backend) {
	r.components[b.Name()] = b
	for _, id := range b.Services() {
		r.routes[id] = b
		maps.Copy(r.shapes, shapesOf(id))
	}
}

// ServerOptions make a gRPC server hand every call it does not implement
// itself to the router, and read messages undecoded (while still decoding
// those of the services it does implement). They also have it serve calls
// on a pool of goroutines, which spares each proxied call a fresh goroutine
// and the growth of its stack.
func (r *Router) ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.UnknownServiceHandler(r.Handle),
		grpc.ForceServerCodecV2(Codec{}),
		grpc.NumStreamWorkers(uint32(runtime.GOMAXPROCS(0))),
	}
}

// Lookup returns the backend serving fullMethod
// ("/containerd.services.content.v1.Content/Write"), or, for Flotilla's own
// services, the backend named by their package
// ("/flotilla.snapshotd.v1.Snapshotters/List" is snapshotd's).
func (r *Router) Lookup(fullMethod string) (*backend.Backend, error) {
	service := strings.TrimPrefix(fullMethod, "/")
	if i := strings.LastIndexByte(service, '/'); i >= 0 {
		service = service[:i]
	}
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

// Handle is a grpc.StreamHandler that relays the call on ss to the backend
// serving it until both sides are done. Errors the backend answers are
// returned as they came, so that their gRPC status reaches the caller
// unchanged; a backend that cannot be reached is an Unavailable error naming
// it.
func (r *Router) Handle(_ any, ss grpc.ServerStream) error {
	method, ok := grpc.MethodFromServerStream(ss)
	if !ok {
		return fmt.Errorf("no method in call: %w", errdefs.ErrInternal)
	}
	b, err := r.Lookup(method)
	if err != nil {
		return err
	}
	ctx := ss.Context()
	if err := b.Ready(ctx); err != nil {
		return err
	}
	// Everything the caller sent (namespace, lease, ...) goes on; gRPC
	// itself drops the pseudo and transport headers among it.
	md, _ := metadata.FromIncomingContext(ctx)
	ctx = metadata.NewOutgoingContext(ctx, md)

	switch r.shapes[method] {
	case unary:
		return forwardUnary(ctx, ss, b, method)
	case serverStream:
		return forwardServerStream(ctx, ss, b, method)
	default:
		return forwardStreams(ctx, ss, b, method)
	}
}

// receiveRequest receives the one request of a unary or server-streaming call.
func receiveRequest(ss grpc.ServerStream, f *Frame) error {
	err := ss.RecvMsg(f)
	if errors.Is(err, io.EOF) {
		return fmt.Errorf("call without a request message: %w", errdefs.ErrInvalidArgument)
	}
	return err
}

func forwardUnary(ctx context.Context, ss grpc.ServerStream, b *backend.Backend, method string) error {
	var req, resp Frame
	if err := receiveRequest(ss, &req); err != nil {
		return err
	}
	var header, trailer metadata.MD
	err := b.Conn().Invoke(ctx, method, &req, &resp,
		grpc.ForceCodecV2(Codec{}), grpc.Header(&header), grpc.Trailer(&trailer))
	req.Free() // in case it was not sent
	if len(header) > 0 {
		ss.SetHeader(header)
	}
	if len(trailer) > 0 {
		ss.SetTrailer(trailer)
	}
	if err != nil {
		resp.Free()
		if len(header) == 0 {
			return unreachable(b, err)
		}
		return err
	}
	return ss.SendMsg(&resp)
}

func forwardServerStream(ctx context.Context, ss grpc.ServerStream, b *backend.Backend, method string) error {
	var req Frame
	if err := receiveRequest(ss, &req); err != nil {
		return err
	}
	defer req.Free() // in case it was not sent
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cs, err := b.Conn().NewStream(ctx, serverStreamDesc, method, grpc.ForceCodecV2(Codec{}))
	if err != nil {
		return unreachable(b, err)
	}
	if err := cs.SendMsg(&req); err != nil && !errors.Is(err, io.EOF) {
		// io.EOF: the backend has ended the call; RecvMsg tells how.
		return unreachable(b, err)
	}
	if err := cs.CloseSend(); err != nil {
		return unreachable(b, err)
	}
	answered, err := forwardAnswers(cs, ss)
	ss.SetTrailer(cs.Trailer())
	if !answered {
		return unreachable(b, err)
	}
	return err
}

func forwardStreams(ctx context.Context, ss grpc.ServerStream, b *backend.Backend, method string) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cs, err := b.Conn().NewStream(ctx, streamsDesc, method, grpc.ForceCodecV2(Codec{}))
	if err != nil {
		return unreachable(b, err)
	}
	// Requests flow in a goroutine of their own, answers in this one: the
	// call is over when the backend has ended it, whether or not the caller
	// is still sending. A caller that goes away cancels ctx, which ends the
	// backend call too.
	go forwardRequests(ss, cs, cancel)
	answered, err := forwardAnswers(cs, ss)
	ss.SetTrailer(cs.Trailer())
	if !answered {
		return unreachable(b, err)
	}
	return err
}

// unreachable names the backend in err when err is the connection to it
// failing rather than the backend's own answer: an Unavailable status while
// the connection is down. Any other err is returned as it is.
func unreachable(b *backend.Backend, err error) error {
	if status.Code(err) == codes.Unavailable && !b.Connected() {
		return b.Unreachable(err)
	}
	return err
}

// forwardRequests relays the caller's messages to the backend and half-closes
// the backend stream when the caller is done sending. When the caller's side
// fails it cancels the backend call, so that forwardAnswers ends.
func forwardRequests(ss grpc.ServerStream, cs grpc.ClientStream, cancel context.CancelFunc) {
	var f Frame
	for {
		if err := ss.RecvMsg(&f); err != nil {
			if errors.Is(err, io.EOF) {
				cs.CloseSend()
			} else {
				cancel()
			}
			return
		}
		if err := cs.SendMsg(&f); err != nil {
			// io.EOF: the backend ended the call, and forwardAnswers
			// receives its status. Anything else ends the call here.
			f.Free()
			if !errors.Is(err, io.EOF) {
				cancel()
			}
			return
		}
	}
}

// forwardAnswers relays the backend's headers and messages to the caller
// until the backend ends the call. It reports whether the backend sent any
// message.
func forwardAnswers(cs grpc.ClientStream, ss grpc.ServerStream) (answered bool, err error) {
	var f Frame
	headerSent := false
	for ; ; answered = true {
		err := cs.RecvMsg(&f)
		if !headerSent {
			// The backend's headers have arrived by now, before its first
			// message or with its status; they go out with ours.
			if md, herr := cs.Header(); herr == nil && len(md) > 0 {
				ss.SetHeader(md)
			}
			headerSent = true
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return answered, nil
			}
			return answered, err
		}
		if err := ss.SendMsg(&f); err != nil {
			f.Free()
			return true, err
		}
	}
}
