// Command snapshotter-native is the copy-based snapshotter as a snapshotd
// plugin.
package main

import (
	"github.com/flotilla/flotilla/snapshotd/plugins/native"
	"github.com/flotilla/flotilla/snapshotd/sdk"
)

func main() {
	s, err := native.New(sdk.Root())
	if err != nil {
		sdk.Fail(err)
	}
	sdk.Serve(s)
}
