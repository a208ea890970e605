package exchange_test

import (
	"slices"
	"strconv"
	"testing"
	"time"

	apievents "github.com/containerd/containerd/api/events"
	api "github.com/containerd/containerd/api/services/events/v1"
)

// BenchmarkPublishToDelivery measures the latency from a Publish call to the
// arrival of its event at a subscriber, at a steady 1,000 events per second,
// reported as p50-µs and p99-µs. Run with a fixed count, e.g.
// -bench PublishToDelivery -benchtime 5000x.
func BenchmarkPublishToDelivery(b *testing.B) {
	b.Run("two eventd over redis", func(b *testing.B) {
		redis := startRedis(b)
		subscribeOn := startEventd(b, "eventd-1", redis.URL())
		publishTo := startEventd(b, "eventd-2", redis.URL())
		measure(b, publishTo, subscribeOn)
	})
	b.Run("in-process bus", func(b *testing.B) {
		e := startEventd(b, "eventd", "")
		measure(b, e, e)
	})
}

func measure(b *testing.B, publishTo, subscribeOn *eventd) {
	const rate = 1000 // events per second
	sub := subscribe(b, subscribeOn)
	ctx := withNamespace("bench")
	client := publishTo.Events()
	latencies := make([]time.Duration, 0, b.N)
	received := make(chan struct{})

	go func() {
		defer close(received)
		for range b.N {
			env, ok := <-sub
			if !ok {
				return
			}
			at := time.Now()
			var ev apievents.NamespaceCreate
			if err := env.GetEvent().UnmarshalTo(&ev); err != nil {
				return
			}
			sent, _ := strconv.ParseInt(ev.Name, 10, 64)
			latencies = append(latencies, at.Sub(time.Unix(0, sent)))
		}
	}()

	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		time.Sleep(time.Until(start.Add(time.Duration(i) * time.Second / rate)))
		ev := anyOf(b, &apievents.NamespaceCreate{Name: strconv.FormatInt(time.Now().UnixNano(), 10)}).Event
		if _, err := client.Publish(ctx, &api.PublishRequest{Topic: "/bench/latency", Event: ev}); err != nil {
			b.Fatal(err)
		}
	}
	select {
	case <-received:
	case <-time.After(30 * time.Second):
		b.Fatalf("received %d of %d events", len(latencies), b.N)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	if len(latencies) < b.N {
		b.Fatalf("received %d of %d events", len(latencies), b.N)
	}
	slices.Sort(latencies)
	pct := func(p float64) float64 {
		return float64(latencies[int(p*float64(len(latencies)-1))].Nanoseconds()) / 1e3
	}
	b.ReportMetric(pct(0.50), "p50-µs")
	b.ReportMetric(pct(0.99), "p99-µs")
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "events/s")
	b.ReportMetric(0, "ns/op") // the pace, not the work, sets the time per event
}
