package mount

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
)

// TestTargetsStayInsideTheRoot mounts a tmpfs on a Target reached through
// the symlinks a hostile image can hold: whatever they point at, the mount
// lands inside the root, never on the host directory they name.
func TestTargetsStayInsideTheRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	for _, tc := range []struct {
		name   string
		link   func(host string) string // the symlink's content
		target string                   // the mount's Target
		inside string                   // where it must land, relative to the root ("" : NotFound)
	}{
		{"an absolute symlink resolves inside the root", func(host string) string { return host }, "/evil", "HOST"},
		{"a relative symlink cannot climb out", func(string) string { return "../../../../../../HOST" }, "/evil", "HOST"},
		{"dot-dots in the target stop at the root", func(string) string { return "HOST" }, "/../../../evil", "HOST"},
		{"a symlink to a path missing in the root is not found", func(host string) string { return host + "/missing" }, "/evil", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			host := filepath.Join(dir, "host") // stands for any host directory
			root := filepath.Join(dir, "root")
			for _, d := range []string{host, root} {
				if err := os.MkdirAll(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			link := tc.link(host)
			// The root's own copy of where the link points: "HOST" beneath it.
			inRoot := filepath.Join(root, "HOST")
			if filepath.IsAbs(link) {
				inRoot = filepath.Join(root, link)
			}
			if tc.inside != "" {
				if err := os.MkdirAll(inRoot, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.Symlink(link, filepath.Join(root, "evil")); err != nil {
				t.Fatal(err)
			}
			ms := []*types.Mount{{Type: "tmpfs", Source: "tmpfs", Target: tc.target, Options: []string{"size=1m"}}}
			points, err := AllPoints(ms, root)
			t.Cleanup(func() { _ = UnmountBeneath(root) })
			if tc.inside == "" {
				if !errdefs.IsNotFound(err) {
					t.Fatalf("AllPoints = %v, %v; want NotFound", points, err)
				}
			} else {
				if err != nil {
					t.Fatalf("AllPoints: %v", err)
				}
				if want, _ := filepath.EvalSymlinks(inRoot); len(points) != 1 || points[0] != want {
					t.Fatalf("mounted on %v, want %s", points, want)
				}
			}
			if on, _ := IsMountPoint(host); on {
				t.Fatalf("a mount landed on the host directory %s", host)
			}
			if err := UnmountAll(ms, root); err != nil {
				t.Fatalf("UnmountAll: %v", err)
			}
			for _, p := range points {
				if on, _ := IsMountPoint(p); on {
					t.Fatalf("%s still mounted after UnmountAll", p)
				}
			}
		})
	}
}
