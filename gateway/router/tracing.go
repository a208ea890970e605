package router

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	otelcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"

	"github.com/flotilla/flotilla/services/tracing"
)

// callTracer gives every call the gateway relays a span of its own, a
// child of the caller's trace context (W3C traceparent in the headers), and
// sends the span's context upstream in the caller's place, so the owning
// service's spans hang under the gateway's. Its spans are the gateway's
// (its server's tracing), also when other components share its process.
type callTracer struct{ tracer trace.Tracer }

func (t callTracer) Start(method string, headers []hpack.HeaderField) ([]hpack.HeaderField, func(codes.Code)) {
	in := propagation.MapCarrier{}
	for _, h := range headers {
		in[h.Name] = h.Value
	}
	ctx := tracing.Extract(context.Background(), in)
	ctx, span := t.tracer.Start(ctx, method, trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(attribute.String("rpc.system", "grpc"), attribute.String("flotilla.relay", "gateway")))
	out := propagation.MapCarrier{}
	tracing.Inject(ctx, out)
	fields := make([]hpack.HeaderField, 0, len(headers)+len(out))
	for _, h := range headers {
		if _, replaced := out[h.Name]; !replaced {
			fields = append(fields, h)
		}
	}
	for k, v := range out {
		fields = append(fields, hpack.HeaderField{Name: k, Value: v})
	}
	return fields, func(code codes.Code) {
		span.SetAttributes(attribute.Int("rpc.grpc.status_code", int(code)))
		if code != codes.OK {
			span.SetStatus(otelcodes.Error, code.String())
		}
		span.End()
	}
}
