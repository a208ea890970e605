package overlayfs

import (
	"testing"

	"github.com/flotilla/flotilla/snapshotd/snapshotter"
	"github.com/flotilla/flotilla/snapshotd/snapshottest"
)

func TestConformanceInProcess(t *testing.T) {
	snapshottest.Run(t, func(t testing.TB, root string) snapshotter.Snapshotter {
		s, err := New(root)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}
