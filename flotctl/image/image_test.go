package image

import (
	"testing"

	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	digest "github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func TestPickChoosesThePlatformsBestManifest(t *testing.T) {
	entry := func(d string, p *ocispec.Platform) ocispec.Descriptor {
		return ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.Digest("sha256:" + d), Platform: p}
	}
	amd64 := entry("a", &ocispec.Platform{OS: "linux", Architecture: "amd64"})
	arm64 := entry("b", &ocispec.Platform{OS: "linux", Architecture: "arm64"})
	armv7 := entry("c", &ocispec.Platform{OS: "linux", Architecture: "arm", Variant: "v7"})
	armv6 := entry("d", &ocispec.Platform{OS: "linux", Architecture: "arm", Variant: "v6"})
	for _, tc := range []struct {
		name    string
		entries []ocispec.Descriptor
		want    platforms.MatchComparer
		pick    digest.Digest
	}{
		{"exact match among others", []ocispec.Descriptor{amd64, arm64}, platforms.Only(ocispec.Platform{OS: "linux", Architecture: "arm64"}), arm64.Digest},
		{"the closest variant first", []ocispec.Descriptor{armv6, armv7}, platforms.Only(ocispec.Platform{OS: "linux", Architecture: "arm", Variant: "v7"}), armv7.Digest},
		{"an older variant when the exact one is missing", []ocispec.Descriptor{amd64, armv6}, platforms.Only(ocispec.Platform{OS: "linux", Architecture: "arm", Variant: "v7"}), armv6.Digest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := pick(tc.entries, tc.want)
			if err != nil || got.Digest != tc.pick {
				t.Fatalf("picked %s (%v), want %s", got.Digest, err, tc.pick)
			}
		})
	}
	t.Run("no match is NotFound and lists what there is", func(t *testing.T) {
		_, err := pick([]ocispec.Descriptor{amd64, arm64}, platforms.Only(ocispec.Platform{OS: "linux", Architecture: "s390x"}))
		if !errdefs.IsNotFound(err) {
			t.Fatalf("err = %v, want NotFound", err)
		}
	})
}

// The chain IDs a run prepares its rootfs on are containerd's: the first
// is the first diff ID, each next one hashes "parent diffID".
func TestChainIDsAreContainerds(t *testing.T) {
	d1 := digest.FromString("layer1")
	d2 := digest.FromString("layer2")
	ids := identity.ChainIDs([]digest.Digest{d1, d2})
	if ids[0] != d1 || ids[1] != digest.FromString(d1.String()+" "+d2.String()) {
		t.Fatalf("chain IDs %v", ids)
	}
}
