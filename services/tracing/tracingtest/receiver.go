// Package tracingtest is an OTLP/gRPC trace collector for tests: it keeps
// the service name and span name of every span it is sent.
package tracingtest

import (
	"context"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"
)

// A Receiver is an OTLP collector listening on loopback TCP.
type Receiver struct {
	collectortrace.UnimplementedTraceServiceServer
	// Endpoint is the address to give tracing.New ("http://127.0.0.1:port").
	Endpoint string

	mu      sync.Mutex
	spans   []Span
	arrived chan struct{} // signalled on every export
}

// Span is one span received: the service.name of the resource that sent
// it, its name and its kind ("client", "server", "internal", ...).
type Span struct{ Service, Name, Kind string }

// Start starts a receiver, stopped when the test ends.
func Start(t testing.TB) *Receiver {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &Receiver{Endpoint: "http://" + l.Addr().String(), arrived: make(chan struct{}, 1)}
	srv := grpc.NewServer()
	collectortrace.RegisterTraceServiceServer(srv, r)
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	return r
}

// Export implements the OTLP trace service.
func (r *Receiver) Export(_ context.Context, req *collectortrace.ExportTraceServiceRequest) (*collectortrace.ExportTraceServiceResponse, error) {
	r.mu.Lock()
	for _, rs := range req.GetResourceSpans() {
		service := ""
		for _, a := range rs.GetResource().GetAttributes() {
			if a.GetKey() == "service.name" {
				service = a.GetValue().GetStringValue()
			}
		}
		for _, ss := range rs.GetScopeSpans() {
			for _, sp := range ss.GetSpans() {
				kind := strings.ToLower(strings.TrimPrefix(sp.GetKind().String(), "SPAN_KIND_"))
				r.spans = append(r.spans, Span{Service: service, Name: sp.GetName(), Kind: kind})
			}
		}
	}
	r.mu.Unlock()
	select {
	case r.arrived <- struct{}{}:
	default:
	}
	return &collectortrace.ExportTraceServiceResponse{}, nil
}

// Spans returns the spans received so far.
func (r *Receiver) Spans() []Span {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.spans)
}

// WaitFor waits until every span of want has been received, failing the
// test after within, and returns the spans received.
func (r *Receiver) WaitFor(t testing.TB, within time.Duration, want ...Span) []Span {
	t.Helper()
	deadline := time.After(within)
	for {
		got := r.Spans()
		missing := slices.DeleteFunc(slices.Clone(want), func(s Span) bool { return slices.Contains(got, s) })
		if len(missing) == 0 {
			return got
		}
		select {
		case <-r.arrived:
		case <-deadline:
			t.Fatalf("spans %v not received within %v; received %v", missing, within, got)
		}
	}
}
