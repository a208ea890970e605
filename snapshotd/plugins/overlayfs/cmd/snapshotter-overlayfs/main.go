// Command snapshotter-overlayfs is the overlay snapshotter as a snapshotd
// plugin.
package main

import (
	"github.com/flotilla/flotilla/snapshotd/plugins/overlayfs"
	"github.com/flotilla/flotilla/snapshotd/sdk"
)

func main() {
	s, err := overlayfs.New(sdk.Root())
	if err != nil {
		sdk.Fail(err)
	}
	sdk.Serve(s)
}
