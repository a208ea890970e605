package events

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	eventsapi "github.com/containerd/containerd/api/services/events/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/flotilla/flotilla/services/dial"
	"github.com/flotilla/flotilla/services/namespace"
)

// Reasons an event is dropped, as the "reason" label of the dropped counter.
const (
	// DropQueueFull: eventd was unreachable for long enough that the queue
	// filled up; the newest event is the one dropped, so the queue keeps order.
	DropQueueFull = "queue_full"
	// DropRejected: eventd answered InvalidArgument, so retrying cannot help.
	DropRejected = "rejected"
	// DropClosed: Close gave up waiting for eventd before the queue drained.
	DropClosed = "closed"
)

// Remote is a Publisher that delivers events to eventd (or to the gateway,
// which routes the call to eventd) with containerd's Events API.
//
// Publish stamps the envelope with the time, namespace and topic and puts it
// in a bounded in-memory queue; it never waits for the network. A single
// background loop sends the queue in order, one event at a time, each through
// Events.Forward (containerd's call for an envelope that already has its
// timestamp, which keeps an event's time the moment it happened even when it
// waited in the queue). While eventd, or the Redis behind it, cannot take
// events, the loop retries the head of the queue with capped exponential
// backoff, so order is kept and nothing is skipped. Events that arrive while
// the queue is full are dropped; every drop is counted by topic and reason,
// and each episode of drops is logged when it starts and when it ends.
//
// An event is delivered at least once: if eventd accepted an event but its
// answer was lost, the retry delivers it a second time.
type Remote struct {
	dialer  *dial.Dialer
	client  eventsapi.EventsClient
	conn    *grpc.ClientConn
	log     *slog.Logger
	size    int
	timeout time.Duration
	minWait time.Duration
	maxWait time.Duration

	sent    *prometheus.CounterVec
	dropped *prometheus.CounterVec
	queued  prometheus.Gauge

	mu      sync.Mutex
	queue   []pending // queue[0] is the next to send
	closed  bool
	episode int // events dropped for a full queue since it last had room

	wake chan struct{} // signalled when the queue gains an event
	stop context.CancelFunc
	done chan struct{}
}

// pending is a queued event with the trace it was published in, which its
// Forward call carries on to eventd.
type pending struct {
	env  *types.Envelope
	span trace.SpanContext
}

// RemoteOption configures NewRemote.
type RemoteOption func(*Remote)

// WithQueueSize bounds the number of events waiting for eventd (default 10000).
func WithQueueSize(n int) RemoteOption {
	return func(r *Remote) {
		if n > 0 {
			r.size = n
		}
	}
}

// WithLogger sets where the publisher says that eventd is unreachable and
// that it drops events (default slog.Default()).
func WithLogger(log *slog.Logger) RemoteOption {
	return func(r *Remote) {
		if log != nil {
			r.log = log
		}
	}
}

// WithRetryBackoff sets the first and the longest wait between two attempts
// to send the event at the head of the queue (default 50ms and 2s).
func WithRetryBackoff(first, longest time.Duration) RemoteOption {
	return func(r *Remote) {
		if first > 0 {
			r.minWait = first
		}
		if longest >= r.minWait {
			r.maxWait = longest
		}
	}
}

// WithDialer has the publisher connect with d, its component's Dialer
// (dial.For(srv)); the process's otherwise (dial.Process).
func WithDialer(d *dial.Dialer) RemoteOption {
	return func(r *Remote) { r.dialer = d }
}

// WithCallTimeout bounds one attempt to send one event (default 5s).
func WithCallTimeout(d time.Duration) RemoteOption {
	return func(r *Remote) {
		if d > 0 {
			r.timeout = d
		}
	}
}

// NewRemote returns a Publisher sending to the Events service at addr (any
// address dial.Dial takes). It connects lazily: eventd need not be up yet.
// Call Close to flush the queue and stop.
func NewRemote(addr string, opts ...RemoteOption) (*Remote, error) {
	r := &Remote{
		log:     slog.Default(),
		size:    10000,
		timeout: 5 * time.Second,
		minWait: 50 * time.Millisecond,
		maxWait: 2 * time.Second,
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "events_publisher_sent_total",
			Help: "Events this service's publisher handed to eventd, by topic.",
		}, []string{"topic"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "events_publisher_dropped_total",
			Help: "Events this service's publisher dropped, by topic and reason (queue_full, rejected, closed).",
		}, []string{"topic", "reason"}),
		queued: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "events_publisher_queue_length",
			Help: "Events waiting in this service's publisher for eventd.",
		}),
		wake: make(chan struct{}, 1),
		done: make(chan struct{}),
	}
	for _, opt := range opts {
		opt(r)
	}
	if r.dialer == nil {
		r.dialer = dial.Process()
	}
	conn, err := r.dialer.Dial(addr)
	if err != nil {
		return nil, fmt.Errorf("events publisher: %w", err)
	}
	r.client, r.conn = eventsapi.NewEventsClient(conn), conn
	r.log = r.log.With("eventd", addr)
	ctx, stop := context.WithCancel(context.Background())
	r.stop = stop
	go r.run(ctx)
	return r, nil
}

// Register registers the publisher's metrics (events sent, dropped by topic
// and reason, queue length) on reg.
func (r *Remote) Register(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{r.sent, r.dropped, r.queued} {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("events publisher metrics: %w", err)
		}
	}
	return nil
}

// Publish queues event for eventd under topic, in the namespace carried by
// ctx, and returns at once. event must be a protobuf message (such as those
// of github.com/containerd/containerd/api/events) or an Any. Publish fails
// with FailedPrecondition when ctx has no namespace; with InvalidArgument
// when the topic breaks containerd's rules or the event is not a message; with ResourceExhausted
// when the queue is full (the event is dropped, counted and logged, so
// callers may ignore the error); with FailedPrecondition after Close.
func (r *Remote) Publish(ctx context.Context, topic string, event any) error {
	ns, err := namespace.Required(ctx)
	if err != nil {
		return fmt.Errorf("publish %s: %w", topic, err)
	}
	if err := ValidateTopic(topic); err != nil {
		return fmt.Errorf("publish: %w", err)
	}
	switch event.(type) {
	case proto.Message, typeurl.Any:
	default:
		return fmt.Errorf("publish %s: event %T is not a protobuf message: %w", topic, event, errdefs.ErrInvalidArgument)
	}
	a, err := typeurl.MarshalAnyToProto(event)
	if err != nil {
		return fmt.Errorf("publish %s: marshal %T: %v: %w", topic, event, err, errdefs.ErrInvalidArgument)
	}
	env := &types.Envelope{Namespace: ns, Topic: topic, Event: a}

	r.mu.Lock()
	// Stamped under the lock, so the queue's order is its timestamps' order:
	// eventd keeps events in timestamp order when it has to hold them.
	env.Timestamp = timestamppb.Now()
	if r.closed {
		r.mu.Unlock()
		return fmt.Errorf("publish %s: publisher is closed: %w", topic, errdefs.ErrFailedPrecondition)
	}
	if len(r.queue) >= r.size {
		r.episode++
		first := r.episode == 1
		r.mu.Unlock()
		r.dropped.WithLabelValues(topic, DropQueueFull).Inc()
		if first {
			r.log.Warn("event queue full, eventd is not taking events; dropping new events until there is room",
				"queue_size", r.size, "topic", topic)
		}
		return fmt.Errorf("publish %s: queue of %d events for eventd is full, event dropped: %w", topic, r.size, errdefs.ErrResourceExhausted)
	}
	if r.episode > 0 {
		r.log.Warn("event queue has room again", "dropped", r.episode)
		r.episode = 0
	}
	r.queue = append(r.queue, pending{env: env, span: trace.SpanContextFromContext(ctx)})
	r.queued.Set(float64(len(r.queue)))
	r.mu.Unlock()

	select {
	case r.wake <- struct{}{}:
	default:
	}
	return nil
}

// Close stops taking events and waits until the queue has been sent or ctx
// ends. Events still queued then are dropped (counted and logged) and Close
// returns an error saying how many.
func (r *Remote) Close(ctx context.Context) error {
	r.mu.Lock()
	already := r.closed
	r.closed = true
	r.mu.Unlock()
	if already {
		<-r.done
		return nil
	}
	select {
	case r.wake <- struct{}{}: // let an idle loop see the close
	default:
	}

	var err error
	select {
	case <-r.done:
	case <-ctx.Done():
		r.stop()
		<-r.done
		r.mu.Lock()
		left := r.queue
		r.queue = nil
		r.queued.Set(0)
		r.mu.Unlock()
		for _, p := range left {
			r.dropped.WithLabelValues(p.env.Topic, DropClosed).Inc()
		}
		if len(left) > 0 {
			r.log.Error("closing with events eventd did not take; dropped them", "dropped", len(left))
			err = fmt.Errorf("events publisher: %d events not delivered before close: %w", len(left), ctx.Err())
		}
	}
	r.stop()
	if cerr := r.conn.Close(); cerr != nil && err == nil {
		err = fmt.Errorf("events publisher: %w", cerr)
	}
	return err
}

// run sends the queue's head until the queue is empty and the publisher
// closed, or ctx ends.
func (r *Remote) run(ctx context.Context) {
	defer close(r.done)
	wait := r.minWait
	unreachableSince := time.Time{}
	for {
		p, closed := r.head()
		env := p.env
		if env == nil {
			if closed {
				return
			}
			select {
			case <-r.wake:
				continue
			case <-ctx.Done():
				return
			}
		}

		err := r.send(trace.ContextWithRemoteSpanContext(ctx, p.span), env)
		switch {
		case err == nil:
			r.pop(env, "")
			if !unreachableSince.IsZero() {
				r.log.Info("eventd takes events again", "after", time.Since(unreachableSince).Round(time.Millisecond))
				unreachableSince = time.Time{}
			}
			wait = r.minWait
			continue
		case errdefs.IsInvalidArgument(err):
			r.pop(env, DropRejected)
			r.log.Error("eventd rejected an event; dropped it", "topic", env.Topic, "namespace", env.Namespace, "error", err)
			continue
		}
		if ctx.Err() != nil {
			return
		}
		if unreachableSince.IsZero() {
			unreachableSince = time.Now()
			r.log.Warn("eventd is not taking events; queueing them and retrying", "error", err)
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return
		}
		wait = min(wait*2, r.maxWait)
	}
}

func (r *Remote) send(ctx context.Context, env *types.Envelope) error {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	_, err := r.client.Forward(ctx, &eventsapi.ForwardRequest{Envelope: env})
	return err
}

func (r *Remote) head() (pending, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.queue) == 0 {
		return pending{}, r.closed
	}
	return r.queue[0], r.closed
}

// pop removes env, the head, from the queue; a non-empty reason counts it as dropped.
func (r *Remote) pop(env *types.Envelope, reason string) {
	r.mu.Lock()
	r.queue[0] = pending{}
	r.queue = r.queue[1:]
	if len(r.queue) == 0 {
		r.queue = nil // let the backing array go after a burst
	}
	r.queued.Set(float64(len(r.queue)))
	r.mu.Unlock()
	if reason == "" {
		r.sent.WithLabelValues(env.Topic).Inc()
	} else {
		r.dropped.WithLabelValues(env.Topic, reason).Inc()
	}
}
