// Package publish delivers a shim's events the two ways containerd's shims
// do, in order and without making the caller wait:
//
//   - over ttrpc (NewTTRPC): containerd.services.events.ttrpc.v1.Events/Forward
//     on the daemon's $TTRPC_ADDRESS socket, one connection kept open (and
//     redialled after the daemon restarts). This is what containerd's own
//     shims do when given TTRPC_ADDRESS, and it costs a write, not a process.
//
//   - through a publish binary (New): for each event it runs
//
//     BIN --address ADDR publish --topic TOPIC --namespace NS
//
//     with the event, a protobuf-encoded google.protobuf.Any (typeurl type
//     URL, e.g. "containerd.events.TaskExit"), on the command's standard
//     input. containerd's own binary (`containerd publish`) forwards it to
//     the daemon's events service. Starting a process per event is slow
//     (tens of milliseconds each), so it is the fallback for daemons that
//     give no ttrpc address.
package publish

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os/exec"
	"strings"
	"sync"
	"time"

	ttrpcevents "github.com/containerd/containerd/api/services/ttrpc/events/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/flotilla/flotilla/services/tracing"
)

// Runner runs cmd to completion and returns its exit status. A shim that
// reaps its own children passes its reaper's Run; the default is exec.Cmd.Run.
type Runner func(cmd *exec.Cmd) (int, error)

// Publisher is an ordered, non-blocking publisher of one shim's events.
//
// Publish encodes the event and queues it; it never waits for delivery.
// One loop delivers the queue in order, one event at a time, retrying an
// event whose delivery failed (with backoff, up to Attempts times) before
// moving on, so the order of events is the order of Publish calls and each
// event is delivered once unless a delivery failed after the daemon took it.
type Publisher struct {
	namespace string
	send      func(ctx context.Context, e envelope) error
	closeSend func()
	run       Runner
	log       *slog.Logger
	attempts  int
	backoff   time.Duration
	timeout   time.Duration

	mu      sync.Mutex
	cond    *sync.Cond
	queue   []envelope
	closing bool
	done    chan struct{}
}

type envelope struct {
	topic string
	at    time.Time         // when it was published
	data  []byte            // the event as a protobuf Any
	span  trace.SpanContext // the trace it was published in, carried on to the daemon
}

// Option configures a Publisher.
type Option func(*Publisher)

// WithRunner runs the publish binary through r.
func WithRunner(r Runner) Option { return func(b *Publisher) { b.run = r } }

// WithLogger logs delivery failures to l.
func WithLogger(l *slog.Logger) Option { return func(b *Publisher) { b.log = l } }

// WithRetry sets how many times an event is tried and the first wait between
// tries (doubled after each failure, capped at 2s).
func WithRetry(attempts int, backoff time.Duration) Option {
	return func(b *Publisher) { b.attempts, b.backoff = attempts, backoff }
}

// New returns a publisher that runs the binary at path with containerd's
// address and the shim's namespace, and starts its delivery loop.
func New(path, address, namespace string, opts ...Option) *Publisher {
	b := newPublisher(namespace, opts)
	b.send = func(ctx context.Context, e envelope) error { return b.invoke(ctx, path, address, e) }
	go b.loop()
	return b
}

// NewTTRPC returns a publisher that forwards events over ttrpc to the
// Events service on the unix socket address (containerd's TTRPC_ADDRESS,
// "unix://" optional), and starts its delivery loop. It dials on the first
// event and again after a failed delivery, so it survives the daemon's
// restarts.
func NewTTRPC(address, namespace string, opts ...Option) *Publisher {
	b := newPublisher(namespace, opts)
	t := &ttrpcSender{path: strings.TrimPrefix(address, "unix://")}
	b.send = func(ctx context.Context, e envelope) error { return t.send(ctx, namespace, e) }
	b.closeSend = t.close
	go b.loop()
	return b
}

func newPublisher(namespace string, opts []Option) *Publisher {
	b := &Publisher{
		namespace: namespace,
		run: func(cmd *exec.Cmd) (int, error) {
			err := cmd.Run()
			if ee, ok := err.(*exec.ExitError); ok {
				return ee.ExitCode(), nil
			}
			return cmd.ProcessState.ExitCode(), err
		},
		log:      slog.Default(),
		attempts: 5,
		backoff:  100 * time.Millisecond,
		timeout:  10 * time.Second,
		done:     make(chan struct{}),
	}
	for _, o := range opts {
		o(b)
	}
	b.cond = sync.NewCond(&b.mu)
	return b
}

// Encode returns the bytes a publish binary reads on stdin for event: the
// protobuf encoding of google.protobuf.Any holding it.
func Encode(event any) ([]byte, error) {
	a, err := typeurl.MarshalAny(event)
	if err != nil {
		return nil, fmt.Errorf("marshal event %T: %w", event, err)
	}
	return proto.Marshal(&anypb.Any{TypeUrl: a.GetTypeUrl(), Value: a.GetValue()})
}

// Publish queues event under topic. The namespace is the shim's; only the
// trace of ctx is kept, for the delivery to continue it. It fails only when
// the event cannot be encoded or the publisher is closed.
func (b *Publisher) Publish(ctx context.Context, topic string, event any) error {
	data, err := Encode(event)
	if err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closing {
		return fmt.Errorf("publish %s: publisher closed", topic)
	}
	b.queue = append(b.queue, envelope{topic: topic, at: time.Now(), data: data, span: trace.SpanContextFromContext(ctx)})
	b.cond.Broadcast()
	return nil
}

// Close stops accepting events and waits until the queue is delivered or
// ctx is done.
func (b *Publisher) Close(ctx context.Context) error {
	b.mu.Lock()
	b.closing = true
	b.cond.Broadcast()
	b.mu.Unlock()
	select {
	case <-b.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("events not delivered before close: %w", ctx.Err())
	}
}

func (b *Publisher) loop() {
	defer close(b.done)
	if b.closeSend != nil {
		defer b.closeSend()
	}
	for {
		b.mu.Lock()
		for len(b.queue) == 0 && !b.closing {
			b.cond.Wait()
		}
		if len(b.queue) == 0 {
			b.mu.Unlock()
			return
		}
		e := b.queue[0]
		b.mu.Unlock()

		b.deliver(e)

		b.mu.Lock()
		b.queue = b.queue[1:]
		b.mu.Unlock()
	}
}

func (b *Publisher) deliver(e envelope) {
	wait := b.backoff
	for attempt := 1; ; attempt++ {
		start := time.Now()
		ctx, cancel := context.WithTimeout(trace.ContextWithRemoteSpanContext(context.Background(), e.span), b.timeout)
		err := b.send(ctx, e)
		cancel()
		if err == nil {
			b.log.Debug("event published", "topic", e.topic, "took", time.Since(start))
			return
		}
		if attempt >= b.attempts {
			b.log.Error("event dropped", "topic", e.topic, "attempts", attempt, "error", err)
			return
		}
		b.log.Warn("publish failed, retrying", "topic", e.topic, "attempt", attempt, "error", err)
		time.Sleep(wait)
		wait = min(2*wait, 2*time.Second)
	}
}

// invoke runs the publish binary at path for e.
func (b *Publisher) invoke(ctx context.Context, path, address string, e envelope) error {
	cmd := exec.CommandContext(ctx, path,
		"--address", address,
		"publish",
		"--topic", e.topic,
		"--namespace", b.namespace)
	cmd.Stdin = bytes.NewReader(e.data)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	status, err := b.run(cmd)
	if err != nil {
		return fmt.Errorf("run %s: %w", path, err)
	}
	if status != 0 {
		return fmt.Errorf("%s exited %d: %s", path, status, bytes.TrimSpace(out.Bytes()))
	}
	return nil
}

// ttrpcSender keeps one ttrpc connection to the daemon's events socket.
// Only the delivery loop uses it.
type ttrpcSender struct {
	path   string
	client *ttrpc.Client
}

func (t *ttrpcSender) send(ctx context.Context, namespace string, e envelope) error {
	var event anypb.Any
	if err := proto.Unmarshal(e.data, &event); err != nil {
		return fmt.Errorf("event %s: %w", e.topic, err)
	}
	if t.client == nil {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "unix", t.path)
		if err != nil {
			return fmt.Errorf("connect to %s: %w", t.path, err)
		}
		// A shim is a process of its own: its tracing is the process's.
		t.client = ttrpc.NewClient(conn, ttrpc.WithUnaryClientInterceptor(tracing.Process().TTRPCClientInterceptor()))
	}
	_, err := ttrpcevents.NewTTRPCEventsClient(t.client).Forward(ctx, &ttrpcevents.ForwardRequest{
		Envelope: &types.Envelope{Timestamp: timestamppb.New(e.at), Namespace: namespace, Topic: e.topic, Event: &event},
	})
	if err != nil {
		// The daemon may have restarted: dial again for the next try.
		t.close()
		return fmt.Errorf("forward %s to %s: %w", e.topic, t.path, err)
	}
	return nil
}

func (t *ttrpcSender) close() {
	if t.client != nil {
		t.client.Close()
		t.client = nil
	}
}
