package integration

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/transfer/archive"
	"github.com/containerd/containerd/v2/core/transfer/image"
	"github.com/containerd/containerd/v2/pkg/namespaces"

	"github.com/flotilla/flotilla/integration/imagekit"
)

// TestTransferImportNamesAsContainerd2 imports one OCI archive through the
// Transfer service with the 2.x Go client, with the image store options of
// containerd's TestTransferImport (an image name, named prefixes, digest
// references with and without overwrite and skip-named), on Flotilla and
// containerd 2.4.2, and expects the same images, by name and target, from
// both: the index is named by the image name and by each complete or
// digest reference too.
func TestTransferImportNamesAsContainerd2(t *testing.T) {
	dir2 := filepath.Dir(ctr2Bin(t))
	img, err := imagekit.BuildBusybox()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { img.Close() })
	var tarball bytes.Buffer
	if err := img.WriteArchive(&tarball, "registry.test/names:1"); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name  string
		image string
		opts  []image.StoreOpt
	}{
		{"named prefix", "", []image.StoreOpt{image.WithNamedPrefix("registry.test/names", false)}},
		{"index name", "registry.test/names:index", nil},
		{"digest refs", "registry.test/names:index", []image.StoreOpt{image.WithDigestRef("registry.test/names", false, false)}},
		{"digest refs, skip named", "registry.test/names:index", []image.StoreOpt{image.WithDigestRef("registry.test/names", false, true)}},
		{"digest only", "", []image.StoreOpt{image.WithDigestRef("imported", false, true)}},
		{"digest refs, overwrite", "registry.test/names:index", []image.StoreOpt{image.WithDigestRef("other", true, false)}},
		{"extra reference", "", []image.StoreOpt{image.WithNamedPrefix("registry.test/names", false), image.WithExtraReference("registry.test/extra:1")}},
	}
	// imported runs every case in a namespace of its own on the daemon at
	// socket and returns, per case, the images made: name -> target digest.
	imported := func(t *testing.T, socket string) map[string]map[string]string {
		client, err := containerd.New(socket)
		if err != nil {
			t.Fatal(err)
		}
		defer client.Close()
		out := map[string]map[string]string{}
		for i, c := range cases {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			ctx = namespaces.WithNamespace(ctx, fmt.Sprintf("import-names-%d", i))
			src := archive.NewImageImportStream(bytes.NewReader(tarball.Bytes()), "")
			if err := client.Transfer(ctx, src, image.NewStore(c.image, c.opts...)); err != nil {
				cancel()
				t.Fatalf("%s: Transfer: %v", c.name, err)
			}
			imgs, err := client.ImageService().List(ctx)
			cancel()
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]string{}
			for _, im := range imgs {
				got[im.Name] = im.Target.Digest.String()
			}
			out[c.name] = got
		}
		return out
	}
	want := imported(t, startContainerd(t, filepath.Join(dir2, "containerd"), dir2))
	got := imported(t, startStack(t).Socket)
	for _, c := range cases {
		if !maps.Equal(got[c.name], want[c.name]) {
			t.Errorf("%s: Flotilla named %v,\ncontainerd 2.4.2 %v", c.name, sortedPairs(got[c.name]), sortedPairs(want[c.name]))
		}
	}
}

func sortedPairs(m map[string]string) []string {
	var out []string
	for k, v := range m {
		out = append(out, k+" -> "+v)
	}
	slices.Sort(out)
	return out
}
