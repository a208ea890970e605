package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/flotilla/flotilla/flotctl/stack"
	"github.com/flotilla/flotilla/integration/imagekit"
)

// buildMultiLayer builds an image of n layers of size bytes of
// incompressible data each (gzip), from n large images of other seeds.
func buildMultiLayer(b testing.TB, n int, size int64) *imagekit.Image {
	b.Helper()
	img := &imagekit.Image{}
	var diffIDs []digest.Digest
	for i := 0; i < n; i++ {
		part, err := imagekit.BuildLarge(imagekit.WithSize(size), imagekit.WithSeed(uint64(100+i)), imagekit.WithTempDir(os.TempDir()))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { part.Close() })
		for _, l := range part.Layers {
			img.Layers = append(img.Layers, l)
			img.Blobs = append(img.Blobs, l.Blob)
			diffIDs = append(diffIDs, l.DiffID)
		}
	}
	cfg, _ := json.Marshal(ocispec.Image{
		Platform: ocispec.Platform{OS: "linux", Architecture: runtime.GOARCH},
		RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: diffIDs},
	})
	img.Config = ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(cfg), Size: int64(len(cfg))}
	img.Blobs = append(img.Blobs, imagekit.Blob{Descriptor: img.Config, Data: cfg})
	var layers []ocispec.Descriptor
	for _, l := range img.Layers {
		layers = append(layers, l.Descriptor)
	}
	m, _ := json.Marshal(ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest,
		Config: img.Config, Layers: layers})
	img.Target = ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromBytes(m), Size: int64(len(m))}
	img.Blobs = append(img.Blobs, imagekit.Blob{Descriptor: img.Target, Data: m})
	return img
}

// coldPuller pulls an image into one system and empties it again.
type coldPuller struct {
	name  string
	pull  func(b *testing.B, ref string)
	reset func(b *testing.B, ref string, img *imagekit.Image)
}

// BenchmarkTransferColdPull compares a cold pull (fetch and unpack, every
// store emptied before each) of a 4-layer image (4 × 20 MiB, gzip,
// incompressible) and of a one-layer 64 MiB image from a local
// docker-registry: Flotilla through containerd 2's Transfer API (ctr 2.x
// images pull, no --local), containerd 2.4.2 with ctr 2.4 (its own
// Transfer service), and Debian's containerd 1.6 with its ctr (client-side
// pull). The three alternate within each iteration; each reports its own
// seconds per pull (flotilla-s, containerd2.4-s, containerd1.6-s).
//
// For profiling: FLOTILLA_BENCH_PPROF=1 serves the daemons' pprof (their
// addresses are printed at the start), FLOTILLA_BENCH_ONLY=flotilla runs one
// system alone, FLOTILLA_BENCH_CONTENTD_ARGS adds flags to contentd's.
func BenchmarkTransferColdPull(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("unpacking needs root")
	}
	ctr2 := ctr2Bin(b)
	ctr16 := requireTool(b, "ctr")
	dir2 := filepath.Dir(ctr2)
	reg := imagekit.StartRegistry(b)
	s := startStackWith(b, func(l *stack.Layout) {
		if os.Getenv("FLOTILLA_BENCH_PPROF") != "" {
			// Profiles of the daemons while the bench runs, e.g.
			// go tool pprof http://<metrics>/debug/pprof/profile.
			l.ExtraArgs = map[string][]string{"contentd": {"--pprof"}, "snapshotd": {"--pprof"}, "gateway": {"--pprof"}}
		}
		if a := os.Getenv("FLOTILLA_BENCH_CONTENTD_ARGS"); a != "" {
			if l.ExtraArgs == nil {
				l.ExtraArgs = map[string][]string{}
			}
			l.ExtraArgs["contentd"] = append(l.ExtraArgs["contentd"], strings.Fields(a)...)
		}
	})
	stopPluginsOnCleanup(b, s)
	if os.Getenv("FLOTILLA_BENCH_PPROF") != "" {
		for _, svc := range s.Layout.Services() {
			fmt.Fprintf(os.Stderr, "%s pprof: http://%s/debug/pprof/\n", svc.Name, svc.MetricsAddress)
		}
	}
	sock24 := startContainerd(b, filepath.Join(dir2, "containerd"), dir2)
	sock16 := startContainerd(b, requireTool(b, "containerd"), "")

	images := []struct {
		name string
		img  *imagekit.Image
	}{
		{"multilayer-4x20MiB", buildMultiLayer(b, 4, 20<<20)},
		{"large-64MiB", func() *imagekit.Image {
			img, err := imagekit.BuildLarge(imagekit.WithSize(64<<20), imagekit.WithTempDir(os.TempDir()))
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { img.Close() })
			return img
		}()},
	}
	ns := "bench-transfer"
	run := func(b *testing.B, bin, sock string, args ...string) {
		b.Helper()
		c := ctrClient{bin: bin, address: sock, ns: ns}
		c.must(b, args...)
	}
	containerdReset := func(bin, sock string) func(b *testing.B, ref string, img *imagekit.Image) {
		return func(b *testing.B, ref string, _ *imagekit.Image) {
			run(b, bin, sock, "images", "rm", "--sync", ref)
		}
	}
	systems := []coldPuller{
		{
			name: "flotilla",
			pull: func(b *testing.B, ref string) { run(b, ctr2, s.Socket, "images", "pull", "--plain-http", ref) },
			// As containerd's: garbage collection takes the blobs and
			// snapshots once the image is gone.
			reset: containerdReset(ctr2, s.Socket),
		},
		{
			name:  "containerd2.4",
			pull:  func(b *testing.B, ref string) { run(b, ctr2, sock24, "images", "pull", "--plain-http", ref) },
			reset: containerdReset(ctr2, sock24),
		},
		{
			name:  "containerd1.6",
			pull:  func(b *testing.B, ref string) { run(b, ctr16, sock16, "images", "pull", "--plain-http", ref) },
			reset: containerdReset(ctr16, sock16),
		},
	}
	if only := os.Getenv("FLOTILLA_BENCH_ONLY"); only != "" {
		// One system alone, e.g. while profiling it.
		var kept []coldPuller
		for _, sys := range systems {
			if sys.name == only {
				kept = append(kept, sys)
			}
		}
		systems = kept
	}
	for _, im := range images {
		ref := reg + "/bench/" + strings.ToLower(im.name) + ":1"
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		if err := im.img.Push(ctx, ref); err != nil {
			cancel()
			b.Fatal(err)
		}
		cancel()
		b.Run(im.name, func(b *testing.B) {
			b.SetBytes(im.img.Size())
			spent := make([]time.Duration, len(systems))
			n := 0
			for b.Loop() {
				n++
				for i, sys := range systems {
					// Alternate which system goes first, so none always
					// meets the warmest caches.
					sys = systems[(i+n)%len(systems)]
					start := time.Now()
					sys.pull(b, ref)
					spent[(i+n)%len(systems)] += time.Since(start)
					b.StopTimer()
					sys.reset(b, ref, im.img)
					b.StartTimer()
				}
			}
			var parts []string
			for i, sys := range systems {
				sec := spent[i].Seconds() / float64(n)
				b.ReportMetric(sec, sys.name+"-s")
				parts = append(parts, fmt.Sprintf("%s %.2fs", sys.name, sec))
			}
			b.Logf("%s cold pull, mean of %d: %s", im.name, n, strings.Join(parts, ", "))
		})
	}
}
