package main

import (
	"bytes"
	"testing"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

func TestParseSignal(t *testing.T) {
	for in, want := range map[string]unix.Signal{"SIGTERM": unix.SIGTERM, "term": unix.SIGTERM, "KILL": unix.SIGKILL, "9": unix.SIGKILL, "SIGUSR1": unix.SIGUSR1} {
		if got, err := parseSignal(in); err != nil || got != want {
			t.Errorf("parseSignal(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"SIGNOPE", "0", "65", ""} {
		if _, err := parseSignal(in); !errdefs.IsInvalidArgument(err) {
			t.Errorf("parseSignal(%q): err = %v, want InvalidArgument", in, err)
		}
	}
}

func TestRunFlags(t *testing.T) {
	for _, tc := range []struct {
		name string
		f    runFlags
		ok   bool
	}{
		{"defaults", runFlags{}, true},
		{"every limit", runFlags{env: []string{"A=1"}, mounts: []string{"src=/tmp,dst=/t"}, memory: "64m", cpus: 0.5, user: "1000", workdir: "/srv"}, true},
		{"--rm with -d", runFlags{rm: true, detach: true}, false},
		{"-d with -t", runFlags{detach: true, tty: true}, false},
		{"bad memory", runFlags{memory: "lots"}, false},
		{"bad mount", runFlags{mounts: []string{"dst=/t"}}, false},
		{"relative workdir", runFlags{workdir: "srv"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.f.specOpts()
			if tc.ok && err != nil {
				t.Fatal(err)
			}
			if !tc.ok && !errdefs.IsInvalidArgument(err) {
				t.Fatalf("err = %v, want InvalidArgument", err)
			}
		})
	}
}

// The run command's flags stop at the image: what follows is the
// container's command line, flags included.
func TestRunStopsParsingFlagsAtTheImage(t *testing.T) {
	root, _ := newRootCommand()
	run, _, err := root.Find([]string{"run"})
	if err != nil {
		t.Fatal(err)
	}
	if err := run.ParseFlags([]string{"--rm", "-e", "A=1", "busybox", "ls", "-l", "--rm"}); err != nil {
		t.Fatal(err)
	}
	args := run.Flags().Args()
	if len(args) != 4 || args[0] != "busybox" || args[2] != "-l" || args[3] != "--rm" {
		t.Errorf("args %q", args)
	}
}

func TestGlobalsFromEnvironment(t *testing.T) {
	t.Setenv("CONTAINERD_ADDRESS", "/tmp/x.sock")
	t.Setenv("CONTAINERD_NAMESPACE", "envns")
	root, g := newRootCommand()
	root.SetArgs([]string{"namespaces", "--help"})
	root.SetOut(&bytes.Buffer{})
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	if g.address != "/tmp/x.sock" || g.namespace != "envns" {
		t.Errorf("address %q namespace %q", g.address, g.namespace)
	}
	root, g = newRootCommand()
	root.SetArgs([]string{"-n", "flagns", "--address", "/tmp/y.sock", "namespaces", "--help"})
	root.SetOut(&bytes.Buffer{})
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	if g.address != "/tmp/y.sock" || g.namespace != "flagns" {
		t.Errorf("flags should win over the environment: address %q namespace %q", g.address, g.namespace)
	}
}

func TestErrorsPrintOnOneLine(t *testing.T) {
	for in, want := range map[string]string{
		"plain": "plain",
		"create task: x: not found\nnot found\nnot found": "create task: x: not found",
		"first\n\nsecond\n": "first; second",
	} {
		if got := oneLine(in); got != want {
			t.Errorf("oneLine(%q) = %q, want %q", in, got, want)
		}
	}
}
