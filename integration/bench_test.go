package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla/flotilla/integration/bench"
)

// benchCommand is make bench's program in its quick mode, writing into out.
func benchCommand(t *testing.T, ctx context.Context, out string) *exec.Cmd {
	t.Helper()
	for _, tool := range []string{"runc", "ctr", "containerd", "containerd-shim-runc-v2", "redis-server", "docker-registry"} {
		requireTool(t, tool)
	}
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "flotilla-bench"))
	cmd.Env = append(os.Environ(), "BENCH_QUICK=1", "BENCH_OUT="+out, "FLOTILLA_BIN="+binDir,
		"CONTAINERD2_BIN="+filepath.Dir(ctr2Bin(t)))
	return cmd
}

// skipOneProcessPass skips the bench's tests in make test's one-process
// pass (FLOTILLA_MODE=one): the bench starts Flotilla in both modes itself,
// so that pass would only run the same again.
func skipOneProcessPass(t *testing.T) {
	if os.Getenv("FLOTILLA_MODE") == "one" {
		t.Skip("the bench runs both modes itself; it runs in make test's separate-mode pass")
	}
}

// benchDirs are the bench's temporary directories now present.
func benchDirs() map[string]bool {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "flb*"))
	out := map[string]bool{}
	for _, d := range dirs {
		out[d] = true
	}
	return out
}

// requireNothingLeft fails when a bench directory that was not there before
// remains, or a process or mount under it.
func requireNothingLeft(t *testing.T, before map[string]bool) {
	t.Helper()
	for d := range benchDirs() {
		if !before[d] {
			t.Errorf("the bench left %s behind", d)
		}
	}
	// The concurrent workload's containers (ids bench-cROUND-N), whose
	// processes name no directory of the bench.
	cgroups, _ := filepath.Glob("/proc/[0-9]*/cgroup")
	for _, p := range cgroups {
		if b, _ := os.ReadFile(p); bytes.Contains(b, []byte("/bench-c")) {
			t.Errorf("a container of the bench still runs: %s in %s", filepath.Dir(p), b)
		}
	}
	mountinfo, _ := os.ReadFile("/proc/self/mountinfo")
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for d := range benchDirs() {
		if before[d] {
			continue
		}
		if bytes.Contains(mountinfo, []byte(d+"/")) {
			t.Errorf("mounts under %s remain", d)
		}
		for _, p := range procs {
			if b, _ := os.ReadFile(p); bytes.Contains(b, []byte(d+"/")) {
				t.Errorf("process %s still runs from %s: %q", filepath.Dir(p), d, b)
			}
		}
	}
}

// TestBenchQuick runs make bench's program end to end in its quick mode, so
// that it stays working: every workload is measured on Flotilla and both
// containerds, the table, results.json and results.png are written, and
// nothing it started is left behind.
func TestBenchQuick(t *testing.T) {
	skipOneProcessPass(t)
	out := t.TempDir()
	before := benchDirs()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	output, err := benchCommand(t, ctx, out).CombinedOutput()
	if err != nil {
		t.Fatalf("flotilla-bench: %v\n%s", err, output)
	}
	requireNothingLeft(t, before)

	data, err := os.ReadFile(filepath.Join(out, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	var res bench.Results
	if err := json.Unmarshal(data, &res); err != nil {
		t.Fatalf("results.json: %v", err)
	}
	if !res.Quick || res.Machine.CPUs == 0 || res.Machine.Kernel == "" || res.Machine.MemoryMiB == 0 {
		t.Errorf("results.json does not describe a quick run on this machine: %+v", res.Machine)
	}
	var keys []string
	for _, s := range res.Systems {
		if s.Version == "" {
			t.Errorf("system %s has no version", s.Key)
		}
		keys = append(keys, s.Key)
	}
	for _, want := range []string{"flotilla", "flotilla1", "containerd2.4", "containerd1.6"} {
		if !strings.Contains(strings.Join(keys, " "), want) {
			t.Errorf("systems %v lack %s", keys, want)
		}
	}
	wantRows := []string{"idle PSS", "cold pull busybox", "cold pull layers", "cold pull large", "ctr run --rm",
		"created+started concurrently", "removed concurrently", "shim PSS", "ingest", "read", "snapshot", "event"}
	for _, want := range wantRows {
		var row *bench.Row
		for _, r := range res.Rows {
			if strings.Contains(r.Name, want) {
				row = r
			}
		}
		if row == nil {
			t.Errorf("results.json has no %q workload", want)
			continue
		}
		if !bytes.Contains(output, []byte(row.Name)) {
			t.Errorf("the table has no row %q:\n%s", row.Name, output)
		}
		for _, k := range keys {
			if len(row.Samples[k]) == 0 || row.Median[k] <= 0 {
				t.Errorf("%s: no positive median for %s: %v", row.Name, k, row.Samples[k])
			}
		}
		for _, f := range []string{"flotilla", "flotilla1"} {
			for _, c := range []string{"containerd2.4", "containerd1.6"} {
				if row.Ratios[f+"/"+c] <= 0 {
					t.Errorf("%s: no ratio of %s against %s: %v", row.Name, f, c, row.Ratios)
				}
			}
		}
	}
	f, err := os.Open(filepath.Join(out, "results.png"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cfg, err := png.DecodeConfig(f)
	if err != nil || cfg.Width < 600 || cfg.Height < 400 {
		t.Errorf("results.png is not a readable chart: %v %+v", err, cfg)
	}
}

// TestBenchInterrupted: SIGINT while the systems run stops them and removes
// every process, mount and directory the bench started or made.
func TestBenchInterrupted(t *testing.T) {
	skipOneProcessPass(t)
	out := t.TempDir()
	before := benchDirs()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := benchCommand(t, ctx, out)
	// Straight to the workload that leaves containers running.
	cmd.Env = append(cmd.Env, "BENCH_ONLY=concurrent")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var log strings.Builder
	sc := bufio.NewScanner(stderr)
	interrupted := false
	for sc.Scan() {
		log.WriteString(sc.Text() + "\n")
		// Containers are running on every system by then.
		if !interrupted && strings.Contains(sc.Text(), "containers at once") {
			time.AfterFunc(time.Second, func() { cmd.Process.Signal(syscall.SIGINT) })
			interrupted = true
		}
	}
	err = cmd.Wait()
	if !interrupted {
		t.Fatalf("the bench never reached the concurrent containers: %v\n%s", err, log.String())
	}
	if err == nil {
		t.Fatalf("an interrupted bench exited 0:\n%s", log.String())
	}
	if !strings.Contains(log.String(), "interrupted") {
		t.Errorf("the bench does not say it was interrupted:\n%s", log.String())
	}
	requireNothingLeft(t, before)
	if _, err := os.Stat(filepath.Join(out, "results.json")); err == nil {
		t.Errorf("an interrupted bench wrote results.json")
	}
}
