// Package testserver is the harness contentd's package tests share: a
// metadata database, the kit's server on a unix socket, a client of it and a
// publisher that records events.
//
// It is imported only from _test.go files; everything it starts is stopped
// and removed when the test ends.
package testserver

import (
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/grpc"

	"github.com/flotilla/flotilla/contentd/metadata"
	"github.com/flotilla/flotilla/services/config"
	"github.com/flotilla/flotilla/services/dial"
	"github.com/flotilla/flotilla/services/namespace"
	"github.com/flotilla/flotilla/services/server"
)

// OpenDB opens a metadata database at path, closed when the test ends.
func OpenDB(t testing.TB, path string) *bolt.DB {
	t.Helper()
	db, err := metadata.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// ShortDir is a temporary directory short enough for a unix socket path
// (t.TempDir's can pass the 108 bytes a socket path may have).
func ShortDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "ctd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// WaitForSocket returns once something accepts connections on sock, and
// fails the test if nothing does within five seconds.
func WaitForSocket(t testing.TB, sock string) {
	t.Helper()
	for i := 0; ; i++ {
		c, err := net.Dial("unix", sock)
		if err == nil {
			c.Close()
			return
		}
		if i == 500 {
			t.Fatalf("nothing serves on %s: %v", sock, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Dial is a dial.Dial client of sock, closed when the test ends.
func Dial(t testing.TB, sock string) *grpc.ClientConn {
	t.Helper()
	conn, err := dial.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// Serve runs the kit's server with what register adds on a unix socket in a
// ShortDir, and returns a Dial client of it. The server stops when the test
// ends.
func Serve(t testing.TB, register func(*grpc.Server)) *grpc.ClientConn {
	t.Helper()
	sock := filepath.Join(ShortDir(t), "s.sock")
	srv := server.New("test", config.Common{Address: sock, ShutdownTimeout: config.Duration(time.Second)},
		slog.New(slog.DiscardHandler))
	register(srv.GRPC())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	WaitForSocket(t, sock)
	return Dial(t, sock)
}

// Published is one event a Recorder was given.
type Published struct {
	Namespace string // of the context it was published with; "" if none
	Topic     string
	Event     any
}

// Recorder is an events.Publisher that remembers what it is given. It is
// safe for concurrent use; the zero value is ready.
type Recorder struct {
	mu     sync.Mutex
	events []Published
}

// Publish records the event and never fails.
func (r *Recorder) Publish(ctx context.Context, topic string, event any) error {
	ns, _ := namespace.FromContext(ctx)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, Published{ns, topic, event})
	return nil
}

// Take returns the events published since the last Take, oldest first, and
// forgets them.
func (r *Recorder) Take() []Published {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.events
	r.events = nil
	return out
}
