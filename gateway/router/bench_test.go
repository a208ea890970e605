package router_test

import (
	"context"
	"slices"
	"testing"
	"time"

	namespacesapi "github.com/containerd/containerd/api/services/namespaces/v1"
	"google.golang.org/grpc"
)

// BenchmarkUnary measures a unary Namespaces.Get against the same backend,
// straight to it and through the gateway, so the difference is the latency
// the gateway adds. Besides ns/op it reports the median and 99th percentile
// latency of one call in µs. The interleaved case alternates the two, call by
// call, so that both see the same machine load, and reports each median and
// the gateway's added median latency.
func BenchmarkUnary(b *testing.B) {
	s := newStack(b)
	ctx := withNamespace(context.Background(), "default")
	req := &namespacesapi.GetNamespaceRequest{Name: "bench"}
	for _, tc := range []struct {
		name string
		conn *grpc.ClientConn
	}{
		{"direct", s.direct},
		{"gateway", s.gateway},
	} {
		b.Run(tc.name, func(b *testing.B) {
			client := namespacesapi.NewNamespacesClient(tc.conn)
			if _, err := client.Get(ctx, req); err != nil {
				b.Fatal(err)
			}
			latencies := make([]time.Duration, 0, b.N)
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				start := time.Now()
				if _, err := client.Get(ctx, req); err != nil {
					b.Fatal(err)
				}
				latencies = append(latencies, time.Since(start))
			}
			b.StopTimer()
			b.ReportMetric(percentile(latencies, 0.5), "p50-µs")
			b.ReportMetric(percentile(latencies, 0.99), "p99-µs")
		})
	}
	b.Run("interleaved", func(b *testing.B) {
		direct := namespacesapi.NewNamespacesClient(s.direct)
		gateway := namespacesapi.NewNamespacesClient(s.gateway)
		var directLat, gatewayLat []time.Duration
		for b.Loop() {
			for _, c := range []struct {
				client namespacesapi.NamespacesClient
				lat    *[]time.Duration
			}{{direct, &directLat}, {gateway, &gatewayLat}} {
				start := time.Now()
				if _, err := c.client.Get(ctx, req); err != nil {
					b.Fatal(err)
				}
				*c.lat = append(*c.lat, time.Since(start))
			}
		}
		d, g := percentile(directLat, 0.5), percentile(gatewayLat, 0.5)
		b.ReportMetric(d, "direct-p50-µs")
		b.ReportMetric(g, "gateway-p50-µs")
		b.ReportMetric(g-d, "added-p50-µs")
	})
}

// percentile returns the p-th percentile of latencies in µs, sorting them.
func percentile(latencies []time.Duration, p float64) float64 {
	slices.Sort(latencies)
	return float64(latencies[int(p*float64(len(latencies)-1))].Nanoseconds()) / 1e3
}
