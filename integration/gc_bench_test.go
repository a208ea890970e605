package integration

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	leasesapi "github.com/containerd/containerd/api/services/leases/v1"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/flotilla/flotilla/flotctl/stack"
)

// BenchmarkGCCollection times one garbage collection over 10,000 blobs and
// 1,000 snapshots (all kept: labelled containerd.io/gc.root, as the mark is
// the part that grows with the stores), on Flotilla and on containerd 1.6,
// each started by the same call, a lease deleted with Sync. A writer
// creating leases in a loop meanwhile reports how long it waited:
// writer-max-ms is its longest call during the collections, writer-p50-ms
// its median.
func BenchmarkGCCollection(b *testing.B) {
	const blobs, snapshots, chain = 10000, 1000, 10
	s := startStackWith(b, func(l *stack.Layout) { l.LogLevel = "info" })
	systems := []struct{ name, socket string }{
		{"flotilla", s.Socket},
		{"containerd1.6", startContainerd(b, requireTool(b, "containerd"), "")},
	}
	for _, sys := range systems {
		conn, err := grpc.NewClient("unix://"+sys.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			b.Fatal(err)
		}
		defer conn.Close()
		ctx := inNamespace(context.Background(), "gc-bench")
		ls := leasesapi.NewLeasesClient(conn)
		// Made under a lease, as clients do: containerd collects after
		// enough writes, and would take an active snapshot before its commit.
		if _, err := ls.Create(ctx, &leasesapi.CreateRequest{ID: "populate"}); err != nil {
			b.Fatal(err)
		}
		if err := populate(metadata.AppendToOutgoingContext(ctx, "containerd-lease", "populate"), conn, blobs, snapshots, chain); err != nil {
			b.Fatalf("%s: %v", sys.name, err)
		}
		b.Run(sys.name, func(b *testing.B) {

			stop := make(chan struct{})
			var mu sync.Mutex
			var waits []time.Duration
			writerDone := make(chan error, 1)
			round := time.Now().UnixNano()
			go func() {
				for i := 0; ; i++ {
					select {
					case <-stop:
						writerDone <- nil
						return
					default:
					}
					start := time.Now()
					_, err := ls.Create(ctx, &leasesapi.CreateRequest{ID: fmt.Sprintf("writer-%d-%d", round, i)})
					if err != nil {
						writerDone <- err
						return
					}
					mu.Lock()
					waits = append(waits, time.Since(start))
					mu.Unlock()
				}
			}()

			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				id := fmt.Sprintf("trigger-%d-%d", round, i)
				if _, err := ls.Create(ctx, &leasesapi.CreateRequest{ID: id}); err != nil {
					b.Fatal(err)
				}
				if _, err := ls.Delete(ctx, &leasesapi.DeleteRequest{ID: id, Sync: true}); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			close(stop)
			if err := <-writerDone; err != nil {
				b.Fatal(err)
			}
			if sys.name == "flotilla" {
				sum, n := heldSeconds(b, "http://"+s.Service("contentd").MetricsAddress+"/metrics")
				if n > 0 {
					b.ReportMetric(sum/n*1000, "held-ms/op")
				}
			}
			slices.Sort(waits)
			if len(waits) > 0 {
				b.ReportMetric(float64(waits[len(waits)-1].Microseconds())/1000, "writer-max-ms")
				b.ReportMetric(float64(waits[len(waits)/2].Microseconds())/1000, "writer-p50-ms")
			}
		})
	}
}

// populate writes blobs blobs and snapshots snapshots (committed, in chains
// of chain), every one labelled containerd.io/gc.root.
func populate(ctx context.Context, conn *grpc.ClientConn, blobs, snapshots, chain int) error {
	root := map[string]string{"containerd.io/gc.root": "bench"}
	cs := contentapi.NewContentClient(conn)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for i := range blobs {
		g.Go(func() error {
			return writeBlob(gctx, cs, fmt.Sprintf("bench-%d", i), []byte(fmt.Sprintf("gc bench blob %d", i)), root)
		})
	}
	if err := g.Wait(); err != nil {
		return fmt.Errorf("write blobs: %w", err)
	}
	sn := snapshotsapi.NewSnapshotsClient(conn)
	g, gctx = errgroup.WithContext(ctx)
	g.SetLimit(8)
	for c := range snapshots / chain {
		g.Go(func() error {
			parent := ""
			for l := range chain {
				name := fmt.Sprintf("bench-%d-%d", c, l)
				if _, err := sn.Prepare(gctx, &snapshotsapi.PrepareSnapshotRequest{Snapshotter: "overlayfs", Key: name + "-active", Parent: parent}); err != nil {
					return err
				}
				if _, err := sn.Commit(gctx, &snapshotsapi.CommitSnapshotRequest{Snapshotter: "overlayfs", Name: name, Key: name + "-active", Labels: root}); err != nil {
					return err
				}
				parent = name
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return fmt.Errorf("make snapshots: %w", err)
	}
	return nil
}

// heldSeconds reads contentd's flotilla_gc_writers_held_seconds histogram:
// its sum and count.
func heldSeconds(b *testing.B, url string) (sum, count float64) {
	resp, err := http.Get(url)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		f := strings.Fields(line)
		if len(f) != 2 {
			continue
		}
		v, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "flotilla_gc_writers_held_seconds_sum":
			sum = v
		case "flotilla_gc_writers_held_seconds_count":
			count = v
		}
	}
	return sum, count
}
