package sdk

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/flotilla/flotilla/services/logging"
	"github.com/flotilla/flotilla/services/tracing"
)

// Config says how to start or find a plugin process.
type Config struct {
	// Path is the plugin's executable.
	Path string
	// Root is the directory the plugin keeps its data in.
	Root string
	// Logger receives go-plugin's and the plugin's log lines, with their
	// levels and fields (go-plugin's hclog is bridged into it); nil discards.
	Logger *slog.Logger
	// Stderr, if set, also receives the plugin's standard error, such as
	// the reason it failed to start.
	Stderr io.Writer
	// SocketDir, if set, is where the plugin makes its socket (go-plugin
	// makes it in $TMPDIR otherwise, and a killed plugin leaves it there).
	SocketDir string
	// Tracing traces snapshotd's calls to the plugin, and a plugin Start
	// starts traces to the same collector (nil: off).
	Tracing *tracing.Provider
}

// Reattach is what snapshotd persists to find a running plugin again after
// it restarts itself.
type Reattach struct {
	Network         string `json:"network"`
	Address         string `json:"address"`
	Pid             int    `json:"pid"`
	ProtocolVersion int    `json:"protocol_version"`
	// StartTime is when the process started (clock ticks since boot), so
	// that a pid the kernel gave to another process since is not taken
	// for the plugin's; 0 when not recorded (state of an older snapshotd).
	StartTime uint64 `json:"start_time,omitempty"`
}

// Process is a running plugin and the snapshotter it serves.
type Process struct {
	client *plugin.Client
	snap   *Client
	rc     Reattach
}

// Start starts the plugin at cfg.Path on cfg.Root and connects to it. The
// plugin runs in a session of its own, so that it outlives snapshotd (and
// the signals sent to snapshotd's process group).
func Start(ctx context.Context, cfg Config) (*Process, error) {
	cmd := exec.Command(cfg.Path)
	cmd.Env = append(append(os.Environ(), cfg.Tracing.Env()...), RootEnv+"="+cfg.Root)
	if cfg.SocketDir != "" {
		cmd.Env = append(cmd.Env, plugin.EnvUnixSocketDir+"="+cfg.SocketDir)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  Handshake,
		Plugins:          Plugins(),
		Cmd:              cmd,
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		GRPCDialOptions:  dialOptions(cfg.Tracing),
		Logger:           logger(cfg.Logger),
		Stderr:           cfg.Stderr,
	})
	p, err := connect(ctx, client)
	if err != nil {
		client.Kill()
		return nil, fmt.Errorf("start plugin %s: %w", cfg.Path, err)
	}
	return p, nil
}

// Attach connects to the running plugin r describes, which an earlier
// snapshotd started. NotFound-like failures (the process is gone or does not
// answer) are returned as errors; the process is left as it is.
func Attach(ctx context.Context, cfg Config, r Reattach) (*Process, error) {
	var addr net.Addr
	switch r.Network {
	case "unix":
		addr = &net.UnixAddr{Net: "unix", Name: r.Address}
	default:
		a, err := net.ResolveTCPAddr(r.Network, r.Address)
		if err != nil {
			return nil, fmt.Errorf("attach plugin %d: %w", r.Pid, err)
		}
		addr = a
	}
	if !Same(r, cfg.Path) {
		return nil, fmt.Errorf("attach plugin %s: process %d is gone (or is another process now)", cfg.Path, r.Pid)
	}
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  Handshake,
		Plugins:          Plugins(),
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		GRPCDialOptions:  dialOptions(cfg.Tracing),
		Logger:           logger(cfg.Logger),
		Reattach: &plugin.ReattachConfig{
			Protocol:        plugin.ProtocolGRPC,
			ProtocolVersion: r.ProtocolVersion,
			Addr:            addr,
			Pid:             r.Pid,
		},
	})
	p, err := connect(ctx, client)
	if err != nil {
		// Not Kill: the process is not ours to stop on a failed attach.
		return nil, fmt.Errorf("attach plugin %s (pid %d): %w", cfg.Path, r.Pid, err)
	}
	return p, nil
}

func connect(ctx context.Context, client *plugin.Client) (*Process, error) {
	rpc, err := client.Client()
	if err != nil {
		return nil, err
	}
	raw, err := rpc.Dispense(PluginName)
	if err != nil {
		return nil, err
	}
	snap, ok := raw.(*Client)
	if !ok {
		return nil, fmt.Errorf("plugin dispensed %T, not a snapshotter", raw)
	}
	rc := client.ReattachConfig()
	if rc == nil || rc.Addr == nil {
		return nil, errors.New("plugin has no address")
	}
	started, err := startTime(rc.Pid)
	if err != nil {
		return nil, fmt.Errorf("plugin %d: %w", rc.Pid, err)
	}
	p := &Process{client: client, snap: snap, rc: Reattach{
		Network:         rc.Addr.Network(),
		Address:         rc.Addr.String(),
		Pid:             rc.Pid,
		ProtocolVersion: client.NegotiatedVersion(),
		StartTime:       started,
	}}
	if err := p.Ping(ctx); err != nil {
		return nil, err
	}
	return p, nil
}

// Snapshotter is the plugin's snapshotter.
func (p *Process) Snapshotter() *Client { return p.snap }

// Pid is the plugin's process ID.
func (p *Process) Pid() int { return p.rc.Pid }

// Reattach is what Attach needs to find the process again.
func (p *Process) Reattach() Reattach { return p.rc }

// Alive reports whether the process still runs (and is still the plugin,
// not another process given its pid).
func (p *Process) Alive() bool { return Same(p.rc, "") }

// Ping asks the plugin's gRPC health service whether it serves.
func (p *Process) Ping(ctx context.Context) error {
	if p.snap.conn == nil {
		return errors.New("no connection to the plugin")
	}
	resp, err := healthpb.NewHealthClient(p.snap.conn).Check(ctx, &healthpb.HealthCheckRequest{Service: "plugin"})
	if err != nil {
		return fmt.Errorf("plugin %d: health: %w", p.rc.Pid, err)
	}
	if resp.Status != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("plugin %d: health is %s", p.rc.Pid, resp.Status)
	}
	return nil
}

// Stop asks the plugin to close its snapshotter and exit, and kills it if
// it has not within two seconds. The plugin unmounts nothing.
func (p *Process) Stop() {
	p.client.Kill()
	// A reattached client whose process ignored the request.
	Signal(p.rc, "", syscall.SIGKILL)
	p.Release()
}

// Release frees what snapshotd holds for the process (its connection,
// go-plugin's client) once the process is gone: a crashed plugin's.
func (p *Process) Release() {
	// The process is gone: Kill only cleans up after it, closing go-plugin's
	// connection; ours, if it is another, goes too.
	p.client.Kill()
	if p.snap.conn != nil {
		p.snap.conn.Close()
	}
}

// Detach forgets the process without stopping it: snapshotd exiting, to
// adopt it when it starts again.
func (p *Process) Detach() {
	if p.snap.conn != nil {
		p.snap.conn.Close()
	}
}

// Alive reports whether process pid exists and is not a zombie.
func Alive(pid int) bool {
	if pid <= 0 || syscall.Kill(pid, 0) != nil {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name.
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] != 'Z'
	}
	return true
}

func logger(l *slog.Logger) hclog.Logger {
	if l != nil {
		return logging.HCLog(l)
	}
	return hclog.NewNullLogger()
}

// Kill kills the plugin at once, for one that stopped answering; a pid
// that names another process by now is left alone.
func (p *Process) Kill() {
	Signal(p.rc, "", syscall.SIGKILL)
}
