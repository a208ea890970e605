// Command contentd serves containerd's content, images, leases and
// namespaces services from one blob store and one metadata database.
package main

import (
	contentd "github.com/flotilla/flotilla/contentd/daemon"
	"github.com/flotilla/flotilla/services/daemon"
)

func main() {
	daemon.Main(contentd.Spec(new(contentd.Config)))
}
