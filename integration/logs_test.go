package integration

import (
	"os"
	"regexp"
	"strings"
	"testing"
	"time"
)

// logfmtPair is one key=value of a slog text line.
var logfmtPair = regexp.MustCompile(`([A-Za-z_][\w.]*)=("(?:[^"\\]|\\.)*"|\S*)`)

// logLine waits until the daemon's log has a line whose msg is msg and
// returns its fields.
func logLine(t *testing.T, s *Stack, daemon, msg string) map[string]string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		b, err := os.ReadFile(s.LogFile(daemon))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			fields := map[string]string{}
			for _, m := range logfmtPair.FindAllStringSubmatch(line, -1) {
				fields[m[1]] = strings.Trim(m[2], `"`)
			}
			if fields["msg"] == msg {
				return fields
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s's log has no line %q:\n%s", daemon, msg, lastLines(string(b), 40))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestPluginAndShimLogLinesArriveInTheirDaemonsLogs checks that a
// snapshotter plugin's log line (go-plugin's hclog bridged into slog) and a
// shim's (JSON lines read back by taskd) reach snapshotd's and taskd's logs
// as slog lines with their level and fields, and who wrote them.
func TestPluginAndShimLogLinesArriveInTheirDaemonsLogs(t *testing.T) {
	s := startRunStack(t, "logs", nil)
	if out := s.MustCtr(s.ns, "run", "--rm", s.ref, "logged", "echo", "hi"); strings.TrimSpace(out) != "hi" {
		t.Fatalf("ctr run printed %q", out)
	}

	t.Run("the plugin's line", func(t *testing.T) {
		f := logLine(t, s.Stack, "snapshotd", "snapshotter plugin serving")
		want := map[string]string{"level": "INFO", "component": "snapshotd", "snapshotter": "overlayfs", "logger": "snapshotter-overlayfs"}
		for k, v := range want {
			if f[k] != v {
				t.Errorf("%s=%q, want %q (line %v)", k, f[k], v, f)
			}
		}
		if f["pid"] == "" || f["time"] == "" {
			t.Errorf("plugin line lacks the plugin's pid or a time: %v", f)
		}
	})
	t.Run("the shim's line", func(t *testing.T) {
		f := logLine(t, s.Stack, "taskd", "shim serving")
		want := map[string]string{"level": "INFO", "component": "taskd", "namespace": "logs", "container": "logged", "source": "shim", "id": "logged"}
		for k, v := range want {
			if f[k] != v {
				t.Errorf("%s=%q, want %q (line %v)", k, f[k], v, f)
			}
		}
		if f["pid"] == "" {
			t.Errorf("shim line lacks the shim's pid: %v", f)
		}
	})
}
