package integration

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flotilla/flotilla/integration/imagekit"
)

// dockerImage is the test-image kit's busybox as `docker load` names it.
const dockerImage = "flotilla/busybox:1"

// TestDockerEngine runs Debian's Docker Engine on each backend's socket
// (`dockerd --containerd`) and drives it with the docker CLI as a user
// would: images live in dockerd, containers and tasks in the backend.
func TestDockerEngine(t *testing.T) {
	requireTool(t, "dockerd")
	img, err := imagekit.BuildBusybox()
	if err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(t.TempDir(), "busybox.tar")
	f, err := os.Create(archive)
	if err != nil {
		t.Fatal(err)
	}
	if err := img.WriteDockerArchive(f, dockerImage); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	for _, kind := range clientBackends {
		t.Run(kind.name, func(t *testing.T) {
			b := kind.start(t)
			d := startDockerd(t, b.Socket, "--live-restore")
			if out := d.mustDocker(t, "load", "--input", archive); !strings.Contains(out, dockerImage) {
				t.Fatalf("docker load: %s", out)
			}
			runDockerScenarios(t, d)
		})
	}
}

func runDockerScenarios(t *testing.T, d *dockerd) {
	run := func(args ...string) []string {
		return append([]string{"run", "--network", "none"}, args...)
	}
	t.Run("run --rm prints the output and exits with the container's code", func(t *testing.T) {
		name := "rm-" + strconv.Itoa(os.Getpid())
		out, errOut, err := d.docker(run("--rm", "--name", name, dockerImage, "sh", "-c", "echo hello from docker; exit 7")...)
		if code := exitCode(err); code != 7 {
			t.Fatalf("exit code %d (%v), want 7\n%s%s", code, err, out, errOut)
		}
		if out != "hello from docker\n" {
			t.Errorf("stdout %q, want %q", out, "hello from docker\n")
		}
		if left := d.mustDocker(t, "ps", "-aq", "--filter", "name="+name); left != "" {
			t.Errorf("--rm left container %s", left)
		}
	})
	t.Run("run -d and logs -f follow the output until the container exits", func(t *testing.T) {
		id := d.mustDocker(t, run("-d", dockerImage, "sh", "-c", "for i in 1 2 3; do echo tick $i; sleep 0.2; done; echo done >&2")...)
		out, errOut, err := d.docker("logs", "-f", id)
		if err != nil {
			t.Fatalf("logs -f: %v\n%s", err, errOut)
		}
		if out != "tick 1\ntick 2\ntick 3\n" || errOut != "done\n" {
			t.Errorf("logs -f: stdout %q stderr %q", out, errOut)
		}
		if code := d.mustDocker(t, "wait", id); code != "0" {
			t.Errorf("wait: %s, want 0", code)
		}
	})
	t.Run("exec -it gives the command a terminal", func(t *testing.T) {
		script := requireTool(t, "script")
		id := d.mustDocker(t, run("-d", dockerImage, "sleep", "1000")...)
		// script(1) gives the docker CLI a terminal, as a user's shell would.
		line := strings.Join(d.command(context.Background(), "exec", "-it", id, "sh", "-c", "tty; echo exec-ok; exit 5").Args, " ")
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, script, "-qec", line, "/dev/null")
		cmd.Env = d.command(ctx).Env
		out, err := cmd.CombinedOutput()
		if code := exitCode(err); code != 5 {
			t.Errorf("exec -it exit code %d (%v), want 5\n%s", code, err, out)
		}
		if !strings.Contains(string(out), "/dev/pts/") || !strings.Contains(string(out), "exec-ok\r\n") {
			t.Errorf("exec -it output %q: want a /dev/pts tty and exec-ok with the terminal's CRLF", out)
		}
		d.mustDocker(t, "rm", "-f", id)
	})
	t.Run("stop sends SIGTERM and the container exits with its own code", func(t *testing.T) {
		id := d.mustDocker(t, run("-d", dockerImage, "sh", "-c", `trap "exit 3" TERM; echo ready; while true; do sleep 0.1; done`)...)
		d.waitLogLine(t, id, "ready")
		d.mustDocker(t, "stop", "--time", "30", id)
		if got := d.inspect(t, id, "{{.State.Status}} {{.State.ExitCode}}"); got != "exited 3" {
			t.Errorf("after stop: %s, want exited 3", got)
		}
		d.mustDocker(t, "rm", id)
	})
	t.Run("kill ends the container with SIGKILL", func(t *testing.T) {
		id := d.mustDocker(t, run("-d", dockerImage, "sleep", "1000")...)
		d.mustDocker(t, "kill", id)
		if code := d.mustDocker(t, "wait", id); code != "137" {
			t.Errorf("wait after kill: %s, want 137", code)
		}
		if got := d.inspect(t, id, "{{.State.Running}}"); got != "false" {
			t.Errorf("running after kill: %s", got)
		}
		d.mustDocker(t, "rm", id)
	})
	t.Run("restart runs the container again in a new process", func(t *testing.T) {
		id := d.mustDocker(t, run("-d", dockerImage, "sleep", "1000")...)
		before := d.inspect(t, id, "{{.State.Pid}}")
		d.mustDocker(t, "restart", "--time", "1", id)
		after := d.inspect(t, id, "{{.State.Status}} {{.State.Pid}}")
		if after == "running "+before || !strings.HasPrefix(after, "running ") {
			t.Errorf("after restart: %s, want running with a pid other than %s", after, before)
		}
		d.mustDocker(t, "rm", "-f", id)
	})
	t.Run("restart=always starts a container again when it exits", func(t *testing.T) {
		name := "always-" + strconv.Itoa(os.Getpid())
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		events := d.stream(t, ctx, "events", "--filter", "container="+name, "--format", "{{.Action}}")
		d.mustDocker(t, run("-d", "--name", name, "--restart=always", dockerImage, "sh", "-c", "echo up; exit 1")...)
		starts := 0
		for starts < 3 {
			select {
			case action, ok := <-events:
				if !ok {
					t.Fatalf("docker events ended after %d starts", starts)
				}
				if action == "start" {
					starts++
				}
			case <-ctx.Done():
				t.Fatalf("%d starts of a restart=always container that exits, want 3", starts)
			}
		}
		if n, _ := strconv.Atoi(d.inspect(t, name, "{{.RestartCount}}")); n < 2 {
			t.Errorf("RestartCount %d, want at least 2", n)
		}
		d.mustDocker(t, "rm", "-f", name)
	})
	t.Run("memory limit OOM-kills the container and inspect says OOMKilled", func(t *testing.T) {
		name := "oom-" + strconv.Itoa(os.Getpid())
		// tail keeps the current line in memory; /dev/zero has no newline.
		out, errOut, err := d.docker(run("--name", name, "--memory", "16m", "--memory-swap", "16m", dockerImage, "tail", "/dev/zero")...)
		if code := exitCode(err); code != 137 {
			t.Errorf("exit code %d, want 137 (SIGKILL)\n%s%s", code, out, errOut)
		}
		if got := d.inspect(t, name, "{{.State.OOMKilled}}"); got != "true" {
			t.Errorf("OOMKilled %s, want true", got)
		}
		d.mustDocker(t, "rm", name)
	})
	t.Run("pause freezes the container and unpause resumes it", func(t *testing.T) {
		id := d.mustDocker(t, run("-d", dockerImage, "sleep", "1000")...)
		d.mustDocker(t, "pause", id)
		if got := d.inspect(t, id, "{{.State.Status}} {{.State.Paused}}"); got != "paused true" {
			t.Errorf("after pause: %s", got)
		}
		if _, _, err := d.docker("exec", id, "true"); err == nil {
			t.Errorf("exec in a paused container succeeded")
		}
		d.mustDocker(t, "unpause", id)
		if got := d.inspect(t, id, "{{.State.Status}} {{.State.Paused}}"); got != "running false" {
			t.Errorf("after unpause: %s", got)
		}
		if out := d.mustDocker(t, "exec", id, "echo", "awake"); out != "awake" {
			t.Errorf("exec after unpause: %q", out)
		}
		d.mustDocker(t, "rm", "-f", id)
	})
	t.Run("build runs RUN in a container and COPY adds the file", func(t *testing.T) {
		dir := t.TempDir()
		dockerfile := "FROM " + dockerImage + "\nRUN echo built-by-run > /built\nCOPY file.txt /file.txt\nCMD [\"cat\", \"/built\", \"/file.txt\"]\n"
		if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(dockerfile), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "file.txt"), []byte("copied\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		tag := "flotilla/built:" + strconv.Itoa(os.Getpid())
		d.mustDocker(t, "build", "--network", "none", "--tag", tag, dir)
		if out := d.mustDocker(t, run("--rm", tag)...); out != "built-by-run\ncopied" {
			t.Errorf("the built image prints %q", out)
		}
	})
	t.Run("live-restore keeps every line written while dockerd is away", func(t *testing.T) {
		testDockerLiveRestore(t, d)
	})
}

// testDockerLiveRestore stops dockerd (with --live-restore) for 5 s of a
// container's 10 s of output, a line every 100 ms, and expects every line
// in docker logs once dockerd is back, with and without a terminal.
func testDockerLiveRestore(t *testing.T, d *dockerd) {
	const lines = 100
	type ctr struct {
		name, id, progress string
		tty                bool
	}
	var ctrs []*ctr
	for _, tty := range []bool{false, true} {
		c := &ctr{name: fmt.Sprintf("live-%v-%d", tty, os.Getpid()), progress: t.TempDir(), tty: tty}
		args := []string{"run", "-d", "--network", "none", "--name", c.name, "-v", c.progress + ":/out"}
		if tty {
			args = append(args, "-t")
		}
		// Each line also goes to a file on the host: the test's clock while dockerd is away.
		script := fmt.Sprintf("for i in $(seq 1 %d); do echo line $i; echo $i >> /out/n; sleep 0.1; done", lines)
		c.id = d.mustDocker(t, append(args, dockerImage, "sh", "-c", script)...)
		ctrs = append(ctrs, c)
	}
	for _, c := range ctrs {
		d.waitLogLine(t, c.id, "line 10")
	}
	d.stop()
	// 5 s of output (50 lines) while no dockerd reads it.
	for _, c := range ctrs {
		waitFileLines(t, filepath.Join(c.progress, "n"), 60)
	}
	d.start()
	for _, c := range ctrs {
		t.Run(map[bool]string{false: "without a terminal", true: "with a terminal"}[c.tty], func(t *testing.T) {
			if code := d.mustDocker(t, "wait", c.id); code != "0" {
				t.Errorf("wait: %s, want 0", code)
			}
			out := strings.ReplaceAll(d.mustDocker(t, "logs", c.id), "\r\n", "\n")
			got := strings.Split(out, "\n")
			missing := []int{}
			for i := 1; i <= lines; i++ {
				if i > len(got) || got[i-1] != fmt.Sprintf("line %d", i) {
					missing = append(missing, i)
				}
			}
			if len(missing) > 0 || len(got) != lines {
				t.Errorf("docker logs has %d lines, want %d; lines not in place: %v", len(got), lines, missing)
			}
		})
		d.mustDocker(t, "rm", "-f", c.id)
	}
}

// inspect returns `docker inspect --format format id`.
func (d *dockerd) inspect(t testing.TB, id, format string) string {
	t.Helper()
	return d.mustDocker(t, "inspect", "--format", format, id)
}

// stream runs a docker command that keeps printing (logs -f, events) until
// ctx ends and sends its stdout line by line; the channel closes when the
// command exits.
func (d *dockerd) stream(t testing.TB, ctx context.Context, args ...string) <-chan string {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	cmd := d.command(ctx, args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			select {
			case lines <- strings.TrimRight(sc.Text(), "\r"):
			case <-ctx.Done():
			}
		}
		cmd.Wait()
	}()
	t.Cleanup(func() {
		cancel()
		for range lines {
		}
	})
	return lines
}

// waitLogLine follows container id's logs until one line is want.
func (d *dockerd) waitLogLine(t testing.TB, id, want string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	lines := d.stream(t, ctx, "logs", "-f", id)
	for {
		select {
		case line, ok := <-lines:
			if !ok {
				t.Fatalf("logs of %s ended before the line %q", id, want)
			}
			if line == want {
				return
			}
		case <-ctx.Done():
			t.Fatalf("no line %q in the logs of %s", want, id)
		}
	}
}

// waitFileLines waits until the file at path has at least n lines.
func waitFileLines(t testing.TB, path string, n int) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		b, _ := os.ReadFile(path)
		if strings.Count(string(b), "\n") >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s has %d lines after a minute, want %d", path, strings.Count(string(b), "\n"), n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
