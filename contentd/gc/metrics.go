package gc

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the collector's Prometheus metrics.
type Metrics struct {
	collections  *prometheus.CounterVec
	duration     prometheus.Histogram
	held         prometheus.Histogram
	removed      *prometheus.CounterVec
	removedBytes *prometheus.CounterVec
	blocked      *prometheus.CounterVec
}

// NewMetrics registers the collector's metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		collections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flotilla_gc_collections_total",
			Help: "Garbage collections run, by result (ok, error).",
		}, []string{"result"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "flotilla_gc_collection_duration_seconds",
			Help:    "How long a garbage collection took, begin to end.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10),
		}),
		held: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "flotilla_gc_writers_held_seconds",
			Help:    "How long a garbage collection blocked the stores' writers (the longest of any store).",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
		}),
		removed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flotilla_gc_removed_objects_total",
			Help: "Objects garbage collection removed, by store and kind.",
		}, []string{"store", "kind"}),
		removedBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flotilla_gc_removed_bytes_total",
			Help: "Bytes garbage collection freed, by store and kind.",
		}, []string{"store", "kind"}),
		blocked: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flotilla_gc_blocked_total",
			Help: "Garbage collections stopped before sweeping because a node's stores could not be asked, by node.",
		}, []string{"node"}),
	}
	reg.MustRegister(m.collections, m.duration, m.held, m.removed, m.removedBytes, m.blocked)
	return m
}

func (m *Metrics) observe(res Result, err error) {
	if m == nil {
		return
	}
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.collections.WithLabelValues(result).Inc()
	m.duration.Observe(res.Duration.Seconds())
	if res.Held > 0 {
		m.held.Observe(res.Held.Seconds())
	}
	for store, byKind := range res.ByStore {
		for kind, r := range byKind {
			m.removed.WithLabelValues(store, kind).Add(float64(r.Count))
			m.removedBytes.WithLabelValues(store, kind).Add(float64(r.Bytes))
		}
	}
}

func (m *Metrics) blockedBy(nodes []string) {
	if m == nil {
		return
	}
	for _, n := range nodes {
		m.blocked.WithLabelValues(n).Inc()
	}
}
