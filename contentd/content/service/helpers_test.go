package service

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	leasesapi "github.com/containerd/containerd/api/services/leases/v1"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"google.golang.org/grpc"

	"github.com/flotilla/flotilla/contentd/content/store"
	"github.com/flotilla/flotilla/contentd/images"
	"github.com/flotilla/flotilla/contentd/internal/testserver"
	"github.com/flotilla/flotilla/contentd/leases"
	"github.com/flotilla/flotilla/contentd/metadata"
	"github.com/flotilla/flotilla/services/config"
	"github.com/flotilla/flotilla/services/dial"
	"github.com/flotilla/flotilla/services/events"
	"github.com/flotilla/flotilla/services/namespace"
	"github.com/flotilla/flotilla/services/server"
)

// serveEnv, when set to "ROOT SOCKET", makes the test binary a content
// server and nothing else, so tests can kill -9 it and measure its memory.
const serveEnv = "CONTENT_TEST_SERVE"

func TestMain(m *testing.M) {
	if spec := os.Getenv(serveEnv); spec != "" {
		root, sock, _ := strings.Cut(spec, " ")
		if err := run(context.Background(), root, sock, events.Discard{}); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// run serves the Content service (and, for ctr's fetches, the Leases and
// Images services of contentd's other packages) of a store rooted at root on sock until ctx ends or a
// signal arrives — the wiring contentd's main does.
func run(ctx context.Context, root, sock string, pub events.Publisher) error {
	db, err := metadata.Open(filepath.Join(root, "meta.db"))
	if err != nil {
		return err
	}
	defer db.Close()
	st, err := store.New(filepath.Join(root, "content"), db)
	if err != nil {
		return err
	}
	srv := server.New("contentd-test", config.Common{Address: sock, ShutdownTimeout: config.Duration(time.Second)},
		slog.New(slog.DiscardHandler))
	New(st, pub).Register(srv.GRPC())
	leasesapi.RegisterLeasesServer(srv.GRPC(), leases.NewService(leases.NewStore(db)))
	imagesapi.RegisterImagesServer(srv.GRPC(), images.NewService(images.NewStore(db), pub, slog.New(slog.DiscardHandler)))
	return srv.Run(ctx)
}

// connect is a client of sock that sends the namespace and lease of its
// context and gets errdefs kinds back, io.EOF included.
//
// It does what dial.Dial does, but dial's stream wrapper turns the io.EOF
// that ends every server stream into an Unknown error (errgrpc.ToNative
// does not pass it through), so it cannot read Read or List to their end.
func connect(t testing.TB, sock string) *grpc.ClientConn {
	t.Helper()
	target, err := dial.Target(sock)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(target, append(dial.Options(),
		grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			return errgrpc.ToNative(invoker(namespace.ToOutgoing(ctx), method, req, reply, cc, opts...))
		}),
		grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			cs, err := streamer(namespace.ToOutgoing(ctx), desc, cc, method, opts...)
			if err != nil {
				return nil, errgrpc.ToNative(err)
			}
			return nativeStream{cs}, nil
		}),
	)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

type nativeStream struct{ grpc.ClientStream }

func (s nativeStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	if err == nil || errors.Is(err, io.EOF) {
		return err
	}
	return errgrpc.ToNative(err)
}

// testServer is a content server running in the test process.
type testServer struct {
	sock string
	pub  *testserver.Recorder
	conn *grpc.ClientConn
}

func serveInProcess(t testing.TB) *testServer {
	t.Helper()
	dir := testserver.ShortDir(t)
	ts := &testServer{sock: filepath.Join(dir, "c.sock"), pub: &testserver.Recorder{}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, filepath.Join(dir, "root"), ts.sock, ts.pub) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("server: %v", err)
		}
	})
	testserver.WaitForSocket(t, ts.sock)
	ts.conn = connect(t, ts.sock)
	return ts
}

// process is a content server running as a child process.
type process struct {
	root, sock string
	cmd        *exec.Cmd
}

// startProcess runs a content server on root in a child process (the test
// binary itself, see TestMain); it is killed when the test ends.
func startProcess(t testing.TB, root, sock string) *process {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), serveEnv+"="+root+" "+sock)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &process{root: root, sock: sock, cmd: cmd}
	t.Cleanup(p.kill)
	testserver.WaitForSocket(t, sock)
	return p
}

// kill ends the server as a crash would: SIGKILL, no cleanup.
func (p *process) kill() {
	if p.cmd.ProcessState != nil {
		return
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	p.cmd.Wait()
	os.Remove(p.sock) // a crash leaves the socket; Listen would clear it too
}

// peakRSS is the server's peak resident set size, in bytes.
func (p *process) peakRSS() (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			var kb int64
			fmt.Sscanf(strings.TrimSpace(v), "%d kB", &kb)
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("no VmHWM in /proc/%d/status", p.cmd.Process.Pid)
}
