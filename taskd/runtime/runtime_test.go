package runtime

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	eventsapi "github.com/containerd/containerd/api/events"
	"github.com/containerd/errdefs"

	"github.com/flotilla/flotilla/taskd/metadata"
)

func TestResolve(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"taskd-shim", "containerd-shim-foo-v1", "configured"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("PATH", t.TempDir())
	r := &Resolver{Dir: dir, Paths: map[string]string{"io.example.mine.v1": filepath.Join(dir, "configured"), "io.example.gone.v1": "/nonexistent"}}
	for _, tc := range []struct {
		name, runtime, want string
		err                 func(error) bool
	}{
		{name: "runc v2 is taskd-shim", runtime: RuncV2, want: filepath.Join(dir, "taskd-shim")},
		{name: "other names become containerd-shim-NAME-VERSION", runtime: "io.containerd.foo.v1", want: filepath.Join(dir, "containerd-shim-foo-v1")},
		{name: "the config wins", runtime: "io.example.mine.v1", want: filepath.Join(dir, "configured")},
		{name: "an absolute path is the binary", runtime: filepath.Join(dir, "configured"), want: filepath.Join(dir, "configured")},
		{name: "a missing binary is NotFound", runtime: "io.containerd.bar.v2", err: errdefs.IsNotFound},
		{name: "a missing configured binary is NotFound", runtime: "io.example.gone.v1", err: errdefs.IsNotFound},
		{name: "a name without version is InvalidArgument", runtime: "runc", err: errdefs.IsInvalidArgument},
		{name: "an empty name is InvalidArgument", runtime: "", err: errdefs.IsInvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := r.Resolve(tc.runtime)
			if tc.err != nil {
				if !tc.err(err) {
					t.Fatalf("resolve %q: %v, %v", tc.runtime, got, err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("resolve %q: %q, %v; want %q", tc.runtime, got, err, tc.want)
			}
		})
	}
}

func TestPrepareSpec(t *testing.T) {
	t.Run("with mounts the root becomes rootfs and the rest is kept", func(t *testing.T) {
		out, err := PrepareSpec([]byte(`{"ociVersion":"1.0.2","process":{"args":["sh"]},"root":{"path":"/x","readonly":true},"x-extra":{"a":1}}`), true)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		json.Unmarshal(out, &m)
		root := m["root"].(map[string]any)
		if root["path"] != "rootfs" || root["readonly"] != true || m["x-extra"] == nil {
			t.Fatalf("config %s", out)
		}
	})
	for _, tc := range []struct {
		name   string
		spec   string
		mounts bool
		err    func(error) bool
	}{
		{"not JSON is InvalidArgument", `{`, true, errdefs.IsInvalidArgument},
		{"no process is InvalidArgument", `{"ociVersion":"1.0.2"}`, true, errdefs.IsInvalidArgument},
		{"no process without mounts is InvalidArgument", `{"ociVersion":"1.0.2","root":{"path":"/"}}`, false, errdefs.IsInvalidArgument},
		{"a process without args is InvalidArgument", `{"process":{"cwd":"/"},"root":{"path":"/"}}`, false, errdefs.IsInvalidArgument},
		{"no mounts and a relative root is InvalidArgument", `{"process":{"args":["true"]},"root":{"path":"rootfs"}}`, false, errdefs.IsInvalidArgument},
		{"no mounts and a missing root is NotFound", `{"process":{"args":["true"]},"root":{"path":"/nonexistent"}}`, false, errdefs.IsNotFound},
		{"no mounts and an existing root is fine", `{"process":{"args":["true"]},"root":{"path":"/"}}`, false, func(err error) bool { return err == nil }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := PrepareSpec([]byte(tc.spec), tc.mounts); !tc.err(err) {
				t.Fatalf("prepare: %v", err)
			}
		})
	}
}

func TestExitStoreAnnouncesEachExitOnce(t *testing.T) {
	db, err := metadata.Open(filepath.Join(t.TempDir(), "meta.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	s := NewExitStore(db)
	exit := &eventsapi.TaskExit{ContainerID: "c", ID: "c", Pid: 42, ExitStatus: 7}

	if first, err := s.Record("ns", exit); err != nil || !first {
		t.Fatalf("exit of an untracked task: %v, %v; want news, not kept", first, err)
	}
	if _, err := s.Get("ns", "c", "c"); !errdefs.IsNotFound(err) {
		t.Fatalf("untracked exit was kept: %v", err)
	}
	if err := s.Track("ns", "c", "c"); err != nil {
		t.Fatal(err)
	}
	if err := s.Track("ns", "c", "e1"); err != nil {
		t.Fatal(err)
	}
	if p, _ := s.Pending("ns", "c"); len(p) != 2 {
		t.Fatalf("pending %v", p)
	}
	for i, want := range []bool{true, false, false} {
		if first, err := s.Record("ns", exit); err != nil || first != want {
			t.Fatalf("record #%d: %v, %v; want %v", i, first, err, want)
		}
	}
	if e, err := s.Get("ns", "c", "c"); err != nil || e.ExitStatus != 7 {
		t.Fatalf("get: %v, %v", e, err)
	}
	if p, _ := s.Pending("ns", "c"); len(p) != 1 || p[0] != "e1" {
		t.Fatalf("pending %v", p)
	}
	// A new task of the same container starts afresh.
	if err := s.Track("ns", "c", "c"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get("ns", "c", "c"); !errdefs.IsNotFound(err) {
		t.Fatalf("old exit survived a new task: %v", err)
	}
	if err := s.Drop("ns", "c"); err != nil {
		t.Fatal(err)
	}
	if p, _ := s.Pending("ns", "c"); len(p) != 0 {
		t.Fatalf("pending after drop %v", p)
	}
}

func TestParseStartOutput(t *testing.T) {
	for _, tc := range []struct{ out, want string }{
		{"unix:///run/x.sock\n", "unix:///run/x.sock"},
		{`{"version":2,"address":"unix:///run/y.sock","protocol":"ttrpc"}`, "unix:///run/y.sock"},
	} {
		if got, err := parseStartOutput([]byte(tc.out)); err != nil || got != tc.want {
			t.Errorf("parse %q: %q, %v", tc.out, got, err)
		}
	}
	if _, err := parseStartOutput([]byte(`{"version":3,"address":"unix:///z","protocol":"grpc"}`)); !errdefs.IsNotImplemented(err) {
		t.Errorf("grpc shim: %v", err)
	}
}
