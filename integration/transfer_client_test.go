package integration

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/transfer"
	"github.com/containerd/containerd/v2/core/transfer/image"
	"github.com/containerd/containerd/v2/core/transfer/registry"
	"github.com/containerd/platforms"

	"github.com/flotilla/flotilla/integration/imagekit"
)

func TestTransferGoClient2PullsUnpacksAndTags(t *testing.T) {
	requireRootForMounts(t)
	reg := imagekit.StartRegistry(t)
	s := startStack(t)
	stopPluginsOnCleanup(t, s)
	p := pushImage(t, reg, "multiarch", func() (*imagekit.Image, error) { return imagekit.BuildMultiarch() })

	client, err := containerd.New(s.Socket, containerd.WithDefaultNamespace("transfer-go"))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if v, err := client.Version(ctx); err != nil || !strings.HasPrefix(v.Version, "2.") {
		t.Errorf("server version %q (%v): a server whose Transfer path works reports containerd 2.x", v.Version, err)
	}

	src, err := registry.NewOCIRegistry(ctx, p.ref, registry.WithDefaultScheme("http"))
	if err != nil {
		t.Fatal(err)
	}
	dst := image.NewStore(p.ref, image.WithPlatforms(platforms.DefaultSpec()),
		image.WithUnpack(platforms.DefaultSpec(), "overlayfs"), image.WithImageLabels(map[string]string{"pulled-by": "go-client"}))
	var mu sync.Mutex
	var events []string
	err = client.Transfer(ctx, src, dst, transfer.WithProgress(func(p transfer.Progress) {
		mu.Lock()
		events = append(events, p.Event)
		mu.Unlock()
	}))
	if err != nil {
		t.Fatalf("client.Transfer pull: %v", err)
	}
	img, err := client.GetImage(ctx, p.ref)
	if err != nil {
		t.Fatal(err)
	}
	if img.Target().Digest != p.img.Target.Digest || img.Labels()["pulled-by"] != "go-client" {
		t.Errorf("image %s labels %v, want target %s with the store's labels", img.Target().Digest, img.Labels(), p.img.Target.Digest)
	}
	unpacked, err := img.IsUnpacked(ctx, "overlayfs")
	if err != nil || !unpacked {
		t.Errorf("IsUnpacked(overlayfs) = %v, %v; want true", unpacked, err)
	}
	mu.Lock()
	for _, want := range []string{"saved", "complete"} {
		if !slices.Contains(events, want) {
			t.Errorf("progress events %v lack %q", events, want)
		}
	}
	mu.Unlock()

	tagged := reg + "/multiarch:go-tag"
	if err := client.Transfer(ctx, image.NewStore(p.ref), image.NewStore(tagged)); err != nil {
		t.Fatalf("client.Transfer tag: %v", err)
	}
	ti, err := client.GetImage(ctx, tagged)
	if err != nil || ti.Target().Digest != p.img.Target.Digest {
		t.Errorf("tagged image: %v %v", ti, err)
	}
}
