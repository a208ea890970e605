// Command gateway is the front door of a Flotilla stack: it serves
// containerd's gRPC API on one socket, routes every containerd.services.*
// call to the Flotilla service that owns it, and answers Version,
// Introspection and Flotilla's Stack status itself.
package main

import (
	gateway "github.com/flotilla/flotilla/gateway/daemon"
	"github.com/flotilla/flotilla/services/daemon"
)

func main() {
	daemon.Main(gateway.Spec(new(gateway.Config)))
}
