package server

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	namespacesapi "github.com/containerd/containerd/api/services/namespaces/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"

	"github.com/flotilla/flotilla/services/config"
	"github.com/flotilla/flotilla/services/namespace"
)

// records keeps the call records a server logs.
type records struct {
	mu   sync.Mutex
	logs []string
}

func (r *records) Enabled(context.Context, slog.Level) bool { return true }
func (r *records) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *records) WithGroup(string) slog.Handler            { return r }
func (r *records) Handle(_ context.Context, rec slog.Record) error {
	if !strings.HasPrefix(rec.Message, "call") {
		return nil
	}
	attrs := map[string]string{}
	rec.Attrs(func(a slog.Attr) bool { attrs[a.Key] = a.Value.String(); return true })
	if !strings.Contains(attrs["method"], "Namespaces") {
		return nil // health checks and the like
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.logs = append(r.logs, fmt.Sprintf("%s %s method=%s namespace=%s code=%s",
		rec.Level, rec.Message, attrs["method"], attrs["namespace"], attrs["code"]))
	return nil
}

func (r *records) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.logs
	r.logs = nil
	return out
}

func TestFailedCallsAreLoggedOnceWithMethodNamespaceAndCode(t *testing.T) {
	sock := filepath.Join(shortDir(t), "testd.sock")
	rec := &records{}
	srv := New("testd", config.Common{Address: sock, ShutdownTimeout: config.Duration(time.Second)}, slog.New(rec))
	svc := &echoNamespaces{release: make(chan struct{})}
	namespacesapi.RegisterNamespacesServer(srv.GRPC(), svc)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	waitSocket(t, sock)
	c := namespacesapi.NewNamespacesClient(client(t, sock))
	const get = "/containerd.services.namespaces.v1.Namespaces/Get"

	for _, tc := range []struct {
		name string
		ns   string
		req  string
		want string
	}{
		{"a success is logged at debug level", "team-a", "x",
			"DEBUG call method=" + get + " namespace=team-a code=OK"},
		{"a client's mistake is logged at info level with the namespace", "team-a", "missing",
			"INFO call failed method=" + get + " namespace=team-a code=NotFound"},
		{"a call refused for its namespace is logged with the namespace it gave", "-bad", "x",
			"INFO call failed method=" + get + " namespace=-bad code=InvalidArgument"},
		{"a call without a namespace, which the handler requires, is logged without one", "", "x",
			"INFO call failed method=" + get + " namespace= code=FailedPrecondition"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			if tc.ns != "" {
				ctx = metadata.AppendToOutgoingContext(ctx, namespace.MetadataKey, tc.ns)
			}
			c.Get(ctx, &namespacesapi.GetNamespaceRequest{Name: tc.req})
			if got := rec.take(); len(got) != 1 || got[0] != tc.want {
				t.Errorf("logged %q, want once %q", got, tc.want)
			}
		})
	}
}

func TestCallLevel(t *testing.T) {
	for _, tc := range []struct {
		code codes.Code
		want slog.Level
	}{
		{codes.OK, slog.LevelDebug}, {codes.Canceled, slog.LevelDebug},
		{codes.NotFound, slog.LevelInfo}, {codes.AlreadyExists, slog.LevelInfo},
		{codes.FailedPrecondition, slog.LevelInfo}, {codes.InvalidArgument, slog.LevelInfo},
		{codes.Unimplemented, slog.LevelInfo}, {codes.DeadlineExceeded, slog.LevelInfo},
		{codes.Internal, slog.LevelWarn}, {codes.Unknown, slog.LevelWarn},
		{codes.Unavailable, slog.LevelWarn}, {codes.DataLoss, slog.LevelWarn},
	} {
		if got := callLevel(tc.code); got != tc.want {
			t.Errorf("%s logged at %s, want %s", tc.code, got, tc.want)
		}
	}
}
