package integration

import (
	"context"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"

	"github.com/flotilla/flotilla/integration/imagekit"
)

// TestImageUsageOfMissingManifests is the first half of containerd's
// TestImageUsage with the 2.x Go client, on Flotilla and containerd 1.6:
// Image.Usage walks the image in the content store from the client, so
// with one platform of a multi-platform index pulled, counting every
// manifest must fail NotFound (the content store's Info of a blob the
// namespace lacks), while the pulled platform alone is counted.
func TestImageUsageOfMissingManifests(t *testing.T) {
	reg := imagekit.StartRegistry(t)
	p := pushImage(t, reg, "usage-multiarch", func() (*imagekit.Image, error) { return imagekit.BuildMultiarch() })
	for _, kind := range clientBackends {
		t.Run(kind.name, func(t *testing.T) {
			b := kind.start(t)
			client, err := containerd.New(b.Socket, containerd.WithDefaultNamespace(uniqueName("usage")))
			if err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			resolver := docker.NewResolver(docker.ResolverOptions{
				Hosts: docker.ConfigureDefaultRegistries(docker.WithPlainHTTP(docker.MatchAllHosts)),
			})
			image, err := client.Pull(ctx, p.ref, containerd.WithPlatformMatcher(platforms.Default()), containerd.WithResolver(resolver))
			if err != nil {
				t.Fatalf("Pull: %v", err)
			}
			one, err := image.Usage(ctx, containerd.WithUsageManifestLimit(1))
			if err != nil || one <= 0 {
				t.Fatalf("Usage of the pulled platform: %d, %v", one, err)
			}
			if _, err := image.Usage(ctx, containerd.WithUsageManifestLimit(0), containerd.WithManifestUsage()); !errdefs.IsNotFound(err) {
				t.Fatalf("Usage of every manifest, some missing: %v, want NotFound", err)
			}
		})
	}
}
