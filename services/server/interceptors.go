package server

import (
	"context"
	"log/slog"
	"time"

	"github.com/containerd/errdefs/pkg/errgrpc"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/services/logging"
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

// callLoggerUnary puts in each call's context a logger (logging.FromContext)
// carrying the call's method, namespace and trace id, so what a handler
// logs can be told apart and joined to its trace.
func callLoggerUnary(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		return handler(withCallLogger(ctx, log, info.FullMethod), req)
	}
}

func callLoggerStream(log *slog.Logger) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		return handler(srv, &contextStream{ServerStream: ss, ctx: withCallLogger(ss.Context(), log, info.FullMethod)})
	}
}

func withCallLogger(ctx context.Context, log *slog.Logger, method string) context.Context {
	attrs := []any{"method", method}
	if ns, ok := namespace.FromContext(ctx); ok {
		attrs = append(attrs, "namespace", ns)
	}
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		attrs = append(attrs, "trace_id", sc.TraceID().String())
	}
	return logging.WithLogger(ctx, log.With(attrs...))
}

type contextStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *contextStream) Context() context.Context { return s.ctx }

// logUnary logs each call: at debug level when it succeeds, and once when
// it fails — at the default (info) level for the client's own mistakes and
// at warn level for the server's faults — with method, namespace and code.
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
	level := callLevel(code)
	if !log.Enabled(ctx, level) {
		return
	}
	attrs := []any{"method", method, "code", code.String(), "duration", time.Since(start)}
	if ns, ok := callNamespace(ctx); ok {
		attrs = append(attrs, "namespace", ns)
	}
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		attrs = append(attrs, "trace_id", sc.TraceID().String())
	}
	if err != nil {
		attrs = append(attrs, "error", err)
	}
	msg := "call"
	if level > slog.LevelDebug {
		msg = "call failed"
	}
	log.Log(ctx, level, msg, attrs...)
}

// callNamespace is the namespace the call named, as sent: this interceptor
// runs outside the one that validates it, so that calls refused for their
// namespace are logged with the namespace they gave.
func callNamespace(ctx context.Context) (string, bool) {
	if ns, ok := namespace.FromContext(ctx); ok {
		return ns, true
	}
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get(namespace.MetadataKey); len(v) > 0 {
		return v[0], true
	}
	return "", false
}

// callLevel is the level a call ending with code is logged at: debug for
// success and for calls the client itself cancelled, warn for the
// server's faults, info (the default level) for every other failure.
func callLevel(code codes.Code) slog.Level {
	switch code {
	case codes.OK, codes.Canceled:
		return slog.LevelDebug
	case codes.Internal, codes.Unknown, codes.DataLoss, codes.Unavailable:
		return slog.LevelWarn
	}
	return slog.LevelInfo
}
