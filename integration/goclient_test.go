package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/flotilla/flotilla/integration/imagekit"
)

// goClients are containerd's Go clients under test, each a test module of
// its own under goclient/ (the 1.7 and 2.x clients need different versions
// of containerd's API module, so they cannot share a go.mod or the
// workspace).
var goClients = []struct{ name, dir string }{
	{"containerd1.7", "goclient/v1"},
	{"containerd2.4", "goclient/v2"},
}

// TestGoClient runs containerd's Go clients 1.7 and 2.x (goclient/v1 and
// goclient/v2, built here with GOWORK=off) against Flotilla and Debian's
// containerd 1.6: New with a default namespace, pull with unpack, tasks
// with cio.LogFile and cio.BinaryIO, Wait, events, leases, client-side
// export and import. Each of the client's cases is a subtest.
func TestGoClient(t *testing.T) {
	requireTool(t, "runc")
	goTool := requireTool(t, "go")
	addr := imagekit.StartRegistry(t)
	img, err := imagekit.BuildBusybox()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { img.Close() })
	ref := addr + "/busybox:goclient"
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := img.Push(ctx, ref); err != nil {
		t.Fatal(err)
	}
	bins := t.TempDir()
	for _, kind := range clientBackends {
		t.Run(kind.name, func(t *testing.T) {
			b := kind.start(t)
			for i, client := range goClients {
				t.Run(client.name, func(t *testing.T) {
					bin := filepath.Join(bins, filepath.Base(client.dir)+".test")
					if _, err := os.Stat(bin); err != nil {
						buildGoClient(t, goTool, client.dir, bin)
					}
					args := []string{"-test.v", "-test.timeout", "5m", "-address", b.Socket, "-ref", ref,
						"-namespace", fmt.Sprintf("goclient-%d-%d", i, os.Getpid())}
					runGoTestBinary(t, bin, args...)
				})
			}
		})
	}
}

// TestGoClientV1IsGenerated: the cases both Go clients run are written once,
// in goclient/v2, and goclient/generate-v1.sh makes the 1.7 client's copy.
func TestGoClientV1IsGenerated(t *testing.T) {
	requireTool(t, "gofmt")
	if out, err := exec.Command("sh", "goclient/generate-v1.sh", "-check").CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
}

// buildGoClient compiles the test module in dir (relative to the
// integration module) into the test binary out, outside the workspace.
func buildGoClient(t *testing.T, goTool, dir, out string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goTool, "test", "-c", "-o", out, ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOWORK=off")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", dir, err, b)
	}
}

var goTestResult = regexp.MustCompile(`^\s*--- (PASS|FAIL|SKIP): (\S+)/(\S+) `)

// runGoTestBinary runs a compiled Go test binary (with -test.v) and turns
// each of its subtests into a subtest of t that passes, fails or skips as
// it did, with its output.
func runGoTestBinary(t *testing.T, bin string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = t.TempDir()
	cmd.Stdout, cmd.Stderr = &out, &out
	runErr := cmd.Run()
	output := map[string][]string{}
	var current string
	var results [][]string
	for _, line := range strings.Split(out.String(), "\n") {
		if name, ok := strings.CutPrefix(line, "=== RUN   "); ok {
			current = name
			continue
		}
		if m := goTestResult.FindStringSubmatch(line); m != nil {
			results = append(results, m)
			continue
		}
		output[current] = append(output[current], line)
	}
	if len(results) == 0 {
		t.Fatalf("%s ran no case: %v\n%s", filepath.Base(bin), runErr, out.String())
	}
	for _, m := range results {
		status, name := m[1], m[2]+"/"+m[3]
		t.Run(m[3], func(t *testing.T) {
			text := strings.Join(output[name], "\n")
			switch status {
			case "FAIL":
				t.Error(text)
			case "SKIP":
				t.Skip(text)
			}
		})
	}
	if runErr != nil && !t.Failed() {
		t.Errorf("%s: %v\n%s", filepath.Base(bin), runErr, lastLines(out.String(), 30))
	}
}
