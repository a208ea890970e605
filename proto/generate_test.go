package proto_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestGeneratedCodeIsCurrent regenerates every .proto with the generators
// `make proto` pins and fails when the committed code differs.
func TestGeneratedCodeIsCurrent(t *testing.T) {
	if _, err := exec.LookPath("protoc"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("protoc is required in CI")
		}
		t.Skip("protoc not installed")
	}
	makefile, err := os.ReadFile("../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	tools := t.TempDir()
	for _, key := range []string{"PROTOC_GEN_GO", "PROTOC_GEN_GO_GRPC"} {
		pkg := makeVar(t, string(makefile), key)
		cmd := exec.Command("go", "install", pkg)
		cmd.Env = append(os.Environ(), "GOBIN="+tools)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go install %s: %v\n%s", pkg, err, out)
		}
	}
	out := t.TempDir()
	var protos []string
	filepath.WalkDir("flotilla", func(path string, d os.DirEntry, err error) error {
		if err == nil && strings.HasSuffix(path, ".proto") {
			protos = append(protos, path)
		}
		return err
	})
	args := append([]string{"-I", ".",
		"--go_out=" + out, "--go_opt=module=github.com/flotilla/flotilla/proto",
		"--go-grpc_out=" + out, "--go-grpc_opt=module=github.com/flotilla/flotilla/proto",
	}, protos...)
	cmd := exec.Command("protoc", args...)
	cmd.Env = append(os.Environ(), "PATH="+tools+":"+os.Getenv("PATH"))
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("protoc: %v\n%s", err, b)
	}
	filepath.WalkDir(out, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(out, path)
		want, _ := os.ReadFile(path)
		got, err := os.ReadFile(rel)
		if err != nil {
			t.Errorf("%s is generated but not committed: run make proto", rel)
		} else if !bytes.Equal(got, want) {
			t.Errorf("%s differs from what make proto generates: run make proto", rel)
		}
		return nil
	})
}

func makeVar(t *testing.T, makefile, key string) string {
	for _, line := range strings.Split(makefile, "\n") {
		if k, v, ok := strings.Cut(line, ":="); ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("Makefile has no %s", key)
	return ""
}
