package integration

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla/flotilla/flotctl/stack"
	"github.com/flotilla/flotilla/integration/imagekit"
)

// partsLayerSize is the payload of the image the ranged-part tests pull:
// several of contentd's parts.
const (
	partsLayerSize = 40 << 20
	partSize       = 8 << 20 // contentd's default
)

// checkLargeUnpacked mounts the image's top snapshot and compares its
// payload with what BuildLarge wrote.
func checkLargeUnpacked(t *testing.T, s *Stack, ns string, img *imagekit.Image) {
	t.Helper()
	chain := chainIDs(img)
	root := mountView(t, s, ns, "overlayfs", chain[len(chain)-1].String())
	h := sha256.New()
	io.Copy(h, imagekit.LargeContent(partsLayerSize, 1))
	if got, want := sha256File(t, filepath.Join(root, imagekit.LargeFile)), hex.EncodeToString(h.Sum(nil)); got != want {
		t.Errorf("%s sha256 %s, want %s", imagekit.LargeFile, got, want)
	}
}

func TestTransferPullFetchesALargeBlobInRangedParts(t *testing.T) {
	requireRootForMounts(t)
	ctr2Bin(t)
	reg := runRegistry(t)
	// A local registry is fast enough for one connection: parallel parts
	// are asked for however fast the first part came.
	s := startStackWith(t, func(l *stack.Layout) {
		if l.ExtraArgs == nil {
			l.ExtraArgs = map[string][]string{}
		}
		l.ExtraArgs["contentd"] = append(l.ExtraArgs["contentd"], "--fetch-parallel-after", "0s")
	})
	stopPluginsOnCleanup(t, s)
	p := pushImage(t, reg.Addr, "large", func() (*imagekit.Image, error) {
		return imagekit.BuildLarge(imagekit.WithSize(partsLayerSize), imagekit.WithTempDir(os.TempDir()))
	})
	layer := largestLayer(p.img).Descriptor
	ns := "transfer-parts"

	t.Run("a wrong byte in a later part fails the pull naming the blob and leaves nothing", func(t *testing.T) {
		data := filepath.Join(reg.Dir, "data", "docker", "registry", "v2", "blobs", "sha256", layer.Digest.Encoded()[:2], layer.Digest.Encoded(), "data")
		orig, err := os.ReadFile(data)
		if err != nil {
			t.Fatal(err)
		}
		bad := append([]byte(nil), orig...)
		bad[len(bad)*3/4] ^= 0xff
		if err := os.WriteFile(data, bad, 0o644); err != nil {
			t.Fatal(err)
		}
		defer func() {
			if err := os.WriteFile(data, orig, 0o644); err != nil {
				t.Fatal(err)
			}
		}()
		out, err := s.Ctr2(ns, "images", "pull", "--plain-http", p.ref)
		if err == nil {
			t.Fatalf("pull of a blob with a wrong byte succeeded:\n%s", lastLines(out, 5))
		}
		if !strings.Contains(out, layer.Digest.String()) {
			t.Errorf("pull error does not name the blob %s:\n%s", layer.Digest, lastLines(out, 5))
		}
		if ls := s.MustCtr2(ns, "content", "active"); strings.Contains(ls, layer.Digest.Encoded()) {
			t.Errorf("ingest of the wrong blob left:\n%s", ls)
		}
		// What the pull committed goes with its lease (as in containerd).
		eventually(t, "the failed pull's blobs go with its lease", func() bool {
			return strings.TrimSpace(s.MustCtr2(ns, "content", "ls", "-q")) == ""
		})
	})

	t.Run("the blob comes in ranged parts, each byte once, and unpacks", func(t *testing.T) {
		full0, ranged0 := blobFetches(t, reg)
		sent0 := blobBytes(t, reg)
		s.MustCtr2(ns, "images", "pull", "--plain-http", p.ref)
		full, ranged := blobFetches(t, reg)
		sent := blobBytes(t, reg)
		parts := int((layer.Size + partSize - 1) / partSize)
		if n := ranged[layer.Digest] - ranged0[layer.Digest]; n != parts || full[layer.Digest] != full0[layer.Digest] {
			lines, _ := reg.AccessLog()
			t.Errorf("%s (%d bytes) came in %d ranged and %d whole GETs, want %d ranged parts; registry log:\n%s",
				layer.Digest, layer.Size, n, full[layer.Digest]-full0[layer.Digest], parts, strings.Join(lines, "\n"))
		}
		if got := sent[layer.Digest] - sent0[layer.Digest]; got != layer.Size {
			t.Errorf("the registry sent %d bytes of %s, want its %d once", got, layer.Digest, layer.Size)
		}
		line := checkLine(s.MustCtr2(ns, "images", "check"), p.ref)
		if f := strings.Fields(line); len(f) < 4 || f[3] != "complete" {
			t.Errorf("images check: %q, want complete", line)
		}
		checkLargeUnpacked(t, s, ns, p.img)
	})
}

func TestTransferPullFromARegistryWithoutRangesFetchesEachBlobWhole(t *testing.T) {
	requireRootForMounts(t)
	ctr2Bin(t)
	reg := runRegistry(t)
	s := startStack(t)
	stopPluginsOnCleanup(t, s)
	p := pushImage(t, reg.Addr, "large", func() (*imagekit.Image, error) {
		return imagekit.BuildLarge(imagekit.WithSize(partsLayerSize), imagekit.WithTempDir(os.TempDir()))
	})
	proxy := newBlobProxy(t, reg.Addr)
	proxy.mu.Lock()
	proxy.noRanges = true
	proxy.mu.Unlock()
	layer := largestLayer(p.img).Descriptor
	ns := "transfer-noranges"
	ref := proxy.Addr + "/large:1"

	s.MustCtr2(ns, "images", "pull", "--plain-http", ref)
	full, ranged := blobFetches(t, reg)
	if full[layer.Digest] != 1 || ranged[layer.Digest] != 0 {
		lines, _ := reg.AccessLog()
		t.Errorf("%s came in %d whole and %d ranged GETs from a registry without ranges, want one whole; registry log:\n%s",
			layer.Digest, full[layer.Digest], ranged[layer.Digest], strings.Join(lines, "\n"))
	}
	line := checkLine(s.MustCtr2(ns, "images", "check"), ref)
	if f := strings.Fields(line); len(f) < 4 || f[3] != "complete" {
		t.Errorf("images check: %q, want complete", line)
	}
	checkLargeUnpacked(t, s, ns, p.img)
}

// throttled passes a body at about rate bytes a second: a slow link.
type throttled struct {
	io.ReadCloser
	rate  int64
	start time.Time
	n     int64
}

func (b *throttled) Read(p []byte) (int, error) {
	if len(p) > 64<<10 {
		p = p[:64<<10]
	}
	n, err := b.ReadCloser.Read(p)
	b.n += int64(n)
	// Pacing, not synchronisation: the body is what a slow link delivers.
	if ahead := time.Duration(b.n*int64(time.Second)/b.rate) - time.Since(b.start); ahead > 0 {
		time.Sleep(ahead)
	}
	return n, err
}

func TestTransferPullFromASlowRegistryFetchesTheRestInParallelParts(t *testing.T) {
	requireRootForMounts(t)
	ctr2Bin(t)
	reg := runRegistry(t)
	s := startStack(t) // contentd's defaults: parts only after a slow first part
	stopPluginsOnCleanup(t, s)
	p := pushImage(t, reg.Addr, "large", func() (*imagekit.Image, error) {
		return imagekit.BuildLarge(imagekit.WithSize(partsLayerSize), imagekit.WithTempDir(os.TempDir()))
	})
	layer := largestLayer(p.img).Descriptor
	proxy := newBlobProxy(t, reg.Addr)
	// 8 MiB/s a connection: the first 8 MiB part takes a second, far over
	// the 250 ms after which contentd goes parallel.
	proxy.Hook(layer.Digest, func(body io.ReadCloser) io.ReadCloser {
		return &throttled{ReadCloser: body, rate: 8 << 20, start: time.Now()}
	})
	ns := "transfer-slow"
	ref := proxy.Addr + "/large:1"
	s.MustCtr2(ns, "images", "pull", "--plain-http", ref)
	full, ranged := blobFetches(t, reg)
	parts := int((layer.Size + partSize - 1) / partSize)
	if full[layer.Digest] != 0 || ranged[layer.Digest] != parts {
		lines, _ := reg.AccessLog()
		t.Errorf("%s from a slow registry came in %d whole and %d ranged GETs, want %d ranged parts; registry log:\n%s",
			layer.Digest, full[layer.Digest], ranged[layer.Digest], parts, strings.Join(lines, "\n"))
	}
	if got := blobBytes(t, reg)[layer.Digest]; got != layer.Size {
		t.Errorf("the registry sent %d bytes of %s, want its %d once", got, layer.Digest, layer.Size)
	}
	checkLargeUnpacked(t, s, ns, p.img)
}
