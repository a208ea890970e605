// Command snapshotd serves containerd's snapshots and diff services, with
// each snapshotter backend in a plugin process of its own.
package main

import (
	"github.com/flotilla/flotilla/services/config"
	"github.com/flotilla/flotilla/services/daemon"
	"github.com/flotilla/flotilla/services/introspect"
)

type snapshotdConfig struct {
	config.Common
}

func main() {
	var cfg snapshotdConfig
	daemon.Main(daemon.Spec{
		Name:    "snapshotd",
		Summary: "prepares root filesystems: containerd's snapshots and diff services, snapshotters as plugin processes",
		Config:  &cfg,
		Common:  &cfg.Common,
		// The snapshots and diff services arrive with the snapshotd issue;
		// until then the gateway's calls to them answer Unimplemented.
		Plugins: introspect.Services(),
	})
}
