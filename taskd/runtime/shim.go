package runtime

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	taskapi "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/flotilla/flotilla/services/tracing"
)

// ttrpcNamespaceKey is the ttrpc metadata key containerd sends the namespace in.
const ttrpcNamespaceKey = "containerd-namespace-ttrpc"

// shimStartTimeout bounds `shim start` and `shim delete`.
const shimStartTimeout = 30 * time.Second

// shimCommand runs one of the shim binary's commands (start, delete) the way
// containerd does: flags naming the namespace, taskd's address and the
// binary to publish events with, the bundle as working directory, and
// TTRPC_ADDRESS in the environment for shims that publish over ttrpc.
type shimCommand struct {
	binary       string   // the shim
	address      string   // taskd's gRPC address
	ttrpcAddress string   // taskd's ttrpc events address
	publisher    string   // taskd's own binary, for `taskd publish`
	env          []string // more of the shim's environment (taskd's collector)
}

func (c shimCommand) cmd(ctx context.Context, b *bundle, args ...string) *exec.Cmd {
	all := []string{"-namespace", b.ns, "-address", c.address, "-publish-binary", c.publisher, "-id", b.id}
	cmd := exec.CommandContext(ctx, c.binary, append(all, args...)...)
	cmd.Dir = b.path
	cmd.Env = append(os.Environ(),
		"TTRPC_ADDRESS="+c.ttrpcAddress,
		"GRPC_ADDRESS="+c.address,
		"NAMESPACE="+b.ns,
		"GOMAXPROCS=2",
	)
	cmd.Env = append(cmd.Env, c.env...)
	return cmd
}

// start runs `shim start` and returns the ttrpc address it answers. opts,
// the container's runtime options, go to the shim's stdin as containerd sends
// them.
func (c shimCommand) start(b *bundle, opts *anypb.Any) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), shimStartTimeout)
	defer cancel()
	cmd := c.cmd(ctx, b, "start")
	if opts != nil {
		v, err := proto.Marshal(opts)
		if err != nil {
			return "", fmt.Errorf("runtime options: %w", err)
		}
		cmd.Stdin = bytes.NewReader(v)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	// A shim that leaves our pipes open in its daemon must not hang taskd.
	cmd.WaitDelay = 2 * time.Second
	out, err := cmd.Output()
	if err != nil && !(errors.Is(err, exec.ErrWaitDelay) && len(out) > 0) {
		return "", fmt.Errorf("shim %s start: %v: %s", c.binary, err, strings.TrimSpace(stderr.String()+" "+string(out)))
	}
	return parseStartOutput(out)
}

// parseStartOutput reads what `shim start` prints: the address, or (newer
// shims) a JSON document with version, address and protocol.
func parseStartOutput(out []byte) (string, error) {
	s := strings.TrimSpace(string(out))
	if strings.HasPrefix(s, "{") {
		var p struct {
			Version  int    `json:"version"`
			Address  string `json:"address"`
			Protocol string `json:"protocol"`
		}
		if err := json.Unmarshal([]byte(s), &p); err != nil {
			return "", fmt.Errorf("shim start printed %q: %w", s, err)
		}
		if p.Protocol != "" && p.Protocol != "ttrpc" {
			return "", fmt.Errorf("shim speaks %q, taskd only ttrpc: %w", p.Protocol, errdefs.ErrNotImplemented)
		}
		s = p.Address
	}
	if s == "" {
		return "", fmt.Errorf("shim start printed no address")
	}
	return s, nil
}

// delete runs `shim delete`, which cleans up after a shim that is gone (kills
// and deletes the container, unmounts the rootfs) and reports the exit.
func (c shimCommand) delete(b *bundle) (*taskapi.DeleteResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), shimStartTimeout)
	defer cancel()
	cmd := c.cmd(ctx, b, "-bundle", b.path, "delete")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.WaitDelay = 2 * time.Second
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("shim %s delete: %v: %s", c.binary, err, strings.TrimSpace(stderr.String()))
	}
	var resp taskapi.DeleteResponse
	if err := proto.Unmarshal(out, &resp); err != nil {
		return nil, fmt.Errorf("shim %s delete: answer: %w", c.binary, err)
	}
	return &resp, nil
}

// shimConn is taskd's connection to one running shim.
type shimConn struct {
	client *ttrpc.Client
	task   taskapi.TTRPCTaskService
	logs   *os.File
	closed chan struct{} // closed when the connection drops
	pid    int           // the shim's pid, from the socket (0: unknown)
}

// connect dials a shim at address ("unix:///path") and starts copying its
// log FIFO (in the bundle) to log. onClose runs when the connection drops.
func connect(ctx context.Context, b *bundle, address string, log *slog.Logger, tp *tracing.Provider, onClose func()) (*shimConn, error) {
	path, ok := strings.CutPrefix(address, "unix://")
	if !ok {
		return nil, fmt.Errorf("shim address %q: only unix sockets are supported: %w", address, errdefs.ErrNotImplemented)
	}
	var d net.Dialer
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := d.DialContext(dctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("connect to shim at %s: %w", address, err)
	}
	var once sync.Once
	closed := make(chan struct{})
	client := ttrpc.NewClient(conn, ttrpc.WithUnaryClientInterceptor(tp.TTRPCClientInterceptor()), ttrpc.WithOnClose(func() {
		once.Do(func() {
			close(closed)
			onClose()
		})
	}))
	sc := &shimConn{client: client, task: taskapi.NewTTRPCTaskClient(client), closed: closed, pid: peerPid(conn)}
	sc.logs = copyLogs(b, log)
	return sc, nil
}

// close drops the connection without stopping the shim.
func (sc *shimConn) close() {
	sc.client.Close()
	if sc.logs != nil {
		sc.logs.Close()
	}
}

// makeLogFifo creates the FIFO the shim writes its log to (it opens it
// before anything else and fails without it).
func makeLogFifo(b *bundle) error {
	if err := unix.Mkfifo(b.file(logFifo), 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("shim log fifo: %w", err)
	}
	return nil
}

// copyLogs copies the shim's log lines to log until the returned file is
// closed. It opens the FIFO read-write so that it neither blocks waiting for
// the shim nor sees an end of file when a shim restarts its log.
func copyLogs(b *bundle, log *slog.Logger) *os.File {
	f, err := os.OpenFile(b.file(logFifo), os.O_RDWR, 0)
	if err != nil {
		log.Debug("no shim log", "error", err)
		return nil
	}
	go func() {
		s := bufio.NewScanner(f)
		s.Buffer(make([]byte, 64<<10), 1<<20)
		for s.Scan() {
			logShimLine(log, s.Bytes())
		}
	}()
	return f
}

// logShimLine logs one line of a shim's log. taskd-shim writes slog JSON
// lines, which keep their level, message and fields; other lines (another
// shim's, runc's) are quoted, at the level they seem to name.
func logShimLine(log *slog.Logger, line []byte) {
	var rec map[string]any
	if json.Unmarshal(line, &rec) == nil {
		if msg, ok := rec[slog.MessageKey].(string); ok {
			var level slog.Level
			if l, ok := rec[slog.LevelKey].(string); !ok || level.UnmarshalText([]byte(l)) != nil {
				level = slog.LevelInfo
			}
			attrs := make([]any, 0, 2*len(rec)+2)
			attrs = append(attrs, "source", "shim")
			for k, v := range rec {
				switch k {
				case slog.MessageKey, slog.LevelKey, slog.TimeKey, "namespace":
					// taskd's own logger names the namespace already.
				default:
					attrs = append(attrs, k, v)
				}
			}
			log.Log(context.Background(), level, msg, attrs...)
			return
		}
	}
	text := string(line)
	lower := strings.ToLower(text)
	switch {
	case strings.Contains(lower, "level=error"), strings.Contains(lower, "level=fatal"), strings.Contains(lower, `"level":"error"`):
		log.Error("shim: " + text)
	case strings.Contains(lower, "level=warn"), strings.Contains(lower, `"level":"warn`):
		log.Warn("shim: " + text)
	default:
		log.Debug("shim: " + text)
	}
}

// call runs one shim call with the namespace in ttrpc metadata and turns
// the answer's error back into an errdefs kind.
func call[Req, Resp any](ctx context.Context, ns, what string, fn func(context.Context, Req) (Resp, error), req Req) (Resp, error) {
	ctx = ttrpc.WithMetadata(ctx, ttrpc.MD{ttrpcNamespaceKey: []string{ns}})
	resp, err := fn(ctx, req)
	if err != nil {
		var zero Resp
		return zero, shimError(what, err)
	}
	return resp, nil
}

// shimError classifies an error from a shim call: the shim's errdefs kind,
// or Unavailable when the shim cannot be reached.
func shimError(what string, err error) error {
	if errors.Is(err, ttrpc.ErrClosed) || errors.Is(err, net.ErrClosed) || errors.Is(err, unix.ECONNRESET) || errors.Is(err, unix.EPIPE) {
		return fmt.Errorf("%s: shim is gone: %v: %w", what, err, errdefs.ErrUnavailable)
	}
	return fmt.Errorf("%s: %w", what, errgrpc.ToNative(err))
}

// removeDeadSocket removes the socket of a shim that died without removing
// it, once nothing answers on it.
func removeDeadSocket(b *bundle) {
	address, err := b.readFile(addressFile)
	if err != nil {
		return
	}
	path, ok := strings.CutPrefix(address, "unix://")
	if !ok {
		return
	}
	removeIfUnserved(path)
}

// removeIfUnserved removes the socket at path when nothing answers on it,
// and reports whether it did.
func removeIfUnserved(path string) bool {
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode()&os.ModeSocket == 0 {
		return false
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close() // someone still serves it
		return false
	}
	return os.Remove(path) == nil
}

// peerPid is the pid of the process at the other end of a unix socket
// connection: the shim (0 if the kernel does not say).
func peerPid(conn net.Conn) int {
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return 0
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return 0
	}
	var pid int
	raw.Control(func(fd uintptr) {
		if cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); err == nil {
			pid = int(cred.Pid)
		}
	})
	return pid
}

// waitExit waits up to timeout for the shim, told to shut down, to close
// the connection and exit.
// killIfConnected kills the shim if its connection is still open: the pid
// is then still the shim's (it cannot have been reused).
func (sc *shimConn) killIfConnected() {
	select {
	case <-sc.closed:
		return
	default:
	}
	if sc.pid > 0 {
		_ = unix.Kill(sc.pid, unix.SIGKILL)
	}
}

func (sc *shimConn) waitExit(timeout time.Duration) {
	pid := sc.pid
	deadline := time.Now().Add(timeout)
	select {
	case <-sc.closed:
	case <-time.After(timeout):
		return
	}
	for pid > 0 && time.Now().Before(deadline) {
		if err := unix.Kill(pid, 0); errors.Is(err, unix.ESRCH) {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}
