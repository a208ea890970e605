package tracing

import (
	"context"

	"github.com/containerd/ttrpc"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/status"
)

// TTRPCClientInterceptor traces each ttrpc call (taskd to a shim) and sends
// its trace context in the request's metadata; it passes calls through
// untouched when off.
func (p *Provider) TTRPCClientInterceptor() ttrpc.UnaryClientInterceptor {
	if p == nil {
		return func(ctx context.Context, req *ttrpc.Request, resp *ttrpc.Response, _ *ttrpc.UnaryClientInfo, invoke ttrpc.Invoker) error {
			return invoke(ctx, req, resp)
		}
	}
	return func(ctx context.Context, req *ttrpc.Request, resp *ttrpc.Response, info *ttrpc.UnaryClientInfo, invoke ttrpc.Invoker) error {
		ctx, span := p.tracer.Start(ctx, info.FullMethod, trace.WithSpanKind(trace.SpanKindClient),
			trace.WithAttributes(rpcAttrs(info.FullMethod)...))
		defer span.End()
		carrier := propagation.MapCarrier{}
		Inject(ctx, carrier)
		for k, v := range carrier {
			req.Metadata = append(req.Metadata, &ttrpc.KeyValue{Key: k, Value: v})
		}
		err := invoke(ctx, req, resp)
		if err == nil && resp.Status != nil && resp.Status.Code != 0 {
			err = status.ErrorProto(resp.Status)
		}
		record(span, err)
		return err
	}
}

// TTRPCServerInterceptor traces each ttrpc call a server takes, as a child
// of the trace context in its metadata; it passes calls through untouched
// when off.
func (p *Provider) TTRPCServerInterceptor() ttrpc.UnaryServerInterceptor {
	if p == nil {
		return func(ctx context.Context, unmarshal ttrpc.Unmarshaler, _ *ttrpc.UnaryServerInfo, method ttrpc.Method) (any, error) {
			return method(ctx, unmarshal)
		}
	}
	return func(ctx context.Context, unmarshal ttrpc.Unmarshaler, info *ttrpc.UnaryServerInfo, method ttrpc.Method) (any, error) {
		if md, ok := ttrpc.GetMetadata(ctx); ok {
			carrier := propagation.MapCarrier{}
			for k, v := range md {
				if len(v) > 0 {
					carrier[k] = v[0]
				}
			}
			ctx = Extract(ctx, carrier)
		}
		ctx, span := p.tracer.Start(ctx, info.FullMethod, trace.WithSpanKind(trace.SpanKindServer),
			trace.WithAttributes(rpcAttrs(info.FullMethod)...))
		defer span.End()
		resp, err := method(ctx, unmarshal)
		record(span, err)
		return resp, err
	}
}

func record(span trace.Span, err error) {
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
}
