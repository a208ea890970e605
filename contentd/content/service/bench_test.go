package service

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	api "github.com/containerd/containerd/api/services/content/v1"
	"github.com/opencontainers/go-digest"

	"github.com/flotilla/flotilla/contentd/internal/testserver"
	"github.com/flotilla/flotilla/services/namespace"
)

// benchSize is the blob size of BenchmarkIngest: $CONTENT_BENCH_MIB MiB,
// 256 MiB by default.
func benchSize(b *testing.B) int64 {
	if v := os.Getenv("CONTENT_BENCH_MIB"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			b.Fatal(err)
		}
		return int64(n) << 20
	}
	return 256 << 20
}

// BenchmarkIngest streams a large generated file into a content server
// running in its own process, through the Write RPC over a unix socket in
// 1 MiB messages (as ctr does), then reads it back with Read. It reports,
// from the same run, the throughput of `sha256sum` on the same file, the
// ratio of the two, and the server's peak RSS.
func BenchmarkIngest(b *testing.B) {
	size := benchSize(b)
	dir := testserver.ShortDir(b)
	file := filepath.Join(dir, "blob")
	writeRandomFile(b, file, size)

	start := time.Now()
	out, err := exec.Command("sha256sum", file).Output()
	if err != nil {
		b.Fatal(err)
	}
	shaSecs := time.Since(start).Seconds()
	dgst := digest.NewDigestFromEncoded(digest.SHA256, strings.Fields(string(out))[0])

	p := startProcess(b, filepath.Join(dir, "root"), filepath.Join(dir, "c.sock"))
	client := api.NewContentClient(connect(b, p.sock))
	ctx := namespace.WithNamespace(context.Background(), "bench")

	var ingestSecs, readSecs float64
	b.SetBytes(size)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		ingestFile(b, ctx, client, file, size, dgst)
		ingestSecs += time.Since(start).Seconds()

		start = time.Now()
		if n := readAllBlob(b, ctx, client, dgst); n != size {
			b.Fatalf("read %d bytes, want %d", n, size)
		}
		readSecs += time.Since(start).Seconds()

		b.StopTimer()
		if _, err := client.Delete(ctx, &api.DeleteContentRequest{Digest: dgst.String()}); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.StopTimer()
	mb := float64(size) / 1e6
	ingest := mb * float64(b.N) / ingestSecs
	sha := mb / shaSecs
	b.ReportMetric(ingest, "ingest-MB/s")
	b.ReportMetric(mb*float64(b.N)/readSecs, "read-MB/s")
	b.ReportMetric(sha, "sha256sum-MB/s")
	b.ReportMetric(ingest/sha, "ingest/sha256sum")
	if rss, err := p.peakRSS(); err == nil {
		b.ReportMetric(float64(rss)/(1<<20), "server-peak-RSS-MiB")
	}
}

func writeRandomFile(b *testing.B, path string, size int64) {
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if _, err := io.CopyN(f, rand.NewChaCha8([32]byte{4}), size); err != nil {
		b.Fatal(err)
	}
}

func ingestFile(b *testing.B, ctx context.Context, client api.ContentClient, path string, size int64, dgst digest.Digest) {
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := client.Write(ctx)
	if err != nil {
		b.Fatal(err)
	}
	ref := "bench-" + strconv.Itoa(b.N)
	if err := stream.Send(&api.WriteContentRequest{Action: stat, Ref: ref, Total: size, Expected: dgst.String()}); err != nil {
		b.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	var offset int64
	for {
		n, err := io.ReadFull(f, buf)
		if n > 0 {
			if err := stream.Send(&api.WriteContentRequest{Action: write, Offset: offset, Data: buf[:n]}); err != nil {
				b.Fatal(err)
			}
			if _, err := stream.Recv(); err != nil {
				b.Fatal(err)
			}
			offset += int64(n)
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			break
		}
		if err != nil {
			b.Fatal(err)
		}
	}
	if err := stream.Send(&api.WriteContentRequest{Action: commit, Offset: offset, Total: size, Expected: dgst.String()}); err != nil {
		b.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		b.Fatal(err)
	}
	stream.CloseSend()
}

func readAllBlob(b *testing.B, ctx context.Context, client api.ContentClient, dgst digest.Digest) int64 {
	stream, err := client.Read(ctx, &api.ReadContentRequest{Digest: dgst.String()})
	if err != nil {
		b.Fatal(err)
	}
	var n int64
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return n
		}
		if err != nil {
			b.Fatal(err)
		}
		n += int64(len(resp.Data))
	}
}
