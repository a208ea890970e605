// Package bench measures Flotilla, in both its modes (a process per daemon,
// and one flotilla process), against containerd 2.4 and Debian's
// containerd 1.6 on the same machine: every system on its own temporary
// root, state and sockets, the test-image kit's images served from a local
// docker-registry, each workload run on all systems in turn (A B C A B C …)
// so that the machine's drift falls on all of them alike. It is what
// `make bench` runs (cmd/flotilla-bench).
package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc"

	"github.com/flotilla/flotilla/flotctl/stack"
	"github.com/flotilla/flotilla/integration/imagekit"
)

// Config sizes the workloads.
type Config struct {
	Tools Tools
	// Quick runs a few iterations of everything with small sizes: a smoke
	// test of the bench, not a measurement.
	Quick bool
	// Pulls is how many cold pulls of each image every system does.
	Pulls int
	// Runs is how many ctr run --rm every system does (≥ 30 for a p95).
	Runs int
	// Concurrency containers are started at once, Rounds times.
	Concurrency, Rounds int
	// BlobSize is the blob ingested and read BlobRounds times.
	BlobSize   int64
	BlobRounds int
	// LargeLayer is the payload of the large-layer image.
	LargeLayer int64
	// SnapshotCycles and Events are the sample counts of those workloads.
	SnapshotCycles, Events int
	// PSSSamples are taken of each system at idle, a second apart.
	PSSSamples int
	// Only, when not empty, names the workloads to run (Workloads); the
	// others are skipped.
	Only []string
	// Pprof serves Go's profiles on every Flotilla daemon's metrics
	// address (logged at start), to profile a workload while it runs.
	Pprof bool
	// Log receives progress lines.
	Log io.Writer
}

// Workloads are the names Config.Only takes, in the order they run.
var Workloads = []string{"pss", "pull", "run", "concurrent", "blob", "snapshot", "event"}

// DefaultConfig is the full bench, or the quick one.
func DefaultConfig(tools Tools, quick bool) Config {
	if quick {
		return Config{Tools: tools, Quick: true, Pulls: 1, Runs: 3, Concurrency: 4, Rounds: 1,
			BlobSize: 32 << 20, BlobRounds: 1, LargeLayer: 8 << 20, SnapshotCycles: 10, Events: 10, PSSSamples: 1, Log: os.Stderr}
	}
	return Config{Tools: tools, Pulls: 5, Runs: 30, Concurrency: 20, Rounds: 3,
		BlobSize: 1 << 30, BlobRounds: 3, LargeLayer: 256 << 20, SnapshotCycles: 200, Events: 200, PSSSamples: 3, Log: os.Stderr}
}

// Results is what a bench run measured, as results.json holds it.
type Results struct {
	Machine  Machine        `json:"machine"`
	Quick    bool           `json:"quick"`
	Systems  []SystemResult `json:"systems"`
	Rows     []*Row         `json:"workloads"`
	Started  time.Time      `json:"started"`
	Finished time.Time      `json:"finished"`
}

// SystemResult describes one system under test.
type SystemResult struct {
	Key      string `json:"key"`
	Name     string `json:"name"`
	Short    string `json:"short"`
	Flotilla bool   `json:"flotilla"`
	Version  string `json:"version"`
}

// Run starts every system, runs every workload and stops and removes all it
// started before it returns, also when ctx is cancelled (an interrupt).
func Run(ctx context.Context, cfg Config) (*Results, error) {
	res := &Results{Quick: cfg.Quick, Started: time.Now().UTC()}
	var cl Cleanups
	defer cl.Run()
	logf := func(format string, args ...any) { fmt.Fprintf(cfg.Log, "flotilla-bench: "+format+"\n", args...) }

	// Short: unix socket paths must stay under 108 bytes.
	dir, err := os.MkdirTemp("", "flb")
	if err != nil {
		return nil, err
	}
	cl.Push(func() {
		if err := reap(dir); err != nil {
			logf("clean up %s: %v", dir, err)
		}
	})
	sub := func(name string) (string, error) {
		p := filepath.Join(dir, name)
		return p, os.MkdirAll(p, 0o711)
	}

	logf("registry and test images")
	regDir, err := sub("registry")
	if err != nil {
		return nil, err
	}
	reg, err := imagekit.RunRegistry(ctx, regDir)
	if err != nil {
		return nil, err
	}
	cl.Push(func() { reg.Stop() })
	imgs, err := pushImages(ctx, reg.Addr, regDir, cfg.LargeLayer)
	if err != nil {
		return nil, err
	}

	var systems []*System
	starters := []struct {
		name  string
		start func(dir string) (*System, error)
	}{
		{"fl", func(d string) (*System, error) {
			return startFlotilla(ctx, &cl, cfg.Tools, d, stack.Separate, cfg.Pprof, logf)
		}},
		{"f1", func(d string) (*System, error) {
			return startFlotilla(ctx, &cl, cfg.Tools, d, stack.OneProcess, cfg.Pprof, logf)
		}},
		{"c24", func(d string) (*System, error) {
			t := cfg.Tools
			return startContainerd(ctx, &cl, t, "containerd2.4", "containerd 2.4", "c2.4", filepath.Join(t.Containerd2Dir, "containerd"),
				t.Containerd2Dir, filepath.Join(t.Containerd2Dir, "ctr"), d)
		}},
		{"c16", func(d string) (*System, error) {
			t := cfg.Tools
			return startContainerd(ctx, &cl, t, "containerd1.6", "containerd 1.6", "c1.6", t.Containerd16, "", t.Ctr, d)
		}},
	}
	for _, st := range starters {
		d, err := sub(st.name)
		if err != nil {
			return nil, err
		}
		s, err := st.start(d)
		if err != nil {
			return nil, err
		}
		logf("%s up: %s", s.Name, s.Version)
		cl.Push(func() { killContainers(s) })
		systems = append(systems, s)
		res.Systems = append(res.Systems, SystemResult{Key: s.Key, Name: s.Name, Short: s.Short, Flotilla: s.Flotilla, Version: s.Version})
	}
	conns := map[string]*grpc.ClientConn{}
	for _, s := range systems {
		conn, err := dial(s.Socket)
		if err != nil {
			return nil, err
		}
		defer conn.Close()
		conns[s.Key] = conn
	}

	add := func(rows ...*Row) { res.Rows = append(res.Rows, rows...) }
	logf("warm-up: pull busybox and run it once on each system")
	if err := warmUp(ctx, systems, imgs); err != nil {
		return nil, fmt.Errorf("warm-up: %w", err)
	}
	want := func(name string) bool { return len(cfg.Only) == 0 || slices.Contains(cfg.Only, name) }
	if want("pss") {
		logf("idle PSS")
		row, err := idlePSS(ctx, systems, "idle PSS, all processes", cfg.PSSSamples)
		if err != nil {
			return nil, err
		}
		add(row)
	}
	if want("pull") {
		logf("cold pulls (%d of each image per system)", cfg.Pulls)
		rows, err := coldPulls(ctx, systems, conns, imgs, cfg.Pulls)
		if err != nil {
			return nil, err
		}
		add(rows...)
	}
	if want("run") {
		logf("ctr run --rm latency (%d runs per system)", cfg.Runs)
		floorDir, err := sub("floor")
		if err != nil {
			return nil, err
		}
		cl.Push(func() { deleteRuncContainers(filepath.Join(floorDir, "runc")) })
		row, err := runLatency(ctx, systems, imgs, cfg.Tools, floorDir, cfg.Runs)
		if err != nil {
			return nil, fmt.Errorf("ctr run: %w", err)
		}
		add(row)
	}
	if want("concurrent") {
		logf("%d containers at once (%d rounds)", cfg.Concurrency, cfg.Rounds)
		rows, err := concurrentContainers(ctx, systems, imgs, cfg.Concurrency, cfg.Rounds)
		if err != nil {
			return nil, fmt.Errorf("concurrent containers: %w", err)
		}
		add(rows...)
	}
	if want("blob") {
		logf("blob ingest and read (%d MiB, %d rounds)", cfg.BlobSize>>20, cfg.BlobRounds)
		rows, err := blobs(ctx, systems, conns, dir, cfg.BlobSize, cfg.BlobRounds)
		if err != nil {
			return nil, fmt.Errorf("blobs: %w", err)
		}
		add(rows...)
	}
	if want("snapshot") {
		logf("snapshot cycles (%d per system)", cfg.SnapshotCycles)
		row, err := snapshotCycles(ctx, systems, conns, cfg.SnapshotCycles)
		if err != nil {
			return nil, fmt.Errorf("snapshots: %w", err)
		}
		add(row)
	}
	if want("event") {
		logf("event latency (%d events per system)", cfg.Events)
		row, err := eventLatency(ctx, systems, cfg.Events)
		if err != nil {
			return nil, fmt.Errorf("events: %w", err)
		}
		add(row)
	}

	res.Machine = describeMachine(ctx, cfg.Tools)
	res.Finished = time.Now().UTC()
	summarize(res)
	return res, nil
}

// killContainers deletes, through runc, every container the system's shims
// may have left running (an interrupt amid a workload): killing a shim does
// not stop its container.
func killContainers(s *System) {
	root := s.runcRoot
	if root == "" {
		root = filepath.Join(s.Dir, "state", "runc")
	}
	namespaces, _ := filepath.Glob(filepath.Join(root, "*"))
	for _, ns := range namespaces {
		deleteRuncContainers(ns)
	}
}

// deleteRuncContainers force-deletes every container under runc root.
func deleteRuncContainers(root string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := run(ctx, "runc", "--root", root, "list", "-q")
	if err != nil {
		return
	}
	for _, id := range strings.Fields(out) {
		run(ctx, "runc", "--root", root, "delete", "--force", id)
	}
}
