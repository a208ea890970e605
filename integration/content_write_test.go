package integration

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"testing"

	api "github.com/containerd/containerd/api/services/content/v1"
	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// randomBlob returns n pseudo-random bytes from seed.
func randomBlob(seed byte, n int) []byte {
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{seed}).Read(b)
	return b
}

// TestContentWriteProtocolThroughGateway drives containerd's Write protocol
// as its clients do, over the gateway socket.
func TestContentWriteProtocolThroughGateway(t *testing.T) {
	s := startStack(t)
	c := contentAPI(t, s)
	ctx := inNamespace(context.Background(), "write-protocol")

	openStream := func(t *testing.T, ref string, total int64, expected digest.Digest) (api.Content_WriteClient, *api.WriteContentResponse) {
		t.Helper()
		sctx, cancel := context.WithCancel(ctx)
		t.Cleanup(cancel)
		stream, err := c.Write(sctx)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := writeMsg(stream, &api.WriteContentRequest{Action: api.WriteAction_STAT, Ref: ref, Total: total, Expected: expected.String()})
		if err != nil {
			t.Fatalf("STAT %s: %v", ref, err)
		}
		return stream, resp
	}
	notStored := func(t *testing.T, dgsts ...digest.Digest) {
		t.Helper()
		for _, d := range dgsts {
			if _, err := c.Info(ctx, &api.InfoRequest{Digest: d.String()}); status.Code(err) != codes.NotFound {
				t.Errorf("Info %s: %v, want NotFound", d, err)
			}
			if _, _, err := readBlob(ctx, c, d); status.Code(err) != codes.NotFound {
				t.Errorf("Read %s: %v, want NotFound", d, err)
			}
		}
	}

	t.Run("commit with the wrong expected digest fails with FailedPrecondition and leaves no blob", func(t *testing.T) {
		data := randomBlob(1, 200_000)
		wrong := digest.FromString("not these bytes")
		stream, _ := openStream(t, "wrong-digest", int64(len(data)), "")
		if _, err := writeMsg(stream, &api.WriteContentRequest{Action: api.WriteAction_WRITE, Data: data}); err != nil {
			t.Fatal(err)
		}
		_, err := writeMsg(stream, &api.WriteContentRequest{Action: api.WriteAction_COMMIT, Offset: int64(len(data)),
			Total: int64(len(data)), Expected: wrong.String()})
		if status.Code(err) != codes.FailedPrecondition {
			t.Fatalf("COMMIT: %v, want FailedPrecondition", err)
		}
		notStored(t, wrong, digest.FromBytes(data))
		if n := len(contentInfos(t, c, ctx)); n != 0 {
			t.Fatalf("List returns %d blobs, want none", n)
		}
	})
	t.Run("commit after a short write fails with FailedPrecondition and leaves no blob", func(t *testing.T) {
		data := randomBlob(2, 300_000)
		dgst := digest.FromBytes(data)
		stream, _ := openStream(t, "short", int64(len(data)), dgst)
		short := data[:len(data)-1000]
		if _, err := writeMsg(stream, &api.WriteContentRequest{Action: api.WriteAction_WRITE, Data: short}); err != nil {
			t.Fatal(err)
		}
		_, err := writeMsg(stream, &api.WriteContentRequest{Action: api.WriteAction_COMMIT, Offset: int64(len(short)),
			Total: int64(len(data)), Expected: dgst.String()})
		if status.Code(err) != codes.FailedPrecondition {
			t.Fatalf("COMMIT: %v, want FailedPrecondition", err)
		}
		notStored(t, dgst, digest.FromBytes(short))
	})
	t.Run("write at an offset other than the current one or zero is OutOfRange", func(t *testing.T) {
		stream, _ := openStream(t, "gap", 0, "")
		if _, err := writeMsg(stream, &api.WriteContentRequest{Action: api.WriteAction_WRITE, Data: []byte("abc")}); err != nil {
			t.Fatal(err)
		}
		_, err := writeMsg(stream, &api.WriteContentRequest{Action: api.WriteAction_WRITE, Offset: 10, Data: []byte("def")})
		if status.Code(err) != codes.OutOfRange {
			t.Fatalf("WRITE at 10 with 3 written: %v, want OutOfRange", err)
		}
	})
	t.Run("an interrupted write resumes from the offset STAT returns", func(t *testing.T) {
		data := randomBlob(3, 5<<20+123)
		dgst := digest.FromBytes(data)
		first, resp := openStream(t, "resume", int64(len(data)), dgst)
		if resp.GetOffset() != 0 {
			t.Fatalf("fresh ingest STAT offset %d, want 0", resp.GetOffset())
		}
		half := int64(len(data) / 2)
		for off := int64(0); off < half; off += writeChunk {
			end := min(off+writeChunk, half)
			if _, err := writeMsg(first, &api.WriteContentRequest{Action: api.WriteAction_WRITE, Offset: off, Data: data[off:end]}); err != nil {
				t.Fatal(err)
			}
		}
		first.CloseSend()
		first.Recv() // the server ends the stream

		var second api.Content_WriteClient
		waitFor(t, func() error { // the first stream's lock goes with it
			sctx, cancel := context.WithCancel(ctx)
			t.Cleanup(cancel)
			stream, err := c.Write(sctx)
			if err != nil {
				return err
			}
			if resp, err = writeMsg(stream, &api.WriteContentRequest{Action: api.WriteAction_STAT, Ref: "resume", Total: int64(len(data)), Expected: dgst.String()}); err != nil {
				return err
			}
			second = stream
			return nil
		})
		if resp.GetOffset() != half || resp.GetTotal() != int64(len(data)) {
			t.Fatalf("STAT after the interruption: offset %d total %d, want %d and %d", resp.GetOffset(), resp.GetTotal(), half, len(data))
		}
		if want := digest.FromBytes(data[:half]).String(); resp.GetDigest() != want {
			t.Fatalf("STAT digest %s, want the digest of the first half %s", resp.GetDigest(), want)
		}
		st, err := c.Status(ctx, &api.StatusRequest{Ref: "resume"})
		if err != nil || st.GetStatus().GetOffset() != half {
			t.Fatalf("Status: %v, %v; want offset %d", st, err, half)
		}
		off := resp.GetOffset()
		for off < int64(len(data)) {
			end := min(off+writeChunk, int64(len(data)))
			if _, err := writeMsg(second, &api.WriteContentRequest{Action: api.WriteAction_WRITE, Offset: off, Data: data[off:end]}); err != nil {
				t.Fatal(err)
			}
			off = end
		}
		resp, err = writeMsg(second, &api.WriteContentRequest{Action: api.WriteAction_COMMIT, Offset: off,
			Total: int64(len(data)), Expected: dgst.String()})
		if err != nil {
			t.Fatalf("COMMIT after resuming: %v", err)
		}
		if resp.GetDigest() != dgst.String() || resp.GetOffset() != int64(len(data)) {
			t.Fatalf("COMMIT answered digest %s offset %d", resp.GetDigest(), resp.GetOffset())
		}
		got, n, err := readBlob(ctx, c, dgst)
		if err != nil || got != dgst || n != int64(len(data)) {
			t.Fatalf("Read back: %s, %d bytes, %v", got, n, err)
		}
		if _, err := c.Status(ctx, &api.StatusRequest{Ref: "resume"}); status.Code(err) != codes.NotFound {
			t.Fatalf("Status of the committed ingest: %v, want NotFound", err)
		}
	})
	t.Run("a second writer on a held ref gets Unavailable until the first leaves", func(t *testing.T) {
		first, _ := openStream(t, "contended", 0, "")
		if _, err := writeMsg(first, &api.WriteContentRequest{Action: api.WriteAction_WRITE, Data: []byte("first")}); err != nil {
			t.Fatal(err)
		}
		sctx, cancel := context.WithCancel(ctx)
		defer cancel()
		second, err := c.Write(sctx)
		if err != nil {
			t.Fatal(err)
		}
		_, err = writeMsg(second, &api.WriteContentRequest{Action: api.WriteAction_STAT, Ref: "contended"})
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("second writer: %v, want Unavailable", err)
		}
		// The same ref in another namespace is another ingest.
		other, err := c.Write(inNamespace(t.Context(), "write-protocol-other"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := writeMsg(other, &api.WriteContentRequest{Action: api.WriteAction_STAT, Ref: "contended"}); err != nil {
			t.Fatalf("same ref in another namespace: %v", err)
		}
		first.CloseSend()
		first.Recv()
		data := []byte("second writer's bytes")
		waitFor(t, func() error { return writeBlob(ctx, c, "contended", data, nil) })
		if got, _, err := readBlob(ctx, c, digest.FromBytes(data)); err != nil || got != digest.FromBytes(data) {
			t.Fatalf("Read back: %s, %v", got, err)
		}
	})
	t.Run("committing a digest that exists gives AlreadyExists", func(t *testing.T) {
		data := []byte("stored twice")
		if err := writeBlob(ctx, c, "once", data, nil); err != nil {
			t.Fatal(err)
		}
		err := writeBlob(ctx, c, "twice", data, nil)
		if status.Code(err) != codes.AlreadyExists {
			t.Fatalf("second write of the same blob: %v, want AlreadyExists", err)
		}
	})
}

// contentInfos lists every blob of the context's namespace.
func contentInfos(t testing.TB, c api.ContentClient, ctx context.Context) []*api.Info {
	t.Helper()
	stream, err := c.List(ctx, &api.ListContentRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var out []*api.Info
	for {
		resp, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return out
			}
			t.Fatalf("List: %v", err)
		}
		out = append(out, resp.GetInfo()...)
	}
}
