package runtime

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	apitypes "github.com/containerd/containerd/api/types"
	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/runtime-spec/specs-go/features"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// writeExe writes an executable shell script at dir/name.
func writeExe(t *testing.T, dir, name, script string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+script), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestRuntimeInfo(t *testing.T) {
	dir := t.TempDir()
	writeExe(t, dir, DefaultShim, "exit 1\n")
	// A stand-in OCI runtime whose `features` answers what runc's does.
	withFeatures := writeExe(t, dir, "oci-with-features",
		`[ "$1" = features ] && echo '{"ociVersionMin":"1.0.0","mountOptions":["rro","bind"]}'`+"\n")
	withoutFeatures := writeExe(t, dir, "oci-without-features", "echo 'unknown command' >&2; exit 1\n")
	info := &Info{Resolver: &Resolver{Dir: dir}}

	request := func(t *testing.T, runtimePath string, opts proto.Message) *anypb.Any {
		t.Helper()
		req := &apitypes.RuntimeRequest{RuntimePath: runtimePath}
		if opts != nil {
			a, err := anypb.New(opts)
			if err != nil {
				t.Fatal(err)
			}
			req.Options = a
		}
		a, err := anypb.New(req)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	answer := func(t *testing.T, a *anypb.Any) *apitypes.RuntimeInfo {
		t.Helper()
		var ri apitypes.RuntimeInfo
		if err := a.UnmarshalTo(&ri); err != nil {
			t.Fatalf("answer is not a RuntimeInfo: %v", err)
		}
		return &ri
	}

	t.Run("the default runtime answers its name, options and the OCI runtime's features", func(t *testing.T) {
		opts := &runcoptions.Options{BinaryName: withFeatures, Root: "/run/x"}
		a, err := info.PluginInfo(context.Background(), PluginType, PluginID, request(t, "", opts))
		if err != nil {
			t.Fatal(err)
		}
		ri := answer(t, a)
		if ri.GetName() != RuncV2 || ri.GetVersion().GetVersion() == "" {
			t.Errorf("name %q version %v", ri.GetName(), ri.GetVersion())
		}
		var echoed runcoptions.Options
		if err := ri.GetOptions().UnmarshalTo(&echoed); err != nil || echoed.GetRoot() != "/run/x" {
			t.Errorf("options = %v (%v), want the request's", &echoed, err)
		}
		if ri.GetFeatures().GetTypeUrl() != FeaturesTypeURL {
			t.Fatalf("features type %q, want %q", ri.GetFeatures().GetTypeUrl(), FeaturesTypeURL)
		}
		var f features.Features
		if err := json.Unmarshal(ri.GetFeatures().GetValue(), &f); err != nil || len(f.MountOptions) != 2 || f.MountOptions[0] != "rro" {
			t.Errorf("features = %+v (%v)", f, err)
		}
	})
	t.Run("an OCI runtime without features leaves them out", func(t *testing.T) {
		a, err := info.PluginInfo(context.Background(), PluginType, PluginID,
			request(t, RuncV2, &runcoptions.Options{BinaryName: withoutFeatures}))
		if err != nil {
			t.Fatal(err)
		}
		if ri := answer(t, a); ri.GetFeatures() != nil {
			t.Errorf("features = %v, want none", ri.GetFeatures())
		}
	})
	for _, tc := range []struct {
		name    string
		typ, id string
		options *anypb.Any
		is      func(error) bool
	}{
		{"options that are no RuntimeRequest are InvalidArgument", PluginType, PluginID,
			func() *anypb.Any { a, _ := anypb.New(wrapperspb.String("x")); return a }(), errdefs.IsInvalidArgument},
		{"runtime options that are not runc's are InvalidArgument", PluginType, PluginID,
			request(t, "", wrapperspb.String("x")), errdefs.IsInvalidArgument},
		{"a runtime with no shim is NotFound", PluginType, PluginID,
			request(t, "io.containerd.nothere.v1", nil), errdefs.IsNotFound},
		{"another plugin gives no extra information", PluginType, RuncV2,
			request(t, "", nil), errdefs.IsNotImplemented},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := info.PluginInfo(context.Background(), tc.typ, tc.id, tc.options)
			if !tc.is(err) {
				t.Errorf("got %v", err)
			}
		})
	}
}
