package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// uniqueName gives a name no parallel run uses.
func uniqueName(prefix string) string {
	return fmt.Sprintf("%s-%d", prefix, time.Now().UnixNano())
}

var goClient17 struct {
	once sync.Once
	path string
	err  error
}

// GoClient17 runs containerd's Go client 1.7 (the goclient17 module, built
// once per test binary outside the workspace) against the gateway in
// namespace ns and returns its combined output.
func (s *Stack) GoClient17(ns string, args ...string) (string, error) {
	s.t.Helper()
	requireTool(s.t, "go")
	goClient17.once.Do(func() {
		dir, err := os.MkdirTemp("", "goclient17")
		if err != nil {
			goClient17.err = err
			return
		}
		goClient17.path = filepath.Join(dir, "goclient17")
		cmd := exec.Command("go", "build", "-o", goClient17.path, ".")
		cmd.Dir = "goclient17"
		cmd.Env = append(os.Environ(), "GOWORK=off")
		if out, err := cmd.CombinedOutput(); err != nil {
			goClient17.err = fmt.Errorf("build goclient17: %v\n%s", err, out)
		}
	})
	if goClient17.err != nil {
		s.t.Fatal(goClient17.err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	all := append([]string{"-address", s.Socket, "-namespace", ns}, args...)
	out, err := exec.CommandContext(ctx, goClient17.path, all...).CombinedOutput()
	return string(out), err
}

// TestNamespacesAsContainerdClientsExpect proves with containerd's own
// clients that namespaces behave as in containerd: the Go client 1.7 starts
// with a default namespace that does not exist yet (dockerd does the same
// with "moby") and sets labels on it, and a namespace holding only a
// container or only a snapshot is a namespace that `ctr namespaces ls` lists.
func TestNamespacesAsContainerdClientsExpect(t *testing.T) {
	s := startStack(t)
	listed := func(t *testing.T, ns string) bool {
		t.Helper()
		out := s.MustCtr("default", "namespaces", "ls", "-q")
		return regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(ns) + `$`).MatchString(out)
	}
	client17 := func(t *testing.T, ns string, args ...string) string {
		t.Helper()
		out, err := s.GoClient17(ns, args...)
		if err != nil {
			t.Fatalf("Go client 1.7 %s in %s: %v\n%s", strings.Join(args, " "), ns, err, out)
		}
		return out
	}

	t.Run("Go client 1.7 New with a default namespace not yet created works", func(t *testing.T) {
		ns := uniqueName("moby")
		if out := client17(t, ns, "new"); strings.TrimSpace(out) != "namespace "+ns+" labels" {
			t.Errorf("New answered %q, want the namespace with no labels", out)
		}
		if listed(t, ns) {
			t.Errorf("asking for namespace %s created it", ns)
		}
		client17(t, ns, "set-label", "owner", "test")
		if !listed(t, ns) {
			t.Errorf("namespace %s not listed after a label was set on it", ns)
		}
		if out := client17(t, ns, "new"); strings.TrimSpace(out) != "namespace "+ns+" labels owner=test" {
			t.Errorf("New answered %q, want the label set", out)
		}
	})

	t.Run("ctr namespaces ls lists a namespace holding only a container", func(t *testing.T) {
		ns := uniqueName("only-container")
		client17(t, ns, "create-container", "c1")
		if !listed(t, ns) {
			t.Errorf("namespace %s holding container c1 not listed", ns)
		}
		out, err := s.Ctr("default", "namespaces", "rm", ns)
		if err == nil || !regexp.MustCompile(`must be empty.*containers`).MatchString(out) {
			t.Errorf("rm of %s holding a container: err=%v, out=%s; want refused naming containers", ns, err, out)
		}
		client17(t, ns, "delete-container", "c1")
		s.MustCtr("default", "namespaces", "rm", ns)
		if listed(t, ns) {
			t.Errorf("namespace %s still listed after rm", ns)
		}
	})

	t.Run("ctr namespaces ls lists a namespace holding only a snapshot", func(t *testing.T) {
		ns := uniqueName("only-snapshot")
		s.MustCtr(ns, "snapshots", "--snapshotter", "native", "prepare", "k1")
		if !listed(t, ns) {
			t.Errorf("namespace %s holding snapshot k1 not listed", ns)
		}
		out, err := s.Ctr("default", "namespaces", "rm", ns)
		if err == nil || !regexp.MustCompile(`must be empty.*snapshots`).MatchString(out) {
			t.Errorf("rm of %s holding a snapshot: err=%v, out=%s; want refused naming snapshots", ns, err, out)
		}
		s.MustCtr(ns, "snapshots", "--snapshotter", "native", "rm", "k1")
		s.MustCtr("default", "namespaces", "rm", ns)
		if listed(t, ns) {
			t.Errorf("namespace %s still listed after rm", ns)
		}
	})
}
