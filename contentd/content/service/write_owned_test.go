package service

import (
	"bytes"
	"testing"

	api "github.com/containerd/containerd/api/services/content/v1"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

func TestWriteRequestKeepsDataInItsBuffer(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789"), 100_000)
	in := &api.WriteContentRequest{Action: api.WriteAction_COMMIT, Ref: "ref", Total: 1_000_000, Offset: 0, Data: data,
		Expected: "sha256:abc", Labels: map[string]string{"a": "1", "b": "2"}}
	buf, err := proto.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	// A field this contentd does not know, as a newer client might send.
	buf = protowire.AppendTag(buf, 99, protowire.VarintType)
	buf = protowire.AppendVarint(buf, 7)

	released := 0
	var req writeRequest
	if err := req.UnmarshalOwned(buf, func() { released++ }); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(&req.WriteContentRequest, func() *api.WriteContentRequest {
		want := proto.Clone(in).(*api.WriteContentRequest)
		want.ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 99, protowire.VarintType), 7))
		return want
	}()) {
		t.Fatalf("decoded %v, want %v", req.WriteContentRequest.String()[:80], in.String()[:80])
	}
	if i := bytes.Index(buf, data); i < 0 || &req.Data[0] != &buf[i] {
		t.Error("data was copied out of the buffer")
	}
	if released != 0 {
		t.Fatal("the buffer was released while the data still refers to it")
	}
	release := req.take()
	req.Release() // taken: nothing to release
	if released != 0 {
		t.Fatal("Release after take released the buffer")
	}
	release()
	if released != 1 {
		t.Fatalf("released %d times, want 1", released)
	}

	t.Run("a malformed message is an error", func(t *testing.T) {
		var req writeRequest
		if err := req.UnmarshalOwned([]byte{0x32, 0xff}, func() {}); err == nil {
			t.Fatal("no error for a truncated data field")
		}
	})
}
