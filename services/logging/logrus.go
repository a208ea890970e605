package logging

import (
	"context"
	"io"
	"log/slog"

	"github.com/sirupsen/logrus"
)

// BridgeLogrus sends what is logged through logrus's standard logger —
// containerd's log package, which ttrpc and go-runc's callers use — to l
// instead, with the entry's fields as attributes, and silences logrus's own
// output.
func BridgeLogrus(l *slog.Logger) {
	std := logrus.StandardLogger()
	std.SetOutput(io.Discard)
	std.ReplaceHooks(logrus.LevelHooks{})
	std.AddHook(logrusHook{l: l})
	switch {
	case l.Enabled(context.Background(), slog.LevelDebug-4):
		std.SetLevel(logrus.TraceLevel)
	case l.Enabled(context.Background(), slog.LevelDebug):
		std.SetLevel(logrus.DebugLevel)
	default:
		std.SetLevel(logrus.InfoLevel)
	}
}

type logrusHook struct{ l *slog.Logger }

func (logrusHook) Levels() []logrus.Level { return logrus.AllLevels }

func (h logrusHook) Fire(e *logrus.Entry) error {
	ctx := e.Context
	if ctx == nil {
		ctx = context.Background()
	}
	attrs := make([]any, 0, 2*len(e.Data))
	for k, v := range e.Data {
		attrs = append(attrs, k, v)
	}
	h.l.Log(ctx, logrusLevel(e.Level), e.Message, attrs...)
	return nil
}

func logrusLevel(level logrus.Level) slog.Level {
	switch level {
	case logrus.TraceLevel:
		return slog.LevelDebug - 4
	case logrus.DebugLevel:
		return slog.LevelDebug
	case logrus.InfoLevel:
		return slog.LevelInfo
	case logrus.WarnLevel:
		return slog.LevelWarn
	}
	return slog.LevelError
}
