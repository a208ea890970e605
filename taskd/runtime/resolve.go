// Package runtime runs tasks through shims: processes that speak
// containerd's runtime v2 shim protocol (containerd.task.v2.Task over ttrpc),
// one per container, which outlive taskd. It resolves a runtime name to a
// shim binary, lays out the container's bundle, starts the shim and talks to
// it, keeps exit records so that no exit is lost or announced twice, and on
// start adopts the shims that kept running while taskd was down.
package runtime

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/containerd/errdefs"
)

// RuncV2 is the runtime name of containerd's runc shim, which taskd serves
// with its own shim, taskd-shim, unless the configuration says otherwise.
const RuncV2 = "io.containerd.runc.v2"

// DefaultShim is the binary that serves RuncV2 by default.
const DefaultShim = "taskd-shim"

// Resolver turns a container's runtime name into the path of a shim binary.
type Resolver struct {
	// Paths maps runtime names to shim binaries, from taskd's config.
	Paths map[string]string
	// Dir is searched before $PATH for shim binaries: taskd's own directory.
	Dir string
}

// Resolve returns the shim binary for runtime name, in this order: the
// path configured for name; name itself when it is an absolute path; for
// io.containerd.runc.v2, taskd-shim; otherwise the binary containerd would
// use, containerd-shim-<name>-<version> (io.containerd.runc.v2 →
// containerd-shim-runc-v2), looked up in Dir and then $PATH. A name that fits
// none of these is InvalidArgument; a binary that cannot be found is
// NotFound.
func (r *Resolver) Resolve(name string) (string, error) {
	if name == "" {
		return "", fmt.Errorf("runtime name is empty: %w", errdefs.ErrInvalidArgument)
	}
	if p, ok := r.Paths[name]; ok && p != "" {
		if err := executable(p); err != nil {
			return "", fmt.Errorf("runtime %q: configured shim %s: %w", name, p, err)
		}
		return p, nil
	}
	if filepath.IsAbs(name) {
		if err := executable(name); err != nil {
			return "", fmt.Errorf("runtime %q: %w", name, err)
		}
		return name, nil
	}
	bin := DefaultShim
	if name != RuncV2 {
		var err error
		if bin, err = BinaryName(name); err != nil {
			return "", err
		}
	}
	if r.Dir != "" {
		p := filepath.Join(r.Dir, bin)
		if executable(p) == nil {
			return p, nil
		}
	}
	p, err := exec.LookPath(bin)
	if err != nil {
		return "", fmt.Errorf("runtime %q: no shim binary %s next to taskd or in $PATH (configure [runtimes.%q] path): %w",
			name, bin, name, errdefs.ErrNotFound)
	}
	return p, nil
}

// BinaryName is containerd's shim binary name for a runtime name: its last
// two dot-separated parts, io.containerd.runc.v2 → containerd-shim-runc-v2.
func BinaryName(name string) (string, error) {
	parts := strings.Split(name, ".")
	if len(parts) < 2 || parts[len(parts)-2] == "" || parts[len(parts)-1] == "" || strings.ContainsAny(name, "/ ") {
		return "", fmt.Errorf("runtime name %q: want the form io.containerd.<name>.<version> or an absolute path: %w",
			name, errdefs.ErrInvalidArgument)
	}
	return fmt.Sprintf("containerd-shim-%s-%s", parts[len(parts)-2], parts[len(parts)-1]), nil
}

func executable(p string) error {
	fi, err := os.Stat(p)
	if err != nil {
		if os.IsNotExist(err) {
			return fmt.Errorf("%s does not exist: %w", p, errdefs.ErrNotFound)
		}
		return err
	}
	if fi.IsDir() || fi.Mode()&0o111 == 0 {
		return fmt.Errorf("%s is not an executable file: %w", p, errdefs.ErrNotFound)
	}
	return nil
}
