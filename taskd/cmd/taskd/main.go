// Command taskd serves containerd's containers and tasks services, running
// each container under a shim that outlives taskd.
package main

import (
	"github.com/flotilla/flotilla/services/config"
	"github.com/flotilla/flotilla/services/daemon"
	"github.com/flotilla/flotilla/services/introspect"
)

type taskdConfig struct {
	config.Common
}

func main() {
	var cfg taskdConfig
	daemon.Main(daemon.Spec{
		Name:    "taskd",
		Summary: "runs containers: containerd's containers and tasks services, one shim per container",
		Config:  &cfg,
		Common:  &cfg.Common,
		// The containers and tasks services arrive with the taskd issue;
		// until then the gateway's calls to them answer Unimplemented.
		Plugins: introspect.Services(),
	})
}
