// Command eventd serves containerd's events service: it takes the events the
// other services publish and streams them to subscribers, across every eventd
// of the fleet through Redis pub/sub, or within this node when no Redis is
// configured.
package main

import (
	eventd "github.com/flotilla/flotilla/eventd/daemon"
	"github.com/flotilla/flotilla/services/daemon"
)

func main() {
	daemon.Main(eventd.Spec(new(eventd.Config)))
}
