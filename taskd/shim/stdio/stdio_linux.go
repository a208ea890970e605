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

// Stdio is what the client asked for. Stdin is a FIFO path. Stdout is a
// FIFO path (or a file's, appended to), a file:///path URI (both streams
// appended to that file) or a binary:///path?args URI (both streams handed
// to that logger binary); Stderr is a FIFO or file path, used only with a
// path as Stdout. Any may be empty: that stream is discarded, or closed for
// stdin. With a terminal, stderr is merged into it and Stderr ignored.
type Stdio struct {
	Stdin, Stdout, Stderr string
	Terminal              bool
}

// Owner is whose streams these are: the container and namespace a logger
// binary is told, and the user and group given the process's ends of the
// pipes (the runc options' IoUid and IoGid, for user namespaces).
type Owner struct {
	ContainerID, Namespace string
	UID, GID               int
}

// Streams copies between the client's FIFOs (or log destination) and one
// process.
//
// Use: Open; pass IO() (pipes) or ConsoleSocket() (terminal) to the runtime
// call that starts the process; after that call returns, AfterStart; and
// Close once the process has exited.
type Streams struct {
	stdio Stdio
	owner Owner

	pipes  runc.IO      // non-terminal
	socket *runc.Socket // terminal, until AfterStart
	master *os.File     // non-blocking dup of the pty master, for copying

	stdin io.ReadCloser // the client's stdin FIFO
	// stdinHold is the shim's own write end of the stdin FIFO, as
	// containerd's shim keeps: the process reads end of file only once
	// the client has closed its end and CloseStdin has closed this one,
	// so a client that goes away does not end its stdin, and CloseIO does
	// not drop what the client wrote and the copy has not read yet.
	stdinHold io.Closer
	outputs   sync.WaitGroup
	closers   []io.Closer

	mu          sync.Mutex
	cons        console.Console  // the pty, once received
	size        *console.WinSize // asked for before the pty came
	stdinClosed bool
}

// Open opens the client's stdin and output destinations and prepares the
// process side. ctx bounds the wait for the client to have its output FIFOs
// open for reading, or for a logger binary to be ready.
func Open(ctx context.Context, s Stdio, o Owner) (_ *Streams, err error) {
	st := &Streams{stdio: s, owner: o}
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
		hold, err := fifo.OpenFifo(context.Background(), s.Stdin, unix.O_WRONLY|unix.O_NONBLOCK, 0)
		if err != nil {
			return nil, fmt.Errorf("hold stdin fifo %s: %w", s.Stdin, notFound(err))
		}
		st.stdinHold = hold
		st.closers = append(st.closers, hold)
	}
	if s.Terminal {
		socket, err := runc.NewTempConsoleSocket()
		if err != nil {
			return nil, fmt.Errorf("console socket: %w", err)
		}
		st.socket = socket
		return st, nil
	}
	pipes, err := runc.NewPipeIO(o.UID, o.GID, func(o *runc.IOOption) {
		o.OpenStdin = s.Stdin != ""
		o.OpenStdout = true
		o.OpenStderr = true
	})
	if err != nil {
		return nil, fmt.Errorf("stdio pipes: %w", err)
	}
	st.pipes = pipes
	st.closers = append(st.closers, pipes)

	out, err := openOutput(ctx, s, o)
	if err != nil {
		return nil, err
	}
	st.closers = append(st.closers, out.closers...)
	var shared sync.WaitGroup // a destination of both streams closes after both
	if out.stderr == out.stdout {
		shared.Add(2)
		st.copyOut(pipes.Stdout(), out.stdout, &shared)
		st.copyOut(pipes.Stderr(), out.stdout, &shared)
	} else {
		st.copyOut(pipes.Stdout(), out.stdout, nil)
		st.copyOut(pipes.Stderr(), out.stderr, nil)
	}
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

// copyOut copies r to w until r ends, then closes w (when shared is not
// nil, once every copy into w is done). If w fails, the rest is discarded
// so the process never blocks on a full pipe.
func (st *Streams) copyOut(r io.Reader, w io.WriteCloser, shared *sync.WaitGroup) {
	st.outputs.Add(1)
	go func() {
		defer st.outputs.Done()
		buf := make([]byte, 32<<10)
		if _, err := io.CopyBuffer(w, r, buf); err != nil && !isEOF(err) {
			_, _ = io.CopyBuffer(io.Discard, r, buf)
		}
		if shared == nil {
			w.Close()
			return
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
	st.closers = append(st.closers, cons)
	st.mu.Lock()
	st.cons = cons
	size := st.size
	st.mu.Unlock()
	if size != nil {
		if err := cons.Resize(*size); err != nil {
			return fmt.Errorf("resize pty: %w", err)
		}
	}
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

	out, err := openOutput(ctx, st.stdio, st.owner)
	if err != nil {
		return err
	}
	st.closers = append(st.closers, out.closers...)
	if out.stderr != out.stdout {
		out.stderr.Close() // a terminal has no stderr
	}
	st.copyOut(st.master, out.stdout, nil)
	if st.stdin != nil {
		go st.copyIn(st.master)
	}
	return nil
}

// Resize sets the terminal's size. Before the terminal exists (the runtime
// has not started the process yet) the size is kept and set as soon as it
// does. A process without a terminal has nothing to resize: as with
// containerd's shim, that is not an error.
func (st *Streams) Resize(width, height uint32) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	if !st.stdio.Terminal {
		return nil
	}
	ws := console.WinSize{Width: uint16(width), Height: uint16(height)}
	if st.cons == nil {
		st.size = &ws
		return nil
	}
	return st.cons.Resize(ws)
}

// CloseStdin lets the client's stdin end: once the client has closed its
// end of the FIFO and everything it wrote is forwarded, the process reads
// end of file (without a terminal). As in containerd, a client that keeps
// its end open keeps stdin open.
func (st *Streams) CloseStdin() error {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.stdinClosed {
		return nil
	}
	st.stdinClosed = true
	if st.stdinHold != nil {
		if err := st.stdinHold.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
			return err
		}
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
