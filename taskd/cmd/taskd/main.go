// Command taskd serves containerd's containers and tasks services, running
// each container under a shim that outlives taskd.
//
// `taskd publish --address ADDR --topic TOPIC --namespace NS` (event on
// stdin) is the -publish-binary command shims run to send taskd an event.
package main

import (
	"os"

	"github.com/flotilla/flotilla/services/daemon"
	taskd "github.com/flotilla/flotilla/taskd/daemon"
)

func main() {
	if taskd.PublishMain(os.Args[1:]) {
		return
	}
	daemon.Main(taskd.Spec(new(taskd.Config)))
}
