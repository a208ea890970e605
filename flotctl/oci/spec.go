// Package oci builds the OCI runtime spec of a container the way
// containerd's clients do: a default Linux spec (namespaces, mounts,
// capabilities, rlimits, masked and read-only paths, the cgroup under the
// namespace), then the image's config, then what the user asked for.
package oci

import (
	"encoding/json"
	"fmt"
	"path"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/anypb"
)

// SpecTypeURL is the type URL containerd gives a runtime spec in an Any.
const SpecTypeURL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"

// DefaultPath is the PATH of a process whose image sets none.
const DefaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// rootfsPath is the bundle-relative root containerd's shims mount into.
const rootfsPath = "rootfs"

// Opt changes a spec being built; it fails with an InvalidArgument error
// when what it was given makes no sense.
type Opt func(*specs.Spec) error

// DefaultSpec is the spec of a container id in namespace ns before the
// image and the user have their say; it matches containerd's default Linux
// spec.
func DefaultSpec(ns, id string) *specs.Spec {
	caps := []string{
		"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
		"CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
		"CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
	}
	return &specs.Spec{
		Version: specs.Version,
		Root:    &specs.Root{Path: rootfsPath},
		Process: &specs.Process{
			Cwd:             "/",
			NoNewPrivileges: true,
			Capabilities: &specs.LinuxCapabilities{
				Bounding:  append([]string(nil), caps...),
				Permitted: append([]string(nil), caps...),
				Effective: append([]string(nil), caps...),
			},
			Rlimits: []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 1024, Soft: 1024}},
		},
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
			{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
			{Destination: "/run", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
		},
		Linux: &specs.Linux{
			MaskedPaths: []string{
				"/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys",
				"/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug",
				"/sys/firmware", "/sys/devices/virtual/powercap", "/proc/scsi",
			},
			ReadonlyPaths: []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"},
			CgroupsPath:   path.Join("/", ns, id),
			Resources: &specs.LinuxResources{
				Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
			},
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace}, {Type: specs.UTSNamespace},
				{Type: specs.MountNamespace}, {Type: specs.NetworkNamespace},
			},
		},
	}
}

// Build returns DefaultSpec(ns, id) changed by opts in order.
func Build(ns, id string, opts ...Opt) (*specs.Spec, error) {
	s := DefaultSpec(ns, id)
	for _, o := range opts {
		if err := o(s); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// ToAny encodes s as containerd stores a spec in a container record.
func ToAny(s *specs.Spec) (*anypb.Any, error) {
	b, err := json.Marshal(s)
	if err != nil {
		return nil, err
	}
	return &anypb.Any{TypeUrl: SpecTypeURL, Value: b}, nil
}

// WithImageConfig applies an image's config: its environment over the
// default PATH, its entrypoint and command (args, when not empty, replace
// the command, as in docker run), working directory and user.
func WithImageConfig(cfg ocispec.ImageConfig, args []string) Opt {
	return func(s *specs.Spec) error {
		env := cfg.Env
		if len(env) == 0 {
			env = []string{DefaultPath}
		}
		s.Process.Env = MergeEnv(env, s.Process.Env)
		cmd := cfg.Cmd
		if len(args) > 0 {
			cmd = args
		}
		s.Process.Args = append(append([]string(nil), cfg.Entrypoint...), cmd...)
		if len(s.Process.Args) == 0 {
			return fmt.Errorf("the image has no entrypoint or command, and none was given: %w", errdefs.ErrInvalidArgument)
		}
		if cfg.WorkingDir != "" {
			s.Process.Cwd = cfg.WorkingDir
		}
		if cfg.User != "" {
			return WithUser(cfg.User)(s)
		}
		return nil
	}
}

// WithUser sets the process's user from "uid[:gid]" (numbers, or root).
// Names other than root would need the image's /etc/passwd, which is not
// read here.
func WithUser(user string) Opt {
	return func(s *specs.Spec) error {
		u, g, hasGroup := strings.Cut(user, ":")
		uid, err := idOf(u)
		if err != nil {
			return fmt.Errorf("user %q: %w", user, err)
		}
		gid := uint32(0)
		if hasGroup {
			if gid, err = idOf(g); err != nil {
				return fmt.Errorf("user %q: %w", user, err)
			}
		}
		s.Process.User.UID, s.Process.User.GID = uid, gid
		return nil
	}
}

func idOf(s string) (uint32, error) {
	if s == "root" {
		return 0, nil
	}
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("%q is not a numeric id (names other than root are not looked up): %w", s, errdefs.ErrInvalidArgument)
	}
	return uint32(n), nil
}

// WithEnv sets environment variables, "KEY=VALUE" each ("KEY" alone unsets
// KEY), over what the spec has.
func WithEnv(env []string) Opt {
	return func(s *specs.Spec) error {
		for _, e := range env {
			if e == "" || strings.HasPrefix(e, "=") {
				return fmt.Errorf("--env %q: want KEY=VALUE: %w", e, errdefs.ErrInvalidArgument)
			}
		}
		s.Process.Env = MergeEnv(s.Process.Env, env)
		return nil
	}
}

// MergeEnv returns base with every entry of over replacing the one of the
// same key, or appended; an entry without "=" removes its key.
func MergeEnv(base, over []string) []string {
	out := append([]string(nil), base...)
	for _, e := range over {
		key, _, set := strings.Cut(e, "=")
		i := 0
		for _, b := range out {
			if k, _, _ := strings.Cut(b, "="); k != key {
				out[i] = b
				i++
			}
		}
		out = out[:i]
		if set {
			out = append(out, e)
		}
	}
	return out
}

// WithTTY gives the process a terminal of width×height (0 leaves the size
// to the runtime) and TERM=xterm.
func WithTTY(width, height uint) Opt {
	return func(s *specs.Spec) error {
		s.Process.Terminal = true
		s.Process.Env = MergeEnv(s.Process.Env, []string{"TERM=xterm"})
		if width > 0 && height > 0 {
			s.Process.ConsoleSize = &specs.Box{Width: width, Height: height}
		}
		return nil
	}
}

// WithHostname sets the UTS hostname.
func WithHostname(name string) Opt {
	return func(s *specs.Spec) error {
		s.Hostname = name
		return nil
	}
}

// WithMemoryLimit caps the container's memory at bytes.
func WithMemoryLimit(bytes int64) Opt {
	return func(s *specs.Spec) error {
		if bytes <= 0 {
			return fmt.Errorf("--memory must be positive: %w", errdefs.ErrInvalidArgument)
		}
		if s.Linux.Resources.Memory == nil {
			s.Linux.Resources.Memory = &specs.LinuxMemory{}
		}
		s.Linux.Resources.Memory.Limit = &bytes
		return nil
	}
}

// cfsPeriod is the CFS period --cpus quotas are expressed in, as docker's.
const cfsPeriod = 100000

// WithCPUs limits the container to cpus CPUs' worth of time (1.5 = one and
// a half) through a CFS quota over a 100 ms period.
func WithCPUs(cpus float64) Opt {
	return func(s *specs.Spec) error {
		if cpus <= 0 {
			return fmt.Errorf("--cpus must be positive: %w", errdefs.ErrInvalidArgument)
		}
		if s.Linux.Resources.CPU == nil {
			s.Linux.Resources.CPU = &specs.LinuxCPU{}
		}
		quota := int64(cpus * cfsPeriod)
		period := uint64(cfsPeriod)
		s.Linux.Resources.CPU.Quota, s.Linux.Resources.CPU.Period = &quota, &period
		return nil
	}
}

// WithMounts adds mounts; one on a destination the spec already mounts
// replaces it.
func WithMounts(mounts []specs.Mount) Opt {
	return func(s *specs.Spec) error {
		for _, m := range mounts {
			kept := s.Mounts[:0]
			for _, old := range s.Mounts {
				if path.Clean(old.Destination) != path.Clean(m.Destination) {
					kept = append(kept, old)
				}
			}
			s.Mounts = append(kept, m)
		}
		return nil
	}
}
