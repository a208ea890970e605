package server

import (
	"fmt"
	"math/bits"
	"sync"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/protoadapt"
)

// Codec is the protobuf codec of Flotilla's servers and clients. It encodes
// exactly as grpc-go's own, with one difference that matters for 1 MiB
// blob messages: the buffers it marshals into and gathers a received
// message in come from a pool that does not clear them first. grpc-go's
// pool clears every buffer it hands out; here each one is overwritten in
// full (Marshal writes Size bytes, a gather copies the message's length)
// before anything reads it, so the clearing is pure cost: a memclr of the
// whole message, on the path every WRITE and READ answer waits on.
type Codec struct{}

// Name is the content subtype the codec serves: it replaces "proto".
func (Codec) Name() string { return "proto" }

// Marshal encodes v, a protobuf message.
func (Codec) Marshal(v any) (mem.BufferSlice, error) {
	m := messageOf(v)
	if m == nil {
		return nil, fmt.Errorf("marshal %T: not a protobuf message", v)
	}
	size := proto.Size(m)
	opts := proto.MarshalOptions{UseCachedSize: true} // the size was just computed
	if mem.IsBelowBufferPoolingThreshold(size) {
		b, err := opts.Marshal(m)
		if err != nil {
			return nil, err
		}
		return mem.BufferSlice{mem.SliceBuffer(b)}, nil
	}
	buf := uncleared.Get(size)
	out, err := opts.MarshalAppend((*buf)[:0], m)
	if err != nil {
		uncleared.Put(buf)
		return nil, err
	}
	*buf = out // the same array: it has room for size bytes
	return mem.BufferSlice{mem.NewBuffer(buf, uncleared)}, nil
}

// An OwnedUnmarshaler decodes itself from a buffer it takes over, so that
// it can refer to the buffer rather than copy out of it: a message with a
// large byte field (a 1 MiB WRITE) saves a copy and an allocation of that
// size. release gives the buffer back; the message calls it once nothing
// refers to buf, whatever UnmarshalOwned returns.
type OwnedUnmarshaler interface {
	UnmarshalOwned(buf []byte, release func()) error
}

// UnmarshalReferring decodes the protobuf message buf into m but for its
// bytes field number field, which it returns as a slice of buf rather than
// a copy; the last occurrence wins, as in protobuf. It is how an
// OwnedUnmarshaler keeps its one large field in place.
func UnmarshalReferring(buf []byte, m proto.Message, field protowire.Number) ([]byte, error) {
	var rest, data []byte
	for b := buf; len(b) > 0; {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, protowire.ParseError(n)
		}
		v := protowire.ConsumeFieldValue(num, typ, b[n:])
		if v < 0 {
			return nil, protowire.ParseError(v)
		}
		if num == field && typ == protowire.BytesType {
			data, _ = protowire.ConsumeBytes(b[n:])
		} else {
			rest = append(rest, b[:n+v]...)
		}
		b = b[n+v:]
	}
	if err := proto.Unmarshal(rest, m); err != nil {
		return nil, err
	}
	return data, nil
}

// Unmarshal decodes data into v, a protobuf message or an OwnedUnmarshaler.
// A message that arrived in one buffer is decoded in place; protobuf copies
// out every byte and string field, so nothing refers to data afterwards.
func (Codec) Unmarshal(data mem.BufferSlice, v any) error {
	if o, ok := v.(OwnedUnmarshaler); ok {
		if len(data) == 1 {
			data[0].Ref() // gRPC frees data after this returns; the message keeps it
			return o.UnmarshalOwned(data[0].ReadOnlyData(), data[0].Free)
		}
		buf := data.MaterializeToBuffer(uncleared)
		return o.UnmarshalOwned(buf.ReadOnlyData(), buf.Free)
	}
	m := messageOf(v)
	if m == nil {
		return fmt.Errorf("unmarshal %T: not a protobuf message", v)
	}
	if len(data) == 1 {
		return proto.Unmarshal(data[0].ReadOnlyData(), m)
	}
	buf := data.MaterializeToBuffer(uncleared)
	defer buf.Free()
	return proto.Unmarshal(buf.ReadOnlyData(), m)
}

func messageOf(v any) proto.Message {
	switch v := v.(type) {
	case protoadapt.MessageV2:
		return v
	case protoadapt.MessageV1:
		return protoadapt.MessageV2Of(v)
	}
	return nil
}

// uncleared is the codec's buffer pool.
var uncleared = newUnclearedPool()

// unclearedPool is a mem.BufferPool of power-of-two classes, from 4 KiB to
// 16 MiB, whose buffers keep whatever they last held; larger requests are
// allocated and left to the garbage collector.
type unclearedPool struct {
	classes [numClasses]sync.Pool
}

const (
	minClassShift = 12 // 4 KiB
	numClasses    = 13 // up to 16 MiB
)

func newUnclearedPool() *unclearedPool { return &unclearedPool{} }

// class returns the index of the smallest class holding n bytes, or -1.
func class(n int) int {
	if n <= 1<<minClassShift {
		return 0
	}
	c := bits.Len(uint(n-1)) - minClassShift
	if c >= numClasses {
		return -1
	}
	return c
}

// Get implements mem.BufferPool.
func (p *unclearedPool) Get(n int) *[]byte {
	c := class(n)
	if c < 0 {
		b := make([]byte, n)
		return &b
	}
	if b, ok := p.classes[c].Get().(*[]byte); ok {
		*b = (*b)[:n]
		return b
	}
	b := make([]byte, n, 1<<(c+minClassShift))
	return &b
}

// Put implements mem.BufferPool. Buffers whose capacity is not exactly a
// class (allocated elsewhere, or too large) are dropped.
func (p *unclearedPool) Put(b *[]byte) {
	size := cap(*b)
	c := class(size)
	if c < 0 || size != 1<<(c+minClassShift) {
		return
	}
	p.classes[c].Put(b)
}
