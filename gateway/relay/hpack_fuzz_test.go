package relay

import (
	"bytes"
	"slices"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// FuzzHeaderBlock decodes arbitrary bytes as an HPACK block, as the relay
// reads a peer's headers, checks them as a request, and encodes them again
// the way the relay writes them on (HEADERS and CONTINUATION frames at the
// peer's frame size): nothing may panic, and what a peer reads back is
// what was decoded.
func FuzzHeaderBlock(f *testing.F) {
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, h := range []hpack.HeaderField{
		{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "http"}, {Name: ":path", Value: "/containerd.services.content.v1.Content/Write"},
		{Name: ":authority", Value: "flotilla"}, {Name: "content-type", Value: "application/grpc"}, {Name: "te", Value: "trailers"},
		{Name: "containerd-namespace", Value: "default"}, {Name: "x-big", Value: string(bytes.Repeat([]byte("v"), 40000))},
	} {
		enc.WriteField(h)
	}
	f.Add(hb.Bytes(), uint32(16384))
	f.Add([]byte{0x3f, 0xe1, 0x1f, 0x82}, uint32(1<<24-1)) // a table size update, then :method GET

	f.Fuzz(func(t *testing.T, block []byte, maxFrame uint32) {
		var fields []hpack.HeaderField
		dec := hpack.NewDecoder(4096, func(h hpack.HeaderField) { fields = append(fields, h) })
		dec.SetMaxStringLength(1 << 20)
		if _, err := dec.Write(block); err != nil || dec.Close() != nil {
			return
		}
		checkRequest(fields)

		p := newPeer(&session{}, "fuzz", nil)
		p.maxFrame = max(16384, maxFrame%(1<<24))
		p.writeHeaders(1, fields, true)
		fr := readFramer(bytes.NewReader(p.out))
		fr.SetMaxReadFrameSize(1<<24 - 1)
		got, err := fr.ReadFrame()
		if err != nil {
			return // names or pseudo-headers HTTP/2 refuses: a reader rejects them
		}
		mh, ok := got.(*http2.MetaHeadersFrame)
		if !ok || !mh.StreamEnded() {
			t.Fatalf("read back %v, want HEADERS ending the stream", got)
		}
		if !slices.EqualFunc(mh.Fields, fields, func(a, b hpack.HeaderField) bool { return a.Name == b.Name && a.Value == b.Value }) {
			t.Fatalf("read back %d fields, not the %d written", len(mh.Fields), len(fields))
		}
	})
}
