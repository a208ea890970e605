package sdk_test

import (
	"context"
	"os"
	"testing"

	"github.com/flotilla/flotilla/snapshotd/internal/plugintest"
	"github.com/flotilla/flotilla/snapshotd/sdk"
	"github.com/flotilla/flotilla/snapshotd/snapshotter"
	"github.com/flotilla/flotilla/snapshotd/snapshottest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	plugintest.Cleanup()
	os.Exit(code)
}

// stoppable closes by stopping its plugin process, as Replace and Remove do.
type stoppable struct {
	*sdk.Client
	p *sdk.Process
}

func (s stoppable) Close() error { s.p.Stop(); return nil }

// TestConformanceThroughPlugin runs the conformance suite against each
// backend's plugin executable, over go-plugin's gRPC.
func TestConformanceThroughPlugin(t *testing.T) {
	for _, name := range plugintest.Names {
		t.Run(name, func(t *testing.T) {
			path, err := plugintest.Path(name)
			if err != nil {
				t.Fatal(err)
			}
			snapshottest.Run(t, func(t testing.TB, root string) snapshotter.Snapshotter {
				p, err := sdk.Start(context.Background(), sdk.Config{Path: path, Root: root, Stderr: os.Stderr})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(p.Stop)
				return stoppable{Client: p.Snapshotter(), p: p}
			})
		})
	}
}
