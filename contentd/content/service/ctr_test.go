package service

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	api "github.com/containerd/containerd/api/services/content/v1"
	"github.com/opencontainers/go-digest"

	"github.com/flotilla/flotilla/services/namespace"
)

const ctrPath = "/usr/bin/ctr"

// ctr runs Debian's ctr against the server in namespace ns.
func ctr(t *testing.T, sock, ns string, stdin []byte, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(ctrPath, append([]string{"--address", sock, "--namespace", ns}, args...)...)
	cmd.Stdin = bytes.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		t.Logf("ctr %s: %v\n%s", strings.Join(args, " "), err, errb.String())
	}
	return out.String(), err
}

func mustCtr(t *testing.T, sock, ns string, stdin []byte, args ...string) string {
	t.Helper()
	out, err := ctr(t, sock, ns, stdin, args...)
	if err != nil {
		t.Fatalf("ctr %s failed", strings.Join(args, " "))
	}
	return out
}

// lsLine returns the `ctr content ls` line of dgst, or "".
func lsLine(t *testing.T, sock, ns string, dgst digest.Digest) string {
	for _, line := range strings.Split(mustCtr(t, sock, ns, nil, "content", "ls"), "\n") {
		if strings.HasPrefix(line, dgst.String()) {
			return line
		}
	}
	return ""
}

func TestCtrContent(t *testing.T) {
	if _, err := os.Stat(ctrPath); err != nil {
		t.Skip("ctr is not installed")
	}
	ts := serveInProcess(t)
	sock, ns := ts.sock, "ctr-test"
	data := make([]byte, 3<<20+17)
	rand.NewChaCha8([32]byte{2}).Read(data)
	dgst := digest.FromBytes(data)
	size := len(data)

	t.Run("ingest with expected size and digest stores the blob", func(t *testing.T) {
		mustCtr(t, sock, ns, data, "content", "ingest", "--expected-size", strconv.Itoa(size), "--expected-digest", dgst.String(), "upload-1")
		line := lsLine(t, sock, ns, dgst)
		if f := strings.Fields(line); len(f) < 2 || f[1] != "3.146MB" {
			t.Fatalf("ls line %q", line)
		}
	})
	t.Run("ingest of a blob already there succeeds", func(t *testing.T) {
		mustCtr(t, sock, ns, data, "content", "ingest", "--expected-size", strconv.Itoa(size), "--expected-digest", dgst.String(), "upload-2")
	})
	t.Run("ingest with a wrong digest fails and stores nothing", func(t *testing.T) {
		if _, err := ctr(t, sock, ns, []byte("other bytes"), "content", "ingest", "--expected-digest", digest.FromString("x").String(), "bad"); err == nil {
			t.Fatal("ingest succeeded")
		}
		if line := lsLine(t, sock, ns, digest.FromString("other bytes")); line != "" {
			t.Fatalf("listed %q", line)
		}
	})
	t.Run("get returns the exact bytes", func(t *testing.T) {
		if out := mustCtr(t, sock, ns, nil, "content", "get", dgst.String()); out != string(data) {
			t.Fatalf("got %d bytes, want %d (or contents differ)", len(out), len(data))
		}
	})
	t.Run("label sets and removes labels", func(t *testing.T) {
		mustCtr(t, sock, ns, nil, "content", "label", dgst.String(), "foo=bar", "containerd.io/gc.root=yes")
		if line := lsLine(t, sock, ns, dgst); !strings.Contains(line, "foo=bar") || !strings.Contains(line, "containerd.io/gc.root=yes") {
			t.Fatalf("ls line %q", line)
		}
		mustCtr(t, sock, ns, nil, "content", "label", dgst.String(), "foo=")
		if line := lsLine(t, sock, ns, dgst); strings.Contains(line, "foo=") || !strings.Contains(line, "gc.root=yes") {
			t.Fatalf("ls line %q", line)
		}
	})
	t.Run("active lists interrupted ingests", func(t *testing.T) {
		ctx := namespace.WithNamespace(context.Background(), ns)
		runSteps(t, ctx, api.NewContentClient(ts.conn), []step{
			{req: &api.WriteContentRequest{Action: write, Ref: "half-done", Total: 100, Data: make([]byte, 40)},
				want: &api.WriteContentResponse{Action: write, Offset: 40}},
		})
		out := mustCtr(t, sock, ns, nil, "content", "active")
		if !strings.Contains(out, "half-done") || !strings.Contains(out, "40B") {
			t.Fatalf("active:\n%s", out)
		}
	})
	t.Run("rm deletes the blob", func(t *testing.T) {
		mustCtr(t, sock, ns, nil, "content", "rm", dgst.String())
		if line := lsLine(t, sock, ns, dgst); line != "" {
			t.Fatalf("still listed: %q", line)
		}
		if _, err := ctr(t, sock, ns, nil, "content", "get", dgst.String()); err == nil {
			t.Fatal("get of a deleted blob succeeded")
		}
	})
	t.Run("blobs of another namespace stay invisible", func(t *testing.T) {
		other := digest.FromString("private")
		mustCtr(t, sock, "elsewhere", []byte("private"), "content", "ingest", "p")
		if line := lsLine(t, sock, ns, other); line != "" {
			t.Fatalf("listed in %s: %q", ns, line)
		}
		if line := lsLine(t, sock, "elsewhere", other); line == "" {
			t.Fatal("not listed where it was ingested")
		}
	})
}
