package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// benchShims are the shims the benchmarks compare: taskd's default for
// io.containerd.runc.v2, containerd's own, and $FLOTILLA_BENCH_SHIM (another
// build of a shim, to compare against) when set, the last two named by path
// (taskd takes an absolute path as a runtime name).
func benchShims(b *testing.B) []struct{ name, runtime string } {
	type shim = struct{ name, runtime string }
	shims := []shim{{"taskd-shim", ""}}
	if p, err := exec.LookPath("containerd-shim-runc-v2"); err == nil {
		shims = append(shims, shim{"containerd-shim-runc-v2", p})
	} else if os.Getenv("CI") == "true" {
		b.Fatalf("containerd-shim-runc-v2 is required in CI: %v", err)
	}
	if p := os.Getenv("FLOTILLA_BENCH_SHIM"); p != "" {
		shims = append(shims, shim{"bench-shim", p})
	}
	return shims
}

func runArgs(runtime string, args ...string) []string {
	out := []string{"run", "--rm"}
	if runtime != "" {
		out = append(out, "--runtime", runtime)
	}
	return append(out, args...)
}

// BenchmarkCtrRunTrue is `ctr run --rm IMAGE ID /bin/true` through the
// gateway: one container's whole life, with each shim.
func BenchmarkCtrRunTrue(b *testing.B) {
	s := startRunStack(b, "bench-run", nil)
	for _, shim := range benchShims(b) {
		b.Run(shim.name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				s.MustCtr(s.ns, runArgs(shim.runtime, s.ref, fmt.Sprintf("%s-%d", shim.name, i), "/bin/true")...)
			}
		})
	}
}

// BenchmarkRuncRunFloor is bare `runc run` of the bundle taskd lays out for
// the same image (its config.json, running /bin/true, on the same rootfs):
// the floor under BenchmarkCtrRunTrue.
func BenchmarkRuncRunFloor(b *testing.B) {
	s := startRunStack(b, "bench-floor", nil)
	s.MustCtr(s.ns, "run", "-d", s.ref, "floor-src", "sleep", "100000")
	s.waitStatus(b, "floor-src", "RUNNING")
	src := filepath.Join(s.Layout.State, "taskd", "tasks", s.ns, "floor-src")
	data, err := os.ReadFile(filepath.Join(src, "config.json"))
	if err != nil {
		b.Fatal(err)
	}
	var spec map[string]any
	if err := json.Unmarshal(data, &spec); err != nil {
		b.Fatal(err)
	}
	process := spec["process"].(map[string]any)
	process["args"] = []string{"/bin/true"}
	process["terminal"] = false
	root := spec["root"].(map[string]any)
	root["path"] = filepath.Join(src, "rootfs")
	bundle := b.TempDir()
	runcRoot := b.TempDir()
	for i := 0; i < b.N; i++ {
		id := fmt.Sprintf("floor%d", i)
		spec["linux"].(map[string]any)["cgroupsPath"] = "/bench-floor/" + id
		data, err := json.Marshal(spec)
		if err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(bundle, "config.json"), data, 0o644); err != nil {
			b.Fatal(err)
		}
		if out, err := exec.Command("runc", "--root", runcRoot, "run", "--bundle", bundle, id).CombinedOutput(); err != nil {
			b.Fatalf("runc run: %v: %s", err, out)
		}
	}
}

// BenchmarkShimRSS reports the resident memory of each shim serving one
// running container (five containers per shim kind).
func BenchmarkShimRSS(b *testing.B) {
	s := startRunStack(b, "bench-rss", nil)
	for _, shim := range benchShims(b) {
		var shims []int
		for i := 0; i < 5; i++ {
			id := fmt.Sprintf("rss-%s-%d", shim.name, i)
			args := []string{"run", "-d"}
			if shim.runtime != "" {
				args = append(args, "--runtime", shim.runtime)
			}
			s.MustCtr(s.ns, append(args, s.ref, id, "sleep", "100000")...)
			pid, _ := parentExe(b, s.waitStatus(b, id, "RUNNING").Pid)
			shims = append(shims, pid)
		}
		b.Run(shim.name, func(b *testing.B) {
			var total float64
			for i := 0; i < b.N; i++ {
				total = 0
				for _, pid := range shims {
					total += rssKB(b, pid)
				}
			}
			b.ReportMetric(total/float64(len(shims)), "RSS-kB/shim")
		})
	}
}

func rssKB(b *testing.B, pid int) float64 {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			if err != nil {
				b.Fatal(err)
			}
			return kb
		}
	}
	b.Fatalf("no VmRSS for pid %d", pid)
	return 0
}

// BenchmarkCtrRun20Concurrently starts 20 `ctr run --rm … /bin/true` at
// once per iteration and waits for all.
func BenchmarkCtrRun20Concurrently(b *testing.B) {
	s := startRunStack(b, "bench-20", nil)
	for i := 0; i < b.N; i++ {
		var wg sync.WaitGroup
		errs := make(chan error, 20)
		for j := 0; j < 20; j++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if out, err := s.Ctr(s.ns, "run", "--rm", s.ref, fmt.Sprintf("c%d-%d", i, j), "/bin/true"); err != nil {
					errs <- fmt.Errorf("%v: %s", err, out)
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			b.Fatal(err)
		}
	}
}
