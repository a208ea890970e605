package server

import (
	"bytes"
	"testing"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
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

// owned records what the codec hands an OwnedUnmarshaler.
type owned struct {
	buf     []byte
	release func()
}

func (o *owned) UnmarshalOwned(buf []byte, release func()) error {
	o.buf, o.release = buf, release
	return nil
}

// countingPool counts the buffers given back to it.
type countingPool struct{ put int }

func (p *countingPool) Get(n int) *[]byte { b := make([]byte, n); return &b }
func (p *countingPool) Put(*[]byte)       { p.put++ }

func TestCodecHandsBuffersOver(t *testing.T) {
	msg := bytes.Repeat([]byte("x"), 8<<10)
	t.Run("a message in one buffer is handed over in place", func(t *testing.T) {
		pool := &countingPool{}
		b := bytes.Clone(msg)
		data := mem.BufferSlice{mem.NewBuffer(&b, pool)}
		var o owned
		if err := (Codec{}).Unmarshal(data, &o); err != nil {
			t.Fatal(err)
		}
		data.Free() // as gRPC does once Unmarshal returns
		if pool.put != 0 {
			t.Fatal("the buffer went back to its pool while the message holds it")
		}
		if &o.buf[0] != &b[0] || !bytes.Equal(o.buf, msg) {
			t.Fatal("the message was not handed the buffer it arrived in")
		}
		o.release()
		if pool.put != 1 {
			t.Fatalf("after release the pool got %d buffers back, want 1", pool.put)
		}
	})
	t.Run("a message in pieces is gathered into a buffer it owns", func(t *testing.T) {
		data := split(msg, 1000)
		var o owned
		if err := (Codec{}).Unmarshal(data, &o); err != nil {
			t.Fatal(err)
		}
		data.Free()
		if !bytes.Equal(o.buf, msg) {
			t.Fatal("gathered message differs")
		}
		o.release()
	})
}

func TestUnmarshalReferringKeepsTheFieldInPlace(t *testing.T) {
	in := &contentapi.WriteContentRequest{Ref: "ref", Offset: 42, Data: []byte("first")}
	buf, err := proto.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	// A second data field, as a peer may send: the last one wins.
	buf = protowire.AppendBytes(protowire.AppendTag(buf, 6, protowire.BytesType), []byte("second"))
	var out contentapi.WriteContentRequest
	data, err := UnmarshalReferring(buf, &out, 6)
	if err != nil {
		t.Fatal(err)
	}
	if string(data) != "second" || out.Ref != "ref" || out.Offset != 42 || out.Data != nil {
		t.Fatalf("got data %q and %v", data, &out)
	}
	if &data[0] != &buf[len(buf)-len("second")] {
		t.Fatal("the data field was copied, not referred to")
	}
	if _, err := UnmarshalReferring(buf[:len(buf)-1], &out, 6); err == nil {
		t.Fatal("a truncated message was decoded")
	}
}
