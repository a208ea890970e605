// Command flotilla runs any set of Flotilla's components in one process —
// `--components all` (the default) is a whole node: eventd, contentd,
// snapshotd, taskd and the gateway — each built by the same code as its own
// binary and serving its own socket, with the calls between them made in
// memory. Snapshotter backends and task shims stay processes of their own.
//
// Run under a component's name (make build links bin/contentd, bin/taskd, …
// to it), it is that component's daemon alone, with its own flags, exactly
// as the component's cmd/<name> builds it: the separate daemons of a node
// then share one executable's pages in memory.
//
// `flotilla publish ...` is taskd's -publish-binary command, as `taskd
// publish` is when taskd runs alone.
package main

import (
	"os"
	"path/filepath"

	contentd "github.com/flotilla/flotilla/contentd/daemon"
	eventd "github.com/flotilla/flotilla/eventd/daemon"
	gateway "github.com/flotilla/flotilla/gateway/daemon"
	"github.com/flotilla/flotilla/services/daemon"
	snapshotd "github.com/flotilla/flotilla/snapshotd/daemon"
	taskd "github.com/flotilla/flotilla/taskd/daemon"
)

// components in start order: eventd first, since every other component
// publishes to it; the gateway last, since it fronts them all.
var components = []struct {
	name string
	spec func() daemon.Spec
}{
	{"eventd", func() daemon.Spec { return eventd.Spec(new(eventd.Config)) }},
	{"contentd", func() daemon.Spec { return contentd.Spec(new(contentd.Config)) }},
	{"snapshotd", func() daemon.Spec { return snapshotd.Spec(new(snapshotd.Config)) }},
	{"taskd", func() daemon.Spec { return taskd.Spec(new(taskd.Config)) }},
	{"gateway", func() daemon.Spec { return gateway.Spec(new(gateway.Config)) }},
}

func main() {
	name := filepath.Base(os.Args[0])
	var specs []daemon.Spec
	for _, c := range components {
		if c.name == name {
			if name == "taskd" && taskd.PublishMain(os.Args[1:]) {
				return
			}
			daemon.Main(c.spec())
			return
		}
		specs = append(specs, c.spec())
	}
	if taskd.PublishMain(os.Args[1:]) {
		return
	}
	daemon.MainGroup(daemon.Group{
		Name:    "flotilla",
		Summary: "runs Flotilla's components (all of a node, or those listed) in one process",
		Specs:   specs,
	})
}
