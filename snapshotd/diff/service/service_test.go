package service

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	diffapi "github.com/containerd/containerd/api/services/diff/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/flotilla/flotilla/services/config"
	"github.com/flotilla/flotilla/services/dial"
	"github.com/flotilla/flotilla/services/namespace"
	"github.com/flotilla/flotilla/services/server"
	"github.com/flotilla/flotilla/snapshotd/diff"
	"github.com/flotilla/flotilla/snapshotd/diff/content"
	lt "github.com/flotilla/flotilla/snapshotd/diff/internal/layertest"
)

// fakeContent is a tiny containerd Content service: blobs per namespace,
// Info, Read and Write (with containerd's offsets and commit checks).
type fakeContent struct {
	contentapi.UnimplementedContentServer
	mu     sync.Mutex
	blobs  map[string][]byte // namespace/digest
	labels map[string]map[string]string
}

func key(ctx context.Context, d string) (string, error) {
	ns, err := namespace.Required(ctx)
	return ns + "/" + d, err
}

func (f *fakeContent) put(ns string, data []byte) digest.Digest {
	f.mu.Lock()
	defer f.mu.Unlock()
	d := digest.FromBytes(data)
	f.blobs[ns+"/"+d.String()] = data
	return d
}

func (f *fakeContent) get(ctx context.Context, d string) ([]byte, error) {
	k, err := key(ctx, d)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	b, ok := f.blobs[k]
	if !ok {
		return nil, fmt.Errorf("blob %s: %w", k, errdefs.ErrNotFound)
	}
	return b, nil
}

func (f *fakeContent) Info(ctx context.Context, req *contentapi.InfoRequest) (*contentapi.InfoResponse, error) {
	b, err := f.get(ctx, req.GetDigest())
	if err != nil {
		return nil, err
	}
	return &contentapi.InfoResponse{Info: &contentapi.Info{Digest: req.GetDigest(), Size: int64(len(b))}}, nil
}

func (f *fakeContent) Read(req *contentapi.ReadContentRequest, stream contentapi.Content_ReadServer) error {
	b, err := f.get(stream.Context(), req.GetDigest())
	if err != nil {
		return err
	}
	end := int64(len(b))
	if req.GetSize() > 0 {
		end = min(end, req.GetOffset()+req.GetSize())
	}
	for off := req.GetOffset(); off < end; off += 100 << 10 { // small messages, as a real store splits them
		if err := stream.Send(&contentapi.ReadContentResponse{Offset: off, Data: b[off:min(end, off+100<<10)]}); err != nil {
			return err
		}
	}
	return nil
}

func (f *fakeContent) Write(stream contentapi.Content_WriteServer) error {
	var buf bytes.Buffer
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if req.GetOffset() != int64(buf.Len()) && req.GetOffset() != 0 {
			return fmt.Errorf("offset %d, at %d: %w", req.GetOffset(), buf.Len(), errdefs.ErrOutOfRange)
		}
		if req.GetOffset() == 0 {
			buf.Reset()
		}
		buf.Write(req.GetData())
		if req.GetAction() == contentapi.WriteAction_COMMIT {
			if int64(buf.Len()) != req.GetTotal() || digest.FromBytes(buf.Bytes()).String() != req.GetExpected() {
				return fmt.Errorf("commit mismatch: %w", errdefs.ErrFailedPrecondition)
			}
			k, err := key(stream.Context(), req.GetExpected())
			if err != nil {
				return err
			}
			f.mu.Lock()
			f.blobs[k], f.labels[k] = bytes.Clone(buf.Bytes()), req.GetLabels()
			f.mu.Unlock()
		}
		if err := stream.Send(&contentapi.WriteContentResponse{Action: req.GetAction(), Offset: int64(buf.Len())}); err != nil {
			return err
		}
	}
}

func (f *fakeContent) Delete(context.Context, *contentapi.DeleteContentRequest) (*emptypb.Empty, error) {
	return nil, errdefs.ErrNotImplemented
}

// serve serves a kit server with register's services on a unix socket in
// dir until the test ends.
func serve(t *testing.T, sock string, register func(*grpc.Server)) {
	t.Helper()
	srv := server.New("diff-test", config.Common{Address: sock}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	register(srv.GRPC())
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go srv.GRPC().Serve(l)
	t.Cleanup(srv.GRPC().Stop)
}

type fixture struct {
	content *fakeContent
	client  diffapi.DiffClient
	ctx     context.Context
}

func newFixture(t *testing.T) *fixture {
	if os.Geteuid() != 0 {
		t.Skip("needs root: ownership and mounts")
	}
	dir := lt.TempDir(t, "sv-")
	fc := &fakeContent{blobs: map[string][]byte{}, labels: map[string]map[string]string{}}
	serve(t, filepath.Join(dir, "c.sock"), func(g *grpc.Server) { contentapi.RegisterContentServer(g, fc) })
	cconn, err := dial.Dial(filepath.Join(dir, "c.sock"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cconn.Close() })
	remote := content.NewRemote(cconn)
	serve(t, filepath.Join(dir, "d.sock"), func(g *grpc.Server) { New(remote, remote).Register(g) })
	dconn, err := dial.Dial(filepath.Join(dir, "d.sock"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dconn.Close() })
	return &fixture{content: fc, client: diffapi.NewDiffClient(dconn), ctx: namespace.WithNamespace(context.Background(), "test")}
}

func bind(dir string) []*types.Mount {
	return []*types.Mount{{Type: "bind", Source: dir, Options: []string{"rbind", "rw"}}}
}

func (f *fixture) layer(t *testing.T, ns string, tarData []byte) *types.Descriptor {
	blob := lt.Gzip(t, tarData)
	return &types.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: f.content.put(ns, blob).String(), Size: int64(len(blob))}
}

func TestServiceApply(t *testing.T) {
	f := newFixture(t)

	t.Run("whiteout layers applied through gRPC give the expected tree and diff IDs", func(t *testing.T) {
		root := lt.TempDir(t, "ap-")
		for i, l := range lt.WhiteoutLayers() {
			tarData := lt.Tar(t, l...)
			resp, err := f.client.Apply(f.ctx, &diffapi.ApplyRequest{Diff: f.layer(t, "test", tarData), Mounts: bind(root)})
			if err != nil {
				t.Fatalf("layer %d: %v", i, err)
			}
			if got := resp.GetApplied(); got.GetDigest() != digest.FromBytes(tarData).String() || got.GetMediaType() != ocispec.MediaTypeImageLayer || got.GetSize() != int64(len(tarData)) {
				t.Errorf("layer %d applied as %v", i, got)
			}
		}
		if d := lt.Diff(lt.WhiteoutExpected(), lt.Snapshot(t, root)); d != "" {
			t.Fatalf("tree differs:\n%s", d)
		}
	})

	t.Run("a layer of several MiB is read in many chunks", func(t *testing.T) {
		body := make([]byte, 5<<20+7)
		rand.Read(body)
		root := lt.TempDir(t, "bg-")
		if _, err := f.client.Apply(f.ctx, &diffapi.ApplyRequest{Diff: f.layer(t, "test", lt.Tar(t, lt.File("big", 0o644, string(body)))), Mounts: bind(root)}); err != nil {
			t.Fatal(err)
		}
		if got, err := os.ReadFile(filepath.Join(root, "big")); err != nil || !bytes.Equal(got, body) {
			t.Fatalf("big file differs (%v)", err)
		}
	})

	for _, c := range []struct {
		name string
		ctx  context.Context
		ns   string
		is   func(error) bool
	}{
		{"a call without namespace is FailedPrecondition", context.Background(), "test", errdefs.IsFailedPrecondition},
		{"a blob of another namespace is NotFound", f.ctx, "other", errdefs.IsNotFound},
	} {
		t.Run(c.name, func(t *testing.T) {
			root := lt.TempDir(t, "ns-")
			_, err := f.client.Apply(c.ctx, &diffapi.ApplyRequest{Diff: f.layer(t, c.ns, lt.Tar(t, lt.File("x", 0o644, c.name))), Mounts: bind(root)})
			if !c.is(err) {
				t.Fatalf("Apply = %v", err)
			}
		})
	}

	climb := strings.Repeat("../", 32)
	for _, c := range []struct {
		name  string
		layer func(canary string) []byte
	}{
		{"path traversal is InvalidArgument", func(c string) []byte { return lt.Tar(t, lt.File(climb+c[1:], 0o644, "pwned")) }},
		{"symlink escape is InvalidArgument", func(c string) []byte {
			return lt.Tar(t, lt.Symlink("escape", filepath.Dir(c)), lt.File("escape/"+filepath.Base(c), 0o644, "pwned"))
		}},
		{"hardlink to outside is InvalidArgument", func(c string) []byte {
			return lt.Tar(t, lt.Hardlink("passwd", climb+c[1:]), lt.File("passwd", 0o644, "pwned"))
		}},
		{"absurd size is InvalidArgument", func(string) []byte {
			h := lt.File("huge", 0o644, "short")
			h.Size = 1 << 50
			return lt.Tar(t, h)
		}},
	} {
		t.Run(c.name+" through gRPC and the host file is unchanged", func(t *testing.T) {
			host := lt.TempDir(t, "ho-")
			canary := lt.NewCanary(t, filepath.Join(host, "etc", "passwd"))
			root := filepath.Join(host, "root")
			os.Mkdir(root, 0o755)
			_, err := f.client.Apply(f.ctx, &diffapi.ApplyRequest{Diff: f.layer(t, "test", c.layer(canary.Path)), Mounts: bind(root)})
			if !errdefs.IsInvalidArgument(err) {
				t.Fatalf("Apply = %v, want InvalidArgument", err)
			}
			canary.Check(t, root)
			if _, err := os.Lstat(filepath.Join(root, canary.Path)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the layer's file was written under the root (%v)", err)
			}
		})
	}
}

func TestServiceDiff(t *testing.T) {
	f := newFixture(t)
	lower, upper := lt.TempDir(t, "lo-"), lt.TempDir(t, "up-")
	layers := lt.WhiteoutLayers()
	for i, l := range layers {
		desc := f.layer(t, "test", lt.Tar(t, l...))
		for _, root := range []string{lower, upper} {
			if root == lower && i > 0 {
				continue
			}
			if _, err := f.client.Apply(f.ctx, &diffapi.ApplyRequest{Diff: desc, Mounts: bind(root)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	big := make([]byte, 3<<20)
	rand.Read(big)
	if err := os.WriteFile(filepath.Join(upper, "big"), big, 0o644); err != nil {
		t.Fatal(err)
	}

	resp, err := f.client.Diff(f.ctx, &diffapi.DiffRequest{Left: bind(lower), Right: bind(upper), Ref: "test-ref", Labels: map[string]string{"k": "v"}})
	if err != nil {
		t.Fatal(err)
	}
	desc := resp.GetDiff()
	t.Run("the layer is committed to the content store, labelled, under the returned descriptor", func(t *testing.T) {
		k := "test/" + desc.GetDigest()
		blob, ok := f.content.blobs[k]
		if !ok || int64(len(blob)) != desc.GetSize() || desc.GetMediaType() != ocispec.MediaTypeImageLayerGzip {
			t.Fatalf("descriptor %v, blob stored: %v", desc, ok)
		}
		if l := f.content.labels[k]; l["k"] != "v" || !strings.HasPrefix(l[diff.UncompressedLabel], "sha256:") {
			t.Errorf("labels %v", l)
		}
	})
	t.Run("applying the layer onto the lower tree reproduces the upper one", func(t *testing.T) {
		if _, err := f.client.Apply(f.ctx, &diffapi.ApplyRequest{Diff: desc, Mounts: bind(lower)}); err != nil {
			t.Fatal(err)
		}
		if d := lt.Diff(lt.Snapshot(t, upper), lt.Snapshot(t, lower)); d != "" {
			t.Fatalf("trees differ:\n%s", d)
		}
	})
	t.Run("a call without namespace is FailedPrecondition", func(t *testing.T) {
		_, err := f.client.Diff(context.Background(), &diffapi.DiffRequest{Left: bind(lower), Right: bind(upper)})
		if !errdefs.IsFailedPrecondition(err) {
			t.Fatalf("Diff = %v", err)
		}
	})
}
