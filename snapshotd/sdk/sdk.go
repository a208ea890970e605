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
	"os"
	"os/signal"
	"syscall"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

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

// grpcServer is go-plugin's server with the message limits of MaxMsgSize.
func grpcServer(opts []grpc.ServerOption) *grpc.Server {
	return grpc.NewServer(append(opts, grpc.MaxRecvMsgSize(MaxMsgSize), grpc.MaxSendMsgSize(MaxMsgSize))...)
}

// dialOptions are the client's side of MaxMsgSize.
func dialOptions() []grpc.DialOption {
	return []grpc.DialOption{grpc.WithDefaultCallOptions(
		grpc.MaxCallRecvMsgSize(MaxMsgSize), grpc.MaxCallSendMsgSize(MaxMsgSize))}
}

// Serve serves impl to snapshotd until snapshotd asks the plugin to stop,
// then closes impl and exits. It never unmounts anything.
//
// The plugin outlives snapshotd: a snapshotd that restarts adopts it. So
// that it survives the pipes to a dead snapshotd, SIGPIPE is ignored (writes
// fail instead) and logging goes to the standard error the plugin started
// with rather than to go-plugin's stdio stream, which nobody may be reading.
func Serve(impl snapshotter.Snapshotter) {
	signal.Ignore(syscall.SIGPIPE)
	logger := hclog.New(&hclog.LoggerOptions{
		Name:       "snapshotter",
		Level:      hclog.Info,
		Output:     os.Stderr,
		JSONFormat: true,
	})
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: Handshake,
		Plugins:         plugin.PluginSet{PluginName: &Plugin{Impl: impl}},
		GRPCServer:      grpcServer,
		Logger:          logger,
	})
	if err := impl.Close(); err != nil {
		logger.Error("close snapshotter", "error", err)
		os.Exit(1)
	}
	os.Exit(0)
}
