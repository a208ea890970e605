package server

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"

	"google.golang.org/grpc"

	"github.com/flotilla/flotilla/services/mtls"
)

// adminMethods are the methods only callers the admin policy allows may
// call, checked by an interceptor before any handler runs.
type adminMethods struct {
	mu      sync.RWMutex
	methods []string // full names, or service prefixes ending in "/"
	pol     mtls.AdminPolicy
}

func newAdminMethods() *adminMethods {
	return &adminMethods{pol: mtls.AdminPolicy{UID: uint32(os.Geteuid()), SocketGID: uint32(os.Getegid())}}
}

func (a *adminMethods) add(methods ...string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.methods = append(a.methods, methods...)
}

func (a *adminMethods) policy() mtls.AdminPolicy {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.pol
}

// setSocket takes the group of the unix socket l serves as the group whose
// processes are admins locally.
func (a *adminMethods) setSocket(l net.Listener) error {
	addr, ok := l.Addr().(*net.UnixAddr)
	if !ok {
		return nil
	}
	fi, err := os.Stat(addr.Name)
	if err != nil {
		return fmt.Errorf("socket %s: %w", addr.Name, err)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		a.mu.Lock()
		a.pol.SocketGID = st.Gid
		a.mu.Unlock()
	}
	return nil
}

// Restricted reports whether method is one only admins may call.
func (a *adminMethods) restricted(method string) bool {
	a.mu.RLock()
	defer a.mu.RUnlock()
	for _, m := range a.methods {
		if method == m || (strings.HasSuffix(m, "/") && strings.HasPrefix(method, m)) {
			return true
		}
	}
	return false
}

func (a *adminMethods) check(ctx context.Context, method string) error {
	if !a.restricted(method) {
		return nil
	}
	caller, _ := mtls.CallerFromContext(ctx)
	if err := a.policy().Allow(caller); err != nil {
		return fmt.Errorf("%s: %w", method, err)
	}
	return nil
}

func (a *adminMethods) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := a.check(ctx, info.FullMethod); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

func (a *adminMethods) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if err := a.check(ss.Context(), info.FullMethod); err != nil {
		return err
	}
	return handler(srv, ss)
}
