// Package sdk is what a snapshotter plugin and snapshotd share: the
// go-plugin handshake and plugin map, and the paired adapters that carry the
// snapshotter.Snapshotter interface over gRPC. The wire is containerd's own
// snapshots API (containerd.services.snapshots.v1.Snapshots), which maps
// one to one onto the interface.
//
// A backend's main opens its snapshotter on Root() and calls Serve:
//
//	func main() {
//		s, err := mybackend.New(sdk.Root())
//		if err != nil {
//			sdk.Fail(err)
//		}
//		sdk.Serve(s)
//	}
package sdk

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	"github.com/flotilla/flotilla/services/logging"
	"github.com/flotilla/flotilla/services/tracing"
	"github.com/flotilla/flotilla/snapshotd/snapshotter"
)

// Handshake is the go-plugin handshake between snapshotd and a snapshotter
// plugin. ProtocolVersion changes when the wire does.
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  1,
	MagicCookieKey:   "FLOTILLA_SNAPSHOTTER_PLUGIN",
	MagicCookieValue: "d8a4c6f1-snapshotter",
}

// PluginName is the name the snapshotter is dispensed under.
const PluginName = "snapshotter"

// RootEnv is the environment variable through which snapshotd tells a
// plugin the directory that holds its data.
const RootEnv = "FLOTILLA_SNAPSHOTTER_ROOT"

// Plugins is the plugin map of a host: it dispenses snapshotter clients.
func Plugins() plugin.PluginSet {
	return plugin.PluginSet{PluginName: &Plugin{}}
}

// Plugin is the go-plugin plugin of a snapshotter: on the plugin's side it
// serves Impl, on snapshotd's side it builds a Client.
type Plugin struct {
	plugin.NetRPCUnsupportedPlugin
	Impl snapshotter.Snapshotter
}

// GRPCServer registers the server adapter of p.Impl.
func (p *Plugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	snapshotsapi.RegisterSnapshotsServer(s, NewServer(p.Impl))
	return nil
}

// GRPCClient returns a *Client over conn.
func (p *Plugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, conn *grpc.ClientConn) (any, error) {
	c := NewClient(conn)
	c.conn = conn
	return c, nil
}

// Root returns the directory snapshotd gave the plugin for its data, or
// exits the process with a message when the plugin was not started by
// snapshotd.
func Root() string {
	root := os.Getenv(RootEnv)
	if root == "" {
		Fail(fmt.Errorf("%s is not set: this program is a snapshotter plugin, started by snapshotd (flotctl snapshotters add NAME PATH)", RootEnv))
	}
	return root
}

// Fail reports err on standard error, where snapshotd reads it, and exits.
func Fail(err error) {
	fmt.Fprintf(os.Stderr, "snapshotter plugin: %v\n", err)
	os.Exit(1)
}

// MaxMsgSize bounds the messages between snapshotd and a plugin, both ways:
// containerd's 16 MiB, as on every other connection of Flotilla (a List of
// many snapshots is one message), instead of gRPC's 4 MiB default.
const MaxMsgSize = 16 << 20

// grpcServer returns go-plugin's server with the message limits of
// MaxMsgSize, traced with tp (nil: off).
func grpcServer(tp *tracing.Provider) func([]grpc.ServerOption) *grpc.Server {
	return func(opts []grpc.ServerOption) *grpc.Server {
		opts = append(opts, grpc.MaxRecvMsgSize(MaxMsgSize), grpc.MaxSendMsgSize(MaxMsgSize))
		return grpc.NewServer(append(opts, tp.ServerOptions()...)...)
	}
}

// dialOptions are the client's side of MaxMsgSize, traced with tp (nil:
// off).
func dialOptions(tp *tracing.Provider) []grpc.DialOption {
	return append([]grpc.DialOption{grpc.WithDefaultCallOptions(
		grpc.MaxCallRecvMsgSize(MaxMsgSize), grpc.MaxCallSendMsgSize(MaxMsgSize))}, tp.DialOptions()...)
}

// Serve serves impl to snapshotd until snapshotd asks the plugin to stop,
// then closes impl and exits. It never unmounts anything.
//
// The plugin outlives snapshotd: a snapshotd that restarts adopts it. So
// that it survives the pipes to a dead snapshotd, SIGPIPE is ignored (writes
// fail instead) and logging goes to the standard error the plugin started
// with rather than to go-plugin's stdio stream, which nobody may be reading.
//
// The plugin logs with slog (the process's default logger, go-plugin's
// messages included), as JSON lines in the shape go-plugin's client parses,
// so that each line reaches snapshotd's log with its level and fields.
func Serve(impl snapshotter.Snapshotter) {
	signal.Ignore(syscall.SIGPIPE)
	log := slog.New(PluginLogHandler(os.Stderr, slog.LevelInfo))
	slog.SetDefault(log)
	logger := logging.HCLog(log)
	// snapshotd passes its collector down in the environment.
	tp, err := tracing.Init(context.Background(), filepath.Base(os.Args[0]), "")
	if err != nil {
		logger.Warn("tracing off", "error", err)
	}
	log.Info("snapshotter plugin serving", "pid", os.Getpid())
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: Handshake,
		Plugins:         plugin.PluginSet{PluginName: &Plugin{Impl: impl}},
		GRPCServer:      grpcServer(tp),
		Logger:          logger,
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	_ = tp.Shutdown(ctx)
	cancel()
	if err := impl.Close(); err != nil {
		logger.Error("close snapshotter", "error", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// PluginLogHandler is the slog handler of a plugin process: JSON lines on
// w with hclog's keys (@level, @message, @timestamp), which go-plugin's
// client reads from the plugin's standard error and logs with their fields.
func PluginLogHandler(w io.Writer, level slog.Level) slog.Handler {
	return slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level, ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
		if len(groups) > 0 {
			return a
		}
		switch a.Key {
		case slog.LevelKey:
			return slog.String("@level", strings.ToLower(a.Value.String()))
		case slog.MessageKey:
			return slog.String("@message", a.Value.String())
		case slog.TimeKey:
			return slog.String("@timestamp", a.Value.Time().Format("2006-01-02T15:04:05.000000Z07:00"))
		}
		return a
	}})
}
