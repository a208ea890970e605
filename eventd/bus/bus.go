// Package bus carries event envelopes from the eventd that receives them to
// the subscribers of every eventd: in process for a single node (Memory), or
// through Redis pub/sub for a fleet (Redis).
package bus

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/containerd/containerd/api/types"

	"github.com/flotilla/flotilla/services/mtls"
	"github.com/flotilla/flotilla/services/tracing"
)

// Bus delivers published envelopes to subscriptions.
type Bus interface {
	// Publish hands env to the bus. When it returns nil, env will be offered
	// to every subscription of every eventd on the bus that exists when it
	// is delivered; envelopes published one after another by one caller are
	// delivered in that order. It returns an error wrapping
	// errdefs.ErrUnavailable when the bus cannot take events right now (the
	// caller may retry), and must not modify env.
	Publish(ctx context.Context, env *types.Envelope) error
	// Subscribe returns a subscription receiving the envelopes for which
	// match returns true, from those delivered after Subscribe returns. match
	// is called from the bus's delivery goroutine and must be quick.
	Subscribe(match func(*types.Envelope) bool) *Subscription
	// Close stops the bus and closes every subscription's channel.
	Close() error
}

// DefaultBuffer is how many envelopes a subscription holds for a slow reader.
const DefaultBuffer = 1024

// Option configures a bus.
type Option func(*options)

type options struct {
	buffer      int
	logger      *slog.Logger
	onDrop      func(*types.Envelope)
	onConnected func(bool)
	channel     string
	grace       time.Duration
	outbox      int
	onOutbox    func(n int)
	identity    *mtls.Identity    // Redis over TLS: the certificate eventd presents
	tracing     *tracing.Provider // Redis: deliveries traced (nil: off)
}

// WithBuffer sets how many envelopes each subscription may hold before the
// bus drops what a slow subscriber cannot take (default DefaultBuffer).
func WithBuffer(n int) Option {
	return func(o *options) {
		if n > 0 {
			o.buffer = n
		}
	}
}

// WithLogger sets the logger for outages and drops (default slog.Default()).
func WithLogger(l *slog.Logger) Option {
	return func(o *options) {
		if l != nil {
			o.logger = l
		}
	}
}

// WithDropHook calls f for every envelope a subscription drops because its
// buffer is full, such as to count it.
func WithDropHook(f func(*types.Envelope)) Option {
	return func(o *options) { o.onDrop = f }
}

// WithOutboxHook calls f with the number of envelopes waiting in the Redis
// bus's outbox each time it changes, such as to export it as a gauge.
func WithOutboxHook(f func(n int)) Option {
	return func(o *options) { o.onOutbox = f }
}

func newOptions(opts []Option) options {
	o := options{buffer: DefaultBuffer, logger: slog.Default(), channel: DefaultChannel, grace: DefaultRecoveryGrace, outbox: DefaultOutbox}
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// Subscription receives the envelopes its match function accepts.
type Subscription struct {
	match  func(*types.Envelope) bool
	ch     chan *types.Envelope
	remove func(*Subscription)

	mu      sync.Mutex
	dropped uint64
}

// C delivers the envelopes, in the order the bus delivered them. It is
// closed when the subscription or the bus is closed.
func (s *Subscription) C() <-chan *types.Envelope { return s.ch }

// Dropped is how many envelopes this subscription lost because its reader
// did not keep up.
func (s *Subscription) Dropped() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dropped
}

// Close ends the subscription. It is safe to call more than once.
func (s *Subscription) Close() { s.remove(s) }

// fanout hands each delivered envelope to the matching subscriptions without
// ever waiting for one: a subscription whose buffer is full loses the
// envelope, which is counted, so one slow reader cannot hold up the others.
type fanout struct {
	opts options

	mu     sync.Mutex // serialises deliveries, so every subscription sees one order
	subs   map[*Subscription]struct{}
	closed bool
}

func newFanout(o options) *fanout {
	return &fanout{opts: o, subs: make(map[*Subscription]struct{})}
}

func (f *fanout) subscribe(match func(*types.Envelope) bool) *Subscription {
	s := &Subscription{match: match, ch: make(chan *types.Envelope, f.opts.buffer), remove: f.remove}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		close(s.ch)
		return s
	}
	f.subs[s] = struct{}{}
	return s
}

func (f *fanout) remove(s *Subscription) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.subs[s]; !ok {
		return
	}
	delete(f.subs, s)
	close(s.ch)
}

func (f *fanout) deliver(env *types.Envelope) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for s := range f.subs {
		if s.match != nil && !s.match(env) {
			continue
		}
		select {
		case s.ch <- env:
		default:
			s.mu.Lock()
			s.dropped++
			first := s.dropped == 1
			s.mu.Unlock()
			if first {
				f.opts.logger.Warn("subscriber is not keeping up; dropping events for it", "buffer", f.opts.buffer, "topic", env.Topic)
			}
			if f.opts.onDrop != nil {
				f.opts.onDrop(env)
			}
		}
	}
}

func (f *fanout) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	for s := range f.subs {
		delete(f.subs, s)
		close(s.ch)
	}
}
