// Package tracing is OpenTelemetry for every Flotilla component: New turns
// it on for one component when an OTLP endpoint is configured, and the
// options and interceptors of the Provider it returns put a span around
// each gRPC and ttrpc call and carry the trace context (W3C traceparent) to
// the next process. Each component has a Provider of its own, so that the
// components of one process (cmd/flotilla) send their spans each under its
// own service name. Off — no endpoint — a component's Provider is nil and
// adds nothing to a call, so tracing costs nothing unless asked for.
package tracing

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc/filters"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc"

	"github.com/flotilla/flotilla/services/version"
)

// EndpointEnv is the standard variable naming the OTLP collector; New reads
// it when no endpoint is given, and Env passes the endpoint on in it to the
// processes a component starts (shims, snapshotter plugins).
const EndpointEnv = "OTEL_EXPORTER_OTLP_ENDPOINT"

// InstrumentationName names the tracer of Flotilla's own spans.
const InstrumentationName = "github.com/flotilla/flotilla"

// propagator reads and writes the trace context on every hop: W3C
// traceparent and baggage. It holds no state, so one serves every component.
var propagator = propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})

// A Provider is one component's tracing: its spans go to its collector
// under its service name. A nil *Provider is tracing off: no options, calls
// passed through untouched, a tracer that records nothing.
type Provider struct {
	sdk      *sdktrace.TracerProvider
	tracer   trace.Tracer
	endpoint string
}

// New turns tracing on for the component named service when endpoint (or,
// when it is empty, $OTEL_EXPORTER_OTLP_ENDPOINT) names an OTLP/gRPC
// collector: "http://host:4317" (plaintext), "https://host:4317" or a bare
// "host:4317" (plaintext). Spans are batched and exported in the
// background until Shutdown. With no endpoint New returns nil: off. New
// changes nothing of the process's: several components of one process each
// have their own.
func New(ctx context.Context, service, endpoint string) (*Provider, error) {
	if endpoint == "" {
		endpoint = os.Getenv(EndpointEnv)
	}
	if endpoint == "" {
		return nil, nil
	}
	var opts []otlptracegrpc.Option
	if strings.Contains(endpoint, "://") {
		opts = append(opts, otlptracegrpc.WithEndpointURL(endpoint))
	} else {
		opts = append(opts, otlptracegrpc.WithEndpoint(endpoint), otlptracegrpc.WithInsecure())
	}
	exp, err := otlptracegrpc.New(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("otlp exporter for %s: %w", endpoint, err)
	}
	res, err := resource.Merge(resource.Default(), resource.NewSchemaless(
		semconv.ServiceName(service), semconv.ServiceVersion(version.Version)))
	if err != nil && !errors.Is(err, resource.ErrPartialResource) {
		return nil, fmt.Errorf("tracing resource: %w", err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	return &Provider{sdk: tp, tracer: tp.Tracer(InstrumentationName), endpoint: endpoint}, nil
}

// process is the Provider Init installed for the whole process.
var process atomic.Pointer[Provider]

// Init is New for a process that runs one component (a single daemon, a
// shim, a snapshotter plugin): its Provider also becomes the process's
// OpenTelemetry default (and Process), for libraries that trace with
// OpenTelemetry's global provider. A process running several components
// (cmd/flotilla) calls New for each instead, so that none takes the
// process's name.
func Init(ctx context.Context, service, endpoint string) (*Provider, error) {
	p, err := New(ctx, service, endpoint)
	if err != nil || p == nil {
		return p, err
	}
	otel.SetTracerProvider(p.sdk)
	otel.SetTextMapPropagator(propagator)
	process.Store(p)
	return p, nil
}

// Process is the Provider Init installed, nil when none: the tracing of
// code that only runs in a process of one component (a shim's event
// publisher) and of package dial's process-wide connections.
func Process() *Provider { return process.Load() }

// Enabled reports whether p traces.
func (p *Provider) Enabled() bool { return p != nil }

// Tracer is the tracer for the component's own spans (a no-op one when off).
func (p *Provider) Tracer() trace.Tracer {
	if p == nil {
		return noop.NewTracerProvider().Tracer(InstrumentationName)
	}
	return p.tracer
}

// Env is what a process the component starts (a shim, a plugin) needs in
// its environment to trace to the same collector: nothing when off.
func (p *Provider) Env() []string {
	if p == nil {
		return nil
	}
	return []string{EndpointEnv + "=" + p.endpoint}
}

// Shutdown flushes the spans not yet exported and stops the exporter; call
// it once, when the component stops. Off, it does nothing.
func (p *Provider) Shutdown(ctx context.Context) error {
	if p == nil {
		return nil
	}
	return p.sdk.Shutdown(ctx)
}

// otelgrpcOptions trace with p's provider, leaving health checks untraced:
// probes poll them all the time.
func (p *Provider) otelgrpcOptions() []otelgrpc.Option {
	return []otelgrpc.Option{
		otelgrpc.WithTracerProvider(p.sdk),
		otelgrpc.WithPropagators(propagator),
		otelgrpc.WithFilter(filters.Not(filters.HealthCheck())),
	}
}

// ServerOptions are the gRPC server options that trace every call the
// server takes, as a child of the caller's span; none when off.
func (p *Provider) ServerOptions() []grpc.ServerOption {
	if p == nil {
		return nil
	}
	return []grpc.ServerOption{grpc.StatsHandler(otelgrpc.NewServerHandler(p.otelgrpcOptions()...))}
}

// DialOptions are the gRPC dial options that trace every call a client
// makes and send its trace context along; none when off.
func (p *Provider) DialOptions() []grpc.DialOption {
	if p == nil {
		return nil
	}
	return []grpc.DialOption{grpc.WithStatsHandler(otelgrpc.NewClientHandler(p.otelgrpcOptions()...))}
}

// Inject writes the trace context of ctx into carrier (such as a
// propagation.MapCarrier), for hops that are not gRPC calls.
func Inject(ctx context.Context, carrier propagation.TextMapCarrier) {
	propagator.Inject(ctx, carrier)
}

// Extract returns ctx with the trace context read from carrier.
func Extract(ctx context.Context, carrier propagation.TextMapCarrier) context.Context {
	return propagator.Extract(ctx, carrier)
}
