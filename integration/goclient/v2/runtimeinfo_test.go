package goclient

import (
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/runtime-spec/specs-go/features"
)

// hasPluginInfo reports whether a daemon of version v answers
// Introspection.PluginInfo, which RuntimeInfo calls: containerd added it in
// 1.7 (Debian's 1.6 answers Unimplemented).
func hasPluginInfo(v string) bool {
	parts := strings.SplitN(strings.TrimPrefix(v, "v"), ".", 3)
	if len(parts) < 2 {
		return true
	}
	major, err1 := strconv.Atoi(parts[0])
	minor, err2 := strconv.Atoi(parts[1])
	if err1 != nil || err2 != nil {
		return true
	}
	return major > 1 || major == 1 && minor >= 7
}

// TestRuntimeInfo is the 2.x client's RuntimeInfo (the 1.7 client has
// none), as containerd's own TestRuntimeInfo checks it.
func TestRuntimeInfo(t *testing.T) {
	client, ctx := newClient(t)
	v, err := client.Version(ctx)
	if err != nil {
		t.Fatalf("Version: %v", err)
	}
	if !hasPluginInfo(v.Version) {
		t.Skipf("containerd %s has no PluginInfo (added in 1.7), so no RuntimeInfo", v.Version)
	}
	t.Run("RuntimeInfo names the runtime and answers runc's features", func(t *testing.T) {
		rti, err := client.RuntimeInfo(ctx, "", nil)
		if err != nil {
			t.Fatalf("RuntimeInfo: %v", err)
		}
		if rti.Name == "" {
			t.Error("empty RuntimeInfo.Name")
		}
		feat, ok := rti.Features.(*features.Features)
		if !ok {
			t.Fatalf("RuntimeInfo.Features is %T, want *features.Features", rti.Features)
		}
		// runc lists "rro" since 1.1, as containerd's TestRuntimeInfo expects.
		if !slices.Contains(feat.MountOptions, "rro") {
			t.Errorf("features' mount options %v lack rro", feat.MountOptions)
		}
	})
	t.Run("RuntimeInfo of an unknown runtime is NotFound", func(t *testing.T) {
		if _, err := client.RuntimeInfo(ctx, "io.containerd.nothere.v1", nil); !errdefs.IsNotFound(err) {
			t.Errorf("RuntimeInfo of an unknown runtime: %v, want NotFound", err)
		}
	})
}
