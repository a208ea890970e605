package server

import (
	"bytes"
	"testing"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
)

// split cuts b into a BufferSlice of pieces of at most n bytes, as a
// message arrives in HTTP/2 frames.
func split(b []byte, n int) mem.BufferSlice {
	var out mem.BufferSlice
	for len(b) > 0 {
		k := min(n, len(b))
		out = append(out, mem.SliceBuffer(bytes.Clone(b[:k])))
		b = b[k:]
	}
	return out
}

func TestCodecRoundTrips(t *testing.T) {
	pattern := func(n int, seed byte) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(i) ^ seed
		}
		return b
	}
	// Large messages first, so that the smaller ones reuse their buffers:
	// what a buffer held before must never show in a later message.
	for _, tt := range []struct {
		name string
		data []byte
	}{
		{"1 MiB", pattern(1<<20, 1)},
		{"a little less than 1 MiB, in a reused buffer", pattern(1<<20-4096, 2)},
		{"100 KiB", pattern(100<<10, 3)},
		{"small, below the pooling threshold", []byte("hello")},
		{"empty", nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			in := &contentapi.WriteContentRequest{Action: contentapi.WriteAction_WRITE, Ref: "ref", Offset: 42, Data: tt.data,
				Labels: map[string]string{"containerd.io/gc.root": "x"}}
			enc, err := Codec{}.Marshal(in)
			if err != nil {
				t.Fatal(err)
			}
			want, _ := proto.Marshal(in)
			if got := enc.Materialize(); !bytes.Equal(got, want) {
				t.Fatalf("Marshal wrote %d bytes that differ from protobuf's %d", len(got), len(want))
			}
			for _, pieces := range []int{len(want) + 1, 16 << 10, 1000} {
				var out contentapi.WriteContentRequest
				if err := (Codec{}).Unmarshal(split(want, max(pieces, 1)), &out); err != nil {
					t.Fatal(err)
				}
				if !proto.Equal(in, &out) {
					t.Fatalf("in pieces of %d bytes: decoded message differs", pieces)
				}
			}
			enc.Free()
		})
	}
}

func TestCodecRefusesNonMessages(t *testing.T) {
	if _, err := (Codec{}).Marshal("not a message"); err == nil {
		t.Error("Marshal of a string succeeded")
	}
	if err := (Codec{}).Unmarshal(nil, new(int)); err == nil {
		t.Error("Unmarshal into an int succeeded")
	}
}

func TestUnclearedPoolClasses(t *testing.T) {
	p := newUnclearedPool()
	for _, tt := range []struct{ n, wantCap int }{
		{1, 4 << 10}, {4 << 10, 4 << 10}, {4<<10 + 1, 8 << 10}, {1 << 20, 1 << 20}, {1<<20 + 1, 2 << 20}, {16 << 20, 16 << 20}, {16<<20 + 1, 16<<20 + 1},
	} {
		b := p.Get(tt.n)
		if len(*b) != tt.n || cap(*b) != tt.wantCap {
			t.Errorf("Get(%d): len %d cap %d, want len %d cap %d", tt.n, len(*b), cap(*b), tt.n, tt.wantCap)
		}
		p.Put(b)
	}
}
