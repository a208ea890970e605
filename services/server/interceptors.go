package server

import (
	"context"
	"log/slog"
	"time"

	"github.com/containerd/errdefs/pkg/errgrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/services/namespace"
)

// errorsUnary converts the errdefs kinds a handler returns into gRPC status
// codes; this is the one place a server does so.
func errorsUnary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	resp, err := handler(ctx, req)
	return resp, errgrpc.ToGRPC(err)
}

func errorsStream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	return errgrpc.ToGRPC(handler(srv, ss))
}

// namespaceUnary reads the call's namespace and lease into its context.
func namespaceUnary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	ctx, err := namespace.FromIncoming(ctx)
	if err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

func namespaceStream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx, err := namespace.FromIncoming(ss.Context())
	if err != nil {
		return err
	}
	return handler(srv, &contextStream{ServerStream: ss, ctx: ctx})
}

type contextStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *contextStream) Context() context.Context { return s.ctx }

// logUnary logs each call at debug level, and failures other than the
// client's own mistakes at warn level.
func logUnary(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := time.Now()
		resp, err := handler(ctx, req)
		logCall(ctx, log, info.FullMethod, start, err)
		return resp, err
	}
}

func logStream(log *slog.Logger) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		start := time.Now()
		err := handler(srv, ss)
		logCall(ss.Context(), log, info.FullMethod, start, err)
		return err
	}
}

func logCall(ctx context.Context, log *slog.Logger, method string, start time.Time, err error) {
	code := status.Code(errgrpc.ToGRPC(err))
	level := slog.LevelDebug
	if isServerFault(code.String()) {
		level = slog.LevelWarn
	}
	if !log.Enabled(ctx, level) {
		return
	}
	attrs := []any{"method", method, "code", code.String(), "duration", time.Since(start)}
	if ns, ok := namespace.FromContext(ctx); ok {
		attrs = append(attrs, "namespace", ns)
	}
	if err != nil {
		attrs = append(attrs, "error", err)
	}
	log.Log(ctx, level, "call", attrs...)
}

func isServerFault(code string) bool {
	switch code {
	case "Internal", "Unknown", "DataLoss", "Unavailable":
		return true
	}
	return false
}
