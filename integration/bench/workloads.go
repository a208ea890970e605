package bench

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	digest "github.com/opencontainers/go-digest"
	"google.golang.org/grpc"

	"github.com/flotilla/flotilla/integration/imagekit"
)

// Row is one line of the results: a workload's samples on every system.
type Row struct {
	// Name says what was measured.
	Name string `json:"workload"`
	// Unit of every sample: "ms" or "MiB".
	Unit string `json:"unit"`
	// Samples by system key, in the order they were taken.
	Samples map[string][]float64 `json:"samples"`
	// FloorName says what the floor is ("runc run", "sha256sum"), if any.
	FloorName string `json:"floor_name,omitempty"`
	// Floor are the floor's samples: the same work without a container system.
	Floor []float64 `json:"floor_samples,omitempty"`

	// Breakdown, for memory rows, is the last sample's PSS of each process
	// by system key and process name (MiB).
	Breakdown map[string]map[string]float64 `json:"breakdown,omitempty"`

	// Median, P95 and Ratios are filled in by summarize.
	Median      map[string]float64 `json:"median"`
	P95         map[string]float64 `json:"p95"`
	FloorMedian float64            `json:"floor_median,omitempty"`
	// Ratios is Flotilla's median over each containerd's, keyed
	// "flotilla/containerd2.4" (above 1: Flotilla is slower or bigger).
	Ratios map[string]float64 `json:"ratios"`
}

func newRow(name, unit string) *Row {
	return &Row{Name: name, Unit: unit, Samples: map[string][]float64{}}
}

func (r *Row) add(s *System, v float64) { r.Samples[s.Key] = append(r.Samples[s.Key], v) }

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// alternate runs fn n times on every system, round-robin (A B C A B C …),
// so that drift of the machine over time falls on all systems alike.
func alternate(ctx context.Context, systems []*System, n int, fn func(ctx context.Context, s *System, i int) error) error {
	for i := 0; i < n; i++ {
		for _, s := range systems {
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := fn(ctx, s, i); err != nil {
				return fmt.Errorf("%s: %w", s.Name, err)
			}
		}
	}
	return nil
}

func timed(fn func() error) (time.Duration, error) {
	start := time.Now()
	err := fn()
	return time.Since(start), err
}

// images are the test-image kit's images the bench serves and pulls.
type images struct {
	refs map[string]string // kind → reference in the registry
	// busybox is the runnable image's reference, and its layer for the
	// floor's bundle.
	busybox      string
	busyboxLayer imagekit.Blob
}

// pushImages builds the kit's busybox, multi-layer and large-layer images
// and pushes them to the registry at addr.
func pushImages(ctx context.Context, addr, tmp string, largeSize int64) (*images, error) {
	out := &images{refs: map[string]string{}}
	for _, kind := range []imagekit.Kind{imagekit.KindBusybox, imagekit.KindLayers, imagekit.KindLarge} {
		img, err := imagekit.Build(kind, imagekit.WithSize(largeSize), imagekit.WithTempDir(tmp))
		if err != nil {
			return nil, fmt.Errorf("build %s image: %w", kind, err)
		}
		ref := fmt.Sprintf("%s/bench/%s:1", addr, kind)
		err = img.Push(ctx, ref)
		if kind == imagekit.KindBusybox {
			out.busybox = ref
			out.busyboxLayer = img.Layers[0].Blob
			// Its blob lives in memory, so it outlives Close.
		}
		img.Close()
		if err != nil {
			return nil, fmt.Errorf("push %s: %w", ref, err)
		}
		out.refs[string(kind)] = ref
	}
	return out, nil
}

// warmUp pulls busybox and runs one container on every system, as make demo
// does, so that first-use costs fall outside the measurements.
func warmUp(ctx context.Context, systems []*System, imgs *images) error {
	return alternate(ctx, systems, 1, func(ctx context.Context, s *System, i int) error {
		if err := s.pull(ctx, imgs.busybox); err != nil {
			return err
		}
		return s.ctrRun(ctx, imgs.busybox, "bench-warmup")
	})
}

// ctrRun runs `ctr run --rm IMAGE id /bin/true` with Debian's ctr.
func (s *System) ctrRun(ctx context.Context, ref, id string) error {
	_, err := run(ctx, s.ctr, s.ctrRunArgs([]string{"--rm"}, ref, id, "/bin/true")...)
	return err
}

// ctrRunArgs is ctr's command line to run cmd in container id of ref, with
// flags, on the system's own FIFO directory and runc root.
func (s *System) ctrRunArgs(flags []string, ref, id string, cmd ...string) []string {
	args := append([]string{"--address", s.Socket, "-n", Namespace, "run", "--fifo-dir", s.fifoDir}, flags...)
	if s.runcRoot != "" {
		args = append(args, "--runc-root", s.runcRoot)
	}
	return append(append(args, ref, id), cmd...)
}

// idlePSS sums the PSS of every process of each system at idle, n times a
// second apart.
func idlePSS(ctx context.Context, systems []*System, name string, n int) (*Row, error) {
	row := newRow(name, "MiB")
	err := alternate(ctx, systems, n, func(ctx context.Context, s *System, i int) error {
		if i > 0 && s == systems[0] {
			select {
			case <-time.After(time.Second):
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		pids, err := s.daemons()
		if err != nil {
			return err
		}
		v, err := sumPSSMiB(pids)
		if err != nil {
			return err
		}
		row.add(s, v)
		if row.Breakdown == nil {
			row.Breakdown = map[string]map[string]float64{}
		}
		row.Breakdown[s.Key] = pssByName(pids)
		return nil
	})
	return row, err
}

// coldPulls pulls each image n times on every system, every store of the
// bench's namespace emptied before each pull.
func coldPulls(ctx context.Context, systems []*System, conns map[string]*grpc.ClientConn, imgs *images, n int) ([]*Row, error) {
	var rows []*Row
	for _, kind := range []imagekit.Kind{imagekit.KindBusybox, imagekit.KindLayers, imagekit.KindLarge} {
		row := newRow(fmt.Sprintf("cold pull %s image", kind), "ms")
		ref := imgs.refs[string(kind)]
		err := alternate(ctx, systems, n, func(ctx context.Context, s *System, i int) error {
			if err := emptyStores(ctx, conns[s.Key]); err != nil {
				return err
			}
			d, err := timed(func() error { return s.pull(ctx, ref) })
			if err != nil {
				return err
			}
			row.add(s, ms(d))
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("%s: %w", row.Name, err)
		}
		rows = append(rows, row)
	}
	// Leave the stores as the next workloads want them: busybox only.
	return rows, alternate(ctx, systems, 1, func(ctx context.Context, s *System, i int) error {
		if err := emptyStores(ctx, conns[s.Key]); err != nil {
			return err
		}
		return s.pull(ctx, imgs.busybox)
	})
}

// runLatency times n `ctr run --rm` of busybox's /bin/true on every system,
// and `runc run` of the same root filesystem as the floor.
func runLatency(ctx context.Context, systems []*System, imgs *images, tools Tools, dir string, n int) (*Row, error) {
	row := newRow("ctr run --rm busybox /bin/true", "ms")
	row.FloorName = "runc run"
	bundle, err := makeBundle(ctx, dir, imgs.busyboxLayer)
	if err != nil {
		return nil, err
	}
	runcRoot := filepath.Join(dir, "runc")
	err = alternate(ctx, systems, n, func(ctx context.Context, s *System, i int) error {
		d, err := timed(func() error { return s.ctrRun(ctx, imgs.busybox, fmt.Sprintf("bench-run-%d", i)) })
		if err != nil {
			return err
		}
		row.add(s, ms(d))
		if s == systems[len(systems)-1] {
			d, err := timed(func() error {
				_, err := run(ctx, tools.Runc, "--root", runcRoot, "run", "--bundle", bundle, fmt.Sprintf("floor-%d", i))
				return err
			})
			if err != nil {
				return fmt.Errorf("floor: %w", err)
			}
			row.Floor = append(row.Floor, ms(d))
		}
		return nil
	})
	return row, err
}

// makeBundle unpacks the busybox layer into an OCI bundle under dir whose
// process is /bin/true, from runc's default spec.
func makeBundle(ctx context.Context, dir string, layer imagekit.Blob) (string, error) {
	bundle := filepath.Join(dir, "bundle")
	rootfs := filepath.Join(bundle, "rootfs")
	if err := os.MkdirAll(rootfs, 0o755); err != nil {
		return "", err
	}
	layerPath := filepath.Join(dir, "busybox-layer.tar.gz")
	r, err := layer.Open()
	if err != nil {
		return "", err
	}
	f, err := os.Create(layerPath)
	if err == nil {
		_, err = io.Copy(f, r)
		f.Close()
	}
	r.Close()
	if err != nil {
		return "", err
	}
	if _, err := run(ctx, "tar", "-xzf", layerPath, "-C", rootfs); err != nil {
		return "", err
	}
	if _, err := run(ctx, "runc", "spec", "--bundle", bundle); err != nil {
		return "", err
	}
	specPath := filepath.Join(bundle, "config.json")
	data, err := os.ReadFile(specPath)
	if err != nil {
		return "", err
	}
	var spec map[string]any
	if err := json.Unmarshal(data, &spec); err != nil {
		return "", fmt.Errorf("runc spec: %w", err)
	}
	proc := spec["process"].(map[string]any)
	proc["terminal"] = false
	proc["args"] = []string{"/bin/true"}
	if data, err = json.Marshal(spec); err != nil {
		return "", err
	}
	return bundle, os.WriteFile(specPath, data, 0o644)
}

// concurrentContainers starts count containers at once on every system (ctr
// run -d), measures the PSS of their shims while they run, then removes them
// all at once; n rounds.
func concurrentContainers(ctx context.Context, systems []*System, imgs *images, count, n int) ([]*Row, error) {
	start := newRow(fmt.Sprintf("%d containers created+started concurrently", count), "ms")
	remove := newRow(fmt.Sprintf("%d containers removed concurrently", count), "ms")
	shim := newRow("shim PSS per running container", "MiB")
	err := alternate(ctx, systems, n, func(ctx context.Context, s *System, i int) error {
		ids := make([]string, count)
		for j := range ids {
			ids[j] = fmt.Sprintf("bench-c%d-%d", i, j) // tests look for "/bench-c" in cgroups
		}
		d, err := timed(func() error {
			return parallel(ids, func(id string) error {
				_, err := run(ctx, s.ctr, s.ctrRunArgs([]string{"-d", "--null-io"}, imgs.busybox, id, "sleep", "3600")...)
				return err
			})
		})
		if err != nil {
			return err
		}
		start.add(s, ms(d))
		pss, err := sumPSSMiB(s.shims())
		if err != nil {
			return err
		}
		shim.add(s, pss/float64(count))
		d, err = timed(func() error {
			return parallel(ids, func(id string) error {
				base := []string{"--address", s.Socket, "-n", Namespace}
				if _, err := run(ctx, s.ctr, append(base, "task", "rm", "-f", id)...); err != nil {
					return err
				}
				_, err := run(ctx, s.ctr, append(base, "containers", "rm", id)...)
				return err
			})
		})
		if err != nil {
			return err
		}
		remove.add(s, ms(d))
		return nil
	})
	return []*Row{start, remove, shim}, err
}

// parallel runs fn for every id at once and returns the first error.
func parallel(ids []string, fn func(id string) error) error {
	errs := make(chan error, len(ids))
	var wg sync.WaitGroup
	for _, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- fn(id)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// blobFile writes size bytes of the kit's pseudo-random data to dir/blob
// and returns its path and digest.
func blobFile(dir string, size int64) (string, digest.Digest, error) {
	path := filepath.Join(dir, "blob")
	f, err := os.Create(path)
	if err != nil {
		return "", "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(f, h), imagekit.LargeContent(size, 7)); err != nil {
		return "", "", fmt.Errorf("write %s: %w", path, err)
	}
	return path, digest.NewDigest(digest.SHA256, h), f.Close()
}

// blobs ingests and reads back a blob of size bytes n times on every
// system; sha256sum of the same file is the floor of both.
func blobs(ctx context.Context, systems []*System, conns map[string]*grpc.ClientConn, dir string, size int64, n int) ([]*Row, error) {
	label := fmt.Sprintf("%d MiB", size>>20)
	if size >= 1<<30 {
		label = fmt.Sprintf("%g GiB", float64(size)/(1<<30))
	}
	ingestRow := newRow("ingest "+label+" blob", "ms")
	readRow := newRow("read "+label+" blob", "ms")
	ingestRow.FloorName, readRow.FloorName = "sha256sum", "sha256sum"
	path, dgst, err := blobFile(dir, size)
	if err != nil {
		return nil, err
	}
	defer os.Remove(path)
	err = alternate(ctx, systems, n, func(ctx context.Context, s *System, i int) error {
		conn := conns[s.Key]
		err := withLease(ctx, conn, fmt.Sprintf("bench-blob-%d", i), func(lctx context.Context) error {
			d, err := timed(func() error { return ingest(lctx, conn, path, size, dgst, fmt.Sprintf("bench-blob-%d", i)) })
			if err != nil {
				return err
			}
			ingestRow.add(s, ms(d))
			d, err = timed(func() error { return readBlob(lctx, conn, dgst, size) })
			if err != nil {
				return err
			}
			readRow.add(s, ms(d))
			return deleteBlob(lctx, conn, dgst)
		})
		if err != nil {
			return err
		}
		if s == systems[len(systems)-1] {
			d, err := timed(func() error { _, err := run(ctx, "sha256sum", path); return err })
			if err != nil {
				return fmt.Errorf("floor: %w", err)
			}
			ingestRow.Floor = append(ingestRow.Floor, ms(d))
			readRow.Floor = append(readRow.Floor, ms(d))
		}
		return nil
	})
	return []*Row{ingestRow, readRow}, err
}

// snapshotCycles times n Prepare/Commit/Remove cycles on every system, one
// cycle per system in turn, all under one lease per system.
func snapshotCycles(ctx context.Context, systems []*System, conns map[string]*grpc.ClientConn, n int) (*Row, error) {
	row := newRow("snapshot Prepare+Commit+Remove cycle", "ms")
	// Nest the systems' leases, then alternate inside the innermost.
	var nest func(i int, ctxs map[string]context.Context) error
	nest = func(i int, ctxs map[string]context.Context) error {
		if i == len(systems) {
			return alternate(ctx, systems, n, func(_ context.Context, s *System, j int) error {
				snaps := snapshotsapi.NewSnapshotsClient(conns[s.Key])
				d, err := timed(func() error { return snapshotCycle(ctxs[s.Key], snaps, fmt.Sprintf("bench-snap-%d", j)) })
				if err != nil {
					return err
				}
				row.add(s, ms(d))
				return nil
			})
		}
		s := systems[i]
		return withLease(ctx, conns[s.Key], "bench-snapshots", func(lctx context.Context) error {
			ctxs[s.Key] = lctx
			return nest(i+1, ctxs)
		})
	}
	return row, nest(0, map[string]context.Context{})
}

// eventLatency publishes n events one at a time on every system and times
// each until its subscriber has it.
func eventLatency(ctx context.Context, systems []*System, n int) (*Row, error) {
	row := newRow("event publish→subscriber latency", "ms")
	probes := map[string]*eventProbe{}
	defer func() {
		for _, p := range probes {
			p.close()
		}
	}()
	for _, s := range systems {
		p, err := newEventProbe(ctx, s.publishSocket, s.subscribeSocket)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", s.Name, err)
		}
		probes[s.Key] = p
	}
	err := alternate(ctx, systems, n, func(ctx context.Context, s *System, i int) error {
		d, err := probes[s.Key].roundTrip(ctx, fmt.Sprintf("bench-%d", i), 10*time.Second)
		if err != nil {
			return err
		}
		row.add(s, ms(d))
		return nil
	})
	return row, err
}
