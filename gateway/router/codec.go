package router

import (
	"fmt"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
)

// Frame is one gRPC message carried through the gateway as the bytes that
// arrived, never decoded. Receiving into a Frame takes a reference to gRPC's
// buffers; sending it hands that reference back to gRPC, which frees it once
// written. A Frame is therefore received once and sent at most once; one that
// will not be sent must be released with Free.
type Frame struct {
	data mem.BufferSlice
}

// Len is the message's size in bytes.
func (f *Frame) Len() int { return f.data.Len() }

// Free releases a received frame that will not be sent.
func (f *Frame) Free() {
	f.data.Free()
	f.data = nil
}

// Codec passes Frames through as raw bytes and encodes every other message
// with gRPC's proto codec, so one server can both proxy undecoded calls and
// answer its own services. Its name is "proto": on the wire the gateway's
// calls look like any protobuf client's.
type Codec struct{}

var protoCodec = encoding.GetCodecV2(proto.Name)

// Marshal implements encoding.CodecV2.
func (Codec) Marshal(v any) (mem.BufferSlice, error) {
	if f, ok := v.(*Frame); ok {
		data := f.data
		f.data = nil // the reference now belongs to gRPC
		return data, nil
	}
	return protoCodec.Marshal(v)
}

// Unmarshal implements encoding.CodecV2.
func (Codec) Unmarshal(data mem.BufferSlice, v any) error {
	if f, ok := v.(*Frame); ok {
		if f.data != nil {
			return fmt.Errorf("frame received into twice")
		}
		data.Ref()
		f.data = data
		return nil
	}
	return protoCodec.Unmarshal(data, v)
}

// Name implements encoding.CodecV2.
func (Codec) Name() string { return proto.Name }
