package introspect

import (
	"context"
	"errors"
	"testing"

	api "github.com/containerd/containerd/api/services/introspection/v1"
	"github.com/containerd/errdefs"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func TestPluginInfo(t *testing.T) {
	plugins := []*api.Plugin{
		{Type: "io.containerd.runtime.v2", ID: "task"},
		{Type: "io.containerd.snapshotter.v1", ID: "broken", InitErr: &rpcstatus.Status{Code: 14, Message: "down"}},
		{Type: GRPCPluginType, ID: "content"},
	}
	extra, _ := anypb.New(wrapperspb.String("runtime info"))
	options, _ := anypb.New(wrapperspb.String("runtime request"))
	info := func(_ context.Context, typ, id string, opts *anypb.Any) (*anypb.Any, error) {
		if typ == "io.containerd.runtime.v2" && id == "task" && proto.Equal(opts, options) {
			return extra, nil
		}
		return nil, errdefs.ErrNotImplemented
	}
	for _, tc := range []struct {
		name      string
		info      InfoProvider
		req       *api.PluginInfoRequest
		err       func(error) bool
		wantExtra bool
	}{
		{"a plugin is answered without options", info,
			&api.PluginInfoRequest{Type: GRPCPluginType, ID: "content"}, nil, false},
		{"options are answered with the plugin's extra information", info,
			&api.PluginInfoRequest{Type: "io.containerd.runtime.v2", ID: "task", Options: options}, nil, true},
		{"an unknown plugin is NotFound", info,
			&api.PluginInfoRequest{Type: GRPCPluginType, ID: "nothere"}, errdefs.IsNotFound, false},
		{"the same ID under another type is NotFound", info,
			&api.PluginInfoRequest{Type: "io.containerd.snapshotter.v1", ID: "task"}, errdefs.IsNotFound, false},
		{"options to a plugin that failed to start are FailedPrecondition", info,
			&api.PluginInfoRequest{Type: "io.containerd.snapshotter.v1", ID: "broken", Options: options}, errdefs.IsFailedPrecondition, false},
		{"options to a plugin giving no extra information are NotImplemented", info,
			&api.PluginInfoRequest{Type: GRPCPluginType, ID: "content", Options: options}, errdefs.IsNotImplemented, false},
		{"options without any provider are NotImplemented", nil,
			&api.PluginInfoRequest{Type: "io.containerd.runtime.v2", ID: "task", Options: options}, errdefs.IsNotImplemented, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := PluginInfo(context.Background(), plugins, tc.info, tc.req)
			if tc.err != nil {
				if !tc.err(err) {
					t.Fatalf("got %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if resp.GetPlugin().GetID() != tc.req.ID || resp.GetPlugin().GetType() != tc.req.Type {
				t.Errorf("answered %v", resp.GetPlugin())
			}
			if got := resp.GetExtra() != nil; got != tc.wantExtra || (got && !proto.Equal(resp.GetExtra(), extra)) {
				t.Errorf("extra = %v", resp.GetExtra())
			}
		})
	}
}

func TestPluginInfoPassesTheProvidersError(t *testing.T) {
	boom := errors.New("boom")
	opts, _ := anypb.New(wrapperspb.String("x"))
	_, err := PluginInfo(context.Background(), []*api.Plugin{{Type: "t", ID: "i"}},
		func(context.Context, string, string, *anypb.Any) (*anypb.Any, error) { return nil, boom },
		&api.PluginInfoRequest{Type: "t", ID: "i", Options: opts})
	if !errors.Is(err, boom) {
		t.Errorf("got %v, want the provider's error", err)
	}
}
