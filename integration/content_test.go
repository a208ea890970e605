package integration

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	api "github.com/containerd/containerd/api/services/content/v1"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/integration/imagekit"
)

// pushed is a test image pushed to the test registry.
type pushed struct {
	img  *imagekit.Image
	name string // repository
	ref  string // 127.0.0.1:PORT/NAME:TAG
}

// pushImage builds an image and pushes it to the registry at addr as name:1.
func pushImage(t *testing.T, addr, name string, build func() (*imagekit.Image, error)) pushed {
	t.Helper()
	img, err := build()
	if err != nil {
		t.Fatalf("build %s: %v", name, err)
	}
	t.Cleanup(func() { img.Close() })
	ref := addr + "/" + name + ":1"
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := img.Push(ctx, ref); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	return pushed{img: img, name: name, ref: ref}
}

func TestContentFetchStoresEveryBlobOfEachImage(t *testing.T) {
	requireTool(t, "ctr")
	reg := imagekit.StartRegistry(t)
	s := startStack(t)
	host := imagekit.HostPlatform()
	hostOnly := func(p ocispec.Platform) bool { return p.OS == host.OS && p.Architecture == host.Architecture }

	tests := []struct {
		name  string
		build func() (*imagekit.Image, error)
		args  []string                    // extra ctr content fetch flags
		match func(ocispec.Platform) bool // which manifests of an index are fetched
	}{
		{name: "busybox", build: func() (*imagekit.Image, error) { return imagekit.BuildBusybox() }},
		{name: "layers-gzip", build: func() (*imagekit.Image, error) {
			return imagekit.BuildLayers(imagekit.WithCompression(imagekit.CompressionGzip))
		}},
		{name: "layers-zstd", build: func() (*imagekit.Image, error) {
			return imagekit.BuildLayers(imagekit.WithCompression(imagekit.CompressionZstd))
		}},
		{name: "layers-none", build: func() (*imagekit.Image, error) {
			return imagekit.BuildLayers(imagekit.WithCompression(imagekit.CompressionNone))
		}},
		{name: "layers-docker", build: func() (*imagekit.Image, error) {
			return imagekit.BuildLayers(imagekit.WithFormat(imagekit.FormatDocker))
		}},
		{name: "multiarch-default-platform", build: func() (*imagekit.Image, error) { return imagekit.BuildMultiarch() },
			match: hostOnly},
		{name: "multiarch-all-platforms", build: func() (*imagekit.Image, error) { return imagekit.BuildMultiarch() },
			args: []string{"--all-platforms"}},
		{name: "large", build: func() (*imagekit.Image, error) {
			return imagekit.BuildLarge(imagekit.WithSize(24<<20+5), imagekit.WithCompression(imagekit.CompressionNone),
				imagekit.WithTempDir(t.TempDir()))
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name+" fetches every blob with the registry's digest, size and bytes", func(t *testing.T) {
			p := pushImage(t, reg, tc.name, tc.build)
			ns := tc.name
			ctrStdout(t, s, ns, append(append([]string{"content", "fetch", "--plain-http"}, tc.args...), p.ref)...)

			want := map[digest.Digest]ocispec.Descriptor{}
			for _, d := range reachable(t, p.img, p.img.Target, tc.match) {
				want[d.Digest] = d
			}
			if tc.match != nil && len(want) >= len(p.img.Blobs) {
				t.Fatalf("the platform filter selects all %d blobs: the case proves nothing", len(want))
			}
			listed := contentLs(t, s, ns)
			for dgst := range listed {
				if _, ok := want[dgst]; !ok {
					t.Errorf("content ls lists %s, which the image does not reach", dgst)
				}
			}
			for dgst, d := range want {
				regDigest, regSize := registryDescriptor(t, reg, p.name, d)
				if regDigest != dgst || regSize != d.Size {
					t.Fatalf("registry serves %s as %s, %d bytes; the image says %d bytes", dgst, regDigest, regSize, d.Size)
				}
				row, ok := listed[dgst]
				if !ok {
					t.Errorf("content ls does not list %s (%s)", dgst, d.MediaType)
					continue
				}
				if row.Size != humanSize(regSize) {
					t.Errorf("content ls gives %s a size of %s, the registry %d (%s)", dgst, row.Size, regSize, humanSize(regSize))
				}
				var out bytes.Buffer
				h := digest.SHA256.Digester()
				stderr, err := ctrRun(t, s, ns, nil, io.MultiWriter(h.Hash(), &countWriter{w: &out, limit: 64 << 20}), "content", "get", dgst.String())
				if err != nil {
					t.Fatalf("ctr content get %s: %v\n%s", dgst, err, stderr)
				}
				if got := h.Digest(); got != dgst {
					t.Errorf("ctr content get %s returned bytes of digest %s", dgst, got)
				}
				if b, ok := p.img.Blob(dgst); ok && b.Data != nil && !bytes.Equal(out.Bytes(), b.Data) {
					t.Errorf("ctr content get %s: bytes differ from the pushed blob", dgst)
				}
			}
		})
	}
}

// countWriter keeps at most limit bytes of what it is given and drops the
// rest, so large blobs are hashed, not held.
type countWriter struct {
	w     *bytes.Buffer
	limit int
}

func (c *countWriter) Write(p []byte) (int, error) {
	if room := c.limit - c.w.Len(); room > 0 {
		c.w.Write(p[:min(room, len(p))])
	}
	return len(p), nil
}

func TestContentCommandsBehaveAsContainerd(t *testing.T) {
	requireTool(t, "ctr")
	s := startStack(t)
	c := contentAPI(t, s)
	const ns = "ctr-content"
	ctx := inNamespace(context.Background(), ns)

	data := make([]byte, 3<<20+333)
	rand.NewChaCha8([32]byte{3}).Read(data)
	dgst := digest.FromBytes(data)
	ingest := func(ref string, data []byte, args ...string) (string, error) {
		all := append([]string{"content", "ingest"}, args...)
		return ctrRun(t, s, ns, bytes.NewReader(data), io.Discard, append(all, ref)...)
	}

	t.Run("ingest with expected size and digest stores the blob", func(t *testing.T) {
		if stderr, err := ingest("upload-1", data, "--expected-size", strconv.Itoa(len(data)), "--expected-digest", dgst.String()); err != nil {
			t.Fatalf("ingest: %v\n%s", err, stderr)
		}
		row, ok := contentLs(t, s, ns)[dgst]
		if !ok || row.Size != "3.146MB" || row.Labels != "-" {
			t.Fatalf("content ls row of %s: %+v (listed %v), want size 3.146MB and no labels", dgst, row, ok)
		}
		info, err := c.Info(ctx, &api.InfoRequest{Digest: dgst.String()})
		if err != nil || info.GetInfo().GetSize() != int64(len(data)) {
			t.Fatalf("Info: %v, %v", info, err)
		}
	})
	t.Run("ingest of a blob already stored succeeds and keeps one copy", func(t *testing.T) {
		if stderr, err := ingest("upload-2", data, "--expected-digest", dgst.String()); err != nil {
			t.Fatalf("ingest: %v\n%s", err, stderr)
		}
		if n := len(contentLs(t, s, ns)); n != 1 {
			t.Fatalf("content ls lists %d blobs, want 1", n)
		}
	})
	t.Run("ingest with a wrong digest fails and stores nothing", func(t *testing.T) {
		other := []byte("other bytes")
		stderr, err := ingest("bad", other, "--expected-digest", digest.FromString("something else").String())
		if err == nil {
			t.Fatal("ingest succeeded")
		}
		if !strings.Contains(stderr, "failed precondition") && !strings.Contains(stderr, "unexpected commit digest") {
			t.Errorf("ingest error does not say why: %s", stderr)
		}
		if _, ok := contentLs(t, s, ns)[digest.FromBytes(other)]; ok {
			t.Fatal("the mismatched blob is listed")
		}
	})
	t.Run("content get returns the exact bytes", func(t *testing.T) {
		var out bytes.Buffer
		if stderr, err := ctrRun(t, s, ns, nil, &out, "content", "get", dgst.String()); err != nil {
			t.Fatalf("get: %v\n%s", err, stderr)
		}
		if !bytes.Equal(out.Bytes(), data) {
			t.Fatalf("get returned %d bytes that differ from the %d ingested", out.Len(), len(data))
		}
	})
	t.Run("content get of a missing blob fails with not found", func(t *testing.T) {
		stderr, err := ctrRun(t, s, ns, nil, io.Discard, "content", "get", digest.FromString("missing").String())
		if err == nil || !strings.Contains(stderr, "not found") {
			t.Fatalf("get: %v, %s", err, stderr)
		}
	})
	t.Run("label sets labels and prints them", func(t *testing.T) {
		out := ctrStdout(t, s, ns, "content", "label", dgst.String(), "a=b", "c=d")
		if !sameLabels(out, "a=b,c=d") {
			t.Fatalf("label printed %q, want %q", out, "a=b,c=d")
		}
		if row := contentLs(t, s, ns)[dgst]; !sameLabels(row.Labels, "a=b,c=d") {
			t.Fatalf("content ls labels %q", row.Labels)
		}
	})
	t.Run("label with an empty value removes that label only", func(t *testing.T) {
		out := ctrStdout(t, s, ns, "content", "label", dgst.String(), "a=")
		if !sameLabels(out, "c=d") {
			t.Fatalf("label printed %q, want %q", out, "c=d")
		}
		info, err := c.Info(ctx, &api.InfoRequest{Digest: dgst.String()})
		if err != nil {
			t.Fatal(err)
		}
		if got := info.GetInfo().GetLabels(); len(got) != 1 || got["c"] != "d" {
			t.Fatalf("labels %v, want only c=d", got)
		}
	})
	t.Run("active shows an ingest in progress with its offset", func(t *testing.T) {
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		stream, err := c.Write(wctx)
		if err != nil {
			t.Fatal(err)
		}
		part := bytes.Repeat([]byte("x"), 5000)
		if _, err := writeMsg(stream, &api.WriteContentRequest{Action: api.WriteAction_STAT, Ref: "in-progress", Total: 10000}); err != nil {
			t.Fatal(err)
		}
		if _, err := writeMsg(stream, &api.WriteContentRequest{Action: api.WriteAction_WRITE, Data: part}); err != nil {
			t.Fatal(err)
		}
		// ctr passes its argument to ListStatuses as a containerd filter.
		out := ctrStdout(t, s, ns, "content", "active", "ref==in-progress")
		lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
		if len(lines) != 2 || !strings.HasPrefix(lines[0], "REF") {
			t.Fatalf("content active printed %q, want a header and one row", out)
		}
		f := strings.Split(lines[1], "\t")
		if len(f) < 3 || f[0] != "in-progress" || f[1] != humanSize(int64(len(part))) {
			t.Fatalf("content active row %q, want ref in-progress with %s written", lines[1], humanSize(int64(len(part))))
		}
		if out := ctrStdout(t, s, ns, "content", "active"); !strings.Contains(out, "\nin-progress\t") {
			t.Fatalf("content active without a filter does not list the ingest: %q", out)
		}
		if out := ctrStdout(t, s, ns, "content", "active", "ref==other"); strings.Contains(out, "in-progress") {
			t.Fatalf("content active with a filter not matching the ref lists it: %q", out)
		}
		if stderr, err := ctrRun(t, s, ns, nil, io.Discard, "content", "active", "^bad"); err == nil || !strings.Contains(stderr, "invalid argument") {
			t.Fatalf("content active with a malformed filter: %v, %s", err, stderr)
		}
		if out := ctrStdout(t, s, "another-namespace", "content", "active"); strings.Contains(out, "in-progress") {
			t.Fatalf("another namespace sees the ingest: %q", out)
		}
		cancel()
		// Once the writer is gone the ingest stays, to be resumed, until aborted.
		waitFor(t, func() error {
			_, err := c.Abort(ctx, &api.AbortRequest{Ref: "in-progress"})
			return err
		})
		if out := ctrStdout(t, s, ns, "content", "active"); strings.Contains(out, "in-progress") {
			t.Fatalf("content active lists an aborted ingest: %q", out)
		}
	})
	t.Run("rm removes the blob and prints its digest", func(t *testing.T) {
		if out := ctrStdout(t, s, ns, "content", "rm", dgst.String()); strings.TrimSpace(out) != dgst.String() {
			t.Fatalf("rm printed %q", out)
		}
		if _, ok := contentLs(t, s, ns)[dgst]; ok {
			t.Fatal("content ls still lists the removed blob")
		}
		_, err := c.Info(ctx, &api.InfoRequest{Digest: dgst.String()})
		if status.Code(err) != codes.NotFound {
			t.Fatalf("Info after rm: %v, want NotFound", err)
		}
	})
	t.Run("rm of a missing blob succeeds and prints nothing", func(t *testing.T) {
		if out := ctrStdout(t, s, ns, "content", "rm", dgst.String()); strings.TrimSpace(out) != "" {
			t.Fatalf("rm printed %q", out)
		}
	})
}

// waitFor retries fn for a few seconds until it succeeds: the server
// releases a cancelled stream's resources shortly after the client leaves.
func waitFor(t testing.TB, fn func() error) {
	t.Helper()
	var err error
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if err = fn(); err == nil {
			return
		}
	}
	t.Fatalf("still failing after 5s: %v", err)
}

// imageRow is one row of `ctr images ls`.
type imageRow struct {
	Type, Digest, Size, Platforms, Labels string
}

func imagesLs(t testing.TB, s *Stack, ns string) map[string]imageRow {
	t.Helper()
	out := ctrStdout(t, s, ns, "images", "ls")
	rows := map[string]imageRow{}
	for i, line := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		f := strings.Fields(line)
		if i == 0 {
			if len(f) == 0 || f[0] != "REF" {
				t.Fatalf("images ls header %q", line)
			}
			continue
		}
		// REF TYPE DIGEST SIZE PLATFORMS LABELS; SIZE holds a space ("1.0 MiB").
		if len(f) < 6 {
			t.Fatalf("images ls row %q", line)
		}
		rows[f[0]] = imageRow{Type: f[1], Digest: f[2], Size: strings.Join(f[3:len(f)-2], " "),
			Platforms: f[len(f)-2], Labels: f[len(f)-1]}
	}
	return rows
}

// imagesCheck runs `ctr images check` and returns each image's STATUS column.
// Until a snapshotter serves the stack, ctr also reports that it cannot tell
// whether the image is unpacked; that error alone is tolerated.
func imagesCheck(t testing.TB, s *Stack, ns string) map[string]string {
	t.Helper()
	var out bytes.Buffer
	stderr, err := ctrRun(t, s, ns, nil, &out, "images", "check")
	if err != nil && !strings.Contains(stderr, "unable to check unpack") {
		t.Fatalf("images check: %v\n%s", err, stderr)
	}
	st := map[string]string{}
	re := regexp.MustCompile(`^(\S+)\s+\S+\s+(sha256:[0-9a-f]{64})\s+((?:in)?complete \(\d+/\d+\))`)
	for _, line := range strings.Split(out.String(), "\n")[1:] {
		if m := re.FindStringSubmatch(line); m != nil {
			st[m[1]] = m[3]
		}
	}
	return st
}

func TestImagesCommandsOnAFetchedImage(t *testing.T) {
	requireTool(t, "ctr")
	reg := imagekit.StartRegistry(t)
	s := startStack(t)
	p := pushImage(t, reg, "busybox", func() (*imagekit.Image, error) { return imagekit.BuildBusybox() })
	const ns = "ctr-images"
	ctrStdout(t, s, ns, "content", "fetch", "--plain-http", p.ref)
	target := p.img.Target.Digest.String()
	complete := fmt.Sprintf("complete (%d/%d)", len(p.img.Layers)+1, len(p.img.Layers)+1)

	t.Run("ls shows the fetched image with its target, type, size and platform", func(t *testing.T) {
		row, ok := imagesLs(t, s, ns)[p.ref]
		if !ok {
			t.Fatalf("images ls does not list %s", p.ref)
		}
		host := imagekit.HostPlatform()
		want := imageRow{Type: ocispec.MediaTypeImageManifest, Digest: target, Size: binarySize(p.img.Size()),
			Platforms: host.OS + "/" + host.Architecture, Labels: "-"}
		if row != want {
			t.Fatalf("images ls row %+v, want %+v", row, want)
		}
	})
	t.Run("check reports every blob present", func(t *testing.T) {
		if got := imagesCheck(t, s, ns)[p.ref]; got != complete {
			t.Fatalf("check status %q, want %q", got, complete)
		}
	})
	t.Run("tag creates a second name for the same target", func(t *testing.T) {
		if out := ctrStdout(t, s, ns, "images", "tag", p.ref, "busybox:copy"); strings.TrimSpace(out) != "busybox:copy" {
			t.Fatalf("tag printed %q", out)
		}
		if row := imagesLs(t, s, ns)["busybox:copy"]; row.Digest != target {
			t.Fatalf("tag points at %q, want %s", row.Digest, target)
		}
		if _, err := ctrRun(t, s, ns, nil, io.Discard, "images", "tag", p.ref, "busybox:copy"); err == nil {
			t.Fatal("tag onto an existing name succeeded without --force")
		}
	})
	t.Run("label sets and clears an image label", func(t *testing.T) {
		if out := ctrStdout(t, s, ns, "images", "label", "busybox:copy", "team=infra", "tier=1"); !sameLabels(out, "team=infra,tier=1") {
			t.Fatalf("label printed %q", out)
		}
		if row := imagesLs(t, s, ns)["busybox:copy"]; !sameLabels(row.Labels, "team=infra,tier=1") {
			t.Fatalf("labels %q", row.Labels)
		}
		ctrStdout(t, s, ns, "images", "label", "busybox:copy", "tier=")
		if row := imagesLs(t, s, ns)["busybox:copy"]; !sameLabels(row.Labels, "team=infra") {
			t.Fatalf("labels after clearing tier: %q", row.Labels)
		}
	})
	t.Run("export writes an OCI archive and import into another namespace recreates the image", func(t *testing.T) {
		archive := t.TempDir() + "/busybox.tar"
		ctrStdout(t, s, ns, "images", "export", archive, p.ref)
		names := archiveNames(t, archive)
		for _, want := range []string{"oci-layout", "index.json"} {
			if !names[want] {
				t.Errorf("archive lacks %s; holds %v", want, names)
			}
		}
		for _, b := range p.img.Blobs {
			if !names["blobs/sha256/"+b.Descriptor.Digest.Encoded()] {
				t.Errorf("archive lacks blob %s", b.Descriptor.Digest)
			}
		}
		const other = "ctr-images-imported"
		ctrStdout(t, s, other, "images", "import", "--no-unpack", archive)
		row, ok := imagesLs(t, s, other)[p.ref]
		if !ok || row.Digest != target {
			t.Fatalf("imported image %+v (listed %v), want target %s", row, ok, target)
		}
		if got := imagesCheck(t, s, other)[p.ref]; got != complete {
			t.Fatalf("imported image check %q, want %q", got, complete)
		}
	})
	t.Run("check reports a missing layer as incomplete", func(t *testing.T) {
		ctrStdout(t, s, ns, "content", "rm", p.img.Layers[0].Descriptor.Digest.String())
		want := fmt.Sprintf("incomplete (%d/%d)", len(p.img.Layers), len(p.img.Layers)+1)
		if got := imagesCheck(t, s, ns)[p.ref]; got != want {
			t.Fatalf("check status %q, want %q", got, want)
		}
		// The other namespace keeps its own record of the blob.
		if got := imagesCheck(t, s, "ctr-images-imported")[p.ref]; got != complete {
			t.Fatalf("other namespace's check %q, want %q", got, complete)
		}
	})
	t.Run("rm removes only the named image", func(t *testing.T) {
		if out := ctrStdout(t, s, ns, "images", "rm", "busybox:copy"); strings.TrimSpace(out) != "busybox:copy" {
			t.Fatalf("rm printed %q", out)
		}
		rows := imagesLs(t, s, ns)
		if _, ok := rows["busybox:copy"]; ok {
			t.Fatal("removed image still listed")
		}
		if _, ok := rows[p.ref]; !ok {
			t.Fatal("rm removed the other name too")
		}
	})
}
