package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/containerd/ttrpc"

	"github.com/flotilla/flotilla/services/tracing"
)

// ServeTTRPC serves ttrpc on the unix socket path, replacing a stale socket
// there, with the services register adds and each call traced with tp (nil:
// off): containerd's shims publish events on such a socket. Call the
// returned function to stop serving; it removes the socket.
func ServeTTRPC(path string, tp *tracing.Provider, register func(*ttrpc.Server)) (func(), error) {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("ttrpc socket %s: %w", path, err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("ttrpc listen on %s: %w", path, err)
	}
	srv, err := ttrpc.NewServer(ttrpc.WithUnaryServerInterceptor(tp.TTRPCServerInterceptor()))
	if err != nil {
		l.Close()
		return nil, fmt.Errorf("ttrpc server: %w", err)
	}
	register(srv)
	go srv.Serve(context.Background(), l)
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		srv.Close()
		os.Remove(path)
	}, nil
}
