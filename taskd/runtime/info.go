package runtime

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os/exec"
	"path/filepath"

	apitypes "github.com/containerd/containerd/api/types"
	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/errdefs"
	runc "github.com/containerd/go-runc"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/flotilla/flotilla/services/version"
)

// PluginType and PluginID name taskd's runtime in containerd's
// Introspection, as containerd names its runtime plugin.
const (
	PluginType = "io.containerd.runtime.v2"
	PluginID   = "task"
)

// FeaturesTypeURL is the type URL containerd's clients register for the
// OCI runtime's features (runtime-spec's features.Features, as JSON).
const FeaturesTypeURL = "types.containerd.io/opencontainers/runtime-spec/1/features/Features"

// Info answers containerd's PluginInfo of the runtime plugin with options:
// a RuntimeRequest (the runtime, default io.containerd.runc.v2, and its
// options) answered by a RuntimeInfo, as containerd's 2.x client's
// RuntimeInfo reads it. taskd-shim's information is taskd's to give (same
// build, same OCI runtime); any other shim is asked as containerd asks it,
// by running it with -info and the options on stdin.
type Info struct {
	Resolver *Resolver
	Log      *slog.Logger
}

// PluginInfo implements introspect.InfoProvider for the runtime plugin.
// Options of another type than RuntimeRequest, or runtime options of
// another type than runc's, are InvalidArgument; an unknown runtime is
// what Resolve says.
func (i *Info) PluginInfo(ctx context.Context, pluginType, id string, options *anypb.Any) (*anypb.Any, error) {
	if pluginType != PluginType || id != PluginID {
		return nil, fmt.Errorf("plugin %s.%s does not provide extra information: %w", pluginType, id, errdefs.ErrNotImplemented)
	}
	var req apitypes.RuntimeRequest
	if err := options.UnmarshalTo(&req); err != nil {
		return nil, fmt.Errorf("plugin info options: want %s: %v: %w", proto.MessageName(&req), err, errdefs.ErrInvalidArgument)
	}
	info, err := i.Runtime(ctx, &req)
	if err != nil {
		return nil, err
	}
	// typeurl's URL (the bare message name), which clients unmarshal by.
	return typeurl.MarshalAnyToProto(info)
}

// Runtime returns the RuntimeInfo of the runtime req names.
func (i *Info) Runtime(ctx context.Context, req *apitypes.RuntimeRequest) (*apitypes.RuntimeInfo, error) {
	name := req.GetRuntimePath()
	if name == "" {
		name = RuncV2
	}
	shim, err := i.Resolver.Resolve(name)
	if err != nil {
		return nil, fmt.Errorf("resolve runtime path: %w", err)
	}
	if filepath.Base(shim) != DefaultShim {
		return shimInfo(ctx, shim, req.GetOptions())
	}
	info := &apitypes.RuntimeInfo{
		Name:    name,
		Version: &apitypes.RuntimeVersion{Version: version.Version, Revision: version.Revision},
	}
	binary := "runc"
	if opts := req.GetOptions(); opts != nil {
		var ro runcoptions.Options
		if err := opts.UnmarshalTo(&ro); err != nil {
			return nil, fmt.Errorf("read runtime options: want %s: %v: %w", proto.MessageName(&ro), err, errdefs.ErrInvalidArgument)
		}
		info.Options = opts
		if ro.GetBinaryName() != "" {
			binary = ro.GetBinaryName()
		}
	}
	// A runtime without `features` (youki, old runc) leaves Features out,
	// as containerd's shim does.
	features, err := (&runc.Runc{Command: binary}).Features(ctx)
	if err != nil {
		if i.Log != nil {
			i.Log.Debug("runtime features unknown", "runtime", binary, "error", err)
		}
		return info, nil
	}
	b, err := json.Marshal(features)
	if err != nil {
		return nil, fmt.Errorf("runtime features: %w", err)
	}
	info.Features = &anypb.Any{TypeUrl: FeaturesTypeURL, Value: b}
	return info, nil
}

// shimInfo runs shim -info with the runtime options on stdin and reads the
// RuntimeInfo it prints, containerd's protocol for a shim's information.
func shimInfo(ctx context.Context, shim string, opts *anypb.Any) (*apitypes.RuntimeInfo, error) {
	var stdin []byte
	if opts != nil {
		var err error
		if stdin, err = proto.Marshal(opts); err != nil {
			return nil, fmt.Errorf("marshal runtime options: %w", err)
		}
	}
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, shim, "-info")
	cmd.Stdin = bytes.NewReader(stdin)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s -info: %w (stderr: %q)", shim, err, stderr.String())
	}
	var info apitypes.RuntimeInfo
	if err := proto.Unmarshal(out, &info); err != nil {
		return nil, fmt.Errorf("%s -info: read its RuntimeInfo: %w", shim, err)
	}
	return &info, nil
}
