package server

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/trace"

	"github.com/flotilla/flotilla/services/logging"
	"github.com/flotilla/flotilla/services/namespace"
)

func TestTheCallsLoggerCarriesMethodNamespaceAndTraceID(t *testing.T) {
	var buf bytes.Buffer
	base := slog.New(slog.NewTextHandler(&buf, nil))
	tid, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	sid, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	ctx := trace.ContextWithSpanContext(namespace.WithNamespace(context.Background(), "ns1"),
		trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled}))

	logging.FromContext(withCallLogger(ctx, base, "/svc.v1.S/Get")).Info("handled")

	line := buf.String()
	for _, want := range []string{"msg=handled", "method=/svc.v1.S/Get", "namespace=ns1", "trace_id=4bf92f3577b34da6a3ce929d0e0e4736"} {
		if !strings.Contains(line, want) {
			t.Errorf("log line %q lacks %s", line, want)
		}
	}
}
