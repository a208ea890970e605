// Package stdio connects a container's standard streams to flotctl's, the
// way containerd's clients do: through named pipes (FIFOs) the shim opens,
// or a file:// log URI the shim appends to while flotctl is gone.
package stdio

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"syscall"

	"github.com/containerd/fifo"
)

// Config is what a task is created with: the paths (or URIs) of its three
// streams, and whether it has a terminal. An empty path means the stream is
// not connected.
type Config struct {
	Stdin, Stdout, Stderr string
	Terminal              bool
}

// LogFile is the Config of a task whose output (both streams) the shim
// appends to the file at path, as containerd's cio.LogFile.
func LogFile(path string) Config {
	u := (&url.URL{Scheme: "file", Path: path}).String()
	return Config{Stdout: u, Stderr: u}
}

// Streams are where a task's streams go on flotctl's side.
type Streams struct {
	// Stdin, when not nil, is copied to the task's stdin; at its end the
	// task's stdin is closed through CloseStdin.
	Stdin io.Reader
	// Stdout and Stderr receive the task's output; with a terminal,
	// everything arrives on Stdout.
	Stdout, Stderr io.Writer
	Terminal       bool
}

// Attached is a set of FIFOs created for a task and the copies between them
// and flotctl's streams.
type Attached struct {
	cfg     Config
	dir     string
	closers []io.Closer
	out     sync.WaitGroup
	// stdinDone is closed when stdin reached its end and was closed.
	stdinDone chan struct{}
	// created is closed by Created (or Close): CloseStdin is not called
	// before, since the runtime has no process to close it for yet.
	created     chan struct{}
	createdOnce sync.Once
}

// NewFIFOs creates FIFOs under dir (a new directory below it) for s's
// streams and starts copying. CloseStdin is called once s.Stdin has ended
// and Created was called, to tell the task's runtime (Tasks.CloseIO). The copies run until the
// shim closes its ends; Wait waits for them.
func NewFIFOs(ctx context.Context, dir, id string, s Streams, closeStdin func()) (*Attached, error) {
	d, err := os.MkdirTemp(dir, "flotctl-"+id+"-")
	if err != nil {
		return nil, fmt.Errorf("create fifo dir: %w", err)
	}
	a := &Attached{dir: d, stdinDone: make(chan struct{}), created: make(chan struct{})}
	a.cfg.Terminal = s.Terminal
	fail := func(err error) (*Attached, error) {
		a.Close()
		return nil, err
	}
	if s.Stdin != nil {
		a.cfg.Stdin = filepath.Join(d, id+"-stdin")
		w, err := fifo.OpenFifo(ctx, a.cfg.Stdin, syscall.O_WRONLY|syscall.O_CREAT|syscall.O_NONBLOCK, 0o700)
		if err != nil {
			return fail(fmt.Errorf("stdin fifo: %w", err))
		}
		a.closers = append(a.closers, w)
		go func() {
			defer close(a.stdinDone)
			io.Copy(w, s.Stdin)
			w.Close()
			// A short stdin can end while the task is still being
			// created; its runtime holds stdin open until told.
			<-a.created
			if closeStdin != nil {
				closeStdin()
			}
		}()
	} else {
		close(a.stdinDone)
	}
	openOut := func(name string, dst io.Writer) (string, error) {
		p := filepath.Join(d, id+"-"+name)
		r, err := fifo.OpenFifo(ctx, p, syscall.O_RDONLY|syscall.O_CREAT|syscall.O_NONBLOCK, 0o700)
		if err != nil {
			return "", fmt.Errorf("%s fifo: %w", name, err)
		}
		a.closers = append(a.closers, r)
		a.out.Add(1)
		go func() {
			defer a.out.Done()
			if dst == nil {
				dst = io.Discard
			}
			io.Copy(dst, r)
			r.Close()
		}()
		return p, nil
	}
	if a.cfg.Stdout, err = openOut("stdout", s.Stdout); err != nil {
		return fail(err)
	}
	if !s.Terminal {
		if a.cfg.Stderr, err = openOut("stderr", s.Stderr); err != nil {
			return fail(err)
		}
	}
	return a, nil
}

// Created says the task (or exec process) using these FIFOs now exists,
// so the end of stdin can be passed on to it.
func (a *Attached) Created() {
	a.createdOnce.Do(func() { close(a.created) })
}

// Config is what the task should be created with.
func (a *Attached) Config() Config { return a.cfg }

// Wait waits until the output copies have ended (the shim closed the FIFOs
// after the process and everything sharing its output exited) or ctx ends.
func (a *Attached) Wait(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		a.out.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close closes every FIFO and removes them.
func (a *Attached) Close() error {
	a.Created() // nothing waits for a task any more
	var errs []error
	for _, c := range a.closers {
		if err := c.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
			errs = append(errs, err)
		}
	}
	if a.dir != "" {
		errs = append(errs, os.RemoveAll(a.dir))
	}
	return errors.Join(errs...)
}
