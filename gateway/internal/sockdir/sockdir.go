// Package sockdir gives gateway's tests directories to put unix sockets in.
// It is imported only from _test.go files.
package sockdir

import (
	"os"
	"testing"
)

// New returns a temporary directory, removed when tb ends, whose name is
// short enough for socket paths in it to stay under the 108 bytes a unix
// socket path may have (t.TempDir's often do not).
func New(tb testing.TB) string {
	tb.Helper()
	dir, err := os.MkdirTemp("", "gw")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}
