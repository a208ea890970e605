package integration

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	api "github.com/containerd/containerd/api/services/content/v1"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/flotilla/flotilla/integration/imagekit"
)

// writeChunk is how much one WRITE message carries, as containerd's client sends.
const writeChunk = 1 << 20

// contentAPI is a raw Content API client on the stack's gateway socket.
func contentAPI(t testing.TB, s *Stack) api.ContentClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+s.Socket,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16<<20)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return api.NewContentClient(conn)
}

// inNamespace returns ctx with the containerd namespace header set, as containerd's client sends it.
func inNamespace(ctx context.Context, ns string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "containerd-namespace", ns)
}

// ctrRun runs ctr against the gateway in namespace ns with stdin, streaming
// its standard output to stdout; it returns ctr's standard error.
func ctrRun(t testing.TB, s *Stack, ns string, stdin io.Reader, stdout io.Writer, args ...string) (string, error) {
	t.Helper()
	requireTool(t, "ctr")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ctr", append([]string{"--address", s.Socket, "--namespace", ns}, args...)...)
	var stderr bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, stdout, &stderr
	err := cmd.Run()
	return stderr.String(), err
}

// ctrStdout runs ctr and returns only its standard output, failing the test on error.
func ctrStdout(t testing.TB, s *Stack, ns string, args ...string) string {
	t.Helper()
	var out bytes.Buffer
	if stderr, err := ctrRun(t, s, ns, nil, &out, args...); err != nil {
		t.Fatalf("ctr %s: %v\n%s%s", strings.Join(args, " "), err, out.String(), stderr)
	}
	return out.String()
}

// contentLine is one row of `ctr content ls`.
type contentLine struct {
	Size   string // as ctr prints it (humanSize)
	Labels string
}

// contentLs parses `ctr content ls` of namespace ns, by digest.
func contentLs(t testing.TB, s *Stack, ns string) map[digest.Digest]contentLine {
	t.Helper()
	out := ctrStdout(t, s, ns, "content", "ls")
	rows := map[digest.Digest]contentLine{}
	for i, line := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		if i == 0 {
			if !strings.HasPrefix(line, "DIGEST") {
				t.Fatalf("content ls header %q", line)
			}
			continue
		}
		// DIGEST, SIZE, AGE, LABELS separated by tabs; AGE holds spaces.
		// ctr's tabwriter pads with tabs, so a cell narrower than its
		// column ("1 second" under "About a minute") is followed by more
		// than one: every field but the last (LABELS, maybe empty) is
		// non-empty.
		all := strings.Split(line, "\t")
		f := slices.DeleteFunc(slices.Clone(all[:len(all)-1]), func(s string) bool { return s == "" })
		if len(f) != 3 {
			t.Fatalf("content ls row %q: %d non-empty fields before the labels, want 3", line, len(f))
		}
		rows[digest.Digest(f[0])] = contentLine{Size: f[1], Labels: all[len(all)-1]}
	}
	return rows
}

// humanSize formats a byte count the way ctr's listings do (docker/go-units
// HumanSize: decimal units, four significant digits).
func humanSize(n int64) string {
	units := []string{"B", "kB", "MB", "GB", "TB"}
	size, i := float64(n), 0
	for size >= 1000 && i < len(units)-1 {
		size /= 1000
		i++
	}
	return fmt.Sprintf("%.4g%s", size, units[i])
}

// sameLabels reports whether two "k=v,k=v" label lists, as ctr prints them
// (in map order), hold the same labels.
func sameLabels(got, want string) bool {
	set := func(s string) map[string]bool {
		m := map[string]bool{}
		for _, kv := range strings.Split(strings.TrimSpace(s), ",") {
			m[kv] = true
		}
		return m
	}
	return maps.Equal(set(got), set(want))
}

// binarySize formats a byte count the way ctr's image listings do
// (containerd's progress.Bytes: binary units, one decimal).
func binarySize(n int64) string {
	units := []string{"KiB", "MiB", "GiB", "TiB"}
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	size, i := float64(n)/1024, 0
	for size >= 1024 && i < len(units)-1 {
		size /= 1024
		i++
	}
	return fmt.Sprintf("%.1f %s", size, units[i])
}

// writeBlob stores data as a blob of the context's namespace through the
// Write protocol: STAT, WRITE from the offset STAT answers, COMMIT with the
// expected size and digest.
func writeBlob(ctx context.Context, c api.ContentClient, ref string, data []byte, labels map[string]string) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	dgst := digest.FromBytes(data)
	stream, err := c.Write(ctx)
	if err != nil {
		return err
	}
	st, err := writeMsg(stream, &api.WriteContentRequest{Action: api.WriteAction_STAT, Ref: ref,
		Total: int64(len(data)), Expected: dgst.String()})
	if err != nil {
		return err
	}
	off := st.GetOffset()
	if off > int64(len(data)) || (off > 0 && st.GetDigest() != digest.FromBytes(data[:off]).String()) {
		// Not a prefix of data: a WRITE at offset 0 starts the ingest over.
		off = 0
		if _, err := writeMsg(stream, &api.WriteContentRequest{Action: api.WriteAction_WRITE, Offset: 0}); err != nil {
			return err
		}
	}
	for off < int64(len(data)) {
		end := min(off+writeChunk, int64(len(data)))
		if _, err := writeMsg(stream, &api.WriteContentRequest{Action: api.WriteAction_WRITE, Offset: off, Data: data[off:end]}); err != nil {
			return err
		}
		off = end
	}
	_, err = writeMsg(stream, &api.WriteContentRequest{Action: api.WriteAction_COMMIT, Offset: off,
		Total: int64(len(data)), Expected: dgst.String(), Labels: labels})
	if err != nil {
		return err
	}
	stream.CloseSend()
	return nil
}

// writeMsg sends one Write message and returns the answer to it.
func writeMsg(stream api.Content_WriteClient, req *api.WriteContentRequest) (*api.WriteContentResponse, error) {
	if err := stream.Send(req); err != nil {
		if errors.Is(err, io.EOF) {
			// The server ended the stream; Recv says why.
			_, err = stream.Recv()
		}
		return nil, err
	}
	return stream.Recv()
}

// readBlob reads blob dgst through the Read stream and returns its digest and size.
func readBlob(ctx context.Context, c api.ContentClient, dgst digest.Digest) (digest.Digest, int64, error) {
	stream, err := c.Read(ctx, &api.ReadContentRequest{Digest: dgst.String()})
	if err != nil {
		return "", 0, err
	}
	h := sha256.New()
	var n int64
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return digest.NewDigestFromEncoded(digest.SHA256, hex.EncodeToString(h.Sum(nil))), n, nil
		}
		if err != nil {
			return "", 0, err
		}
		if resp.GetOffset() != n {
			return "", 0, fmt.Errorf("read %s: chunk at offset %d, want %d", dgst, resp.GetOffset(), n)
		}
		h.Write(resp.GetData())
		n += int64(len(resp.GetData()))
	}
}

// registryDescriptor asks the registry at addr what it serves as dgst in
// repository name: the digest it names and the size it gives.
func registryDescriptor(t testing.TB, addr, name string, d ocispec.Descriptor) (digest.Digest, int64) {
	t.Helper()
	kind := "blobs"
	if isManifest(d.MediaType) {
		kind = "manifests"
	}
	req, err := http.NewRequest(http.MethodHead, fmt.Sprintf("http://%s/v2/%s/%s/%s", addr, name, kind, d.Digest), nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", d.MediaType)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("registry HEAD %s %s: %s", kind, d.Digest, resp.Status)
	}
	return digest.Digest(resp.Header.Get("Docker-Content-Digest")), resp.ContentLength
}

func isManifest(mediaType string) bool {
	switch mediaType {
	case ocispec.MediaTypeImageManifest, ocispec.MediaTypeImageIndex,
		imagekit.MediaTypeDockerManifest, imagekit.MediaTypeDockerManifestList:
		return true
	}
	return false
}

// reachable lists the descriptors a client fetches from root: an index's
// manifests that match (all of them when match is nil), each manifest's
// config and layers. It reads the image's own blobs, as a registry client would.
func reachable(t testing.TB, img *imagekit.Image, root ocispec.Descriptor, match func(ocispec.Platform) bool) []ocispec.Descriptor {
	t.Helper()
	out := []ocispec.Descriptor{root}
	if !isManifest(root.MediaType) {
		return out
	}
	b, ok := img.Blob(root.Digest)
	if !ok {
		t.Fatalf("image has no blob %s", root.Digest)
	}
	var m struct {
		Manifests []ocispec.Descriptor `json:"manifests"`
		Config    *ocispec.Descriptor  `json:"config"`
		Layers    []ocispec.Descriptor `json:"layers"`
	}
	if err := json.Unmarshal(b.Data, &m); err != nil {
		t.Fatalf("blob %s: %v", root.Digest, err)
	}
	for _, d := range m.Manifests {
		if match == nil || (d.Platform != nil && match(*d.Platform)) {
			out = append(out, reachable(t, img, d, match)...)
		}
	}
	if m.Config != nil {
		out = append(out, *m.Config)
	}
	return append(out, m.Layers...)
}

// blobDigest is the sha256 digest of what r yields, and its length.
func blobDigest(r io.Reader) (digest.Digest, int64, error) {
	h := sha256.New()
	n, err := io.Copy(h, r)
	return digest.NewDigestFromEncoded(digest.SHA256, hex.EncodeToString(h.Sum(nil))), n, err
}

// archiveNames lists the entries of the tar file at path.
func archiveNames(t testing.TB, path string) map[string]bool {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	names := map[string]bool{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return names
		}
		if err != nil {
			t.Fatalf("archive %s: %v", path, err)
		}
		names[strings.TrimPrefix(h.Name, "./")] = true
	}
}
