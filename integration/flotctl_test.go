package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// flotctlOn runs bin/flotctl against one containerd API endpoint in one
// namespace.
type flotctlOn struct {
	t       testing.TB
	address string
	ns      string
}

// result is one flotctl run: its streams and exit code.
type result struct {
	stdout, stderr string
	code           int
}

func (f flotctlOn) cmd(ctx context.Context, args ...string) *exec.Cmd {
	all := append([]string{"--address", f.address, "-n", f.ns}, args...)
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "flotctl"), all...)
	cmd.Env = append(os.Environ(), "CONTAINERD_ADDRESS=", "CONTAINERD_NAMESPACE=")
	return cmd
}

// run runs flotctl with stdin (may be nil) and returns what it printed and
// its exit code; it fails the test only when flotctl could not run at all.
func (f flotctlOn) run(stdin io.Reader, args ...string) result {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := f.cmd(ctx, args...)
	var out, errb bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, &out, &errb
	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		f.t.Fatalf("flotctl %s: %v", strings.Join(args, " "), err)
	}
	return result{stdout: out.String(), stderr: errb.String(), code: cmd.ProcessState.ExitCode()}
}

// must is run that fails the test unless flotctl exits 0; it returns stdout.
func (f flotctlOn) must(args ...string) string {
	f.t.Helper()
	r := f.run(nil, args...)
	if r.code != 0 {
		f.t.Fatalf("flotctl %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

// mustJSON runs flotctl with --format json and decodes its output into v.
func (f flotctlOn) mustJSON(v any, args ...string) {
	f.t.Helper()
	out := f.must(append(args, "--format", "json")...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		f.t.Fatalf("flotctl %s --format json printed what is not JSON: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// psRow is the part of `flotctl ps --format json` the tests read.
type psRow struct {
	ID         string   `json:"id"`
	Image      string   `json:"image"`
	Command    []string `json:"command"`
	Status     string   `json:"status"`
	Pid        uint32   `json:"pid"`
	ExitStatus *uint32  `json:"exit_status"`
}

func (f flotctlOn) ps() map[string]psRow {
	f.t.Helper()
	var rows []psRow
	f.mustJSON(&rows, "ps")
	m := map[string]psRow{}
	for _, r := range rows {
		m[r.ID] = r
	}
	return m
}

func TestFlotctlRunPrintsAndPropagatesExitCodes(t *testing.T) {
	ns := "flotctl-run"
	s := startRunStack(t, ns, nil)
	fc := flotctlOn{t: t, address: s.Socket, ns: ns}

	t.Run("run --rm prints the command's output and leaves nothing", func(t *testing.T) {
		r := fc.run(nil, "run", "--rm", "--name", "hi", s.ref, "echo", "hi")
		if r.code != 0 || r.stdout != "hi\n" {
			t.Fatalf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
		}
		if _, ok := fc.ps()["hi"]; ok {
			t.Error("--rm left the container")
		}
		if out := s.MustCtr(ns, "snapshots", "ls"); strings.Contains(out, "hi ") {
			t.Errorf("--rm left the snapshot:\n%s", out)
		}
	})
	for _, tc := range []struct {
		name string
		args []string
		code int
	}{
		{"exit 0 is 0", []string{"true"}, 0},
		{"exit 3 is 3", []string{"sh", "-c", "exit 3"}, 3},
		{"exit 42 is 42", []string{"sh", "-c", "exit 42"}, 42},
		{"exit 255 is 255", []string{"sh", "-c", "exit 255"}, 255},
		{"a command that is not there is not 0", []string{"/no/such/command"}, -1},
	} {
		t.Run("exit code propagates: "+tc.name, func(t *testing.T) {
			r := fc.run(nil, append([]string{"run", "--rm", s.ref}, tc.args...)...)
			if tc.code == -1 {
				if r.code == 0 || !strings.Contains(r.stderr, "flotctl: ") {
					t.Fatalf("exit %d, stderr %q; want an error", r.code, r.stderr)
				}
				return
			}
			if r.code != tc.code {
				t.Fatalf("exit %d, want %d; stderr %q", r.code, tc.code, r.stderr)
			}
			if tc.code != 0 && r.stderr != "" {
				t.Errorf("a container's exit status should end flotctl silently, stderr %q", r.stderr)
			}
		})
	}
	t.Run("env, stdin and a bind mount reach the container", func(t *testing.T) {
		dir, err := os.MkdirTemp("", "flotctl-mount")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(dir)
		if err := os.WriteFile(filepath.Join(dir, "f"), []byte("from-host\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		r := fc.run(strings.NewReader("from-stdin\n"), "run", "--rm", "-i", "-e", "GREETING=hello", "--env", "PATH=/bin",
			"--mount", "type=bind,src="+dir+",dst=/data,options=ro", s.ref,
			"sh", "-c", `echo "$GREETING $PATH"; cat; cat /data/f; touch /data/g 2>/dev/null || echo read-only`)
		if want := "hello /bin\nfrom-stdin\nfrom-host\nread-only\n"; r.code != 0 || r.stdout != want {
			t.Fatalf("exit %d, stdout %q, want %q; stderr %q", r.code, r.stdout, want, r.stderr)
		}
	})
	t.Run("stderr stays stderr", func(t *testing.T) {
		r := fc.run(nil, "run", "--rm", s.ref, "sh", "-c", "echo out; echo err >&2")
		if r.stdout != "out\n" || r.stderr != "err\n" {
			t.Fatalf("stdout %q stderr %q", r.stdout, r.stderr)
		}
	})
	t.Run("--memory and --cpus are in the container's spec", func(t *testing.T) {
		fc.must("run", "--name", "limits", "--memory", "64m", "--cpus", "0.5", s.ref, "true")
		defer fc.must("rm", "limits")
		var info struct {
			Spec specs.Spec `json:"Spec"`
		}
		if err := json.Unmarshal([]byte(s.MustCtr(ns, "containers", "info", "limits")), &info); err != nil {
			t.Fatal(err)
		}
		res := info.Spec.Linux.Resources
		if res.Memory == nil || *res.Memory.Limit != 64<<20 || res.CPU == nil || *res.CPU.Quota != 50000 || *res.CPU.Period != 100000 {
			t.Fatalf("resources %+v", res)
		}
		if info.Spec.Linux.CgroupsPath != "/"+ns+"/limits" {
			t.Errorf("cgroups path %q", info.Spec.Linux.CgroupsPath)
		}
		row := fc.ps()["limits"]
		if row.Status != "stopped" || row.ExitStatus == nil || *row.ExitStatus != 0 {
			t.Errorf("ps after exit: %+v", row)
		}
	})
	t.Run("--snapshotter native unpacks the image there first", func(t *testing.T) {
		if r := fc.run(nil, "run", "--rm", "--snapshotter", "native", s.ref, "echo", "native-hi"); r.code != 0 || r.stdout != "native-hi\n" {
			t.Fatalf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
		}
		var got []struct {
			ChainIDs []string `json:"chain_ids"`
		}
		if err := json.Unmarshal([]byte(fc.must("images", "inspect", s.ref)), &got); err != nil || len(got) != 1 {
			t.Fatalf("inspect: %v", err)
		}
		top := got[0].ChainIDs[len(got[0].ChainIDs)-1]
		if out := s.MustCtr(ns, "snapshots", "--snapshotter", "native", "ls"); !strings.Contains(out, top) {
			t.Errorf("native has no snapshot %s:\n%s", top, out)
		}
		// A second run finds the chain there and unpacks nothing.
		if r := fc.run(nil, "run", "--rm", "--snapshotter", "native", s.ref, "true"); r.code != 0 {
			t.Errorf("second run: exit %d, stderr %q", r.code, r.stderr)
		}
	})
	t.Run("SIGTERM to flotctl reaches the container", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := fc.cmd(ctx, "run", "--rm", s.ref, "sh", "-c", `trap "echo got-term; exit 5" TERM; echo ready; while true; do sleep 0.1; done`)
		var out syncBuffer
		cmd.Stdout = &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		out.waitFor(t, regexp.MustCompile("ready\n"))
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		if code := cmd.ProcessState.ExitCode(); code != 5 || out.String() != "ready\ngot-term\n" {
			t.Fatalf("exit %d, output %q; want 5 and the trap's line", code, out.String())
		}
	})
	t.Run("a terminal with -t", func(t *testing.T) {
		ptmx, tty := openPty(t, 30, 100)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := fc.cmd(ctx, "run", "--rm", "-t", s.ref, "sh", "-c", "tty; stty size; exit 7")
		cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
		var screen syncBuffer
		go io.Copy(&screen, ptmx)
		err := cmd.Run()
		if code := cmd.ProcessState.ExitCode(); code != 7 {
			t.Fatalf("exit %d (%v), want 7\n%s", code, err, screen.String())
		}
		screen.waitFor(t, regexp.MustCompile(`/dev/pts/\d+\r*\n30 100\r*\n`))
	})
	t.Run("bad flags are refused before anything is created", func(t *testing.T) {
		for _, args := range [][]string{
			{"run", "--rm", "-d", s.ref, "true"},
			{"run", "--memory", "lots", s.ref, "true"},
			{"run", "--mount", "type=volume,dst=/x", s.ref, "true"},
			{"run", "--name", "bad/name", s.ref, "true"},
		} {
			r := fc.run(nil, args...)
			if r.code != 1 || !strings.HasPrefix(r.stderr, "flotctl: ") || strings.Count(r.stderr, "\n") != 1 {
				t.Errorf("flotctl %s: exit %d, stderr %q; want exit 1 and one line", strings.Join(args, " "), r.code, r.stderr)
			}
		}
		if n := len(fc.ps()); n != 0 {
			t.Errorf("%d containers left", n)
		}
	})
}

// TestFlotctlContainerLifecycle runs a container in the background and
// drives it with ps, exec, kill and rm.
func TestFlotctlContainerLifecycle(t *testing.T) {
	ns := "flotctl-life"
	s := startRunStack(t, ns, nil)
	fc := flotctlOn{t: t, address: s.Socket, ns: ns}
	t.Run("attached", func(t *testing.T) { testLifecycle(t, fc, s.ref, false) })
	t.Run("detached, with logs", func(t *testing.T) { testLifecycle(t, fc, s.ref, true) })
}

// testLifecycle is the lifecycle test against any endpoint: an attached
// run in the background (or, with detach, `run -d` and `logs`).
func testLifecycle(t *testing.T, fc flotctlOn, ref string, detach bool) {
	const id = "life"
	var attached *exec.Cmd
	var attachedOut syncBuffer
	if detach {
		out := fc.must("run", "-d", "--name", id, ref, "sh", "-c", "echo started; exec sleep 600")
		if strings.TrimSpace(out) != id {
			t.Fatalf("run -d printed %q, want the id", out)
		}
	} else {
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		attached = fc.cmd(ctx, "run", "--name", id, ref, "sh", "-c", "echo started; exec sleep 600")
		attached.Stdout = &attachedOut
		if err := attached.Start(); err != nil {
			t.Fatal(err)
		}
		attachedOut.waitFor(t, regexp.MustCompile("started\n"))
		// The process prints before Tasks.Start has answered flotctl;
		// the task is listed as running once it has.
		for deadline := time.Now().Add(10 * time.Second); fc.ps()[id].Status != "running" && time.Now().Before(deadline); {
			time.Sleep(50 * time.Millisecond)
		}
	}
	t.Cleanup(func() { fc.run(nil, "rm", "-f", id) })

	row, ok := fc.ps()[id]
	if !ok || row.Status != "running" || row.Pid == 0 || row.Image != ref {
		t.Fatalf("ps: %+v (listed %v)", row, ok)
	}
	if out := fc.must("ps"); !regexp.MustCompile(`(?m)^` + id + `\s+` + regexp.QuoteMeta(ref) + `\s+"sh -c echo started; exec.*…"\s+.*\s+running\s+\d+$`).MatchString(out) {
		t.Errorf("ps table:\n%s", out)
	}
	if out := fc.must("exec", id, "sh", "-c", "echo in-$HOSTNAME"); out != "in-"+id+"\n" {
		t.Errorf("exec printed %q", out)
	}
	if r := fc.run(strings.NewReader("typed\n"), "exec", "-i", id, "cat"); r.stdout != "typed\n" || r.code != 0 {
		t.Errorf("exec -i printed %q and exited %d, want what it read and 0 once its stdin ended (%s)", r.stdout, r.code, r.stderr)
	}
	if r := fc.run(nil, "exec", id, "sh", "-c", "exit 4"); r.code != 4 {
		t.Errorf("exec exit %d, want 4 (%s)", r.code, r.stderr)
	}
	if r := fc.run(nil, "rm", id); r.code == 0 || !strings.Contains(r.stderr, "with -f") {
		t.Errorf("rm of a running container: exit %d, stderr %q", r.code, r.stderr)
	}

	var follow *exec.Cmd
	var followOut syncBuffer
	if detach {
		// run -d answers once the task has started, which can be before
		// its first line reached the log: follow it until it has.
		follow = fc.cmd(context.Background(), "logs", "-f", id)
		follow.Stdout = &followOut
		if err := follow.Start(); err != nil {
			t.Fatal(err)
		}
		followOut.waitFor(t, regexp.MustCompile("started\n"))
		if out := fc.must("logs", id); out != "started\n" {
			t.Errorf("logs printed %q", out)
		}
	}
	fc.must("kill", "--signal", "SIGKILL", id)
	if attached != nil {
		attached.Wait()
		if code := attached.ProcessState.ExitCode(); code != 137 {
			t.Errorf("the attached run exited %d, want 137", code)
		}
	}
	if follow != nil {
		// logs -f ends when the task exits.
		if err := follow.Wait(); err != nil || followOut.String() != "started\n" {
			t.Errorf("logs -f: %v, printed %q", err, followOut.String())
		}
	}
	row = fc.ps()[id]
	if row.Status != "stopped" || row.ExitStatus == nil || *row.ExitStatus != 137 {
		t.Errorf("ps after kill: %+v", row)
	}
	fc.must("rm", id)
	if _, ok := fc.ps()[id]; ok {
		t.Error("rm left the container listed")
	}
	if r := fc.run(nil, "rm", id); r.code != 1 || !strings.Contains(r.stderr, "no container "+id) {
		t.Errorf("second rm: exit %d stderr %q", r.code, r.stderr)
	}
}

func TestFlotctlImagesAndNamespaces(t *testing.T) {
	ns := "flotctl-images"
	s := startRunStack(t, ns, nil)
	fc := flotctlOn{t: t, address: s.Socket, ns: ns}

	type imageRow struct {
		Name   string `json:"name"`
		Target struct {
			Digest string `json:"digest"`
		} `json:"target"`
		Size int64 `json:"size"`
	}
	images := func() map[string]imageRow {
		var rows []imageRow
		fc.mustJSON(&rows, "images", "ls")
		m := map[string]imageRow{}
		for _, r := range rows {
			m[r.Name] = r
		}
		return m
	}
	orig, ok := images()[s.ref]
	if !ok || orig.Size <= 0 || !strings.HasPrefix(orig.Target.Digest, "sha256:") {
		t.Fatalf("images ls: %+v (listed %v)", orig, ok)
	}
	t.Run("tag gives the same target a new name, once", func(t *testing.T) {
		fc.must("images", "tag", s.ref, "flotctl/copy:1", "flotctl/copy:2")
		all := images()
		for _, n := range []string{"flotctl/copy:1", "flotctl/copy:2"} {
			if all[n].Target.Digest != orig.Target.Digest {
				t.Errorf("%s: target %q, want %q", n, all[n].Target.Digest, orig.Target.Digest)
			}
		}
		if r := fc.run(nil, "images", "tag", s.ref, "flotctl/copy:1"); r.code != 1 || !strings.Contains(r.stderr, "--force") {
			t.Errorf("tag onto an existing name: exit %d, stderr %q", r.code, r.stderr)
		}
		fc.must("images", "tag", "--force", s.ref, "flotctl/copy:1")
	})
	t.Run("the table lists what JSON lists", func(t *testing.T) {
		out := fc.must("images", "ls")
		if !regexp.MustCompile(`(?m)^NAME\s+DIGEST\s+TYPE\s+SIZE\s+CREATED$`).MatchString(out) || !strings.Contains(out, "flotctl/copy:2 ") {
			t.Errorf("images ls:\n%s", out)
		}
	})
	t.Run("inspect shows manifest, config and chain IDs", func(t *testing.T) {
		var got []struct {
			Name    string `json:"name"`
			Content struct {
				Manifest struct {
					Layers []json.RawMessage `json:"layers"`
				} `json:"manifest"`
				Config struct {
					Config struct {
						Cmd []string `json:"Cmd"`
					} `json:"config"`
					RootFS struct {
						DiffIDs []string `json:"diff_ids"`
					} `json:"rootfs"`
				} `json:"config"`
			} `json:"content"`
			ChainIDs []string `json:"chain_ids"`
		}
		if err := json.Unmarshal([]byte(fc.must("images", "inspect", "flotctl/copy:2")), &got); err != nil {
			t.Fatal(err)
		}
		if len(got) != 1 || len(got[0].ChainIDs) == 0 || len(got[0].ChainIDs) != len(got[0].Content.Manifest.Layers) ||
			got[0].ChainIDs[0] != got[0].Content.Config.RootFS.DiffIDs[0] || len(got[0].Content.Config.Config.Cmd) == 0 {
			t.Errorf("inspect: %+v", got)
		}
		// The snapshot the image is unpacked to is named by its top chain ID.
		if top := got[0].ChainIDs[len(got[0].ChainIDs)-1]; !strings.Contains(s.MustCtr(ns, "snapshots", "ls"), top) {
			t.Errorf("no snapshot %s", top)
		}
	})
	t.Run("rm removes names, and says which one is missing", func(t *testing.T) {
		fc.must("images", "rm", "flotctl/copy:1", "flotctl/copy:2")
		all := images()
		if _, ok := all["flotctl/copy:1"]; ok || len(all) != 1 {
			t.Errorf("after rm: %v", all)
		}
		r := fc.run(nil, "images", "rm", "flotctl/copy:1")
		if r.code != 1 || !strings.Contains(r.stderr, "image flotctl/copy:1: not found") {
			t.Errorf("rm of a missing image: exit %d, stderr %q", r.code, r.stderr)
		}
		r = fc.run(nil, "run", "--rm", "flotctl/copy:1", "true")
		if r.code != 1 || !strings.Contains(r.stderr, "flotctl pull flotctl/copy:1") {
			t.Errorf("run of a missing image: exit %d, stderr %q", r.code, r.stderr)
		}
	})
	t.Run("namespaces create, list with labels, refuse to remove a used one, remove", func(t *testing.T) {
		fc.must("namespaces", "create", "--label", "team=ops", "flotctl-new")
		var rows []struct {
			Name   string            `json:"name"`
			Labels map[string]string `json:"labels"`
		}
		fc.mustJSON(&rows, "namespaces", "ls")
		found := map[string]map[string]string{}
		for _, r := range rows {
			found[r.Name] = r.Labels
		}
		if _, ok := found[ns]; !ok || found["flotctl-new"]["team"] != "ops" {
			t.Errorf("namespaces ls: %+v", rows)
		}
		if r := fc.run(nil, "namespaces", "rm", ns); r.code != 1 || !strings.Contains(r.stderr, "is not empty") {
			t.Errorf("rm of a used namespace: exit %d, stderr %q", r.code, r.stderr)
		}
		fc.must("namespaces", "rm", "flotctl-new")
		if out := fc.must("namespaces", "ls"); strings.Contains(out, "flotctl-new") {
			t.Errorf("namespace still listed:\n%s", out)
		}
	})
	t.Run("version names client and server", func(t *testing.T) {
		var v struct {
			Client struct{ Version string }          `json:"client"`
			Server struct{ Version, Address string } `json:"server"`
		}
		fc.mustJSON(&v, "version")
		if v.Client.Version == "" || v.Server.Version == "" || v.Server.Address != s.Socket {
			t.Errorf("version: %+v", v)
		}
	})
}

// TestFlotctlEventsWithAFilter subscribes with a filter and checks that
// matching events arrive as JSON lines and others do not.
func TestFlotctlEventsWithAFilter(t *testing.T) {
	ns := "flotctl-events"
	s := startRunStack(t, ns, nil)
	fc := flotctlOn{t: t, address: s.Socket, ns: ns}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := fc.cmd(ctx, "events", "--format", "json", `topic=="/images/create"`)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	type line struct {
		Namespace string `json:"namespace"`
		Topic     string `json:"topic"`
		Event     struct {
			Name string `json:"name"`
		} `json:"event"`
	}
	lines := make(chan line)
	go func() {
		defer close(lines)
		dec := json.NewDecoder(stdout)
		for {
			var l line
			if err := dec.Decode(&l); err != nil {
				return
			}
			lines <- l
		}
	}()
	// The subscription is live once the first matching event arrives: until
	// then, make one non-matching and one matching event per round.
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(time.Minute)
	var got []line
	for round := 0; len(got) == 0; round++ {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatal("flotctl events ended")
			}
			got = append(got, l)
		case <-tick.C:
			fc.must("namespaces", "create", "flotctl-ev"+strconv.Itoa(round))
			fc.must("namespaces", "rm", "flotctl-ev"+strconv.Itoa(round))
			fc.must("images", "tag", s.ref, "flotctl/ev:"+strconv.Itoa(round))
		case <-deadline:
			t.Fatal("no event within a minute")
		}
	}
	fc.must("images", "tag", s.ref, "flotctl/ev:last")
	for l := range lines {
		got = append(got, l)
		if l.Event.Name == "flotctl/ev:last" {
			break
		}
	}
	cancel()
	for _, l := range got {
		if l.Topic != "/images/create" || l.Namespace != ns || !strings.HasPrefix(l.Event.Name, "flotctl/ev:") {
			t.Errorf("event %+v does not match the filter", l)
		}
	}
}

func TestFlotctlErrorsSayWhatToDo(t *testing.T) {
	fc := flotctlOn{t: t, address: filepath.Join(t.TempDir(), "nothing.sock"), ns: "default"}
	for _, args := range [][]string{{"ps"}, {"images", "ls"}, {"run", "--rm", "busybox", "true"}} {
		r := fc.run(nil, args...)
		want := "flotctl: cannot reach Flotilla at " + fc.address + ": is the stack up? (make up"
		if r.code != 1 || !strings.HasPrefix(r.stderr, want) || strings.Count(r.stderr, "\n") != 1 {
			t.Errorf("flotctl %s: exit %d, stderr %q; want one line starting %q", strings.Join(args, " "), r.code, r.stderr, want)
		}
	}
	if r := fc.run(nil, "images", "ls", "--format", "yaml"); r.code != 1 || !strings.Contains(r.stderr, "want table or json") {
		t.Errorf("--format yaml: exit %d, stderr %q", r.code, r.stderr)
	}
}
