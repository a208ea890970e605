package router

import (
	"context"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// callMetrics counts the calls the relay carries in the gateway's gRPC
// call metrics (grpc_server_started_total, grpc_server_handled_total,
// grpc_server_handling_seconds), the series every Flotilla daemon and
// containerd itself expose. The Prometheus provider records calls only
// through its interceptors, so each relayed call runs through one, on a
// goroutine that waits for the call's end.
type callMetrics struct {
	unary   grpc.UnaryServerInterceptor
	stream  grpc.StreamServerInterceptor
	shapes  map[string]shape
	isLocal func(method string) bool
}

func newCallMetrics(m *grpcprom.ServerMetrics, shapes map[string]shape, isLocal func(string) bool) *callMetrics {
	return &callMetrics{unary: m.UnaryServerInterceptor(), stream: m.StreamServerInterceptor(), shapes: shapes, isLocal: isLocal}
}

// Begin implements relay.Observer.
func (c *callMetrics) Begin(method string) func(codes.Code) {
	if c.isLocal(method) {
		// The gateway's own gRPC server counts these.
		return func(codes.Code) {}
	}
	ended := make(chan codes.Code, 1)
	result := func() error {
		if code := <-ended; code != codes.OK {
			return status.Error(code, "")
		}
		return nil
	}
	switch sh := c.shapes[method]; sh {
	case unary:
		go c.unary(context.Background(), nil, &grpc.UnaryServerInfo{FullMethod: method},
			func(context.Context, any) (any, error) { return nil, result() })
	default:
		info := &grpc.StreamServerInfo{FullMethod: method, IsClientStream: sh == streams, IsServerStream: true}
		go c.stream(nil, idleStream{}, info, func(any, grpc.ServerStream) error { return result() })
	}
	return func(code codes.Code) { ended <- code }
}

// idleStream stands for a relayed stream in the interceptor: its messages
// never pass through it.
type idleStream struct{}

func (idleStream) SetHeader(metadata.MD) error  { return nil }
func (idleStream) SendHeader(metadata.MD) error { return nil }
func (idleStream) SetTrailer(metadata.MD)       {}
func (idleStream) Context() context.Context     { return context.Background() }
func (idleStream) SendMsg(any) error            { return nil }
func (idleStream) RecvMsg(any) error            { return nil }
