package server

import (
	"context"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
)

// localListener hands the gRPC server one end of each socket pair that
// DialLocal makes: a front door's connections to it, in the same process,
// with the kernel's socket buffers between the two sides.
type localListener struct {
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newLocalListener() *localListener {
	return &localListener{conns: make(chan net.Conn), closed: make(chan struct{})}
}

func (l *localListener) dial(ctx context.Context) (net.Conn, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("socket pair: %w", err)
	}
	ours, err := fileConn(fds[0], "local-client")
	if err != nil {
		syscall.Close(fds[1])
		return nil, err
	}
	theirs, err := fileConn(fds[1], "local-server")
	if err != nil {
		ours.Close()
		return nil, err
	}
	select {
	case l.conns <- theirs:
		return ours, nil
	case <-l.closed:
		err = net.ErrClosed
	case <-ctx.Done():
		err = ctx.Err()
	}
	ours.Close()
	theirs.Close()
	return nil, err
}

// fileConn makes a net.Conn of socket fd, which it takes over.
func fileConn(fd int, name string) (net.Conn, error) {
	f := os.NewFile(uintptr(fd), name)
	defer f.Close() // FileConn holds a duplicate
	return net.FileConn(f)
}

func (l *localListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *localListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *localListener) Addr() net.Addr { return localAddr{} }

type localAddr struct{}

func (localAddr) Network() string { return "local" }
func (localAddr) String() string  { return "local" }
