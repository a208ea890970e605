// Command flotilla-bench runs Flotilla (a process per daemon, and all in one
// flotilla process), containerd 2.4 and Debian's containerd 1.6 side by
// side on temporary directories and measures the same workloads on each (make bench). It prints one table and writes
// results.json and results.png into $BENCH_OUT (default ./bench-results).
//
// Environment: FLOTILLA_BIN (Flotilla's binaries, default ./bin),
// CONTAINERD2_BIN (containerd 2.4.2, its shim and ctr, default
// /opt/containerd-2.4.2/bin), BENCH_OUT, BENCH_QUICK=1 (a few iterations,
// small sizes: a smoke test), BENCH_ONLY (a comma-separated subset of the
// workloads: pss, pull, run, concurrent, blob, snapshot, event),
// BENCH_PPROF=1 (Flotilla's daemons serve Go's profiles on their metrics
// addresses, which are logged, to profile a workload while it runs).
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/flotilla/flotilla/integration/bench"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "flotilla-bench:", err)
		os.Exit(1)
	}
}

func run() error {
	if os.Geteuid() != 0 {
		return errors.New("must run as root (it mounts and runs containers)")
	}
	tools, err := findTools()
	if err != nil {
		return err
	}
	out := envOr("BENCH_OUT", "bench-results")
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	// An interrupt cancels the workloads; bench.Run then stops and removes
	// everything it started before returning.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cfg := bench.DefaultConfig(tools, os.Getenv("BENCH_QUICK") == "1")
	cfg.Pprof = os.Getenv("BENCH_PPROF") == "1"
	if only := os.Getenv("BENCH_ONLY"); only != "" {
		for _, w := range strings.Split(only, ",") {
			if !slices.Contains(bench.Workloads, w) {
				return fmt.Errorf("BENCH_ONLY: unknown workload %q (want some of %s)", w, strings.Join(bench.Workloads, ","))
			}
			cfg.Only = append(cfg.Only, w)
		}
	}
	res, err := bench.Run(ctx, cfg)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("interrupted; everything started was stopped and removed (%w)", err)
		}
		return err
	}
	if err := bench.PrintTable(os.Stdout, res); err != nil {
		return err
	}
	if err := bench.WriteJSON(out, res); err != nil {
		return err
	}
	if err := bench.WriteChart(out, res); err != nil {
		return err
	}
	fmt.Printf("wrote %s and %s\n", filepath.Join(out, "results.json"), filepath.Join(out, "results.png"))
	return nil
}

func findTools() (bench.Tools, error) {
	bin, err := filepath.Abs(envOr("FLOTILLA_BIN", "bin"))
	if err != nil {
		return bench.Tools{}, err
	}
	t := bench.Tools{Bin: bin, Containerd2Dir: envOr("CONTAINERD2_BIN", "/opt/containerd-2.4.2/bin")}
	for _, need := range []struct {
		dst  *string
		name string
	}{{&t.Ctr, "ctr"}, {&t.Containerd16, "containerd"}, {&t.Runc, "runc"}, {&t.Redis, "redis-server"}} {
		p, err := exec.LookPath(need.name)
		if err != nil {
			return t, fmt.Errorf("%s not found (make deps installs it): %w", need.name, err)
		}
		*need.dst = p
	}
	for _, p := range []string{filepath.Join(bin, "gateway"), filepath.Join(bin, "flotilla"), filepath.Join(bin, "flotctl"),
		filepath.Join(t.Containerd2Dir, "containerd"), filepath.Join(t.Containerd2Dir, "containerd-shim-runc-v2"),
		filepath.Join(t.Containerd2Dir, "ctr"), "/usr/bin/containerd-shim-runc-v2", "/usr/bin/docker-registry"} {
		if _, err := os.Stat(p); err != nil {
			return t, fmt.Errorf("%w (make build, make deps)", err)
		}
	}
	return t, nil
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
