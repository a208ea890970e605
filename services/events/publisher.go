// Package events is how a service announces what changed: it hands each
// event to a Publisher, which delivers it to eventd.
package events

import (
	"context"
)

// Publisher publishes one event under topic (containerd's topics, such as
// "/namespaces/create") in the namespace carried by ctx. event is one of the
// containerd API's event messages (github.com/containerd/containerd/api/events),
// so the envelope's type URL is containerd's and `ctr events` decodes it.
//
// Publish must not block the caller on a slow or absent eventd: an
// implementation queues and delivers in order, and accounts for what it drops.
type Publisher interface {
	Publish(ctx context.Context, topic string, event any) error
}

// Discard is a Publisher that drops every event, for services run without eventd.
type Discard struct{}

// Publish implements Publisher.
func (Discard) Publish(context.Context, string, any) error { return nil }
