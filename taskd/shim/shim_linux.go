// Package shim is taskd-shim: a containerd runtime v2 shim
// (containerd.task.v2.Task over ttrpc) that taskd, or containerd itself,
// runs once per container in place of containerd-shim-runc-v2.
//
// Command line, with the container's bundle as the working directory:
//
//	taskd-shim -namespace NS -address ADDR -publish-binary BIN -id ID [-debug] start
//	taskd-shim -namespace NS -address ADDR -publish-binary BIN -id ID [-bundle DIR] delete
//
// start creates the ttrpc socket unix://<state>/s/<sha256(ADDR/NS/ID)>
// (<state> is $FLOTILLA_STATE, default /run/flotilla), starts the server
// as a daemon in its own session (it outlives its caller), writes the
// files "address" (the socket address) and "shim.pid" (the server's pid)
// in the bundle, prints the address on stdout and exits 0. If a shim
// already serves that socket, start prints its address instead. When its
// stdin is a pipe, start reads it to EOF (containerd writes the runtime
// options there) and ignores it: Create carries the same options.
//
// delete cleans up after a shim that died: it force-deletes the container
// from the runtime, unmounts <bundle>/rootfs and prints a
// containerd.task.v2.DeleteResponse (protobuf) on stdout.
//
// The server publishes events, in order and retried on failure, over ttrpc
// to the Events service at $TTRPC_ADDRESS when that is set (as containerd's
// shims do), or else by running
// `BIN --address ADDR publish --topic TOPIC --namespace NS` with the event's
// Any (protobuf) on stdin.
package shim

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	taskapi "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/fifo"
	runc "github.com/containerd/go-runc"
	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/flotilla/flotilla/services/logging"
	"github.com/flotilla/flotilla/services/mount"
	"github.com/flotilla/flotilla/services/tracing"
	"github.com/flotilla/flotilla/taskd/shim/publish"
	"github.com/flotilla/flotilla/taskd/shim/reaper"
	"github.com/flotilla/flotilla/taskd/shim/task"
)

// Files the shim writes in the bundle.
const (
	AddressFile = "address"
	PidFile     = "shim.pid"
	logFifo     = "log"      // created by containerd; the server logs into it
	logFile     = "shim.log" // the server's log when there is no fifo
)

// listenerFd is the descriptor the start command hands the server its
// socket on.
const listenerFd = 3

type flags struct {
	namespace, address, publishBinary, id, bundle string
	debug, version                                bool
}

// Main runs the shim with the command-line arguments (without the program
// name) and returns the exit code.
func Main(args []string) int {
	var f flags
	fs := flag.NewFlagSet("taskd-shim", flag.ContinueOnError)
	fs.StringVar(&f.namespace, "namespace", "", "containerd namespace of the container")
	fs.StringVar(&f.address, "address", "", "address of the daemon's gRPC socket, passed to the publish binary")
	fs.StringVar(&f.publishBinary, "publish-binary", "", "binary that publishes events (BIN --address ADDR publish --topic T --namespace NS)")
	fs.StringVar(&f.id, "id", "", "container id")
	fs.StringVar(&f.bundle, "bundle", "", "bundle directory (default: the working directory)")
	fs.BoolVar(&f.debug, "debug", false, "debug logging")
	fs.BoolVar(&f.version, "v", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if f.version {
		fmt.Println(task.Version)
		return 0
	}
	if f.namespace == "" || f.id == "" {
		fmt.Fprintln(os.Stderr, "taskd-shim: -namespace and -id are required")
		return 2
	}
	if f.bundle == "" {
		wd, err := os.Getwd()
		if err != nil {
			fmt.Fprintln(os.Stderr, "taskd-shim:", err)
			return 1
		}
		f.bundle = wd
	}
	var err error
	switch action := fs.Arg(0); action {
	case "start":
		err = start(f)
	case "delete":
		err = deleteCommand(f)
	case "":
		err = serve(f)
	default:
		err = fmt.Errorf("unknown action %q (want start or delete)", action)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "taskd-shim:", err)
		return 1
	}
	return 0
}

// StateDir is where shims keep sockets (s/) and runtime state (runc/):
// $FLOTILLA_STATE, or /run/flotilla.
func StateDir() string {
	if d := os.Getenv("FLOTILLA_STATE"); filepath.IsAbs(d) {
		return d
	}
	return "/run/flotilla"
}

// SocketAddress is the ttrpc address of the shim for container id in ns
// under the daemon at address: unix://<StateDir>/s/<hex sha256 of
// "address/ns/id">, falling back to /run/flotilla/s when the state
// directory would make the path too long for a unix socket.
func SocketAddress(address, ns, id string) string {
	sum := sha256.Sum256([]byte(filepath.Join(address, ns, id)))
	name := hex.EncodeToString(sum[:])
	path := filepath.Join(StateDir(), "s", name)
	if len(path) > 100 {
		path = filepath.Join("/run/flotilla/s", name)
	}
	return "unix://" + path
}

func socketPath(address string) string { return strings.TrimPrefix(address, "unix://") }

func canConnect(path string) bool {
	conn, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return false
	}
	conn.Close()
	return true
}

// start launches the server and prints its address.
func start(f flags) error {
	// containerd passes the runtime options on stdin; Create carries them
	// too, so they are read only to not leave the writer blocked.
	if st, err := os.Stdin.Stat(); err == nil && st.Mode()&(os.ModeNamedPipe|os.ModeCharDevice) == os.ModeNamedPipe {
		_, _ = io.Copy(io.Discard, os.Stdin)
	}
	address := SocketAddress(f.address, f.namespace, f.id)
	path := socketPath(address)
	if err := os.MkdirAll(filepath.Dir(path), 0o711); err != nil {
		return fmt.Errorf("socket dir: %w", err)
	}
	l, err := net.Listen("unix", path)
	if err != nil && errors.Is(err, unix.EADDRINUSE) {
		if canConnect(path) {
			// A shim already serves this container: hand out its address.
			if err := writeFile(f.bundle, AddressFile, address); err != nil {
				return err
			}
			fmt.Print(address)
			return nil
		}
		_ = os.Remove(path)
		l, err = net.Listen("unix", path)
	}
	if err != nil {
		return fmt.Errorf("listen on %s: %w", path, err)
	}
	ul := l.(*net.UnixListener)
	ul.SetUnlinkOnClose(false)
	lf, err := ul.File()
	l.Close()
	if err != nil {
		return fmt.Errorf("socket file: %w", err)
	}
	defer lf.Close()

	self, err := os.Executable()
	if err != nil {
		return err
	}
	args := []string{"-namespace", f.namespace, "-id", f.id, "-address", f.address, "-publish-binary", f.publishBinary}
	if f.debug {
		args = append(args, "-debug")
	}
	cmd := exec.Command(self, args...)
	cmd.Dir = f.bundle
	cmd.Env = os.Environ()
	cmd.ExtraFiles = []*os.File{lf} // fd 3
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		_ = os.Remove(path)
		return fmt.Errorf("start shim server: %w", err)
	}
	pid := cmd.Process.Pid
	_ = cmd.Process.Release()
	if err := writeFile(f.bundle, PidFile, strconv.Itoa(pid)); err != nil {
		_ = unix.Kill(pid, unix.SIGKILL)
		return err
	}
	if err := writeFile(f.bundle, AddressFile, address); err != nil {
		_ = unix.Kill(pid, unix.SIGKILL)
		return err
	}
	fmt.Print(address)
	return nil
}

func writeFile(dir, name, content string) error {
	tmp := filepath.Join(dir, "."+name+".tmp")
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	return nil
}

// serve is the daemon: the task service on the socket inherited as fd 3.
func serve(f flags) error {
	logger := openLog(f)
	signal.Ignore(unix.SIGPIPE, unix.SIGINT, unix.SIGHUP)

	r, err := reaper.Start()
	if err != nil {
		return err
	}
	runc.Monitor = r.Monitor()

	var pub task.Publisher = discard{}
	closePublisher := func() {}
	var pb *publish.Publisher
	switch ttrpcAddress := os.Getenv("TTRPC_ADDRESS"); {
	case ttrpcAddress != "":
		pb = publish.NewTTRPC(ttrpcAddress, f.namespace, publish.WithLogger(logger))
	case f.publishBinary != "":
		pb = publish.New(f.publishBinary, f.address, f.namespace,
			publish.WithRunner(r.Run), publish.WithLogger(logger))
	}
	if pb != nil {
		closePublisher = func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := pb.Close(ctx); err != nil {
				logger.Error("closing publisher", "error", err)
			}
		}
		pub = pb
	}

	svc := task.New(task.Config{
		Namespace:   f.namespace,
		Publisher:   pub,
		Exits:       r.Exits(),
		RuntimeRoot: filepath.Join(StateDir(), "runc"),
		Log:         logger,
	})

	lf := os.NewFile(listenerFd, "shim-socket")
	l, err := net.FileListener(lf)
	lf.Close()
	if err != nil {
		return fmt.Errorf("inherited socket: %w", err)
	}
	// Traced when taskd (or whoever started the shim) set the collector in
	// the environment; the span is outermost, so it sees the status code.
	tp, err := tracing.Init(context.Background(), "taskd-shim", "")
	if err != nil {
		logger.Warn("tracing off", "error", err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = tp.Shutdown(ctx)
	}()
	srv, err := ttrpc.NewServer(ttrpc.WithChainUnaryServerInterceptor(tp.TTRPCServerInterceptor(), errorsToStatus))
	if err != nil {
		return fmt.Errorf("ttrpc server: %w", err)
	}
	taskapi.RegisterTTRPCTaskService(srv, svc)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(context.Background(), l) }()
	logger.Info("shim serving", "id", f.id, "namespace", f.namespace, "pid", os.Getpid())

	select {
	case <-svc.Done():
	case err := <-served:
		logger.Error("ttrpc server stopped", "error", err)
	}
	// Deliver the last events (the container's /tasks/delete) first, then
	// close the connections once their calls are answered — Shutdown's
	// answer is normally written by now. Clients, containerd's included,
	// take a closed connection in answer to Shutdown as success, so the
	// wait for busy connections is short.
	closePublisher()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	_ = srv.Shutdown(ctx)
	cancel()
	_ = srv.Close()
	_ = os.Remove(socketPath(SocketAddress(f.address, f.namespace, f.id)))
	logger.Info("shim exiting", "id", f.id)
	return nil
}

// errorsToStatus turns errdefs kinds into status codes, so the client maps
// them back (NotFound, FailedPrecondition, …).
func errorsToStatus(ctx context.Context, u ttrpc.Unmarshaler, _ *ttrpc.UnaryServerInfo, m ttrpc.Method) (any, error) {
	resp, err := m(ctx, u)
	if err != nil {
		return resp, errgrpc.ToGRPC(err)
	}
	return resp, nil
}

type discard struct{}

func (discard) Publish(context.Context, string, any) error { return nil }

// openLog logs into containerd's log fifo in the bundle when there is one,
// else into shim.log in the bundle.
func openLog(f flags) *slog.Logger {
	level := slog.LevelInfo
	if f.debug {
		level = slog.LevelDebug
	}
	var w io.Writer = io.Discard
	fifoPath := filepath.Join(f.bundle, logFifo)
	if st, err := os.Stat(fifoPath); err == nil && st.Mode()&os.ModeNamedPipe != 0 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		if fw, err := fifo.OpenFifo(ctx, fifoPath, unix.O_WRONLY, 0); err == nil {
			w = fw
		}
		cancel()
	} else if lf, err := os.OpenFile(filepath.Join(f.bundle, logFile), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600); err == nil {
		w = lf
	}
	// JSON lines: taskd reads them back into its own log with their level
	// and fields. ttrpc's and go-runc's logrus is bridged into the same.
	log := slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level}))
	logging.BridgeLogrus(log)
	return log
}

// deleteCommand cleans up after a shim that is gone.
func deleteCommand(f flags) error {
	opts, err := task.ReadOptions(f.bundle)
	if err != nil {
		return err
	}
	rt := task.NewRuntime(f.bundle, opts, filepath.Join(StateDir(), "runc"), f.namespace)
	rt.PdeathSignal = 0
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := rt.Delete(ctx, f.id, &runc.DeleteOpts{Force: true}); err != nil && !strings.Contains(err.Error(), "not exist") {
		// The container may be half-gone; report and carry on cleaning.
		fmt.Fprintln(os.Stderr, "taskd-shim: runtime delete:", err)
	}
	if err := mount.UnmountBeneath(filepath.Join(f.bundle, "rootfs")); err != nil {
		return err
	}
	path := socketPath(SocketAddress(f.address, f.namespace, f.id))
	if !canConnect(path) {
		_ = os.Remove(path)
	}
	var pid int
	if data, err := os.ReadFile(filepath.Join(f.bundle, task.InitPidFile)); err == nil {
		pid, _ = strconv.Atoi(string(bytes.TrimSpace(data)))
	}
	out, err := proto.Marshal(&taskapi.DeleteResponse{
		Pid:        uint32(pid),
		ExitStatus: 128 + uint32(unix.SIGKILL),
		ExitedAt:   timestamppb.Now(),
	})
	if err != nil {
		return err
	}
	_, err = os.Stdout.Write(out)
	return err
}
