package server

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// SplitAddress tells a unix socket address from a TCP one. It accepts
// "/path", "unix:///path", "unix:/path", "tcp://host:port" and "host:port".
func SplitAddress(addr string) (network, address string, err error) {
	switch {
	case addr == "":
		return "", "", errors.New("empty address")
	case strings.HasPrefix(addr, "unix://"):
		return "unix", strings.TrimPrefix(addr, "unix://"), nil
	case strings.HasPrefix(addr, "unix:"):
		return "unix", strings.TrimPrefix(addr, "unix:"), nil
	case strings.HasPrefix(addr, "tcp://"):
		return "tcp", strings.TrimPrefix(addr, "tcp://"), nil
	case strings.HasPrefix(addr, "/"), strings.HasPrefix(addr, "."):
		return "unix", addr, nil
	case strings.Contains(addr, "://"):
		return "", "", fmt.Errorf("address %q: only unix:// and tcp:// are served", addr)
	default:
		return "tcp", addr, nil
	}
}

// Listen listens on addr. A unix socket gets mode 0660 and its directory is
// created; a socket file left by a crashed run is removed, but only after a
// dial shows nobody serves on it, so two daemons never steal one address.
func Listen(addr string) (net.Listener, error) {
	network, address, err := SplitAddress(addr)
	if err != nil {
		return nil, err
	}
	if network == "tcp" {
		return net.Listen("tcp", address)
	}
	l, err := listenUnix("unix", address)
	if err != nil {
		return nil, err // not a nil *UnixListener in a non-nil interface
	}
	return l, nil
}

// ListenSeqpacket listens on the unix SOCK_SEQPACKET socket path, as Listen
// does on a stream socket (mode 0660, a stale socket file replaced): for the
// project's protocols whose messages carry descriptors (contentd's blob
// handoff), one message a packet.
func ListenSeqpacket(path string) (*net.UnixListener, error) {
	return listenUnix("unixpacket", path)
}

// listenUnix listens on the unix socket path of network ("unix" or
// "unixpacket"): its directory made, a stale socket file replaced, mode 0660.
func listenUnix(network, path string) (*net.UnixListener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o711); err != nil {
		return nil, fmt.Errorf("socket directory: %w", err)
	}
	if err := removeStaleSocket(network, path); err != nil {
		return nil, err
	}
	l, err := net.ListenUnix(network, &net.UnixAddr{Name: path, Net: network})
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o660); err != nil {
		l.Close()
		return nil, fmt.Errorf("socket mode: %w", err)
	}
	return l, nil
}

// servedGrace is how long a socket must keep answering before Listen
// counts it as served by another process.
var servedGrace = 3 * time.Second

// removeStaleSocket removes the socket file path unless something serves
// network (unix or unixpacket) on it.
func removeStaleSocket(network, path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("%s exists and is not a socket; refusing to replace it", path)
	}
	// A daemon killed a moment ago may still hold its listening socket
	// while its last threads exit; its successor, started at once, asks
	// again for a while before it counts the socket as another's.
	for deadline := time.Now().Add(servedGrace); ; time.Sleep(50 * time.Millisecond) {
		c, err := net.DialTimeout(network, path, 500*time.Millisecond)
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: another process is serving on this socket", path)
		}
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove stale socket: %w", err)
	}
	return nil
}
