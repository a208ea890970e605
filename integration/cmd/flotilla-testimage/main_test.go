package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRun(t *testing.T) {
	dir := t.TempDir()
	archive := filepath.Join(dir, "layers.tar")
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"build writes an OCI archive", []string{"build", "--kind", "layers", "--compression", "zstd", "--out", archive, "--ref", "flotilla/layers:1"}, ""},
		{"build writes a layout", []string{"build", "--kind", "hostile", "--attack", "traversal", "--target", "/tmp/x", "--layout", filepath.Join(dir, "layout")}, ""},
		{"help exits cleanly", []string{"--help"}, flag.ErrHelp.Error()},
		{"no command is an error", nil, "missing command"},
		{"an unknown command is an error", []string{"pull"}, "unknown command"},
		{"an unknown kind is an error", []string{"build", "--kind", "nope", "--out", archive}, "image kind"},
		{"hostile needs an attack", []string{"build", "--kind", "hostile", "--out", archive}, "--attack"},
		{"a bad size is an error", []string{"build", "--kind", "large", "--size", "lots", "--out", archive}, "size"},
		{"build needs an output", []string{"build", "--kind", "layers"}, "--out"},
		{"push needs a registry", []string{"push", "--kind", "layers", "--ref", "a:b"}, "--registry"},
		{"push needs a reference", []string{"push", "--kind", "layers", "--registry", "127.0.0.1:1"}, "--ref"},
		{"check reports a directory that differs", []string{"check", "--kind", "layers", dir}, "secret: missing"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			err := run(tt.args, &stdout, &stderr)
			if tt.wantErr == "" && err != nil {
				t.Fatalf("run %v: %v\n%s", tt.args, err, stderr.String())
			}
			if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("run %v: %v, want an error containing %q", tt.args, err, tt.wantErr)
			}
		})
	}

	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	var names []string
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, hdr.Name)
	}
	if len(names) != 9 || names[0] != "oci-layout" || names[1] != "index.json" {
		t.Errorf("archive entries %v: want oci-layout, index.json, 2 dirs and 5 blobs", names)
	}
	if _, err := os.Stat(filepath.Join(dir, "layout", "index.json")); err != nil {
		t.Errorf("layout: %v", err)
	}
}
