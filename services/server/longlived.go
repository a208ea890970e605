package server

import (
	"context"
	"errors"
	"fmt"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc"
)

// longLived are the methods whose calls last as long as the client wants:
// an event subscription, a wait for a task's exit. A graceful stop that
// waited for them would always wait its whole timeout, so they are told to
// end first.
var longLived = map[string]bool{
	"/containerd.services.events.v1.Events/Subscribe": true,
	"/containerd.services.tasks.v1.Tasks/Wait":        true,
}

// IsLongLived reports whether calls of fullMethod last until the client
// leaves rather than until their work is done (see longLived); a front
// door ends them itself when it stops.
func IsLongLived(fullMethod string) bool { return longLived[fullMethod] }

// stopping ends the long-lived calls a server is serving when it stops.
type stopping struct {
	ctx  context.Context // ended when the server begins to stop
	stop context.CancelFunc
	err  error // what the calls it ends answer: Unavailable, naming the daemon
}

func newStopping(name string) *stopping {
	ctx, cancel := context.WithCancel(context.Background())
	return &stopping{ctx: ctx, stop: cancel, err: fmt.Errorf("%s is shutting down: %w", name, errdefs.ErrUnavailable)}
}

// bind returns ctx, ended too when the server begins to stop if method is
// long-lived, and a function that reports the error the call should answer
// with err: Unavailable if the stop ended it.
func (s *stopping) bind(ctx context.Context, method string) (context.Context, func(err error) error) {
	if !longLived[method] {
		return ctx, func(err error) error { return err }
	}
	ctx, cancel := context.WithCancelCause(ctx)
	unbind := context.AfterFunc(s.ctx, func() { cancel(s.err) })
	return ctx, func(err error) error {
		unbind()
		stopped := errors.Is(context.Cause(ctx), s.err)
		cancel(nil)
		if stopped {
			return s.err
		}
		return err
	}
}

func (s *stopping) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	ctx, done := s.bind(ctx, info.FullMethod)
	resp, err := handler(ctx, req)
	if err = done(err); err != nil {
		return nil, err
	}
	return resp, nil
}

func (s *stopping) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx, done := s.bind(ss.Context(), info.FullMethod)
	return done(handler(srv, &contextStream{ServerStream: ss, ctx: ctx}))
}
