// Package stdio connects a container process's standard streams to the
// client's FIFOs: through pipes handed to the OCI runtime, or, for a
// terminal, through the pty master the runtime sends back on a console
// socket.
package stdio

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/console"
	"github.com/containerd/errdefs"
	"github.com/containerd/fifo"
	runc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"
)

// Stdio is what the client asked for: FIFO paths (any may be empty: that
// stream is discarded, or closed for stdin) and whether the process wants a
// terminal (then stderr is merged into the terminal and its path ignored).
type Stdio struct {
	Stdin, Stdout, Stderr string
	Terminal              bool
}

// Streams copies between the client's FIFOs and one process.
//
// Use: Open; pass IO() (pipes) or ConsoleSocket() (terminal) to the runtime
// call that starts the process; after that call returns, AfterStart; and
// Close once the process has exited.
type Streams struct {
	stdio Stdio

	pipes  runc.IO      // non-terminal
	socket *runc.Socket // terminal, until AfterStart
	cons   console.Console
	master *os.File // non-blocking dup of the pty master, for copying

	stdin   io.ReadCloser // the client's stdin FIFO
	outputs sync.WaitGroup
	closers []io.Closer

	mu          sync.Mutex
	stdinClosed bool
}

// Open opens the client's FIFOs and prepares the process side. ctx bounds
// the wait for the client to have its output FIFOs open for reading.
func Open(ctx context.Context, s Stdio) (_ *Streams, err error) {
	st := &Streams{stdio: s}
	defer func() {
		if err != nil {
			st.Close()
		}
	}()
	if s.Stdin != "" {
		// The read side opens in the background; the client's writer may
		// come later.
		f, err := fifo.OpenFifo(context.Background(), s.Stdin, unix.O_RDONLY|unix.O_NONBLOCK, 0)
		if err != nil {
			return nil, fmt.Errorf("open stdin fifo %s: %w", s.Stdin, notFound(err))
		}
		st.stdin = f
		st.closers = append(st.closers, f)
	}
	if s.Terminal {
		socket, err := runc.NewTempConsoleSocket()
		if err != nil {
			return nil, fmt.Errorf("console socket: %w", err)
		}
		st.socket = socket
		return st, nil
	}
	pipes, err := runc.NewPipeIO(0, 0, func(o *runc.IOOption) {
		o.OpenStdin = s.Stdin != ""
		o.OpenStdout = true
		o.OpenStderr = true
	})
	if err != nil {
		return nil, fmt.Errorf("stdio pipes: %w", err)
	}
	st.pipes = pipes
	st.closers = append(st.closers, pipes)

	stdout, err := openWriter(ctx, s.Stdout)
	if err != nil {
		return nil, err
	}
	stderr := stdout
	if s.Stderr != s.Stdout {
		if stderr, err = openWriter(ctx, s.Stderr); err != nil {
			stdout.Close()
			return nil, err
		}
	}
	var shared sync.WaitGroup // a FIFO used for both streams closes after both
	shared.Add(2)
	st.copyOut(pipes.Stdout(), stdout, &shared)
	st.copyOut(pipes.Stderr(), stderr, &shared)
	if s.Stdin != "" {
		go st.copyIn(pipes.Stdin())
	}
	return st, nil
}

func notFound(err error) error {
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%w: %w", err, errdefs.ErrNotFound)
	}
	return err
}

// openWriter opens a client output FIFO; an empty path discards.
func openWriter(ctx context.Context, path string) (io.WriteCloser, error) {
	if path == "" {
		return nopCloser{io.Discard}, nil
	}
	f, err := fifo.OpenFifo(ctx, path, unix.O_WRONLY, 0)
	if err != nil {
		return nil, fmt.Errorf("open output fifo %s: %w", path, notFound(err))
	}
	return f, nil
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

// copyOut copies r to w until r ends. If the client goes away, the rest is
// discarded so the process never blocks on a full pipe.
func (st *Streams) copyOut(r io.Reader, w io.WriteCloser, shared *sync.WaitGroup) {
	st.outputs.Add(1)
	go func() {
		defer st.outputs.Done()
		buf := make([]byte, 32<<10)
		if _, err := io.CopyBuffer(w, r, buf); err != nil && !isEOF(err) {
			_, _ = io.CopyBuffer(io.Discard, r, buf)
		}
		shared.Done()
		go func() {
			shared.Wait()
			w.Close()
		}()
	}()
}

// isEOF: a pty master reports the slave's last close as EIO.
func isEOF(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.EIO) || errors.Is(err, os.ErrClosed)
}

func (st *Streams) copyIn(w io.WriteCloser) {
	buf := make([]byte, 32<<10)
	_, _ = io.CopyBuffer(w, st.stdin, buf)
	// The client closed its end, or CloseStdin was called: the process
	// sees end of file. (On a terminal the pty stays; only the copy stops.)
	if !st.stdio.Terminal {
		w.Close()
	}
}

// IO is the process side of the pipes for the runtime; nil for a terminal.
func (st *Streams) IO() runc.IO { return st.pipes }

// ConsoleSocket is the socket on which the runtime sends the pty master;
// nil unless a terminal was asked for.
func (st *Streams) ConsoleSocket() runc.ConsoleSocket {
	if st.socket == nil {
		return nil
	}
	return st.socket
}

// AfterStart finishes the set-up once the runtime call that started the
// process has returned: it closes the process's ends of the pipes, or
// receives the pty master and starts copying through it.
func (st *Streams) AfterStart(ctx context.Context) error {
	if st.pipes != nil {
		if c, ok := st.pipes.(runc.StartCloser); ok {
			return c.CloseAfterStart()
		}
		return nil
	}
	if st.socket == nil {
		return nil
	}
	defer func() {
		st.socket.Close()
		st.socket = nil
	}()
	cons, err := st.socket.ReceiveMaster()
	if err != nil {
		return fmt.Errorf("receive pty master: %w", err)
	}
	st.cons = cons
	st.closers = append(st.closers, cons)
	fd, err := unix.Dup(int(cons.Fd()))
	if err != nil {
		return fmt.Errorf("dup pty master: %w", err)
	}
	unix.CloseOnExec(fd)
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return fmt.Errorf("pty master non-blocking: %w", err)
	}
	st.master = os.NewFile(uintptr(fd), "pty-master")
	st.closers = append(st.closers, st.master)

	stdout, err := openWriter(ctx, st.stdio.Stdout)
	if err != nil {
		return err
	}
	var shared sync.WaitGroup
	shared.Add(1)
	st.copyOut(st.master, stdout, &shared)
	if st.stdin != nil {
		go st.copyIn(st.master)
	}
	return nil
}

// Resize sets the terminal's size. Without a terminal it fails with
// FailedPrecondition.
func (st *Streams) Resize(width, height uint32) error {
	if st.cons == nil {
		return fmt.Errorf("process has no terminal: %w", errdefs.ErrFailedPrecondition)
	}
	return st.cons.Resize(console.WinSize{Width: uint16(width), Height: uint16(height)})
}

// CloseStdin stops forwarding the client's stdin; without a terminal the
// process then reads end of file.
func (st *Streams) CloseStdin() error {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.stdinClosed {
		return nil
	}
	st.stdinClosed = true
	if st.stdin != nil {
		st.stdin.Close()
	}
	if st.pipes != nil && st.pipes.Stdin() != nil {
		st.pipes.Stdin().Close()
	}
	return nil
}

// Wait waits up to timeout for the output copies to finish (they finish
// when every process holding the output open has exited).
func (st *Streams) Wait(timeout time.Duration) bool {
	done := make(chan struct{})
	go func() {
		st.outputs.Wait()
		close(done)
	}()
	select {
	case <-done:
		return true
	case <-time.After(timeout):
		return false
	}
}

// Close releases everything: FIFOs, pipes, the pty.
func (st *Streams) Close() error {
	if st.socket != nil {
		st.socket.Close()
		st.socket = nil
	}
	for i := len(st.closers) - 1; i >= 0; i-- {
		st.closers[i].Close()
	}
	st.closers = nil
	return nil
}
