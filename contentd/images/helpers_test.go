package images

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
	"github.com/flotilla/flotilla/services/server"
)

// openDB opens a metadata database at path, closed when the test ends.
func openDB(t *testing.T, path string) *bolt.DB {
	t.Helper()
	db, err := metadata.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// serve runs the kit's server with what register adds, on a unix socket in a
// short directory, and returns a client connection to it.
func serve(t *testing.T, register func(*grpc.Server)) *grpc.ClientConn {
	t.Helper()
	dir, err := os.MkdirTemp("", "imt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "s.sock")
	srv := server.New("test", config.Common{Address: sock, ShutdownTimeout: config.Duration(time.Second)},
		slog.New(slog.DiscardHandler))
	register(srv.GRPC())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	for i := 0; ; i++ {
		c, err := net.Dial("unix", sock)
		if err == nil {
			c.Close()
			break
		}
		if i == 500 {
			t.Fatalf("nothing serves on %s: %v", sock, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	conn, err := dial.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

type published struct {
	namespace string
	topic     string
	event     any
}

// recorder is an events.Publisher that remembers what it is given.
type recorder struct {
	mu     sync.Mutex
	events []published
}

func (r *recorder) Publish(ctx context.Context, topic string, event any) error {
	ns, _ := namespaceOf(ctx)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, published{ns, topic, event})
	return nil
}

func (r *recorder) take() []published {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.events
	r.events = nil
	return out
}
