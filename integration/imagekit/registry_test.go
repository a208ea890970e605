package imagekit

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func isManifestType(mt string) bool {
	switch mt {
	case ocispec.MediaTypeImageManifest, ocispec.MediaTypeImageIndex, MediaTypeDockerManifest, MediaTypeDockerManifestList:
		return true
	}
	return false
}

// getManifest fetches /v2/NAME/manifests/REF and returns the Docker-Content-Digest header,
// the digest of the body and the Content-Type.
func getManifest(t *testing.T, addr, name, ref, mediaType string) (header, body digest.Digest, contentType string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, fmt.Sprintf("http://%s/v2/%s/manifests/%s", addr, name, ref), nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", mediaType)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET manifest %s:%s: %s: %s", name, ref, resp.Status, data)
	}
	return digest.Digest(resp.Header.Get("Docker-Content-Digest")), digest.FromBytes(data), resp.Header.Get("Content-Type")
}

// getBlob fetches /v2/NAME/blobs/DIGEST and returns its size and content digest.
func getBlob(t *testing.T, addr, name string, d digest.Digest) (int64, digest.Digest) {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://%s/v2/%s/blobs/%s", addr, name, d))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET blob %s in %s: %s", d, name, resp.Status)
	}
	digester := digest.SHA256.Digester()
	n, err := io.Copy(digester.Hash(), resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if cl := resp.Header.Get("Content-Length"); cl != strconv.FormatInt(n, 10) {
		t.Errorf("blob %s: Content-Length %s, body %d bytes", d, cl, n)
	}
	return n, digester.Digest()
}

func TestPushToDockerRegistry(t *testing.T) {
	needBusybox(t)
	addr := StartRegistry(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	type pushed struct {
		name, tag string
		build     func() (*Image, error)
	}
	cases := []pushed{
		{"flotilla/busybox", "gzip", func() (*Image, error) { return BuildBusybox() }},
		{"flotilla/busybox", "docker", func() (*Image, error) { return BuildBusybox(WithFormat(FormatDocker)) }},
		{"flotilla/layers", "zstd", func() (*Image, error) { return BuildLayers(WithCompression(CompressionZstd)) }},
		{"flotilla/layers", "none", func() (*Image, error) { return BuildLayers(WithCompression(CompressionNone)) }},
		{"flotilla/multiarch", "oci", func() (*Image, error) { return BuildMultiarch() }},
		{"flotilla/multiarch", "docker", func() (*Image, error) { return BuildMultiarch(WithFormat(FormatDocker)) }},
		{"flotilla/large", "2mib", func() (*Image, error) {
			return BuildLarge(WithSize(2<<20), WithCompression(CompressionNone), WithTempDir(t.TempDir()))
		}},
		{"flotilla/hostile", "traversal", func() (*Image, error) { return BuildHostile(AttackTraversal, "/tmp/victim") }},
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("%s:%s pushed answers its digest and every blob", c.name, c.tag), func(t *testing.T) {
			img, err := c.build()
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			ref := fmt.Sprintf("%s/%s:%s", addr, c.name, c.tag)
			if err := img.Push(ctx, ref); err != nil {
				t.Fatalf("push: %v", err)
			}
			header, body, contentType := getManifest(t, addr, c.name, c.tag, img.Target.MediaType)
			if header != img.Target.Digest || body != img.Target.Digest {
				t.Errorf("manifest by tag: header %s, body %s, want %s", header, body, img.Target.Digest)
			}
			if contentType != img.Target.MediaType {
				t.Errorf("manifest Content-Type %q, want %q", contentType, img.Target.MediaType)
			}
			for _, b := range img.Blobs {
				d := b.Descriptor
				if isManifestType(d.MediaType) {
					header, body, _ := getManifest(t, addr, c.name, d.Digest.String(), d.MediaType)
					if header != d.Digest || body != d.Digest {
						t.Errorf("manifest %s by digest: header %s, body %s", d.Digest, header, body)
					}
					continue
				}
				if n, got := getBlob(t, addr, c.name, d.Digest); n != d.Size || got != d.Digest {
					t.Errorf("blob %s: registry serves %d bytes with digest %s, want %d", d.Digest, n, got, d.Size)
				}
			}
			// A second push finds every blob there and only re-tags.
			if err := img.Push(ctx, ref); err != nil {
				t.Errorf("second push: %v", err)
			}
		})
	}
	t.Run("a reference without a tag is refused", func(t *testing.T) {
		img, err := BuildLayers()
		if err != nil {
			t.Fatal(err)
		}
		if err := img.Push(ctx, addr+"/flotilla/layers"); err == nil || !strings.Contains(err.Error(), "no tag") {
			t.Errorf("push without tag: %v", err)
		}
	})
}
