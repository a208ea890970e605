package integration

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	api "github.com/containerd/containerd/api/services/content/v1"
	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// benchBlobMiB is the size of the benchmarks' blob: FLOTILLA_BENCH_BLOB_MIB, default 1024.
func benchBlobMiB(b *testing.B) int64 {
	if v := os.Getenv("FLOTILLA_BENCH_BLOB_MIB"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 {
			b.Fatalf("FLOTILLA_BENCH_BLOB_MIB=%q: want a positive number of MiB", v)
		}
		return n
	}
	return 1024
}

// writeRandomFile writes size pseudo-random bytes to path and returns their digest.
func writeRandomFile(b *testing.B, path string, size int64) digest.Digest {
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	d := digest.SHA256.Digester()
	if _, err := io.CopyN(io.MultiWriter(f, d.Hash()), rand.NewChaCha8([32]byte{42}), size); err != nil {
		b.Fatal(err)
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	return d.Digest()
}

// cpuSeconds is the user and system CPU time pid has used so far.
func cpuSeconds(b *testing.B, pid int) float64 {
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// Fields after the command, which is in parentheses: utime and stime are
	// the 12th and 13th, in clock ticks (100 per second on Linux).
	f := strings.Fields(string(st[strings.LastIndexByte(string(st), ')')+2:]))
	u, _ := strconv.ParseFloat(f[11], 64)
	k, _ := strconv.ParseFloat(f[12], 64)
	return (u + k) / 100
}

// resetPeakRSS resets the peak resident set size the kernel reports for pid.
func resetPeakRSS(b *testing.B, pid int) {
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0); err != nil {
		b.Fatalf("reset peak RSS of %d: %v", pid, err)
	}
}

// peakRSSMiB is VmHWM of pid, in MiB.
func peakRSSMiB(b *testing.B, pid int) float64 {
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(st), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			if err != nil {
				b.Fatalf("VmHWM %q: %v", rest, err)
			}
			return kb / 1024
		}
	}
	b.Fatalf("no VmHWM in /proc/%d/status", pid)
	return 0
}

// ingestFile streams the file at path into the store as ref through the
// Write protocol, in 1 MiB WRITE messages, and commits it as dgst.
func ingestFile(ctx context.Context, c api.ContentClient, ref, path string, size int64, dgst digest.Digest) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.Write(ctx)
	if err != nil {
		return err
	}
	if _, err := writeMsg(stream, &api.WriteContentRequest{Action: api.WriteAction_STAT, Ref: ref, Total: size, Expected: dgst.String()}); err != nil {
		return err
	}
	buf := make([]byte, writeChunk)
	var off int64
	for {
		n, err := io.ReadFull(f, buf)
		if n > 0 {
			if _, err := writeMsg(stream, &api.WriteContentRequest{Action: api.WriteAction_WRITE, Offset: off, Data: buf[:n]}); err != nil {
				return err
			}
			off += int64(n)
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			break
		}
		if err != nil {
			return err
		}
	}
	_, err = writeMsg(stream, &api.WriteContentRequest{Action: api.WriteAction_COMMIT, Offset: off, Total: size, Expected: dgst.String()})
	return err
}

// BenchmarkContentThroughGateway measures, in one run, on one blob of
// FLOTILLA_BENCH_BLOB_MIB MiB (default 1024):
//   - ingest: content.Write through the gateway into contentd, next to
//     sha256sum of the same file (sha256sum-MB/s, and ingest/sha256sum, the
//     ratio of the two throughputs);
//   - read: content.Read of the blob through the gateway.
//
// Each reports contentd's peak RSS during the operation (contentd-peak-MiB).
func BenchmarkContentThroughGateway(b *testing.B) {
	requireTool(b, "sha256sum")
	size := benchBlobMiB(b) << 20
	s := startStack(b)
	c := contentAPI(b, s)
	ctx := inNamespace(context.Background(), "bench")
	path := filepath.Join(b.TempDir(), "blob")
	dgst := writeRandomFile(b, path, size)
	pid, gw := s.Pid("contentd"), s.Pid("gateway")
	// cpu reports the CPU seconds contentd and the gateway spent per GB moved.
	cpu := func(b *testing.B, contentd, gateway float64, moved int64) {
		b.ReportMetric(contentd/(float64(moved)/1e9), "contentd-cpu-s/GB")
		b.ReportMetric(gateway/(float64(moved)/1e9), "gateway-cpu-s/GB")
	}

	sha256sum := func() time.Duration {
		start := time.Now()
		out, err := exec.Command("sha256sum", path).Output()
		if err != nil {
			b.Fatalf("sha256sum: %v", err)
		}
		elapsed := time.Since(start)
		if got := strings.Fields(string(out)); len(got) == 0 || got[0] != dgst.Encoded() {
			b.Fatalf("sha256sum says %q, want %s", out, dgst.Encoded())
		}
		return elapsed
	}
	sha256sum() // the file is in the page cache for both from here on
	mbps := func(n int64, d time.Duration) float64 { return float64(n) / 1e6 / d.Seconds() }

	// Each round times sha256sum and then the ingest, so both see the same
	// state of this noisy machine; with -benchtime Nx the figures cover N
	// rounds: ingest/sha256sum from the totals, and the median and the
	// lowest of the rounds' own ratios.
	b.Run("ingest", func(b *testing.B) {
		b.SetBytes(size)
		var ingest, hash time.Duration
		var ratios []float64
		var peak, cpuC, cpuG float64
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			if _, err := c.Delete(ctx, &api.DeleteContentRequest{Digest: dgst.String()}); err != nil && status.Code(err) != codes.NotFound {
				b.Fatal(err)
			}
			h := sha256sum()
			resetPeakRSS(b, pid)
			c0, g0 := cpuSeconds(b, pid), cpuSeconds(b, gw)
			b.StartTimer()
			start := time.Now()
			if err := ingestFile(ctx, c, fmt.Sprintf("bench-%d", i), path, size, dgst); err != nil {
				b.Fatalf("ingest: %v", err)
			}
			took := time.Since(start)
			b.StopTimer()
			ingest, hash = ingest+took, hash+h
			ratios = append(ratios, h.Seconds()/took.Seconds())
			cpuC, cpuG = cpuC+cpuSeconds(b, pid)-c0, cpuG+cpuSeconds(b, gw)-g0
			peak = max(peak, peakRSSMiB(b, pid))
		}
		n := size * int64(b.N)
		slices.Sort(ratios)
		b.ReportMetric(mbps(n, hash), "sha256sum-MB/s")
		b.ReportMetric(mbps(n, ingest)/mbps(n, hash), "ingest/sha256sum")
		b.ReportMetric(ratios[len(ratios)/2], "ingest/sha256sum-median")
		b.ReportMetric(ratios[0], "ingest/sha256sum-lowest")
		b.ReportMetric(peak, "contentd-peak-MiB")
		cpu(b, cpuC, cpuG, n)
	})

	b.Run("read", func(b *testing.B) {
		if _, err := c.Info(ctx, &api.InfoRequest{Digest: dgst.String()}); status.Code(err) == codes.NotFound {
			if err := ingestFile(ctx, c, "bench-read", path, size, dgst); err != nil {
				b.Fatal(err)
			}
		}
		if got, n, err := readBlob(ctx, c, dgst); err != nil || n != size || got != dgst {
			b.Fatalf("read: %s, %d bytes, %v", got, n, err)
		}
		b.SetBytes(size)
		var peak, cpuC, cpuG float64
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			resetPeakRSS(b, pid)
			c0, g0 := cpuSeconds(b, pid), cpuSeconds(b, gw)
			b.StartTimer()
			if n, err := drainBlob(ctx, c, dgst); err != nil || n != size {
				b.Fatalf("read: %d bytes, %v", n, err)
			}
			b.StopTimer()
			cpuC, cpuG = cpuC+cpuSeconds(b, pid)-c0, cpuG+cpuSeconds(b, gw)-g0
			peak = max(peak, peakRSSMiB(b, pid))
		}
		b.ReportMetric(peak, "contentd-peak-MiB")
		cpu(b, cpuC, cpuG, size*int64(b.N))
	})
}

// drainBlob reads blob dgst through the Read stream and returns its size,
// without hashing it, so that only the transfer is measured.
func drainBlob(ctx context.Context, c api.ContentClient, dgst digest.Digest) (int64, error) {
	stream, err := c.Read(ctx, &api.ReadContentRequest{Digest: dgst.String()})
	if err != nil {
		return 0, err
	}
	var n int64
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
		n += int64(len(resp.GetData()))
	}
}
