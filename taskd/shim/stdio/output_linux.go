package stdio

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/fifo"
	runc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"
)

// Schemes of the output URIs a client may give as Stdout (containerd's shim
// takes the same; its client's cio.LogFile and cio.BinaryIO make them).
const (
	schemeFIFO     = "fifo"      // a path without a scheme: a FIFO (or a file to append to)
	schemeFile     = "file"      // file:///path: both streams appended to the file
	schemeBinary   = "binary"    // binary:///path?args: a logger process reads both streams
	schemeBinaryV2 = "binary-v2" // as binary, but the logger must write a byte when ready
)

// LoggerStopTimeout is how long a logger binary has to exit after SIGTERM
// (sent once the process's output is closed) before it is killed.
const LoggerStopTimeout = 12 * time.Second

// output is where a process's stdout and stderr go. stderr is stdout when
// both share one destination; either may discard.
type output struct {
	stdout, stderr io.WriteCloser
	// closers are closed by Streams.Close, after the copies closed stdout
	// and stderr (a logger is stopped there).
	closers []io.Closer
}

// outputURI parses Stdout as containerd's shim does: no scheme is a path.
func outputURI(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("stdout uri %q: %v: %w", s, err, errdefs.ErrInvalidArgument)
	}
	if u.Scheme == "" {
		return &url.URL{Scheme: schemeFIFO, Path: s}, nil
	}
	return u, nil
}

// openOutput opens the destinations of s's output. The scheme of Stdout
// decides, for both streams: a file or a logger takes stderr too, and a
// terminal has no stderr at all.
func openOutput(ctx context.Context, s Stdio, o Owner) (*output, error) {
	if s.Stdout == "" && (s.Terminal || s.Stderr == "") {
		return &output{stdout: discard{}, stderr: discard{}}, nil
	}
	u := &url.URL{Scheme: schemeFIFO}
	if s.Stdout != "" {
		var err error
		if u, err = outputURI(s.Stdout); err != nil {
			return nil, err
		}
	}
	switch u.Scheme {
	case schemeFIFO:
		return openPaths(ctx, s)
	case schemeFile:
		return openLogFile(u)
	case schemeBinary, schemeBinaryV2:
		return startLogger(ctx, u, o)
	default:
		return nil, fmt.Errorf("stdout uri %q: unknown scheme %q (want a path, file:// or binary://): %w", s.Stdout, u.Scheme, errdefs.ErrInvalidArgument)
	}
}

// openPaths opens the client's output paths: FIFOs, or files appended to.
func openPaths(ctx context.Context, s Stdio) (*output, error) {
	stdout, err := openPath(ctx, s.Stdout)
	if err != nil {
		return nil, err
	}
	if s.Terminal || s.Stderr == s.Stdout {
		return &output{stdout: stdout, stderr: stdout}, nil
	}
	stderr, err := openPath(ctx, s.Stderr)
	if err != nil {
		stdout.Close()
		return nil, err
	}
	return &output{stdout: stdout, stderr: stderr}, nil
}

// openPath opens one output path; empty discards. For a FIFO the shim keeps
// a read end of its own open, as containerd's shim does: while the client's
// reader is away the process's writes fill the FIFO instead of failing (the
// client reads them when it opens the FIFO again), and once the FIFO is
// full the writer waits rather than losing output.
func openPath(ctx context.Context, path string) (io.WriteCloser, error) {
	if path == "" {
		return discard{}, nil
	}
	isFIFO, err := fifo.IsFifo(path)
	if err != nil {
		return nil, fmt.Errorf("open output fifo %s: %w", path, notFound(err))
	}
	if !isFIFO {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return nil, fmt.Errorf("open output file %s: %w", path, notFound(err))
		}
		return f, nil
	}
	w, err := fifo.OpenFifo(ctx, path, unix.O_WRONLY, 0)
	if err != nil {
		return nil, fmt.Errorf("open output fifo %s: %w", path, notFound(err))
	}
	// With the write end open this does not block. It is never read.
	keep, err := os.OpenFile(path, os.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("keep output fifo %s open: %w", path, err)
	}
	return &fifoWriter{WriteCloser: w, keep: keep}, nil
}

// fifoWriter is a FIFO's write end with the shim's own read end beside it.
type fifoWriter struct {
	io.WriteCloser
	keep *os.File
}

func (f *fifoWriter) Close() error {
	err := f.WriteCloser.Close()
	f.keep.Close()
	return err
}

// openLogFile appends both streams to the file of a file:// URI, creating
// it (and its directory) if needed.
func openLogFile(u *url.URL) (*output, error) {
	if !filepath.IsAbs(u.Path) {
		return nil, fmt.Errorf("log file uri %q: the path must be absolute: %w", u.String(), errdefs.ErrInvalidArgument)
	}
	if err := os.MkdirAll(filepath.Dir(u.Path), 0o755); err != nil {
		return nil, fmt.Errorf("log file directory: %w", err)
	}
	f, err := os.OpenFile(u.Path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open log file %s: %w", u.Path, err)
	}
	return &output{stdout: f, stderr: f}, nil
}

// startLogger starts the logger binary of a binary:// URI as containerd's
// shim does: the query's keys and values are its arguments; its environment
// is only CONTAINER_ID and CONTAINER_NAMESPACE; it reads stdout on fd 3 and
// stderr on fd 4 until end of file, and signals readiness by closing fd 5
// (binary-v2: by writing a byte to it first). It returns once the logger is
// ready, or fails when ctx ends first.
func startLogger(ctx context.Context, u *url.URL, o Owner) (_ *output, retErr error) {
	if !filepath.IsAbs(u.Path) {
		return nil, fmt.Errorf("logger uri %q: the binary's path must be absolute: %w", u.String(), errdefs.ErrInvalidArgument)
	}
	var files []*os.File // closed on failure
	defer func() {
		if retErr != nil {
			for _, f := range files {
				f.Close()
			}
		}
	}()
	pipe := func() (r, w *os.File, err error) {
		if r, w, err = os.Pipe(); err != nil {
			return nil, nil, fmt.Errorf("logger pipe: %w", err)
		}
		files = append(files, r, w)
		return r, w, nil
	}
	outR, outW, err := pipe()
	if err != nil {
		return nil, err
	}
	errR, errW, err := pipe()
	if err != nil {
		return nil, err
	}
	readyR, readyW, err := pipe()
	if err != nil {
		return nil, err
	}

	query := u.Query()
	keys := make([]string, 0, len(query))
	for k := range query {
		keys = append(keys, k)
	}
	slices.Sort(keys) // containerd takes map order; a fixed one is kinder
	var args []string
	for _, k := range keys {
		args = append(args, k)
		if v := query[k]; len(v) > 0 {
			args = append(args, v[0])
		}
	}
	cmd := exec.Command(u.Path, args...)
	cmd.Env = []string{"CONTAINER_ID=" + o.ContainerID, "CONTAINER_NAMESPACE=" + o.Namespace}
	cmd.ExtraFiles = []*os.File{outR, errR, readyW} // fds 3, 4, 5
	// The shim reaps its children; go-runc's Monitor is the shim's reaper.
	exits, err := runc.Monitor.Start(cmd)
	if err != nil {
		return nil, fmt.Errorf("start logger %s: %w", u.Path, notFound(err))
	}
	l := &logger{path: u.Path, cmd: cmd, exited: make(chan struct{}), stdout: outW, stderr: errW}
	go func() {
		_, _ = runc.Monitor.Wait(cmd, exits)
		close(l.exited)
	}()
	defer func() {
		if retErr != nil {
			_ = cmd.Process.Kill()
		}
	}()
	// The logger holds its ends now.
	outR.Close()
	errR.Close()
	readyW.Close()

	type result struct {
		n   int
		err error
	}
	ready := make(chan result, 1)
	go func() {
		n, err := readyR.Read(make([]byte, 1))
		ready <- result{n, err}
	}()
	select {
	case r := <-ready:
		if r.err != nil && !errors.Is(r.err, io.EOF) {
			return nil, fmt.Errorf("logger %s: waiting until ready: %w", u.Path, r.err)
		}
		if u.Scheme == schemeBinaryV2 && r.n == 0 {
			return nil, fmt.Errorf("logger %s exited or closed fd 5 without signalling it is ready", u.Path)
		}
	case <-ctx.Done():
		return nil, fmt.Errorf("logger %s: waiting until ready: %w", u.Path, ctx.Err())
	}
	readyR.Close()
	return &output{stdout: outW, stderr: errW, closers: []io.Closer{l}}, nil
}

// logger is a running logger binary.
type logger struct {
	path           string
	cmd            *exec.Cmd
	exited         chan struct{}
	stdout, stderr *os.File
	once           sync.Once
}

// Close ends the logger's input, then asks it to exit (SIGTERM), and kills
// it if it has not exited within LoggerStopTimeout, as containerd's shim
// does.
func (l *logger) Close() error {
	l.once.Do(func() {
		l.stdout.Close()
		l.stderr.Close()
		select {
		case <-l.exited:
			return
		default:
		}
		_ = l.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-l.exited:
		case <-time.After(LoggerStopTimeout):
			_ = l.cmd.Process.Kill()
			<-l.exited
		}
	})
	return nil
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
func (discard) Close() error                { return nil }
