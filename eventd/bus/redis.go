package bus

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	oteltrace "go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"

	eventsv1 "github.com/flotilla/flotilla/proto/events/v1"
	"github.com/flotilla/flotilla/services/mtls"
	"github.com/flotilla/flotilla/services/tracing"
)

const (
	// DefaultChannel is the Redis pub/sub channel every eventd shares.
	DefaultChannel = "flotilla:events"
	// DefaultRecoveryGrace is how long, after a Redis outage, an eventd
	// waits for the other eventd it knew to subscribe again before it
	// publishes without them.
	DefaultRecoveryGrace = 10 * time.Second

	// DefaultOutbox is how many events an eventd holds while Redis is away.
	DefaultOutbox = 10000

	pingInterval = 2 * time.Second // silence after which the link is probed
	sampleEvery  = time.Second     // how often the number of eventd is read
	maxRedial    = time.Second     // longest wait between two reconnection attempts
)

// WithChannel sets the Redis channel (default DefaultChannel); the eventd
// that share a channel share their events.
func WithChannel(name string) Option {
	return func(o *options) {
		if name != "" {
			o.channel = name
		}
	}
}

// WithStateHook calls f(true) each time the bus is subscribed to Redis and
// f(false) each time it loses Redis, such as to report health and metrics.
func WithStateHook(f func(connected bool)) Option {
	return func(o *options) { o.onConnected = f }
}

// WithRecoveryGrace sets how long after a Redis outage Publish waits for
// the other eventd to resubscribe (default DefaultRecoveryGrace).
func WithRecoveryGrace(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.grace = d
		}
	}
}

// WithOutbox sets how many envelopes the Redis bus holds, in order, while
// Redis cannot take them (default DefaultOutbox).
func WithOutbox(n int) Option {
	return func(o *options) {
		if n > 0 {
			o.outbox = n
		}
	}
}

// Redis is the bus shared by every eventd subscribed to one Redis channel.
// Publish sends the envelope (protobuf-encoded) with PUBLISH; each eventd,
// the publishing one included, receives it on its one subscription and fans
// it out to its local subscriptions, so all of them see one order.
//
// The bus keeps its Redis subscription up by itself: when the link breaks it
// logs it, reports it through the state hook, and reconnects with backoff of
// at most a second. Redis pub/sub keeps nothing for a subscriber that is
// away, so after an outage the bus publishes nothing until as many
// subscribers are back on the channel as were there before it (at most the
// recovery grace): an event then reaches every eventd that was there before
// the outage, not only the first to return.
//
// The eventd of a node is the one point where the node's services' events
// meet, so it is where their order is kept through an outage (containerd's
// single process keeps one order; here each service has its own queue, and
// had each drained its own backlog afterwards, a subscriber would have seen
// one service's events before another's). While Redis cannot take events,
// Publish puts them in the bus's outbox, in the order of their timestamps
// (the moment each service published them; one service's timestamps never
// go back, so its own order is kept), and answers at once; a background loop
// sends the outbox, oldest first, once Redis is back, and new events queue
// behind it until it is empty. Only when the outbox is full does Publish
// answer Unavailable, and the publishing services hold their events until
// there is room. An eventd that dies in an outage loses its outbox.
type Redis struct {
	client *redis.Client
	opts   options
	f      *fanout
	cancel context.CancelFunc
	done   sync.WaitGroup

	mu         sync.Mutex
	connected  bool
	peers      int64 // subscribers on the channel, last sampled while connected
	recovering bool
	want       int64
	deadline   time.Time

	outbox  []held        // in timestamp order; outbox[0] is sent next
	sending bool          // the drain loop has taken outbox[0] and is sending it
	drained chan struct{} // signalled when the outbox gains an envelope or Redis returns
}

// NewRedis returns a bus on the Redis server at url: "redis://host:port/db",
// "rediss://..." (TLS), "unix:///path/redis.sock", a bare "host:port" or a
// socket path. It returns at once and connects in the background; Publish
// answers Unavailable until the subscription is up.
func NewRedis(url string, opts ...Option) (*Redis, error) {
	ro, err := parseURL(url)
	if err != nil {
		return nil, err
	}
	o := newOptions(opts)
	if ro.TLSConfig != nil {
		// rediss://: the cluster's mutual TLS, with eventd's certificate
		// (Redis with tls-auth-clients asks for one).
		id := o.identity
		if id == nil {
			return nil, fmt.Errorf("redis %s: %w", url, mtls.ErrNoIdentity)
		}
		tc := id.Client(ro.TLSConfig.ServerName)
		tc.NextProtos = nil // Redis speaks RESP, not HTTP/2
		ro.TLSConfig = tc
	}
	ro.DialTimeout = 2 * time.Second
	ro.MaxRetries = 1
	ro.ClientName = "flotilla-eventd"
	// RESP2: pub/sub messages arrive as plain replies, which keeps the
	// subscription's reads under their deadlines with every Redis version.
	ro.Protocol = 2

	ctx, cancel := context.WithCancel(context.Background())
	r := &Redis{client: redis.NewClient(ro), opts: o, cancel: cancel}
	r.f = newFanout(r.opts)
	r.drained = make(chan struct{}, 1)
	r.done.Add(3)
	go r.run(ctx)
	go r.sample(ctx)
	go r.drain(ctx)
	return r, nil
}

// WithIdentity is the certificate the bus presents to a Redis it reaches
// over TLS (rediss://), and the CA it checks Redis's against: eventd's.
func WithIdentity(id *mtls.Identity) Option {
	return func(o *options) { o.identity = id }
}

// WithTracing delivers each event from Redis in a span of p, a child of
// the trace it was published in (nil: off).
func WithTracing(p *tracing.Provider) Option {
	return func(o *options) { o.tracing = p }
}

func parseURL(url string) (*redis.Options, error) {
	switch {
	case strings.HasPrefix(url, "/"):
		url = "unix://" + url
	case !strings.Contains(url, "://"):
		url = "redis://" + url
	}
	ro, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("redis address %q: %v: %w", url, err, errdefs.ErrInvalidArgument)
	}
	return ro, nil
}

// Connected reports whether the bus is subscribed to Redis right now.
func (r *Redis) Connected() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.connected
}

// held is an encoded message waiting in the outbox.
type held struct {
	topic string
	at    time.Time // the envelope's timestamp
	data  []byte
}

// encode wraps env, with the trace context of ctx, in the channel's message.
func encode(ctx context.Context, env *types.Envelope) ([]byte, error) {
	envelope, err := proto.Marshal(env)
	if err != nil {
		return nil, fmt.Errorf("encode envelope: %w", err)
	}
	trace := propagation.MapCarrier{}
	tracing.Inject(ctx, trace)
	return proto.Marshal(&eventsv1.BusMessage{Envelope: envelope, TraceContext: trace})
}

// decode reads a message of the channel.
func decode(payload []byte) (*types.Envelope, propagation.MapCarrier, error) {
	var m eventsv1.BusMessage
	if err := proto.Unmarshal(payload, &m); err != nil {
		return nil, nil, err
	}
	env := &types.Envelope{}
	if err := proto.Unmarshal(m.GetEnvelope(), env); err != nil {
		return nil, nil, err
	}
	return env, m.GetTraceContext(), nil
}

// Publish implements Bus. It sends env to Redis now when Redis takes
// events and nothing waits in the outbox; otherwise it queues env in the
// outbox, and fails with Unavailable only when the outbox is full. The
// message carries the trace context of ctx, so the eventd that receive it
// continue the publisher's trace.
func (r *Redis) Publish(ctx context.Context, env *types.Envelope) error {
	data, err := encode(ctx, env)
	if err != nil {
		return fmt.Errorf("publish %s: %w", env.Topic, err)
	}
	r.mu.Lock()
	direct := len(r.outbox) == 0 && !r.sending
	r.mu.Unlock()
	if direct {
		err := r.ready(ctx)
		if err == nil {
			err = r.send(ctx, env.Topic, data)
		}
		if err == nil || !errdefs.IsUnavailable(err) {
			return err
		}
	}
	return r.enqueue(held{topic: env.Topic, at: env.GetTimestamp().AsTime(), data: data})
}

// send publishes one encoded envelope on the channel.
func (r *Redis) send(ctx context.Context, topic string, data []byte) error {
	if err := r.client.Publish(ctx, r.opts.channel, data).Err(); err != nil {
		return fmt.Errorf("publish %s to redis: %v: %w", topic, err, errdefs.ErrUnavailable)
	}
	return nil
}

// enqueue puts env in the outbox after every envelope with a timestamp not
// later than its own.
func (r *Redis) enqueue(h held) error {
	r.mu.Lock()
	if len(r.outbox) >= r.opts.outbox {
		r.mu.Unlock()
		return fmt.Errorf("publish %s: redis is not taking events and the outbox of %d events is full: %w", h.topic, r.opts.outbox, errdefs.ErrUnavailable)
	}
	i := len(r.outbox)
	first := 0
	if r.sending {
		first = 1 // outbox[0] is on its way; nothing goes before it
	}
	for i > first && r.outbox[i-1].at.After(h.at) {
		i--
	}
	r.outbox = slices.Insert(r.outbox, i, h)
	n := len(r.outbox)
	r.mu.Unlock()
	if n == 1 {
		r.opts.logger.Warn("redis is not taking events; holding them in order until it is back", "outbox", r.opts.outbox)
	}
	r.report(n)
	r.poke()
	return nil
}

func (r *Redis) poke() {
	select {
	case r.drained <- struct{}{}:
	default:
	}
}

func (r *Redis) report(n int) {
	if r.opts.onOutbox != nil {
		r.opts.onOutbox(n)
	}
}

// drain sends the outbox to Redis, oldest first, whenever Redis takes
// events, until ctx ends.
func (r *Redis) drain(ctx context.Context) {
	defer r.done.Done()
	wait := 20 * time.Millisecond
	for {
		r.mu.Lock()
		var h held
		if len(r.outbox) > 0 {
			h, r.sending = r.outbox[0], true
		}
		r.mu.Unlock()
		if h.data == nil {
			select {
			case <-r.drained:
				continue
			case <-ctx.Done():
				return
			}
		}
		err := r.ready(ctx)
		if err == nil {
			err = r.send(ctx, h.topic, h.data)
		}
		r.mu.Lock()
		if err == nil {
			r.outbox[0] = held{}
			r.outbox = r.outbox[1:]
			if len(r.outbox) == 0 {
				r.outbox = nil
			}
		}
		r.sending = false
		n := len(r.outbox)
		r.mu.Unlock()
		if err == nil {
			r.report(n)
			if n == 0 {
				r.opts.logger.Info("redis took the events held during its outage")
			}
			wait = 20 * time.Millisecond
			continue
		}
		select {
		case <-time.After(wait):
		case <-r.drained:
		case <-ctx.Done():
			return
		}
		wait = min(2*wait, maxRedial)
	}
}

// ready answers whether events may be published now: the bus is subscribed,
// and after an outage the subscribers known before it are back or the
// grace has passed.
func (r *Redis) ready(ctx context.Context) error {
	r.mu.Lock()
	connected, recovering, want, deadline := r.connected, r.recovering, r.want, r.deadline
	r.mu.Unlock()
	if !connected {
		return fmt.Errorf("not subscribed to redis: %w", errdefs.ErrUnavailable)
	}
	if !recovering {
		return nil
	}
	n, err := r.numSub(ctx)
	if err != nil {
		return err
	}
	late := time.Now().After(deadline)
	if n < want && !late {
		return fmt.Errorf("after a redis outage, %d of %d eventd subscribers are back; waiting for the rest: %w", n, want, errdefs.ErrUnavailable)
	}
	r.mu.Lock()
	if r.recovering {
		r.recovering = false
		if late && n < want {
			r.opts.logger.Warn("not every eventd came back after the redis outage; publishing without them",
				"back", n, "before", want, "grace", r.opts.grace)
		}
	}
	r.mu.Unlock()
	return nil
}

func (r *Redis) numSub(ctx context.Context) (int64, error) {
	m, err := r.client.PubSubNumSub(ctx, r.opts.channel).Result()
	if err != nil {
		return 0, fmt.Errorf("count redis subscribers: %v: %w", err, errdefs.ErrUnavailable)
	}
	return m[r.opts.channel], nil
}

// Subscribe implements Bus.
func (r *Redis) Subscribe(match func(*types.Envelope) bool) *Subscription {
	return r.f.subscribe(match)
}

// Close implements Bus.
func (r *Redis) Close() error {
	r.cancel()
	r.done.Wait()
	r.f.close()
	if err := r.client.Close(); err != nil {
		return fmt.Errorf("close redis client: %w", err)
	}
	return nil
}

// run keeps one subscription to the channel up until ctx ends.
func (r *Redis) run(ctx context.Context) {
	defer r.done.Done()
	wait := 50 * time.Millisecond
	told := false // whether this outage has been logged
	for {
		wasUp, err := r.session(ctx)
		if ctx.Err() != nil {
			r.setConnected(false)
			return
		}
		if wasUp {
			r.setConnected(false)
			wait, told = 50*time.Millisecond, false
		}
		if !told {
			r.opts.logger.Error("redis unreachable; reconnecting", "error", err)
			told = true
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return
		}
		wait = min(2*wait, maxRedial)
	}
}

// session subscribes and delivers messages until the link fails; wasUp says
// whether the subscription had been confirmed.
func (r *Redis) session(ctx context.Context) (wasUp bool, err error) {
	ps := r.client.Subscribe(ctx, r.opts.channel)
	// go-redis reads with deadlines, not the context: closing the
	// subscription is what interrupts a read when the bus closes.
	stop := context.AfterFunc(ctx, func() { ps.Close() })
	defer stop()
	defer ps.Close()
	pinged := false
	for {
		msg, err := ps.ReceiveTimeout(ctx, pingInterval)
		if err != nil {
			if isTimeout(err) && wasUp && !pinged {
				if err := ps.Ping(ctx); err != nil {
					return wasUp, err
				}
				pinged = true
				continue
			}
			return wasUp, err
		}
		pinged = false
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Kind == "subscribe" && m.Channel == r.opts.channel {
				wasUp = true
				r.setConnected(true)
			}
		case *redis.Message:
			env, trace, err := decode([]byte(m.Payload))
			if err != nil {
				r.opts.logger.Warn("ignoring a message on the events channel that is not an event", "error", err)
				continue
			}
			r.deliver(env, trace)
		}
	}
}

// deliver fans env out to this eventd's subscribers, in a span of the
// publisher's trace when tracing is on.
func (r *Redis) deliver(env *types.Envelope, trace propagation.MapCarrier) {
	if !r.opts.tracing.Enabled() {
		r.f.deliver(env)
		return
	}
	ctx := tracing.Extract(context.Background(), trace)
	_, span := r.opts.tracing.Tracer().Start(ctx, "events.deliver "+env.Topic, oteltrace.WithSpanKind(oteltrace.SpanKindConsumer),
		oteltrace.WithAttributes(attribute.String("containerd.namespace", env.Namespace)))
	r.f.deliver(env)
	span.End()
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func (r *Redis) setConnected(up bool) {
	r.mu.Lock()
	if r.connected == up {
		r.mu.Unlock()
		return
	}
	r.connected = up
	if up && r.peers > 0 {
		r.recovering, r.want, r.deadline = true, r.peers, time.Now().Add(r.opts.grace)
	}
	r.mu.Unlock()
	if up {
		r.opts.logger.Info("subscribed to redis", "channel", r.opts.channel)
		r.poke()
	}
	if r.opts.onConnected != nil {
		r.opts.onConnected(up)
	}
}

// sample records how many subscribers the channel has while all is well,
// for Publish to wait for after an outage.
func (r *Redis) sample(ctx context.Context) {
	defer r.done.Done()
	t := time.NewTicker(sampleEvery)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
		r.mu.Lock()
		steady := r.connected && !r.recovering
		r.mu.Unlock()
		if !steady {
			continue
		}
		n, err := r.numSub(ctx)
		if err != nil {
			continue
		}
		r.mu.Lock()
		if r.connected && !r.recovering {
			r.peers = n
		}
		r.mu.Unlock()
	}
}
