package integration

import (
	"context"
	"slices"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/transfer/image"
	"github.com/containerd/containerd/v2/core/transfer/registry"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	"github.com/opencontainers/runtime-spec/specs-go/features"

	"github.com/flotilla/flotilla/integration/imagekit"
)

// TestIntrospectionWithGoClient2 proves with containerd's 2.x Go client the
// introspection its users rely on: RuntimeInfo (PluginInfo of the runtime
// plugin with a RuntimeRequest, containerd's TestRuntimeInfo), and the
// snapshotters' platforms, read by Unpack's WithSnapshotterPlatformCheck.
func TestIntrospectionWithGoClient2(t *testing.T) {
	requireTool(t, "runc")
	s := startStack(t)
	stopPluginsOnCleanup(t, s)
	ns := uniqueName("introspection")
	client, err := containerd.New(s.Socket, containerd.WithDefaultNamespace(ns))
	if err != nil {
		t.Fatalf("containerd.New: %v", err)
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

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

	t.Run("RuntimeInfo of an unknown runtime fails", func(t *testing.T) {
		if _, err := client.RuntimeInfo(ctx, "io.containerd.nothere.v1", nil); !errdefs.IsNotFound(err) {
			t.Errorf("RuntimeInfo of an unknown runtime: %v, want NotFound", err)
		}
	})

	t.Run("every snapshotter supports the host's platform", func(t *testing.T) {
		for _, name := range []string{"overlayfs", "native"} {
			m, err := client.GetSnapshotterSupportedPlatforms(ctx, name)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if !m.Match(platforms.DefaultSpec()) {
				t.Errorf("%s does not match the host's platform %s", name, platforms.Format(platforms.DefaultSpec()))
			}
		}
	})

	t.Run("Unpack with the snapshotter platform check unpacks", func(t *testing.T) {
		requireRootForMounts(t)
		reg := imagekit.StartRegistry(t)
		p := pushImage(t, reg, "platformcheck", func() (*imagekit.Image, error) { return imagekit.BuildBusybox() })
		src, err := registry.NewOCIRegistry(ctx, p.ref, registry.WithDefaultScheme("http"))
		if err != nil {
			t.Fatal(err)
		}
		if err := client.Transfer(ctx, src, image.NewStore(p.ref, image.WithPlatforms(platforms.DefaultSpec()))); err != nil {
			t.Fatalf("pull without unpack: %v", err)
		}
		img, err := client.GetImage(ctx, p.ref)
		if err != nil {
			t.Fatal(err)
		}
		if err := img.Unpack(ctx, "native", containerd.WithSnapshotterPlatformCheck()); err != nil {
			t.Fatalf("Unpack with WithSnapshotterPlatformCheck: %v", err)
		}
		if ok, err := img.IsUnpacked(ctx, "native"); err != nil || !ok {
			t.Errorf("IsUnpacked = %v, %v; want true", ok, err)
		}
	})
}
