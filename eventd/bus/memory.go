package bus

import (
	"context"
	"fmt"

	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
)

// Memory is the bus of a single eventd: Publish delivers to the local
// subscriptions before it returns.
type Memory struct {
	f *fanout
}

// NewMemory returns an in-process bus. It takes WithBuffer, WithLogger and
// WithDropHook; the other options concern Redis and are ignored.
func NewMemory(opts ...Option) *Memory {
	return &Memory{f: newFanout(newOptions(opts))}
}

// Publish implements Bus.
func (m *Memory) Publish(_ context.Context, env *types.Envelope) error {
	m.f.mu.Lock()
	closed := m.f.closed
	m.f.mu.Unlock()
	if closed {
		return fmt.Errorf("publish %s: event bus is closed: %w", env.Topic, errdefs.ErrUnavailable)
	}
	m.f.deliver(env)
	return nil
}

// Subscribe implements Bus.
func (m *Memory) Subscribe(match func(*types.Envelope) bool) *Subscription {
	return m.f.subscribe(match)
}

// Close implements Bus.
func (m *Memory) Close() error {
	m.f.close()
	return nil
}
