package exchange

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// knownTopics are the topics containerd and Flotilla publish. Metrics are
// labelled by them; any other topic, which a client chooses freely, counts
// as "other", so no client can create series without bound.
var knownTopics = map[string]bool{
	"/containers/create": true, "/containers/update": true, "/containers/delete": true,
	"/content/create": true, "/content/delete": true,
	"/images/create": true, "/images/update": true, "/images/delete": true,
	"/namespaces/create": true, "/namespaces/update": true, "/namespaces/delete": true,
	"/snapshot/prepare": true, "/snapshot/commit": true, "/snapshot/remove": true,
	"/tasks/create": true, "/tasks/start": true, "/tasks/delete": true, "/tasks/exit": true,
	"/tasks/oom": true, "/tasks/exec-added": true, "/tasks/exec-started": true,
	"/tasks/paused": true, "/tasks/resumed": true, "/tasks/checkpointed": true,
}

// topicLabel is the metrics label of topic: itself if known, else "other".
func topicLabel(topic string) string {
	if knownTopics[topic] {
		return topic
	}
	return "other"
}

// Metrics are eventd's own Prometheus metrics, labelled by topicLabel.
type Metrics struct {
	// Published counts envelopes accepted by Publish and Forward, by topic.
	Published *prometheus.CounterVec
	// Delivered counts envelopes sent to subscribers, by topic (an envelope
	// sent to three subscribers counts three).
	Delivered *prometheus.CounterVec
	// Dropped counts envelopes a slow subscriber lost, by topic.
	Dropped *prometheus.CounterVec
	// Subscribers is the number of open Subscribe streams.
	Subscribers prometheus.Gauge
	// RedisConnected is 1 while eventd is subscribed to Redis, else 0.
	RedisConnected prometheus.Gauge
	// Outbox is the number of events held, in order, while Redis cannot take them.
	Outbox prometheus.Gauge
}

// NewMetrics returns unregistered metrics.
func NewMetrics() *Metrics {
	return &Metrics{
		Published: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "eventd_events_published_total", Help: "Events accepted by Publish and Forward, by topic.",
		}, []string{"topic"}),
		Delivered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "eventd_events_delivered_total", Help: "Events sent to subscribers, by topic; one per subscriber.",
		}, []string{"topic"}),
		Dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "eventd_events_dropped_total", Help: "Events lost by subscribers that did not keep up, by topic.",
		}, []string{"topic"}),
		Subscribers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "eventd_subscribers", Help: "Open event subscriptions.",
		}),
		RedisConnected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "eventd_redis_connected", Help: "1 while eventd is subscribed to Redis, 0 while it is reconnecting.",
		}),
		Outbox: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "eventd_redis_outbox_length", Help: "Events held in order while Redis cannot take them.",
		}),
	}
}

// Register registers the metrics on reg; withRedis includes the Redis
// connection gauge, which means nothing for the in-process bus.
func (m *Metrics) Register(reg prometheus.Registerer, withRedis bool) error {
	cs := []prometheus.Collector{m.Published, m.Delivered, m.Dropped, m.Subscribers}
	if withRedis {
		cs = append(cs, m.RedisConnected, m.Outbox)
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("eventd metrics: %w", err)
		}
	}
	return nil
}
