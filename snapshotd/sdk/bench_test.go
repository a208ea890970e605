package sdk_test

import (
	"context"
	"fmt"
	"os"
	"testing"

	"github.com/flotilla/flotilla/snapshotd/internal/plugintest"
	"github.com/flotilla/flotilla/snapshotd/plugins/native"
	"github.com/flotilla/flotilla/snapshotd/plugins/overlayfs"
	"github.com/flotilla/flotilla/snapshotd/sdk"
	"github.com/flotilla/flotilla/snapshotd/snapshotter"
)

// CycleBench runs b.N Prepare/Commit/Remove cycles on s, each on a committed
// parent, as an image unpack does per layer.
func CycleBench(b *testing.B, s snapshotter.Snapshotter) {
	ctx := context.Background()
	if _, err := s.Prepare(ctx, "bench-base-a", ""); err != nil {
		b.Fatal(err)
	}
	if err := s.Commit(ctx, "bench-base", "bench-base-a"); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		key, name := fmt.Sprintf("k%d", i), fmt.Sprintf("n%d", i)
		if _, err := s.Prepare(ctx, key, "bench-base"); err != nil {
			b.Fatal(err)
		}
		if err := s.Commit(ctx, name, key); err != nil {
			b.Fatal(err)
		}
		if err := s.Remove(ctx, name); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCycle compares one Prepare/Commit/Remove cycle on each backend
// in-process with the same cycle through its plugin process.
func BenchmarkCycle(b *testing.B) {
	open := map[string]func(string) (snapshotter.Snapshotter, error){
		"overlayfs": func(root string) (snapshotter.Snapshotter, error) { return overlayfs.New(root) },
		"native":    func(root string) (snapshotter.Snapshotter, error) { return native.New(root) },
	}
	for _, name := range plugintest.Names {
		b.Run(name+"/in-process", func(b *testing.B) {
			root, _ := os.MkdirTemp("", "bench-")
			defer os.RemoveAll(root)
			s, err := open[name](root)
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			CycleBench(b, s)
		})
		b.Run(name+"/plugin", func(b *testing.B) {
			path, err := plugintest.Path(name)
			if err != nil {
				b.Fatal(err)
			}
			root, _ := os.MkdirTemp("", "bench-")
			defer os.RemoveAll(root)
			p, err := sdk.Start(context.Background(), sdk.Config{Path: path, Root: root})
			if err != nil {
				b.Fatal(err)
			}
			defer p.Stop()
			CycleBench(b, p.Snapshotter())
		})
	}
}
