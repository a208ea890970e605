package stdio

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// run starts a shell command as the process of st, as a runtime would.
func run(t *testing.T, st *Streams, script string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("/bin/sh", "-c", script)
	st.IO().Set(cmd)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if err := st.AfterStart(context.Background()); err != nil {
		t.Fatal(err)
	}
	return cmd
}

func mkfifo(t *testing.T, dir, name string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := unix.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// openReader opens a FIFO's read end the way containerd's client does
// (without waiting for a writer).
func openReader(t *testing.T, path string) *os.File {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	// A line that never comes fails the test instead of hanging it.
	if err := f.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	return f
}

func openWriter(t *testing.T, path string) *os.File {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0) // RDWR: never blocks, keeps it open
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func expectLine(t *testing.T, r *bufio.Reader, want string) {
	t.Helper()
	line, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("reading %q: %v (got %q)", want, err, line)
	}
	if line != want+"\n" {
		t.Fatalf("read %q, want %q", line, want)
	}
}

func TestOutputWrittenWhileTheReaderIsAwayIsKeptInOrder(t *testing.T) {
	dir := t.TempDir()
	in, out, errPath := mkfifo(t, dir, "in"), mkfifo(t, dir, "out"), mkfifo(t, dir, "err")
	stdout := openReader(t, out)
	stderr := openReader(t, errPath)
	defer stderr.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := Open(ctx, Stdio{Stdin: in, Stdout: out, Stderr: errPath}, Owner{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	stdin := openWriter(t, in)
	defer stdin.Close()
	// For each number read, the process writes "line N" to stdout, then
	// "ack N" to stderr: the ack proves the line was written.
	cmd := run(t, st, `while read n; do echo "line $n" || exit 3; echo "ack $n" >&2; done`)
	acks := bufio.NewReader(stderr)
	lines := bufio.NewReader(stdout)

	fmt.Fprintln(stdin, 1)
	expectLine(t, acks, "ack 1")
	expectLine(t, lines, "line 1")

	stdout.Close() // the reader goes away
	for n := 2; n <= 100; n++ {
		fmt.Fprintln(stdin, n)
		expectLine(t, acks, fmt.Sprintf("ack %d", n))
	}
	stdout = openReader(t, out) // and comes back
	defer stdout.Close()
	lines = bufio.NewReader(stdout)
	for n := 2; n <= 100; n++ {
		expectLine(t, lines, fmt.Sprintf("line %d", n))
	}
	fmt.Fprintln(stdin, 101)
	expectLine(t, lines, "line 101")

	stdin.Close()
	if err := st.CloseStdin(); err != nil { // what CloseIO does
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("the process saw its output fail: %v", err)
	}
	if !st.Wait(5 * time.Second) {
		t.Fatal("output copies did not finish")
	}
}

// A client writes its stdin, closes it and calls CloseIO at once, perhaps
// before the process runs (flotctl exec -i, ctr run with stdin from a
// file): the process still reads every byte, then end of file.
func TestCloseStdinKeepsWhatTheClientWrote(t *testing.T) {
	dir := t.TempDir()
	in, out := mkfifo(t, dir, "in"), mkfifo(t, dir, "out")
	stdout := openReader(t, out)
	defer stdout.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := Open(ctx, Stdio{Stdin: in, Stdout: out}, Owner{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	// Write-only, as clients open it: the open waits for the shim's read
	// end, so the bytes are in the FIFO while it is held open.
	stdin, err := os.OpenFile(in, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintln(stdin, "typed")
	stdin.Close()
	if err := st.CloseStdin(); err != nil {
		t.Fatal(err)
	}
	cmd := run(t, st, `cat`)
	expectLine(t, bufio.NewReader(stdout), "typed")
	if err := cmd.Wait(); err != nil {
		t.Fatalf("cat: %v", err)
	}
}

func TestFileURIAppendsBothStreams(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "new", "dir", "log")
	if err := os.MkdirAll(filepath.Dir(log), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(log, []byte("before\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	uri := "file://" + log
	st, err := Open(context.Background(), Stdio{Stdout: uri, Stderr: uri}, Owner{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	cmd := run(t, st, `echo to-stdout; echo to-stderr >&2`)
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if !st.Wait(5 * time.Second) {
		t.Fatal("output copies did not finish")
	}
	data, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	got := string(data)
	if !strings.HasPrefix(got, "before\n") || !strings.Contains(got, "to-stdout\n") || !strings.Contains(got, "to-stderr\n") {
		t.Fatalf("log file holds %q", got)
	}
}

func TestFileURICreatesTheFileAndItsDirectory(t *testing.T) {
	log := filepath.Join(t.TempDir(), "a", "b", "log")
	st, err := Open(context.Background(), Stdio{Stdout: "file://" + log}, Owner{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	cmd := run(t, st, `echo hello`)
	cmd.Wait()
	st.Wait(5 * time.Second)
	if data, err := os.ReadFile(log); err != nil || string(data) != "hello\n" {
		t.Fatalf("log file: %q, %v", data, err)
	}
}

// loggerScript is a logger binary: it signals readiness by closing fd 5,
// copies fd 3 and fd 4 into files in the directory given as its second
// argument, and records its environment and arguments.
const loggerScript = `#!/bin/sh
trap '' TERM
exec 5>&-
/bin/cat <&3 >"$2/stdout" &
/bin/cat <&4 >"$2/stderr"
wait
echo "$CONTAINER_ID $CONTAINER_NAMESPACE $# $1" >"$2/env"
/usr/bin/env >"$2/environ"
`

func TestBinaryURIHandsBothStreamsToTheLogger(t *testing.T) {
	dir := t.TempDir()
	logger := filepath.Join(dir, "logger")
	if err := os.WriteFile(logger, []byte(loggerScript), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("FLOTILLA_NOT_FOR_LOGGERS", "1")
	uri := "binary://" + logger + "?dir=" + dir
	st, err := Open(context.Background(), Stdio{Stdout: uri, Stderr: uri}, Owner{ContainerID: "c1", Namespace: "ns1"})
	if err != nil {
		t.Fatal(err)
	}
	cmd := run(t, st, `for i in 1 2 3; do echo out $i; echo err $i >&2; done`)
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if !st.Wait(5 * time.Second) {
		t.Fatal("output copies did not finish")
	}
	st.Close() // stops the logger: it has exited once Close returns
	for name, want := range map[string]string{
		"stdout": "out 1\nout 2\nout 3\n",
		"stderr": "err 1\nerr 2\nerr 3\n",
		"env":    "c1 ns1 2 dir\n",
	} {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if string(data) != want {
			t.Errorf("%s: %q, want %q", name, data, want)
		}
	}
	// Only CONTAINER_ID and CONTAINER_NAMESPACE are passed on.
	if env, _ := os.ReadFile(filepath.Join(dir, "environ")); strings.Contains(string(env), "FLOTILLA_NOT_FOR_LOGGERS") {
		t.Errorf("the logger inherited the shim's environment:\n%s", env)
	}
}

func TestBadOutputsAreRefused(t *testing.T) {
	dir := t.TempDir()
	notReady := filepath.Join(dir, "not-ready")
	if err := os.WriteFile(notReady, []byte("#!/bin/sh\nexec 5>&-\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		stdout string
		is     func(error) bool
	}{
		{"a missing fifo is not found", filepath.Join(dir, "nope"), errdefs.IsNotFound},
		{"a missing logger binary is not found", "binary://" + filepath.Join(dir, "nope"), errdefs.IsNotFound},
		{"a relative logger path is invalid", "binary:relative/logger", errdefs.IsInvalidArgument},
		{"an unknown scheme is invalid", "ftp://host/x", errdefs.IsInvalidArgument},
		{"a binary-v2 logger that never says ready fails", "binary-v2://" + notReady, func(err error) bool { return err != nil }},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			st, err := Open(ctx, Stdio{Stdout: c.stdout, Stderr: c.stdout}, Owner{})
			if err == nil {
				st.Close()
				t.Fatalf("Open(%q) succeeded", c.stdout)
			}
			if !c.is(err) {
				t.Fatalf("Open(%q): %v: wrong kind", c.stdout, err)
			}
		})
	}
}

func TestResizeWithoutATerminalIsANoOp(t *testing.T) {
	st, err := Open(context.Background(), Stdio{}, Owner{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.Resize(80, 24); err != nil {
		t.Fatalf("Resize without a terminal: %v", err)
	}
}
