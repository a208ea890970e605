package integration

import (
	"context"
	"slices"
	"testing"
	"time"

	namespacesapi "github.com/containerd/containerd/api/services/namespaces/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/flotilla/flotilla/flotctl/stack"
)

// BenchmarkGatewayAddedLatency measures, between the real binaries, what the
// gateway adds to a unary call: the same Namespaces.List alternately straight
// to contentd and through the gateway, in one run.
func BenchmarkGatewayAddedLatency(b *testing.B) {
	// Debug logging, which the tests' stacks use, would dominate both paths.
	s := startStackWith(b, func(l *stack.Layout) { l.LogLevel = "info" })
	dial := func(sock string) namespacesapi.NamespacesClient {
		conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { conn.Close() })
		return namespacesapi.NewNamespacesClient(conn)
	}
	direct, gateway := dial(s.Service("contentd").Socket), dial(s.Socket)
	ctx := metadata.AppendToOutgoingContext(context.Background(), "containerd-namespace", "default")
	call := func(c namespacesapi.NamespacesClient) time.Duration {
		start := time.Now()
		if _, err := c.List(ctx, &namespacesapi.ListNamespacesRequest{}); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	for i := 0; i < 200; i++ { // warm both paths
		call(direct)
		call(gateway)
	}
	d := make([]time.Duration, 0, b.N)
	g := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		d = append(d, call(direct))
		g = append(g, call(gateway))
	}
	b.StopTimer()
	p50 := func(xs []time.Duration) float64 {
		slices.Sort(xs)
		return float64(xs[len(xs)/2].Nanoseconds()) / 1e3
	}
	dp, gp := p50(d), p50(g)
	b.ReportMetric(dp, "direct-p50-µs")
	b.ReportMetric(gp, "gateway-p50-µs")
	b.ReportMetric(gp-dp, "added-p50-µs")
}
