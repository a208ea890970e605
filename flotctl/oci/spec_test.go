package oci

import (
	"encoding/json"
	"slices"
	"testing"

	"github.com/containerd/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestDefaultSpecMatchesContainerds(t *testing.T) {
	s := DefaultSpec("ns1", "c1")
	if s.Linux.CgroupsPath != "/ns1/c1" {
		t.Errorf("cgroups path %q, want /ns1/c1", s.Linux.CgroupsPath)
	}
	if s.Root.Path != "rootfs" || s.Process.Cwd != "/" || !s.Process.NoNewPrivileges {
		t.Errorf("root %q cwd %q nnp %v", s.Root.Path, s.Process.Cwd, s.Process.NoNewPrivileges)
	}
	var nss []specs.LinuxNamespaceType
	for _, n := range s.Linux.Namespaces {
		nss = append(nss, n.Type)
	}
	want := []specs.LinuxNamespaceType{specs.PIDNamespace, specs.IPCNamespace, specs.UTSNamespace, specs.MountNamespace, specs.NetworkNamespace}
	if !slices.Equal(nss, want) {
		t.Errorf("namespaces %v, want %v", nss, want)
	}
	var dests []string
	for _, m := range s.Mounts {
		dests = append(dests, m.Destination)
	}
	if !slices.Equal(dests, []string{"/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/run"}) {
		t.Errorf("mounts %v", dests)
	}
	if len(s.Process.Capabilities.Bounding) != 14 || slices.Contains(s.Process.Capabilities.Bounding, "CAP_SYS_ADMIN") {
		t.Errorf("capabilities %v", s.Process.Capabilities.Bounding)
	}
	if !slices.Contains(s.Linux.MaskedPaths, "/proc/kcore") || !slices.Contains(s.Linux.ReadonlyPaths, "/proc/sys") {
		t.Errorf("masked %v readonly %v", s.Linux.MaskedPaths, s.Linux.ReadonlyPaths)
	}
	if len(s.Process.Rlimits) != 1 || s.Process.Rlimits[0].Type != "RLIMIT_NOFILE" || s.Process.Rlimits[0].Hard != 1024 {
		t.Errorf("rlimits %+v", s.Process.Rlimits)
	}
	if d := s.Linux.Resources.Devices; len(d) != 1 || d[0].Allow || d[0].Access != "rwm" {
		t.Errorf("device rules %+v", d)
	}
	// Two specs share nothing: changing one leaves the other as it was.
	s.Process.Capabilities.Bounding[0] = "CAP_SYS_ADMIN"
	if DefaultSpec("ns1", "c1").Process.Capabilities.Bounding[0] != "CAP_CHOWN" {
		t.Error("default specs share their capability lists")
	}
}

func TestWithImageConfig(t *testing.T) {
	for _, tc := range []struct {
		name      string
		cfg       ocispec.ImageConfig
		args      []string
		wantArgs  []string
		wantEnv   []string
		wantCwd   string
		wantUID   uint32
		wantError bool
	}{
		{name: "command from the image", cfg: ocispec.ImageConfig{Cmd: []string{"sh"}}, wantArgs: []string{"sh"}, wantEnv: []string{DefaultPath}, wantCwd: "/"},
		{name: "args replace the command, not the entrypoint", cfg: ocispec.ImageConfig{Entrypoint: []string{"/init"}, Cmd: []string{"serve"}}, args: []string{"echo", "hi"}, wantArgs: []string{"/init", "echo", "hi"}, wantEnv: []string{DefaultPath}, wantCwd: "/"},
		{name: "image env replaces the default PATH", cfg: ocispec.ImageConfig{Env: []string{"PATH=/bin", "A=1"}, Cmd: []string{"sh"}}, wantArgs: []string{"sh"}, wantEnv: []string{"PATH=/bin", "A=1"}, wantCwd: "/"},
		{name: "working dir and numeric user", cfg: ocispec.ImageConfig{Cmd: []string{"sh"}, WorkingDir: "/srv", User: "1000:1000"}, wantArgs: []string{"sh"}, wantEnv: []string{DefaultPath}, wantCwd: "/srv", wantUID: 1000},
		{name: "nothing to run is refused", cfg: ocispec.ImageConfig{}, wantError: true},
		{name: "user names are refused", cfg: ocispec.ImageConfig{Cmd: []string{"sh"}, User: "nobody"}, wantError: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Build("ns", "id", WithImageConfig(tc.cfg, tc.args))
			if tc.wantError {
				if !errdefs.IsInvalidArgument(err) {
					t.Fatalf("err = %v, want InvalidArgument", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(s.Process.Args, tc.wantArgs) || !slices.Equal(s.Process.Env, tc.wantEnv) || s.Process.Cwd != tc.wantCwd || s.Process.User.UID != tc.wantUID {
				t.Errorf("args %q env %q cwd %q uid %d", s.Process.Args, s.Process.Env, s.Process.Cwd, s.Process.User.UID)
			}
		})
	}
}

func TestUserOptions(t *testing.T) {
	cfg := ocispec.ImageConfig{Cmd: []string{"sh"}, Env: []string{"PATH=/bin", "A=1"}}
	s, err := Build("ns", "id", WithImageConfig(cfg, nil),
		WithEnv([]string{"A=2", "B=x=y"}), WithTTY(80, 24), WithMemoryLimit(64<<20), WithCPUs(1.5),
		WithMounts([]specs.Mount{{Destination: "/data", Type: "bind", Source: "/srv"}, {Destination: "/run/", Type: "bind", Source: "/tmp"}}))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"PATH=/bin", "A=2", "B=x=y", "TERM=xterm"}; !slices.Equal(s.Process.Env, want) {
		t.Errorf("env %q, want %q", s.Process.Env, want)
	}
	if !s.Process.Terminal || s.Process.ConsoleSize == nil || s.Process.ConsoleSize.Width != 80 {
		t.Errorf("terminal %v size %+v", s.Process.Terminal, s.Process.ConsoleSize)
	}
	if *s.Linux.Resources.Memory.Limit != 64<<20 {
		t.Errorf("memory %d", *s.Linux.Resources.Memory.Limit)
	}
	if *s.Linux.Resources.CPU.Quota != 150000 || *s.Linux.Resources.CPU.Period != 100000 {
		t.Errorf("cpu quota %d period %d", *s.Linux.Resources.CPU.Quota, *s.Linux.Resources.CPU.Period)
	}
	var runSources []string
	for _, m := range s.Mounts {
		if m.Destination == "/run" || m.Destination == "/run/" {
			runSources = append(runSources, m.Source)
		}
	}
	if !slices.Equal(runSources, []string{"/tmp"}) {
		t.Errorf("a mount on /run/ should replace the default /run: sources %q", runSources)
	}
	a, err := ToAny(s)
	if err != nil {
		t.Fatal(err)
	}
	var back specs.Spec
	if a.TypeUrl != SpecTypeURL || json.Unmarshal(a.Value, &back) != nil || back.Linux.CgroupsPath != "/ns/id" {
		t.Errorf("Any %q does not decode back to the spec", a.TypeUrl)
	}
}

func TestMergeEnv(t *testing.T) {
	for _, tc := range []struct {
		name       string
		base, over []string
		want       []string
	}{
		{"appends new keys", []string{"A=1"}, []string{"B=2"}, []string{"A=1", "B=2"}},
		{"replaces a key in place of the old one", []string{"A=1", "B=2"}, []string{"A=3"}, []string{"B=2", "A=3"}},
		{"a bare key unsets", []string{"A=1", "B=2"}, []string{"A"}, []string{"B=2"}},
		{"empty values are kept", []string{"A=1"}, []string{"A="}, []string{"A="}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := MergeEnv(tc.base, tc.over); !slices.Equal(got, tc.want) {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestBadLimitsAreInvalidArguments(t *testing.T) {
	for name, opt := range map[string]Opt{
		"zero memory":   WithMemoryLimit(0),
		"negative cpus": WithCPUs(-1),
		"empty env":     WithEnv([]string{"=x"}),
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := Build("ns", "id", opt); !errdefs.IsInvalidArgument(err) {
				t.Errorf("err = %v, want InvalidArgument", err)
			}
		})
	}
}
