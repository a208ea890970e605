// Package publish delivers a shim's events the way containerd's shims do
// when they are given a publish binary: for each event it runs
//
//	BIN --address ADDR publish --topic TOPIC --namespace NS
//
// with the event, a protobuf-encoded google.protobuf.Any (typeurl type URL,
// e.g. "containerd.events.TaskExit"), on the command's standard input.
// containerd's own binary (`containerd publish`) forwards it to the daemon's
// events service.
package publish

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os/exec"
	"sync"
	"time"

	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// Runner runs cmd to completion and returns its exit status. A shim that
// reaps its own children passes its reaper's Run; the default is exec.Cmd.Run.
type Runner func(cmd *exec.Cmd) (int, error)

// Binary is an ordered, non-blocking publisher through a publish binary.
//
// Publish encodes the event and queues it; it never waits for the binary.
// One loop delivers the queue in order, one event at a time, retrying an
// event whose invocation failed (with backoff, up to Attempts times) before
// moving on, so the order of events is the order of Publish calls and each
// event is delivered once unless the binary failed after delivering it.
type Binary struct {
	path, address, namespace string
	run                      Runner
	log                      *slog.Logger
	attempts                 int
	backoff                  time.Duration
	timeout                  time.Duration

	mu      sync.Mutex
	cond    *sync.Cond
	queue   []envelope
	busy    bool
	closing bool
	done    chan struct{}
}

type envelope struct {
	topic string
	data  []byte
}

// Option configures a Binary.
type Option func(*Binary)

// WithRunner runs the publish binary through r.
func WithRunner(r Runner) Option { return func(b *Binary) { b.run = r } }

// WithLogger logs delivery failures to l.
func WithLogger(l *slog.Logger) Option { return func(b *Binary) { b.log = l } }

// WithRetry sets how many times an event is tried and the first wait between
// tries (doubled after each failure, capped at 2s).
func WithRetry(attempts int, backoff time.Duration) Option {
	return func(b *Binary) { b.attempts, b.backoff = attempts, backoff }
}

// New returns a publisher that runs the binary at path with containerd's
// address and the shim's namespace, and starts its delivery loop.
func New(path, address, namespace string, opts ...Option) *Binary {
	b := &Binary{
		path: path, address: address, namespace: namespace,
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
	go b.loop()
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

// Publish queues event under topic. The namespace is the shim's; ctx is not
// consulted. It fails only when the event cannot be encoded or the publisher
// is closed.
func (b *Binary) Publish(_ context.Context, topic string, event any) error {
	data, err := Encode(event)
	if err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closing {
		return fmt.Errorf("publish %s: publisher closed", topic)
	}
	b.queue = append(b.queue, envelope{topic: topic, data: data})
	b.cond.Broadcast()
	return nil
}

// Close stops accepting events and waits until the queue is delivered or
// ctx is done.
func (b *Binary) Close(ctx context.Context) error {
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

func (b *Binary) loop() {
	defer close(b.done)
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

func (b *Binary) deliver(e envelope) {
	wait := b.backoff
	for attempt := 1; ; attempt++ {
		start := time.Now()
		err := b.invoke(e)
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

func (b *Binary) invoke(e envelope) error {
	ctx, cancel := context.WithTimeout(context.Background(), b.timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, b.path,
		"--address", b.address,
		"publish",
		"--topic", e.topic,
		"--namespace", b.namespace)
	cmd.Stdin = bytes.NewReader(e.data)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	status, err := b.run(cmd)
	if err != nil {
		return fmt.Errorf("run %s: %w", b.path, err)
	}
	if status != 0 {
		return fmt.Errorf("%s exited %d: %s", b.path, status, bytes.TrimSpace(out.Bytes()))
	}
	return nil
}
