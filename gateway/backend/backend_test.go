package backend_test

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc"

	"github.com/flotilla/flotilla/gateway/backend"
	"github.com/flotilla/flotilla/gateway/internal/sockdir"
)

func TestReady(t *testing.T) {
	dir := sockdir.New(t)
	sock := filepath.Join(dir, "taskd.sock")
	b, err := backend.Dial("taskd", sock, []string{"tasks"})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()

	t.Run("backend that is not running is unavailable, named, within the wait", func(t *testing.T) {
		start := time.Now()
		err := b.Ready(context.Background())
		elapsed := time.Since(start)
		t.Logf("Ready failed after %s: %v", elapsed, err)
		if !errdefs.IsUnavailable(err) || !strings.Contains(err.Error(), "taskd (unix://"+sock+") is unavailable: dial unix") {
			t.Fatalf("got %v, want taskd named unavailable with the dial error", err)
		}
		if elapsed > 2500*time.Millisecond {
			t.Errorf("Ready hung for %s", elapsed)
		}
	})

	t.Run("caller's deadline cuts the wait short", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		start := time.Now()
		err := b.Ready(ctx)
		if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > time.Second {
			t.Fatalf("got %v after %s, want the deadline", err, time.Since(start))
		}
	})

	t.Run("backend started later is found without redialing", func(t *testing.T) {
		l, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		srv := grpc.NewServer()
		go srv.Serve(l)
		defer srv.Stop()
		if err := b.Ready(context.Background()); err != nil {
			t.Fatal(err)
		}
		if !b.Connected() {
			t.Error("Connected is false after Ready")
		}
	})
}

func TestDialRefusesBadAddress(t *testing.T) {
	if _, err := backend.Dial("contentd", "http://example.com", nil); err == nil || !strings.Contains(err.Error(), "contentd") {
		t.Fatalf("got %v, want an error naming contentd", err)
	}
}
