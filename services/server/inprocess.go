package server

import (
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"

	"github.com/containerd/errdefs"
)

// In one process that runs several components (cmd/flotilla), a component's
// calls to another skip the sockets: each server also serves, beside its
// socket, an in-memory listener registered under its address, and the kit's
// dialers (services/dial) connect to that listener when the address they are
// given is served in this process. The calls still go through gRPC with
// every interceptor, so they behave as over the socket, without the socket
// file, its listen queue and accept. Each connection is an anonymous socket
// pair, as the gateway's own front door uses (localListener): an
// unbuffered net.Pipe would save the copy through the kernel, but both
// HTTP/2 peers write their preface and settings before they read, and the
// gateway's relay writes to an upstream before it reads from it, which on
// a synchronous pipe waits forever.

var inProcess struct {
	enabled atomic.Bool
	mu      sync.Mutex
	servers map[string]*pipeListener // by inProcessKey of their address
}

// EnableInProcess makes the servers this process starts from now on serve
// callers in the same process without a socket, and the kit's dialers use
// them. Call it once, before starting servers, in a process that runs
// several components; a process running one daemon does not.
func EnableInProcess() { inProcess.enabled.Store(true) }

// InProcessEnabled reports whether EnableInProcess was called.
func InProcessEnabled() bool { return inProcess.enabled.Load() }

// DialInProcess connects to the server of this process serving addr (any
// form SplitAddress takes). ok is false when in-process serving is not
// enabled or no server of this process serves addr now; the caller then
// dials the address itself.
func DialInProcess(ctx context.Context, addr string) (conn net.Conn, ok bool, err error) {
	if !InProcessEnabled() {
		return nil, false, nil
	}
	key, err := inProcessKey(addr)
	if err != nil {
		return nil, false, err
	}
	inProcess.mu.Lock()
	l := inProcess.servers[key]
	inProcess.mu.Unlock()
	if l == nil {
		return nil, false, nil
	}
	c, err := l.localListener.dial(ctx)
	if err != nil {
		return nil, true, fmt.Errorf("connect in process to %s: %w", addr, err)
	}
	return c, true, nil
}

// listenInProcess registers a listener for addr, for the server serving
// addr's socket; Close unregisters it.
func listenInProcess(addr string) (*pipeListener, error) {
	key, err := inProcessKey(addr)
	if err != nil {
		return nil, err
	}
	inProcess.mu.Lock()
	defer inProcess.mu.Unlock()
	if _, taken := inProcess.servers[key]; taken {
		return nil, fmt.Errorf("%s is already served in this process: %w", addr, errdefs.ErrAlreadyExists)
	}
	if inProcess.servers == nil {
		inProcess.servers = map[string]*pipeListener{}
	}
	l := &pipeListener{localListener: newLocalListener(), addr: pipeAddr(addr)}
	l.unregister = func() {
		inProcess.mu.Lock()
		defer inProcess.mu.Unlock()
		if inProcess.servers[key] == l {
			delete(inProcess.servers, key)
		}
	}
	inProcess.servers[key] = l
	return l, nil
}

// inProcessKey is addr in one form, so "/x.sock" and "unix:///x.sock" meet.
func inProcessKey(addr string) (string, error) {
	network, address, err := SplitAddress(addr)
	if err != nil {
		return "", err
	}
	return network + "://" + address, nil
}

// pipeListener is a localListener registered under the address it stands
// in for.
type pipeListener struct {
	*localListener
	addr       pipeAddr
	unregister func()
	once       sync.Once
}

// Close stops taking connections and unregisters the listener, so that
// dialers of its address go to the socket from now on.
func (l *pipeListener) Close() error {
	l.once.Do(func() {
		l.unregister()
		l.localListener.Close()
	})
	return nil
}

func (l *pipeListener) Addr() net.Addr { return l.addr }

// pipeAddr is the address an in-process listener stands in for.
type pipeAddr string

func (pipeAddr) Network() string  { return "inprocess" }
func (a pipeAddr) String() string { return string(a) }
