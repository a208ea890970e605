package relay_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/flotilla/flotilla/gateway/internal/sockdir"
	"github.com/flotilla/flotilla/gateway/relay"
)

// frames encodes a client's frames for the seed corpus.
func frames(write func(fr *http2.Framer, enc func(...hpack.HeaderField) []byte)) []byte {
	var buf, hb bytes.Buffer
	fr := http2.NewFramer(&buf, nil)
	he := hpack.NewEncoder(&hb)
	write(fr, func(fields ...hpack.HeaderField) []byte {
		hb.Reset()
		for _, f := range fields {
			he.WriteField(f)
		}
		return bytes.Clone(hb.Bytes())
	})
	return buf.Bytes()
}

var grpcRequest = []hpack.HeaderField{
	{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "http"}, {Name: ":path", Value: "/test.Echo/Bidi"},
	{Name: ":authority", Value: "relay"}, {Name: "content-type", Value: "application/grpc"}, {Name: "te", Value: "trailers"},
}

// FuzzSession feeds a relay arbitrary bytes after a client's preface: it
// must never panic (a recovered panic is logged, and fails the fuzz), nor
// stop reading (a session that does not end once the client has closed
// its side is stuck).
func FuzzSession(f *testing.F) {
	msg := []byte{0, 0, 0, 0, 5, 'h', 'e', 'l', 'l', 'o'}
	f.Add(frames(func(fr *http2.Framer, enc func(...hpack.HeaderField) []byte) {
		fr.WriteSettings()
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: enc(grpcRequest...), EndHeaders: true})
		fr.WriteData(1, true, msg)
	}))
	f.Add(frames(func(fr *http2.Framer, enc func(...hpack.HeaderField) []byte) {
		fr.WriteSettings(http2.Setting{ID: http2.SettingMaxFrameSize, Val: 0})
	}))
	f.Add(frames(func(fr *http2.Framer, enc func(...hpack.HeaderField) []byte) {
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: enc(grpcRequest...), EndHeaders: true})
		fr.WriteData(1, false, msg)
		fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0})
		fr.WriteData(1, true, nil)
		fr.WriteWindowUpdate(1, 1<<31-1)
		fr.WriteRSTStream(1, http2.ErrCodeCancel)
	}))
	f.Add(frames(func(fr *http2.Framer, enc func(...hpack.HeaderField) []byte) {
		block := enc(grpcRequest...)
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: block[:4]})
		fr.WriteContinuation(3, true, block[4:])
		fr.WritePriority(5, http2.PriorityParam{StreamDep: 5})
		fr.WritePushPromise(http2.PushPromiseParam{StreamID: 3, PromiseID: 4, BlockFragment: block, EndHeaders: true})
	}))

	dir := sockdir.New(f)
	b := startBackend(f, dir, echo)
	logs := &logRecords{}
	up := &relay.Upstream{Name: "backend", Dial: func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", b.addr)
	}}
	r := relay.New(func(string) (*relay.Upstream, error) { return up, nil }, relay.WithLogger(slog.New(logs)))
	addr := filepath.Join(dir, "fuzz.sock")
	l, err := net.Listen("unix", addr)
	if err != nil {
		f.Fatal(err)
	}
	go r.Serve(l)
	f.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		r.Shutdown(ctx)
	})

	f.Fuzz(func(t *testing.T, input []byte) {
		nc, err := net.Dial("unix", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		go func() {
			io.WriteString(nc, http2.ClientPreface)
			nc.Write(input)
			// The client is done: the relay must answer what it can and
			// end the session, whatever the bytes were.
			nc.(*net.UnixConn).CloseWrite()
		}()
		nc.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err = io.Copy(io.Discard, nc)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("the session did not end within 10s of the client closing its side")
		}
		if logs.find("panic") {
			t.Fatalf("the session panicked: %q", logs.msgs)
		}
	})
}
