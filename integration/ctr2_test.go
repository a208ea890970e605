package integration

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/flotilla/flotilla/integration/imagekit"
)

// ctr2Bin is containerd 2.x's ctr: $CONTAINERD2_BIN/ctr, by default the one
// scripts/install-deps.sh builds.
func ctr2Bin(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("CONTAINERD2_BIN")
	if dir == "" {
		dir = "/opt/containerd-2.4.2/bin"
	}
	bin := filepath.Join(dir, "ctr")
	if _, err := os.Stat(bin); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("containerd 2.x's ctr is required in CI: %v", err)
		}
		t.Skipf("containerd 2.x's ctr not installed: %v", err)
	}
	return bin
}

// ctrClient is one ctr binary pointed at a backend's socket in one namespace.
type ctrClient struct {
	bin, address, ns string
}

func (c ctrClient) command(ctx context.Context, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, c.bin, append([]string{"--address", c.address, "--namespace", c.ns}, args...)...)
}

// run runs ctr with stdin (may be nil) and returns stdout, stderr and the error.
func (c ctrClient) run(stdin io.Reader, args ...string) (string, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var out, errb bytes.Buffer
	cmd := c.command(ctx, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, &out, &errb
	err := cmd.Run()
	return out.String(), errb.String(), err
}

// must runs ctr, fails the test unless it succeeds and returns its stdout.
func (c ctrClient) must(t testing.TB, args ...string) string {
	t.Helper()
	out, errOut, err := c.run(nil, args...)
	if err != nil {
		t.Fatalf("ctr %s: %v\n%s%s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

// column returns the first field of every line of a ctr listing but the header.
func column(out string) []string {
	var ids []string
	for i, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if f := strings.Fields(line); i > 0 && len(f) > 0 {
			ids = append(ids, f[0])
		}
	}
	return ids
}

// row returns the fields of the line of a ctr listing whose first field is id.
func row(out, id string) []string {
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[0] == id {
			return f
		}
	}
	return nil
}

// eventTopic is the topic of a line of `ctr events` (time, namespace, topic,
// event) of namespace ns, or "" for another namespace.
func eventTopic(line, ns string) string {
	f := strings.Fields(line)
	for i := 0; i+1 < len(f); i++ {
		if f[i] == ns && strings.HasPrefix(f[i+1], "/") {
			return f[i+1]
		}
	}
	return ""
}

// TestCtr2 drives containerd 2.x's ctr against Flotilla and Debian's
// containerd 1.6, with --local where 2.x would use the Transfer service:
// every command here works on containerd 1.6.
func TestCtr2(t *testing.T) {
	bin := ctr2Bin(t)
	requireTool(t, "runc")
	addr := imagekit.StartRegistry(t)
	img, err := imagekit.BuildBusybox()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { img.Close() })
	ref := addr + "/busybox:ctr2"
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := img.Push(ctx, ref); err != nil {
		t.Fatal(err)
	}
	for _, kind := range clientBackends {
		t.Run(kind.name, func(t *testing.T) {
			b := kind.start(t)
			c := ctrClient{bin: bin, address: b.Socket, ns: fmt.Sprintf("ctr2-%d", os.Getpid())}
			t.Cleanup(func() { removeCtrContainers(c) })
			runCtr2Scenarios(t, c, ref, img.Target)
		})
	}
}

// removeCtrContainers kills and removes every task and container of c's namespace.
func removeCtrContainers(c ctrClient) {
	out, _, _ := c.run(nil, "tasks", "ls", "-q")
	for _, id := range strings.Fields(out) {
		c.run(nil, "tasks", "kill", "-a", "-s", "SIGKILL", id)
		c.run(nil, "tasks", "delete", "-f", id)
	}
	out, _, _ = c.run(nil, "containers", "ls", "-q")
	for _, id := range strings.Fields(out) {
		c.run(nil, "containers", "rm", id)
	}
}

func runCtr2Scenarios(t *testing.T, c ctrClient, ref string, target ocispec.Descriptor) {
	t.Run("version answers with the server's version", func(t *testing.T) {
		if out := c.must(t, "version"); !strings.Contains(out, "Server:") {
			t.Errorf("version: %s", out)
		}
	})
	t.Run("namespaces create, label, ls and rm", func(t *testing.T) {
		ns := c.ns + "-other"
		c.must(t, "namespaces", "create", ns, "team=a")
		c.must(t, "namespaces", "label", ns, "owner=ctr2")
		if f := row(c.must(t, "namespaces", "ls"), ns); len(f) != 2 || !sameLabels(f[1], "team=a,owner=ctr2") {
			t.Errorf("namespaces ls row %v, want labels team=a,owner=ctr2", f)
		}
		c.must(t, "namespaces", "rm", ns)
		if f := row(c.must(t, "namespaces", "ls"), ns); f != nil {
			t.Errorf("namespace %s still listed after rm", ns)
		}
	})
	// Every scenario but the first uses the image: pull it before them.
	c.must(t, "images", "pull", "--local", "--plain-http", ref)
	t.Run("images pull --local fetches and unpacks the image", func(t *testing.T) {
		if f := row(c.must(t, "images", "ls"), ref); f == nil {
			t.Fatalf("images ls does not list %s", ref)
		}
		if out := c.must(t, "images", "check"); !strings.Contains(strings.Join(row(out, ref), " "), "complete") {
			t.Errorf("images check: %s", out)
		}
	})
	t.Run("images tag and rm", func(t *testing.T) {
		tag := ref + "-tagged"
		c.must(t, "images", "tag", "--local", ref, tag)
		if row(c.must(t, "images", "ls"), tag) == nil {
			t.Fatalf("images ls does not list the tag %s", tag)
		}
		c.must(t, "images", "rm", tag)
		if row(c.must(t, "images", "ls"), tag) != nil {
			t.Errorf("the tag %s is listed after rm", tag)
		}
	})
	t.Run("run --rm prints the output and exits with the container's code", func(t *testing.T) {
		out, errOut, err := c.run(nil, "run", "--rm", ref, "rm-7", "sh", "-c", "echo hello from ctr2; exit 7")
		if code := exitCode(err); code != 7 {
			t.Fatalf("exit code %d (%v), want 7\n%s%s", code, err, out, errOut)
		}
		if out != "hello from ctr2\n" {
			t.Errorf("stdout %q", out)
		}
		if ids := strings.Fields(c.must(t, "containers", "ls", "-q")); len(ids) != 0 {
			t.Errorf("run --rm left containers %v", ids)
		}
	})
	t.Run("run -d, tasks exec, pause, resume, kill and rm", func(t *testing.T) {
		c.must(t, "run", "-d", ref, "bg", "sleep", "1000")
		if f := row(c.must(t, "tasks", "ls"), "bg"); len(f) != 3 || f[2] != "RUNNING" {
			t.Fatalf("tasks ls row %v, want RUNNING", f)
		}
		if out := c.must(t, "tasks", "exec", "--exec-id", "e1", "bg", "echo", "in exec"); out != "in exec\n" {
			t.Errorf("exec printed %q", out)
		}
		c.must(t, "tasks", "pause", "bg")
		if f := row(c.must(t, "tasks", "ls"), "bg"); len(f) != 3 || f[2] != "PAUSED" {
			t.Errorf("after pause: %v", f)
		}
		c.must(t, "tasks", "resume", "bg")
		if f := row(c.must(t, "tasks", "ls"), "bg"); len(f) != 3 || f[2] != "RUNNING" {
			t.Errorf("after resume: %v", f)
		}
		if out := c.must(t, "tasks", "ps", "bg"); len(column(out)) != 1 {
			t.Errorf("tasks ps: %s", out)
		}
		c.must(t, "tasks", "kill", "--signal", "SIGKILL", "bg")
		deadline := time.Now().Add(30 * time.Second)
		for {
			f := row(c.must(t, "tasks", "ls"), "bg")
			if len(f) == 3 && f[2] == "STOPPED" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("task not STOPPED after SIGKILL: %v", f)
			}
			time.Sleep(50 * time.Millisecond)
		}
		c.must(t, "tasks", "rm", "bg")
		c.must(t, "containers", "rm", "bg")
	})
	t.Run("containers create, info, label, ls and rm", func(t *testing.T) {
		c.must(t, "containers", "create", "--label", "a=b", ref, "made", "true")
		if out := c.must(t, "containers", "info", "made"); !strings.Contains(out, `"Image": "`+ref+`"`) {
			t.Errorf("containers info does not name the image:\n%s", out)
		}
		c.must(t, "containers", "label", "made", "c=d")
		if f := row(c.must(t, "containers", "ls"), "made"); len(f) != 3 || f[1] != ref {
			t.Errorf("containers ls row %v", f)
		}
		if out := c.must(t, "containers", "info", "made"); !strings.Contains(out, `"c": "d"`) || !strings.Contains(out, `"a": "b"`) {
			t.Errorf("labels a=b and c=d not in info:\n%s", out)
		}
		c.must(t, "containers", "rm", "made")
		if row(c.must(t, "containers", "ls"), "made") != nil {
			t.Errorf("container listed after rm")
		}
	})
	t.Run("snapshots prepare, mounts, commit, ls, usage and rm", func(t *testing.T) {
		c.must(t, "snapshots", "prepare", "active-1")
		if out := c.must(t, "snapshots", "mounts", "/mnt", "active-1"); !strings.Contains(out, "mount -t") {
			t.Errorf("mounts: %q", out)
		}
		c.must(t, "snapshots", "commit", "committed-1", "active-1")
		if f := row(c.must(t, "snapshots", "ls"), "committed-1"); len(f) < 2 || f[len(f)-1] != "Committed" {
			t.Errorf("snapshots ls row %v", f)
		}
		if out := c.must(t, "snapshots", "usage", "committed-1"); !strings.Contains(out, "committed-1") {
			t.Errorf("usage: %s", out)
		}
		c.must(t, "snapshots", "rm", "committed-1")
		if row(c.must(t, "snapshots", "ls"), "committed-1") != nil {
			t.Errorf("snapshot listed after rm")
		}
	})
	t.Run("content ls, get and label of the pulled manifest", func(t *testing.T) {
		manifest := target.Digest.String()
		if row(c.must(t, "content", "ls"), manifest) == nil {
			t.Fatalf("content ls does not list the manifest %s", manifest)
		}
		if out := c.must(t, "content", "get", manifest); digest.FromString(out) != target.Digest {
			t.Errorf("content get returned bytes of digest %s", digest.FromString(out))
		}
		c.must(t, "content", "label", manifest, "x=y")
		if f := row(c.must(t, "content", "ls"), manifest); len(f) < 4 || !strings.Contains(f[len(f)-1], "x=y") {
			t.Errorf("content ls row %v, want label x=y", f)
		}
		c.must(t, "content", "label", manifest, "x=")
		if f := row(c.must(t, "content", "ls"), manifest); len(f) < 4 || strings.Contains(f[len(f)-1], "x=y") {
			t.Errorf("content ls row %v still has label x=y", f)
		}
	})
	t.Run("leases create, ls and rm", func(t *testing.T) {
		c.must(t, "leases", "create", "--id", "lease-1", "--expires", "1h", "k=v")
		if f := row(c.must(t, "leases", "ls"), "lease-1"); len(f) < 2 || !strings.Contains(strings.Join(f, " "), "k=v") {
			t.Errorf("leases ls row %v", f)
		}
		c.must(t, "leases", "rm", "lease-1")
		if row(c.must(t, "leases", "ls"), "lease-1") != nil {
			t.Errorf("lease listed after rm")
		}
	})
	t.Run("events streams a container's life", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := c.command(ctx, "events")
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { cancel(); cmd.Wait() }()
		lines := make(chan string)
		go func() {
			defer close(lines)
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				lines <- sc.Text()
			}
		}()
		// ctr events prints nothing before it is subscribed: label the
		// namespace until it prints the update.
		for n, ready := 0, false; !ready; n++ {
			c.must(t, "namespaces", "label", c.ns, fmt.Sprintf("events=ready-%d", n))
			select {
			case line, ok := <-lines:
				if !ok {
					t.Fatal("ctr events ended")
				}
				ready = eventTopic(line, c.ns) == "/namespaces/update"
			case <-ctx.Done():
				t.Fatal("no /namespaces/update event for a namespace label")
			case <-time.After(200 * time.Millisecond):
			}
		}
		c.must(t, "run", "--rm", ref, "evented", "true")
		want := []string{"/containers/create", "/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete", "/containers/delete"}
		var got []string
		for len(got) < len(want) {
			select {
			case line, ok := <-lines:
				if !ok {
					t.Fatalf("ctr events ended; topics seen %v, want %v", got, want)
				}
				topic := eventTopic(line, c.ns)
				if (strings.HasPrefix(topic, "/containers/") || strings.HasPrefix(topic, "/tasks/")) && strings.Contains(line, `"evented"`) {
					got = append(got, topic)
				}
			case <-ctx.Done():
				t.Fatalf("topics seen %v, want %v", got, want)
			}
		}
		if strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("topics %v, want %v", got, want)
		}
	})
	t.Run("images export --local and import --local round-trip", func(t *testing.T) {
		archive := filepath.Join(t.TempDir(), "export.tar")
		c.must(t, "images", "export", "--local", archive, ref)
		imported := ref + "-imported"
		c.must(t, "images", "import", "--local", "--index-name", imported, archive)
		if row(c.must(t, "images", "ls"), imported) == nil {
			t.Fatalf("images ls does not list %s", imported)
		}
		if out, errOut, err := c.run(nil, "run", "--rm", imported, "from-import", "echo", "imported"); err != nil || out != "imported\n" {
			t.Errorf("run of the imported image: %v %q %s", err, out, errOut)
		}
	})
	t.Run("run --log-uri file:// keeps every line", func(t *testing.T) {
		log := filepath.Join(t.TempDir(), "out.log")
		c.must(t, "run", "--rm", "--log-uri", "file://"+log, ref, "logged", "sh", "-c", "for i in $(seq 1 50); do echo line $i; done")
		b, err := os.ReadFile(log)
		if err != nil {
			t.Fatal(err)
		}
		var want strings.Builder
		for i := 1; i <= 50; i++ {
			fmt.Fprintf(&want, "line %d\n", i)
		}
		if string(b) != want.String() {
			t.Errorf("log file holds %q", b)
		}
	})
	t.Run("plugins ls lists the snapshotters", func(t *testing.T) {
		out := c.must(t, "plugins", "ls")
		if !strings.Contains(out, "io.containerd.snapshotter.v1") || !strings.Contains(out, "overlayfs") {
			t.Errorf("plugins ls:\n%s", out)
		}
	})
}
