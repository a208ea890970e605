package integration

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/flotilla/flotilla/integration/imagekit"
)

// BenchmarkPullLargeImage measures `ctr images pull --plain-http` through
// the gateway of a one-layer image of 64 MiB of incompressible data (gzip)
// from a local docker-registry, per snapshotter:
//
//   - fetch+unpack: every iteration pulls a new image (another seed, built
//     and pushed with the timer stopped): registry → contentd, then
//     Prepare, diff.Apply (contentd → gunzip → tar → snapshot) and Commit.
//   - unpack: the blobs are already in contentd (from another namespace,
//     which contentd shares on disk), so the pull is the manifest walk and
//     the unpack alone, into a fresh namespace each iteration.
func BenchmarkPullLargeImage(b *testing.B) {
	requireTool(b, "ctr")
	if os.Geteuid() != 0 {
		b.Skip("unpacking needs root")
	}
	reg := imagekit.StartRegistry(b)
	s := startStack(b)
	stopPluginsOnCleanup(b, s)
	seed := uint64(1)
	// push builds a new large image and pushes it as large:N.
	push := func(b *testing.B) string {
		seed++
		img, err := imagekit.BuildLarge(imagekit.WithSize(imagekit.DefaultLargeSize), imagekit.WithSeed(seed))
		if err != nil {
			b.Fatal(err)
		}
		defer img.Close()
		ref := fmt.Sprintf("%s/large:%d", reg, seed)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := img.Push(ctx, ref); err != nil {
			b.Fatal(err)
		}
		return ref
	}
	pull := func(b *testing.B, ns, sn, ref string) {
		if out, err := s.Ctr(ns, "images", "pull", "--plain-http", "--snapshotter", sn, ref); err != nil {
			b.Fatalf("pull: %v\n%s", err, out)
		}
	}
	run := 0
	for _, sn := range snapshotters {
		b.Run("fetch+unpack/"+sn, func(b *testing.B) {
			b.SetBytes(imagekit.DefaultLargeSize)
			for b.Loop() {
				b.StopTimer()
				ref := push(b)
				run++
				b.StartTimer()
				pull(b, fmt.Sprintf("bench-%d", run), sn, ref)
			}
		})
		b.Run("unpack/"+sn, func(b *testing.B) {
			b.StopTimer()
			ref := push(b)
			run++
			pull(b, fmt.Sprintf("bench-%d", run), sn, ref)
			b.StartTimer()
			b.SetBytes(imagekit.DefaultLargeSize)
			for b.Loop() {
				run++
				pull(b, fmt.Sprintf("bench-%d", run), sn, ref)
			}
		})
	}
}
