package integration

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla/flotilla/integration/imagekit"
)

// Ctr2 runs containerd 2.x's ctr against the gateway in namespace ns and
// returns its combined output.
func (s *Stack) Ctr2(ns string, args ...string) (string, error) {
	s.t.Helper()
	path := ctr2Bin(s.t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	all := append([]string{"--address", s.Socket, "--namespace", ns}, args...)
	out, err := exec.CommandContext(ctx, path, all...).CombinedOutput()
	return string(out), err
}

// MustCtr2 is Ctr2 that fails the test on error.
func (s *Stack) MustCtr2(ns string, args ...string) string {
	s.t.Helper()
	out, err := s.Ctr2(ns, args...)
	if err != nil {
		s.t.Fatalf("ctr 2.x %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func TestTransferPullOfEveryImageUnpacksAndRuns(t *testing.T) {
	requireRootForMounts(t)
	ctr2Bin(t)
	reg := imagekit.StartRegistry(t)
	s := startStack(t)
	stopPluginsOnCleanup(t, s)
	images := unpackImages()
	for _, ti := range images {
		p := pushImage(t, reg, ti.name, ti.build)
		t.Run(ti.name+" pulls through Transfer, unpacked as a committed chain", func(t *testing.T) {
			ns := "transfer-pull"
			out := s.MustCtr2(ns, "images", "pull", "--plain-http", p.ref)
			if !strings.Contains(out, "saved") && !strings.Contains(out, "done") {
				t.Logf("ctr pull output:\n%s", out)
			}
			line := checkLine(s.MustCtr2(ns, "images", "check"), p.ref)
			f := strings.Fields(line)
			if len(f) < 6 || f[3] != "complete" {
				t.Errorf("images check: %q, want complete", line)
			}
			chain := chainIDs(p.img)
			parent := ""
			for i, id := range chain {
				info := infoOf(t, s, ns, "overlayfs", id.String())
				if info.Kind != "Committed" || info.Parent != parent {
					t.Errorf("layer %d snapshot %s: kind %s parent %q, want Committed with parent %q", i, id, info.Kind, info.Parent, parent)
				}
				parent = id.String()
			}
			if ti.name == "busybox" || ti.name == "multiarch" {
				id := "transfer-run-" + ti.name
				if out := s.MustCtr2(ns, "run", "--rm", p.ref, id, "echo", "hi"); strings.TrimSpace(out) != "hi" {
					t.Errorf("ctr run printed %q, want hi", out)
				}
			}
		})
	}
}

// imageDigest is the target digest ctr images ls shows for ref in ns.
func imageDigest(t *testing.T, s *Stack, ns, ref string) string {
	t.Helper()
	for _, line := range strings.Split(s.MustCtr2(ns, "images", "ls"), "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == ref {
			return f[2]
		}
	}
	t.Fatalf("ctr images ls in %s does not list %s", ns, ref)
	return ""
}

func TestTransferTagPushExportImportWorkAsOnContainerd(t *testing.T) {
	requireRootForMounts(t)
	ctr2Bin(t)
	reg := imagekit.StartRegistry(t)
	s := startStack(t)
	stopPluginsOnCleanup(t, s)
	p := pushImage(t, reg, "busybox", func() (*imagekit.Image, error) { return imagekit.BuildBusybox() })
	ns := "transfer-src"
	s.MustCtr2(ns, "images", "pull", "--plain-http", p.ref)
	want := imageDigest(t, s, ns, p.ref)

	t.Run("tag names the same target", func(t *testing.T) {
		tagged := reg + "/busybox:tagged"
		s.MustCtr2(ns, "images", "tag", p.ref, tagged)
		if got := imageDigest(t, s, ns, tagged); got != want {
			t.Errorf("tagged image points at %s, want %s", got, want)
		}
	})

	t.Run("push then pull elsewhere gives the same digest and runs", func(t *testing.T) {
		pushedRef := reg + "/pushed/busybox:2"
		s.MustCtr2(ns, "images", "push", "--plain-http", pushedRef, p.ref)
		other := "transfer-pushed"
		s.MustCtr2(other, "images", "pull", "--plain-http", pushedRef)
		if got := imageDigest(t, s, other, pushedRef); got != want {
			t.Errorf("pulled back %s, want %s", got, want)
		}
		if out := s.MustCtr2(other, "run", "--rm", pushedRef, "transfer-pushed-run", "echo", "hi"); strings.TrimSpace(out) != "hi" {
			t.Errorf("ctr run printed %q, want hi", out)
		}
	})

	t.Run("export then import in another namespace runs the same image", func(t *testing.T) {
		archive := filepath.Join(t.TempDir(), "busybox.tar")
		s.MustCtr2(ns, "images", "export", archive, p.ref)
		other := "transfer-imported"
		s.MustCtr2(other, "images", "import", archive)
		if got := imageDigest(t, s, other, p.ref); got != want {
			t.Errorf("imported image points at %s, want %s", got, want)
		}
		if out := s.MustCtr2(other, "run", "--rm", p.ref, "transfer-import-run", "echo", "hi"); strings.TrimSpace(out) != "hi" {
			t.Errorf("ctr run printed %q, want hi", out)
		}
		// Debian's containerd 1.6 reads the archive too.
		if _, err := exec.LookPath("ctr"); err == nil {
			s.MustCtr("transfer-imported-16", "images", "import", archive)
		}
	})
}
