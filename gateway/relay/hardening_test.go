package relay_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/gateway/internal/sockdir"
	"github.com/flotilla/flotilla/gateway/relay"
)

// waitForGoAway reads the client's frames until GOAWAY and returns its code.
func (c *rawClient) waitForGoAway() http2.ErrCode {
	var code http2.ErrCode
	c.waitFor("GOAWAY", func(f http2.Frame) bool {
		g, ok := f.(*http2.GoAwayFrame)
		if ok {
			code = g.ErrCode
		}
		return ok
	})
	return code
}

func TestInvalidSettingsEndTheConnection(t *testing.T) {
	dir := sockdir.New(t)
	b := startBackend(t, dir, echo)
	f := startRelay(t, dir, b.addr)
	addr := filepath.Join(dir, "relay.sock")

	for _, tc := range []struct {
		name    string
		setting http2.Setting
		want    http2.ErrCode
	}{
		{"MAX_FRAME_SIZE 0 is a protocol error", http2.Setting{ID: http2.SettingMaxFrameSize, Val: 0}, http2.ErrCodeProtocol},
		{"MAX_FRAME_SIZE below 16384 is a protocol error", http2.Setting{ID: http2.SettingMaxFrameSize, Val: 16383}, http2.ErrCodeProtocol},
		{"MAX_FRAME_SIZE above 2^24-1 is a protocol error", http2.Setting{ID: http2.SettingMaxFrameSize, Val: 1 << 24}, http2.ErrCodeProtocol},
		{"INITIAL_WINDOW_SIZE above 2^31-1 is a flow-control error", http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 31}, http2.ErrCodeFlowControl},
		{"ENABLE_PUSH other than 0 or 1 is a protocol error", http2.Setting{ID: http2.SettingEnablePush, Val: 2}, http2.ErrCodeProtocol},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newRawClient(t, addr)
			// A call in flight: with MAX_FRAME_SIZE 0 stored, its answer's
			// headers would never be written (an endless loop).
			c.open(1, "/test.Echo/Bidi")
			c.wmu.Lock()
			c.fr.WriteSettings(tc.setting)
			c.wmu.Unlock()
			if got := c.waitForGoAway(); got != tc.want {
				t.Fatalf("GOAWAY %v, want %v", got, tc.want)
			}
		})
	}

	t.Run("the relay still serves other clients", func(t *testing.T) {
		s, err := f.conn.NewStream(context.Background(), bidi, "/test.Echo/Bidi")
		if err != nil {
			t.Fatal(err)
		}
		msg := []byte("still here")
		if err := s.SendMsg(&msg); err != nil {
			t.Fatal(err)
		}
		var got []byte
		if err := s.RecvMsg(&got); err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("echo: %q, %v", got, err)
		}
	})
}

// rawUpstream is an HTTP/2 server written frame by frame, for a test to
// play a backend that does what grpc-go never does.
type rawUpstream struct {
	addr   string
	frames chan http2.Frame // every frame it reads, in order
	conn   chan *http2.Framer
}

func startRawUpstream(t *testing.T, dir string) *rawUpstream {
	u := &rawUpstream{addr: filepath.Join(dir, "raw.sock"), frames: make(chan http2.Frame, 1024), conn: make(chan *http2.Framer, 1)}
	l, err := net.Listen("unix", u.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		nc, err := l.Accept()
		if err != nil {
			return
		}
		t.Cleanup(func() { nc.Close() })
		preface := make([]byte, len(http2.ClientPreface))
		if _, err := io.ReadFull(nc, preface); err != nil {
			return
		}
		fr := http2.NewFramer(nc, nc)
		fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
		fr.WriteSettings()
		u.conn <- fr
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				close(u.frames)
				return
			}
			if d, ok := f.(*http2.DataFrame); ok {
				// The framer reuses its buffer: keep a copy.
				cp := *d
				f = &cp
			}
			u.frames <- f
		}
	}()
	return u
}

// next returns the next frame the upstream read that match accepts.
func (u *rawUpstream) next(t *testing.T, what string, match func(http2.Frame) bool) http2.Frame {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case f, ok := <-u.frames:
			if !ok {
				t.Fatalf("waiting for %s: the relay closed the connection", what)
			}
			if match(f) {
				return f
			}
		case <-timeout:
			t.Fatalf("waiting for %s: timed out", what)
		}
	}
}

// TestEmptyEndStreamOnNegativeWindow: a peer may lower its initial window
// below what the relay has sent already, which leaves a stream's window
// negative; an empty DATA frame ending the stream needs no window and must
// go through (it once panicked the gateway: slice bounds out of range).
func TestEmptyEndStreamOnNegativeWindow(t *testing.T) {
	dir := sockdir.New(t)
	u := startRawUpstream(t, dir)
	startRelay(t, dir, u.addr)
	c := newRawClient(t, filepath.Join(dir, "relay.sock"))

	c.open(1, "/test.Raw/Call")
	c.wmu.Lock()
	c.fr.WriteData(1, false, make([]byte, 100))
	c.wmu.Unlock()
	fr := <-u.conn
	u.next(t, "the call's 100 bytes", func(f http2.Frame) bool {
		d, ok := f.(*http2.DataFrame)
		return ok && d.StreamID == 1 && d.Length == 100
	})
	// The stream's window toward the upstream becomes 0 - 100.
	fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0})
	u.next(t, "the relay's SETTINGS ack", func(f http2.Frame) bool {
		s, ok := f.(*http2.SettingsFrame)
		return ok && s.IsAck()
	})
	c.wmu.Lock()
	c.fr.WriteData(1, true, nil)
	c.wmu.Unlock()
	u.next(t, "the empty END_STREAM DATA frame", func(f http2.Frame) bool {
		d, ok := f.(*http2.DataFrame)
		return ok && d.StreamID == 1 && d.Length == 0 && d.StreamEnded()
	})
}

// panicky is an observer that panics on the calls of one method.
type panicky struct{ method string }

func (p panicky) Begin(method string) func(codes.Code) {
	if method == p.method {
		panic("observer broke on " + method)
	}
	return func(codes.Code) {}
}

// logRecords is a slog handler that keeps the messages it is given.
type logRecords struct {
	mu   sync.Mutex
	msgs []string
}

func (h *logRecords) Enabled(context.Context, slog.Level) bool { return true }
func (h *logRecords) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	line := r.Message
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "panic" {
			line += " panic=" + a.Value.String()
		}
		return true
	})
	h.msgs = append(h.msgs, line)
	return nil
}
func (h *logRecords) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *logRecords) WithGroup(string) slog.Handler      { return h }

func (h *logRecords) find(s string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, m := range h.msgs {
		if strings.Contains(m, s) {
			return true
		}
	}
	return false
}

func TestPanicEndsOnlyItsSession(t *testing.T) {
	dir := sockdir.New(t)
	b := startBackend(t, dir, echo)
	logs := &logRecords{}
	f := startRelay(t, dir, b.addr, relay.WithObserver(panicky{method: "/test.Echo/Boom"}), relay.WithLogger(slog.New(logs)))

	// A call that panics inside the relay: its connection is cut.
	victim := dialRelay(t, filepath.Join(dir, "relay.sock"))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := victim.Invoke(ctx, "/test.Echo/Boom", &[]byte{}, new([]byte), grpc.WaitForReady(false))
	if status.Code(err) != codes.Unavailable && status.Code(err) != codes.Internal {
		t.Fatalf("the call that panicked the relay: %v, want Unavailable (connection lost)", err)
	}
	if !logs.find("panic=observer broke on /test.Echo/Boom") {
		t.Errorf("the panic was not logged: %q", logs.msgs)
	}

	// Another client's calls go on.
	s, err := f.conn.NewStream(context.Background(), bidi, "/test.Echo/Bidi")
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("still here")
	if err := s.SendMsg(&msg); err != nil {
		t.Fatal(err)
	}
	var got []byte
	if err := s.RecvMsg(&got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo after another session panicked: %q, %v", got, err)
	}
}

func TestShutdownEndsLongLivedCalls(t *testing.T) {
	dir := sockdir.New(t)
	b := startBackend(t, dir, func(_ any, ss grpc.ServerStream) error {
		msg := []byte("subscribed")
		if err := ss.SendMsg(&msg); err != nil {
			return err
		}
		<-ss.Context().Done()
		return nil
	})
	f := startRelay(t, dir, b.addr, relay.WithLongLived(func(m string) bool { return m == "/test.Events/Subscribe" }))

	s, err := f.conn.NewStream(context.Background(), &grpc.StreamDesc{ServerStreams: true}, "/test.Events/Subscribe")
	if err != nil {
		t.Fatal(err)
	}
	s.SendMsg(&[]byte{})
	s.CloseSend()
	var got []byte
	if err := s.RecvMsg(&got); err != nil {
		t.Fatalf("subscription not in place: %v", err)
	}

	const timeout = 30 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	start := time.Now()
	if err := f.relay.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown waited its whole timeout for a subscription: %v", err)
	}
	if d := time.Since(start); d > timeout/3 {
		t.Fatalf("Shutdown took %v with a subscription open", d)
	}
	err = s.RecvMsg(&got)
	if status.Code(err) != codes.Unavailable || !strings.Contains(status.Convert(err).Message(), "shutting down") {
		t.Fatalf("the subscription ended with %v, want Unavailable: the gateway is shutting down", err)
	}
}

func TestUnreachableUpstreamIsNamedAsDown(t *testing.T) {
	dir := sockdir.New(t)
	// An upstream that never answers the dial, as a host that is down.
	silent := &relay.Upstream{Name: "contentd (tcp://10.255.255.1:9)", Dial: func(ctx context.Context) (net.Conn, error) {
		<-ctx.Done()
		var d net.Dialer
		return d.DialContext(ctx, "tcp", "10.255.255.1:9")
	}}
	r := relay.New(func(string) (*relay.Upstream, error) { return silent, nil }, relay.WithReadyWait(200*time.Millisecond))
	addr := filepath.Join(dir, "down.sock")
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
	conn := dialRelay(t, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = conn.Invoke(ctx, "/containerd.services.content.v1.Content/Info", &[]byte{}, new([]byte))
	msg := status.Convert(err).Message()
	if status.Code(err) != codes.Unavailable || !strings.Contains(msg, "contentd (tcp://10.255.255.1:9) is unavailable: it is down") || strings.Contains(msg, "i/o timeout") {
		t.Fatalf("call to a backend that does not answer: %v, want Unavailable naming it and saying it is down", err)
	}
}
