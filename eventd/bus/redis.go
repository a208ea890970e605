package bus

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"
)

const (
	// DefaultChannel is the Redis pub/sub channel every eventd shares.
	DefaultChannel = "flotilla:events"
	// DefaultRecoveryGrace is how long, after a Redis outage, an eventd
	// waits for the other eventd it knew to subscribe again before it
	// publishes without them.
	DefaultRecoveryGrace = 10 * time.Second

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

// Redis is the bus shared by every eventd subscribed to one Redis channel.
// Publish sends the envelope (protobuf-encoded) with PUBLISH; each eventd,
// the publishing one included, receives it on its one subscription and fans
// it out to its local subscriptions, so all of them see one order.
//
// The bus keeps its Redis subscription up by itself: when the link breaks it
// logs it, reports it through the state hook, and reconnects with backoff of
// at most a second. Redis pub/sub keeps nothing for a subscriber that is
// away, so after an outage Publish answers Unavailable until as many
// subscribers are back on the channel as were there before it (at most the
// recovery grace): an event retried by its publisher then reaches every
// eventd that was there before the outage, not only the first to return.
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
	ro.DialTimeout = 2 * time.Second
	ro.MaxRetries = 1
	ro.ClientName = "flotilla-eventd"
	// RESP2: pub/sub messages arrive as plain replies, which keeps the
	// subscription's reads under their deadlines with every Redis version.
	ro.Protocol = 2

	ctx, cancel := context.WithCancel(context.Background())
	r := &Redis{client: redis.NewClient(ro), opts: newOptions(opts), cancel: cancel}
	r.f = newFanout(r.opts)
	r.done.Add(2)
	go r.run(ctx)
	go r.sample(ctx)
	return r, nil
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

// Publish implements Bus.
func (r *Redis) Publish(ctx context.Context, env *types.Envelope) error {
	if err := r.ready(ctx); err != nil {
		return fmt.Errorf("publish %s: %w", env.Topic, err)
	}
	data, err := proto.Marshal(env)
	if err != nil {
		return fmt.Errorf("publish %s: encode envelope: %w", env.Topic, err)
	}
	if err := r.client.Publish(ctx, r.opts.channel, data).Err(); err != nil {
		return fmt.Errorf("publish %s to redis: %v: %w", env.Topic, err, errdefs.ErrUnavailable)
	}
	return nil
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
			env := &types.Envelope{}
			if err := proto.Unmarshal([]byte(m.Payload), env); err != nil {
				r.opts.logger.Warn("ignoring a message on the events channel that is not an envelope", "error", err)
				continue
			}
			r.f.deliver(env)
		}
	}
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
