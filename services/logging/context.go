package logging

import (
	"context"
	"log/slog"
)

type loggerKey struct{}

// WithLogger returns ctx carrying l, the logger of the work ctx belongs to
// (the kit's servers put one in each call's context, with the call's
// method, namespace and trace id).
func WithLogger(ctx context.Context, l *slog.Logger) context.Context {
	return context.WithValue(ctx, loggerKey{}, l)
}

// FromContext is the logger ctx carries, or slog.Default() when none.
func FromContext(ctx context.Context) *slog.Logger {
	if l, ok := ctx.Value(loggerKey{}).(*slog.Logger); ok {
		return l
	}
	return slog.Default()
}

// Or is the logger ctx carries, else fallback: a handler logs with its
// call's method, namespace and trace id when a server of the kit called
// it, and with its component's logger when something else did.
func Or(ctx context.Context, fallback *slog.Logger) *slog.Logger {
	if l, ok := ctx.Value(loggerKey{}).(*slog.Logger); ok {
		return l
	}
	return fallback
}
