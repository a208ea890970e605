package runtime

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// Files of a bundle. The shim writes others (address, log.json, init.pid...).
const (
	specFile    = "config.json"
	shimFile    = "shim-binary" // the shim binary taskd started, for cleanup after a restart
	addressFile = "address"     // written by the shim: where it serves ttrpc
	deadFile    = "shim-dead"   // taskd cleaned up after the shim died
	logFifo     = "log"         // the shim's log, read by taskd
	rootfsDir   = "rootfs"
)

// bundle is a container's OCI bundle: <state>/<namespace>/<id>.
type bundle struct {
	ns, id, path string
}

// PrepareSpec checks that spec is an OCI runtime spec in JSON and returns the
// config.json to write: the spec as given, except that with rootfs mounts
// the root path becomes "rootfs", where the shim mounts them. Without mounts
// the spec's root path must be an absolute path to an existing directory.
// A bad spec or a missing rootfs is InvalidArgument or NotFound.
func PrepareSpec(spec []byte, haveMounts bool) ([]byte, error) {
	var s specs.Spec
	if err := json.Unmarshal(spec, &s); err != nil {
		return nil, fmt.Errorf("spec is not an OCI runtime spec in JSON: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	if s.Process == nil || len(s.Process.Args) == 0 && s.Process.CommandLine == "" {
		return nil, fmt.Errorf("spec has no process to run: %w", errdefs.ErrInvalidArgument)
	}
	if !haveMounts {
		root := ""
		if s.Root != nil {
			root = s.Root.Path
		}
		if !filepath.IsAbs(root) {
			return nil, fmt.Errorf("no rootfs: the request has no rootfs mounts and the spec's root path %q is not absolute: %w", root, errdefs.ErrInvalidArgument)
		}
		if fi, err := os.Stat(root); err != nil || !fi.IsDir() {
			return nil, fmt.Errorf("no rootfs: spec root path %s is not a directory: %w", root, errdefs.ErrNotFound)
		}
		return spec, nil
	}
	// Change only "root", keeping every other field byte for byte.
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(spec, &raw); err != nil {
		return nil, fmt.Errorf("spec: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	root := specs.Root{Path: rootfsDir}
	if s.Root != nil {
		root.Readonly = s.Root.Readonly
	}
	b, err := json.Marshal(root)
	if err != nil {
		return nil, err
	}
	raw["root"] = b
	return json.Marshal(raw)
}

// newBundle creates the bundle directory of ns/id under state with its
// config.json. It fails with AlreadyExists when the bundle is there.
func newBundle(state, ns, id string, config []byte) (*bundle, error) {
	parent := filepath.Join(state, ns)
	if err := os.MkdirAll(parent, 0o711); err != nil {
		return nil, fmt.Errorf("bundle: %w", err)
	}
	b := &bundle{ns: ns, id: id, path: filepath.Join(parent, id)}
	if err := os.Mkdir(b.path, 0o700); err != nil {
		if os.IsExist(err) {
			return nil, fmt.Errorf("task %q in namespace %q: %w", id, ns, errdefs.ErrAlreadyExists)
		}
		return nil, fmt.Errorf("bundle: %w", err)
	}
	if err := os.WriteFile(filepath.Join(b.path, specFile), config, 0o600); err != nil {
		b.remove()
		return nil, fmt.Errorf("bundle: write spec: %w", err)
	}
	if err := openToRemappedRoot(b.path, config); err != nil {
		b.remove()
		return nil, fmt.Errorf("bundle: %w", err)
	}
	return b, nil
}

// openToRemappedRoot lets a user-namespaced container's root reach its
// rootfs through the bundle, as containerd does: with GID mappings the
// bundle gets the host group that container GID 0 maps to, and mode 0710.
func openToRemappedRoot(dir string, config []byte) error {
	gid, ok, err := remappedRootGID(config)
	if err != nil || !ok || gid == 0 {
		return err
	}
	if err := os.Chown(dir, -1, int(gid)); err != nil {
		return fmt.Errorf("give the bundle to the remapped root group %d: %w", gid, err)
	}
	if err := os.Chmod(dir, 0o710); err != nil {
		return fmt.Errorf("bundle mode: %w", err)
	}
	return nil
}

// remappedRootGID is the host GID of container GID 0 in the spec's GID
// mappings; ok is false without a mapping of GID 0.
func remappedRootGID(config []byte) (gid uint32, ok bool, err error) {
	var s struct {
		Linux *struct {
			GIDMappings []specs.LinuxIDMapping `json:"gidMappings"`
		} `json:"linux"`
	}
	if err := json.Unmarshal(config, &s); err != nil {
		return 0, false, fmt.Errorf("spec: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	if s.Linux == nil {
		return 0, false, nil
	}
	for _, m := range s.Linux.GIDMappings {
		if m.ContainerID == 0 {
			return m.HostID, true, nil
		}
	}
	return 0, false, nil
}

func (b *bundle) file(name string) string { return filepath.Join(b.path, name) }

func (b *bundle) readFile(name string) (string, error) {
	v, err := os.ReadFile(b.file(name))
	return strings.TrimSpace(string(v)), err
}

func (b *bundle) writeFile(name, v string) error {
	tmp := b.file(name + ".tmp")
	if err := os.WriteFile(tmp, []byte(v), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, b.file(name))
}

func (b *bundle) has(name string) bool {
	_, err := os.Lstat(b.file(name))
	return err == nil
}

// remove unmounts the rootfs if the shim left it mounted and removes the
// bundle. It never removes files through a mount: if the rootfs stays
// mounted or is not empty, the bundle is left in place and an error returned.
func (b *bundle) remove() error {
	rootfs := b.file(rootfsDir)
	for range 16 {
		if err := unix.Unmount(rootfs, unix.MNT_DETACH); err != nil {
			break // EINVAL: not a mount point (any more); ENOENT: no rootfs
		}
	}
	if err := os.Remove(rootfs); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("bundle %s: rootfs not removable, leaving the bundle: %w", b.path, err)
	}
	if err := os.RemoveAll(b.path); err != nil {
		return fmt.Errorf("bundle %s: %w", b.path, err)
	}
	return nil
}
