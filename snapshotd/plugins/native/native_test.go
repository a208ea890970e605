package native

import (
	"testing"

	"github.com/flotilla/flotilla/snapshotd/snapshottest"
)

func TestConformanceInProcess(t *testing.T) {
	snapshottest.Run(t, snapshottest.InProcess(New))
}
