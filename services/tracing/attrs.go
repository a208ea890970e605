package tracing

import (
	"strings"

	"go.opentelemetry.io/otel/attribute"
)

// rpcAttrs are the semantic-convention attributes of a call to fullMethod
// ("/service/method").
func rpcAttrs(fullMethod string) []attribute.KeyValue {
	service, method, _ := strings.Cut(strings.TrimPrefix(fullMethod, "/"), "/")
	return []attribute.KeyValue{
		attribute.String("rpc.system", "ttrpc"),
		attribute.String("rpc.service", service),
		attribute.String("rpc.method", method),
	}
}
