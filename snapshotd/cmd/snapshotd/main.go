// Command snapshotd serves containerd's snapshots and diff services, with
// each snapshotter backend in a plugin process of its own.
package main

import (
	"github.com/flotilla/flotilla/services/daemon"
	snapshotd "github.com/flotilla/flotilla/snapshotd/daemon"
)

func main() {
	daemon.Main(snapshotd.Spec(new(snapshotd.Config)))
}
