package diff

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"

	lt "github.com/flotilla/flotilla/snapshotd/diff/internal/layertest"
)

var (
	benchOnce  sync.Once
	benchLayer []byte
)

// bigLayer is a gzip layer of about 64 MiB: 4096 files of 16 KiB of
// half-random bytes (so gzip has work to do both ways) in 64 directories.
func bigLayer(b *testing.B) []byte {
	benchOnce.Do(func() {
		var raw bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&raw, gzip.DefaultCompression)
		tw := tar.NewWriter(zw)
		rng := rand.New(rand.NewPCG(1, 2))
		body := make([]byte, 16<<10)
		for d := range 64 {
			tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: fmt.Sprintf("d%02d/", d), Mode: 0o755, ModTime: lt.Stamp})
			for f := range 64 {
				for i := range body {
					if i%2 == 0 {
						body[i] = byte(rng.Uint32())
					} else {
						body[i] = byte(i)
					}
				}
				tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("d%02d/f%02d", d, f), Mode: 0o644, Size: int64(len(body)), ModTime: lt.Stamp})
				tw.Write(body)
			}
		}
		tw.Close()
		zw.Close()
		benchLayer = raw.Bytes()
	})
	return benchLayer
}

// benchDir is where the benchmark extracts: $FLOTILLA_BENCH_DIR when set
// (to measure a real disk), otherwise a tmpfs mounted for the benchmark, so
// that the figures compare the two extractors rather than the disk's
// writeback.
func benchDir(b *testing.B) string {
	base, err := os.MkdirTemp(os.Getenv("FLOTILLA_BENCH_DIR"), "bench-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(base) })
	if os.Getenv("FLOTILLA_BENCH_DIR") != "" {
		return base
	}
	if err := unix.Mount("tmpfs", base, "tmpfs", 0, "size=1g"); err != nil {
		b.Fatalf("mount tmpfs: %v", err)
	}
	b.Cleanup(func() { unix.Unmount(base, unix.MNT_DETACH) })
	return base
}

// BenchmarkApplyVsTar applies the same 64 MiB gzip layer with the differ
// and with `tar -xzf`, alternately in each iteration, and reports both
// times and their ratio.
func BenchmarkApplyVsTar(b *testing.B) {
	requireRoot(b)
	layer := bigLayer(b)
	s := newMemStore()
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: s.put(layer), Size: int64(len(layer))}
	d := New(s, s)
	file := filepath.Join(b.TempDir(), "layer.tar.gz")
	if err := os.WriteFile(file, layer, 0o644); err != nil {
		b.Fatal(err)
	}
	base := benchDir(b)
	var ours, theirs time.Duration
	b.SetBytes(int64(len(layer)))
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		a, t := filepath.Join(base, fmt.Sprintf("a%d", i)), filepath.Join(base, fmt.Sprintf("t%d", i))
		os.Mkdir(a, 0o755)
		os.Mkdir(t, 0o755)
		b.StartTimer()

		start := time.Now()
		if _, err := d.Apply(context.Background(), desc, bind(a)); err != nil {
			b.Fatal(err)
		}
		ours += time.Since(start)

		start = time.Now()
		if out, err := exec.Command("tar", "-xzf", file, "-C", t, "--same-owner", "-p").CombinedOutput(); err != nil {
			b.Fatalf("tar: %v: %s", err, out)
		}
		theirs += time.Since(start)

		b.StopTimer()
		os.RemoveAll(a)
		os.RemoveAll(t)
		b.StartTimer()
	}
	n := float64(b.N)
	b.ReportMetric(float64(ours.Milliseconds())/n, "flotilla-ms/op")
	b.ReportMetric(float64(theirs.Milliseconds())/n, "tar-ms/op")
	b.ReportMetric(float64(ours)/float64(theirs), "flotilla/tar")
}
