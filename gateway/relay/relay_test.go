package relay_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/gateway/internal/sockdir"
	"github.com/flotilla/flotilla/gateway/relay"
)

// rawCodec carries messages as the bytes they are.
type rawCodec struct{}

func (rawCodec) Name() string { return "proto" }
func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(*v.(*[]byte))}, nil
}
func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	*v.(*[]byte) = data.Materialize()
	return nil
}

var bidi = &grpc.StreamDesc{ClientStreams: true, ServerStreams: true}

// backend is a gRPC server whose every method is handled by handler.
type backend struct {
	addr string
	srv  *grpc.Server
}

func startBackend(t testing.TB, dir string, handler grpc.StreamHandler, opts ...grpc.ServerOption) *backend {
	t.Helper()
	b := &backend{addr: filepath.Join(dir, "backend.sock")}
	l, err := net.Listen("unix", b.addr)
	if err != nil {
		t.Fatal(err)
	}
	b.srv = grpc.NewServer(append([]grpc.ServerOption{grpc.UnknownServiceHandler(handler), grpc.ForceServerCodecV2(rawCodec{}),
		grpc.InitialWindowSize(4 << 20), grpc.InitialConnWindowSize(16 << 20), grpc.MaxRecvMsgSize(64 << 20)}, opts...)...)
	go b.srv.Serve(l)
	t.Cleanup(b.srv.Stop)
	return b
}

// echo sends back every message it receives, with the "x-echo" header and
// trailer carrying the caller's "x-request" metadata; a request of "fail"
// ends the call with FailedPrecondition.
func echo(_ any, ss grpc.ServerStream) error {
	md, _ := metadata.FromIncomingContext(ss.Context())
	ss.SetHeader(metadata.Pairs("x-echo", strings.Join(md.Get("x-request"), ",")))
	ss.SetTrailer(metadata.Pairs("x-echo-trailer", "done"))
	for {
		var msg []byte
		if err := ss.RecvMsg(&msg); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if string(msg) == "fail" {
			return status.Error(codes.FailedPrecondition, "asked to fail")
		}
		if err := ss.SendMsg(&msg); err != nil {
			return err
		}
	}
}

// observer records the calls the relay reports.
type observer struct {
	mu    sync.Mutex
	ended map[string][]codes.Code
}

func (o *observer) Begin(method string) func(codes.Code) {
	return func(c codes.Code) {
		o.mu.Lock()
		defer o.mu.Unlock()
		if o.ended == nil {
			o.ended = map[string][]codes.Code{}
		}
		o.ended[method] = append(o.ended[method], c)
	}
}

func (o *observer) codes(method string) []codes.Code {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]codes.Code(nil), o.ended[method]...)
}

// front is a relay in front of one backend, for methods under /test.
type front struct {
	relay *relay.Server
	conn  *grpc.ClientConn
	obs   *observer
}

func startRelay(t *testing.T, dir, backendAddr string, opts ...relay.Option) *front {
	t.Helper()
	up := &relay.Upstream{Name: "backend (" + backendAddr + ")", Dial: func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", backendAddr)
	}}
	route := func(method string) (*relay.Upstream, error) {
		if strings.HasPrefix(method, "/test.") {
			return up, nil
		}
		return nil, fmt.Errorf("%s: nothing serves it: %w", method, errdefs.ErrNotImplemented)
	}
	f := &front{obs: &observer{}}
	f.relay = relay.New(route, append([]relay.Option{relay.WithObserver(f.obs), relay.WithReadyWait(300 * time.Millisecond)}, opts...)...)
	addr := filepath.Join(dir, "relay.sock")
	l, err := net.Listen("unix", addr)
	if err != nil {
		t.Fatal(err)
	}
	go f.relay.Serve(l)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		f.relay.Shutdown(ctx)
	})
	f.conn = dialRelay(t, addr)
	return f
}

func dialRelay(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.ForceCodecV2(rawCodec{}), grpc.MaxCallRecvMsgSize(64<<20), grpc.MaxCallSendMsgSize(64<<20)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7) ^ seed
	}
	return b
}

func TestEchoCarriesMessagesMetadataAndStatus(t *testing.T) {
	dir := sockdir.New(t)
	b := startBackend(t, dir, echo)
	f := startRelay(t, dir, b.addr)

	ctx := metadata.AppendToOutgoingContext(context.Background(), "x-request", "hello")
	s, err := f.conn.NewStream(ctx, bidi, "/test.Echo/Bidi")
	if err != nil {
		t.Fatal(err)
	}
	for _, msg := range [][]byte{[]byte("one"), pattern(1<<20, 1), {}, pattern(3<<20+17, 2)} {
		if err := s.SendMsg(&msg); err != nil {
			t.Fatal(err)
		}
		var got []byte
		if err := s.RecvMsg(&got); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, msg) {
			t.Fatalf("echo of %d bytes came back as %d different bytes", len(msg), len(got))
		}
	}
	s.CloseSend()
	var extra []byte
	if err := s.RecvMsg(&extra); !errors.Is(err, io.EOF) {
		t.Fatalf("end of call: %v, want io.EOF", err)
	}
	if h, _ := s.Header(); strings.Join(h.Get("x-echo"), "") != "hello" {
		t.Errorf("header x-echo = %v, want the caller's metadata", h.Get("x-echo"))
	}
	if tr := s.Trailer(); strings.Join(tr.Get("x-echo-trailer"), "") != "done" {
		t.Errorf("trailer = %v", tr)
	}

	t.Run("the backend's error status arrives unchanged", func(t *testing.T) {
		s, err := f.conn.NewStream(context.Background(), bidi, "/test.Echo/Bidi")
		if err != nil {
			t.Fatal(err)
		}
		msg := []byte("fail")
		s.SendMsg(&msg)
		var got []byte
		err = s.RecvMsg(&got)
		if status.Code(err) != codes.FailedPrecondition || status.Convert(err).Message() != "asked to fail" {
			t.Fatalf("got %v, want FailedPrecondition: asked to fail", err)
		}
	})

	t.Run("the observer sees each call end with its code", func(t *testing.T) {
		deadline := time.Now().Add(2 * time.Second)
		for time.Now().Before(deadline) && len(f.obs.codes("/test.Echo/Bidi")) < 2 {
			time.Sleep(10 * time.Millisecond)
		}
		got := f.obs.codes("/test.Echo/Bidi")
		if len(got) != 2 || got[0] != codes.OK || got[1] != codes.FailedPrecondition {
			t.Fatalf("observed %v, want [OK FailedPrecondition]", got)
		}
	})
}

// TestFlowControl sends and receives far more than the windows hold, with
// a client that sends everything before reading anything, and one that reads
// slowly: the relay must hold back, never lose or reorder, never stall.
func TestFlowControl(t *testing.T) {
	dir := sockdir.New(t)
	b := startBackend(t, dir, echo)
	f := startRelay(t, dir, b.addr)
	const messages, size = 24, 1 << 20 // 24 MiB each way: past every window

	t.Run("everything sent before anything is read", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		s, err := f.conn.NewStream(ctx, bidi, "/test.Echo/Bidi")
		if err != nil {
			t.Fatal(err)
		}
		sendErr := make(chan error, 1)
		go func() {
			for i := range messages {
				msg := pattern(size, byte(i))
				if err := s.SendMsg(&msg); err != nil {
					sendErr <- err
					return
				}
			}
			sendErr <- s.CloseSend()
		}()
		time.Sleep(200 * time.Millisecond) // let the windows fill up
		for i := range messages {
			var got []byte
			if err := s.RecvMsg(&got); err != nil {
				t.Fatalf("message %d: %v", i, err)
			}
			if !bytes.Equal(got, pattern(size, byte(i))) {
				t.Fatalf("message %d differs", i)
			}
		}
		if err := <-sendErr; err != nil {
			t.Fatal(err)
		}
	})

	t.Run("a slow reader gets every byte, in order", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		s, err := f.conn.NewStream(ctx, bidi, "/test.Echo/Bidi")
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			for i := range messages {
				msg := pattern(size/4, byte(i))
				if s.SendMsg(&msg) != nil {
					return
				}
			}
			s.CloseSend()
		}()
		for i := range messages {
			if i%4 == 0 {
				time.Sleep(20 * time.Millisecond)
			}
			var got []byte
			if err := s.RecvMsg(&got); err != nil {
				t.Fatalf("message %d: %v", i, err)
			}
			if !bytes.Equal(got, pattern(size/4, byte(i))) {
				t.Fatalf("message %d differs", i)
			}
		}
	})

	t.Run("many calls at once on one connection", func(t *testing.T) {
		var wg sync.WaitGroup
		errs := make(chan error, 32)
		for c := range 32 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s, err := f.conn.NewStream(context.Background(), bidi, "/test.Echo/Bidi")
				if err != nil {
					errs <- err
					return
				}
				for i := range 4 {
					msg := pattern(256<<10+c, byte(c*4+i))
					if err := s.SendMsg(&msg); err != nil {
						errs <- err
						return
					}
					var got []byte
					if err := s.RecvMsg(&got); err != nil || !bytes.Equal(got, msg) {
						errs <- fmt.Errorf("call %d message %d: %v (equal: %v)", c, i, err, bytes.Equal(got, msg))
						return
					}
				}
				s.CloseSend()
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})
}

func TestUnroutedCallIsAnsweredByTheRelay(t *testing.T) {
	dir := sockdir.New(t)
	b := startBackend(t, dir, echo)
	f := startRelay(t, dir, b.addr)
	msg := []byte("x")
	var got []byte
	err := f.conn.Invoke(context.Background(), "/acme.Widgets/List", &msg, &got)
	if status.Code(err) != codes.Unimplemented || !strings.Contains(status.Convert(err).Message(), "nothing serves it") {
		t.Fatalf("got %v, want Unimplemented with the router's message", err)
	}
	// The connection is still good for calls that are routed.
	if err := f.conn.Invoke(context.Background(), "/test.Echo/Unary", &msg, &got); err != nil || string(got) != "x" {
		t.Fatalf("routed call after an unrouted one: %q, %v", got, err)
	}
}

func TestUpstreamDown(t *testing.T) {
	dir := sockdir.New(t)
	b := startBackend(t, dir, echo)
	f := startRelay(t, dir, b.addr)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := f.conn.NewStream(ctx, bidi, "/test.Echo/Bidi")
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("before")
	s.SendMsg(&msg)
	var got []byte
	if err := s.RecvMsg(&got); err != nil {
		t.Fatal(err)
	}

	b.srv.Stop() // the backend dies with the stream open
	err = s.RecvMsg(&got)
	if status.Code(err) != codes.Unavailable || !strings.Contains(status.Convert(err).Message(), "backend (") {
		t.Fatalf("open stream after the backend died: %v, want Unavailable naming it", err)
	}

	start := time.Now()
	err = f.conn.Invoke(ctx, "/test.Echo/Unary", &msg, &got)
	if status.Code(err) != codes.Unavailable || !strings.Contains(status.Convert(err).Message(), "backend (") {
		t.Fatalf("new call to a dead backend: %v, want Unavailable naming it", err)
	}
	if waited := time.Since(start); waited < 250*time.Millisecond || waited > 2*time.Second {
		t.Errorf("the call failed after %s, want about the ready wait (300ms)", waited)
	}

	// A backend that comes back is used by the next call.
	b2 := startBackend(t, dir, echo)
	_ = b2
	if err := f.conn.Invoke(ctx, "/test.Echo/Unary", &msg, &got); err != nil || string(got) != "before" {
		t.Fatalf("call after the backend came back: %q, %v", got, err)
	}
}

func TestCancelReachesTheBackend(t *testing.T) {
	dir := sockdir.New(t)
	cancelled := make(chan error, 1)
	b := startBackend(t, dir, func(_ any, ss grpc.ServerStream) error {
		<-ss.Context().Done()
		cancelled <- ss.Context().Err()
		return ss.Context().Err()
	})
	f := startRelay(t, dir, b.addr)
	ctx, cancel := context.WithCancel(context.Background())
	s, err := f.conn.NewStream(ctx, bidi, "/test.Wait/Forever")
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("x")
	s.SendMsg(&msg)
	time.Sleep(50 * time.Millisecond)
	cancel()
	select {
	case err := <-cancelled:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("backend call ended with %v, want canceled", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("the backend's call was not cancelled")
	}
}

func TestShutdownLetsCallsFinish(t *testing.T) {
	dir := sockdir.New(t)
	release := make(chan struct{})
	b := startBackend(t, dir, func(_ any, ss grpc.ServerStream) error {
		var msg []byte
		ss.RecvMsg(&msg)
		<-release
		return ss.SendMsg(&msg)
	})
	f := startRelay(t, dir, b.addr)
	msg := []byte("in flight")
	result := make(chan error, 1)
	go func() {
		var got []byte
		result <- f.conn.Invoke(context.Background(), "/test.Slow/Call", &msg, &got)
	}()
	time.Sleep(100 * time.Millisecond)

	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		shut <- f.relay.Shutdown(ctx)
	}()
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned (%v) with a call in flight", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(release)
	if err := <-result; err != nil {
		t.Fatalf("call in flight during shutdown: %v", err)
	}
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}

// rawClient is an HTTP/2 client that ignores flow control, to check that the
// relay holds a client to the windows it grants.
type rawClient struct {
	t   *testing.T
	wmu sync.Mutex // the framer writes one frame at a time
	nc  net.Conn
	fr  *http2.Framer
	enc *hpack.Encoder
	hb  bytes.Buffer
}

func newRawClient(t *testing.T, addr string) *rawClient {
	nc, err := net.Dial("unix", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	c := &rawClient{t: t, nc: nc, fr: http2.NewFramer(nc, nc)}
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.enc = hpack.NewEncoder(&c.hb)
	io.WriteString(nc, http2.ClientPreface)
	c.fr.WriteSettings()
	return c
}

func (c *rawClient) open(id uint32, path string) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.hb.Reset()
	for _, f := range []hpack.HeaderField{
		{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "http"}, {Name: ":path", Value: path},
		{Name: ":authority", Value: "relay"}, {Name: "content-type", Value: "application/grpc"}, {Name: "te", Value: "trailers"},
	} {
		c.enc.WriteField(f)
	}
	if err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.hb.Bytes(), EndHeaders: true}); err != nil {
		c.t.Fatal(err)
	}
}

// flood sends n bytes of DATA on stream id, windows or not, in the
// background (the relay may stop reading).
func (c *rawClient) flood(id uint32, n int) {
	chunk := make([]byte, 16<<10)
	go func() {
		for sent := 0; sent < n; sent += len(chunk) {
			c.wmu.Lock()
			err := c.fr.WriteData(id, false, chunk)
			c.wmu.Unlock()
			if err != nil {
				return
			}
		}
	}()
}

// waitFor reads frames until match returns true, or fails the test.
func (c *rawClient) waitFor(what string, match func(http2.Frame) bool) {
	c.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			c.t.Fatalf("waiting for %s: %v", what, err)
		}
		if match(f) {
			return
		}
	}
}

func TestRelayHoldsClientsToTheirWindows(t *testing.T) {
	dir := sockdir.New(t)
	// A backend that never reads: whatever the relay cannot forward, it holds.
	b := startBackend(t, dir, func(_ any, ss grpc.ServerStream) error {
		<-ss.Context().Done()
		return nil
	})
	f := startRelay(t, dir, b.addr)
	addr := filepath.Join(dir, "relay.sock")
	_ = f

	t.Run("past a stream's window the call is ended", func(t *testing.T) {
		c := newRawClient(t, addr)
		c.open(1, "/test.Sink/Bidi")
		c.flood(1, 12<<20) // the relay grants 4 MiB, and 4 MiB more as it forwards 4 MiB
		c.waitFor("the call's end", func(f http2.Frame) bool {
			switch f := f.(type) {
			case *http2.MetaHeadersFrame:
				if f.StreamID == 1 && f.StreamEnded() {
					if got := f.PseudoValue("status"); got != "" && got != "200" {
						t.Errorf(":status %s", got)
					}
					for _, h := range f.Fields {
						if h.Name == "grpc-status" && h.Value != strconv.Itoa(int(codes.Internal)) {
							t.Errorf("grpc-status %s, want Internal", h.Value)
						}
					}
					return true
				}
			case *http2.RSTStreamFrame:
				return f.StreamID == 1
			}
			return false
		})
	})

	t.Run("past the connection's window the connection is ended", func(t *testing.T) {
		// An upstream that takes its time to answer the dial: the relay
		// forwards nothing, so it grants the client nothing back.
		slow := &relay.Upstream{Name: "slow", Dial: func(ctx context.Context) (net.Conn, error) {
			<-ctx.Done()
			return nil, ctx.Err()
		}}
		r := relay.New(func(string) (*relay.Upstream, error) { return slow, nil }, relay.WithReadyWait(20*time.Second))
		addr := filepath.Join(dir, "slow-relay.sock")
		l, err := net.Listen("unix", addr)
		if err != nil {
			t.Fatal(err)
		}
		go r.Serve(l)
		defer func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			r.Shutdown(ctx)
		}()
		c := newRawClient(t, addr)
		// 24 MiB in all, within each stream's 4 MiB, past the 16 MiB the
		// relay grants the connection.
		for id := uint32(1); id <= 11; id += 2 {
			c.open(id, "/test.Sink/Bidi")
			c.flood(id, 4<<20)
		}
		c.waitFor("GOAWAY", func(f http2.Frame) bool {
			g, ok := f.(*http2.GoAwayFrame)
			if ok && g.ErrCode != http2.ErrCodeFlowControl {
				t.Errorf("GOAWAY %v, want FLOW_CONTROL_ERROR", g.ErrCode)
			}
			return ok
		})
	})
}

// A gRPC server whose handler returns while the client still has its side
// open ends the stream with trailers and then RST_STREAM(NO_ERROR). When
// the client has not yet granted the window for the end of the answer, the
// relay still holds it: the reset must wait behind it, or the answer's tail
// and its status are lost (containerd's Streaming export: the client saw
// "stream terminated by RST_STREAM with error code: NO_ERROR").
func TestAnswerHeldForTheClientOutlivesTheUpstreamsReset(t *testing.T) {
	dir := sockdir.New(t)
	const messages, size = 4, 48 << 10 // past the client's first 64 KiB window
	returned := make(chan struct{})
	b := startBackend(t, dir, func(_ any, ss grpc.ServerStream) error {
		defer close(returned)
		var first []byte
		if err := ss.RecvMsg(&first); err != nil {
			return err
		}
		for i := range messages {
			msg := pattern(size, byte(i))
			if err := ss.SendMsg(&msg); err != nil {
				return err
			}
		}
		return nil // the client has not closed its side: gRPC resets
	})
	f := startRelay(t, dir, b.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := f.conn.NewStream(ctx, bidi, "/test.Tail/Bidi")
	if err != nil {
		t.Fatal(err)
	}
	hello := []byte("hello")
	if err := s.SendMsg(&hello); err != nil {
		t.Fatal(err)
	}
	select {
	case <-returned:
	case <-ctx.Done():
		t.Fatal("the handler never returned")
	}
	// Its trailers and reset follow the return at once; give them the time
	// to reach the relay before the client reads (were this too short, the
	// test would pass without testing, never fail).
	time.Sleep(200 * time.Millisecond)
	for i := range messages {
		var got []byte
		if err := s.RecvMsg(&got); err != nil {
			t.Fatalf("message %d of %d: %v", i, messages, err)
		}
		if !bytes.Equal(got, pattern(size, byte(i))) {
			t.Fatalf("message %d differs", i)
		}
	}
	var extra []byte
	if err := s.RecvMsg(&extra); !errors.Is(err, io.EOF) {
		t.Fatalf("after the answer: %v, want the end of the stream with status OK", err)
	}
}
