// Package relay is the gateway's front door: it relays gRPC calls between
// its clients and the services behind it frame by frame, at the HTTP/2
// level, without decoding or reassembling their messages.
//
// Each client connection is a session. A call's first HEADERS frame names
// its method; the session routes the call to an upstream and opens the same
// stream ID on its own connection to that upstream (a client's stream IDs
// only grow, so those it sends to one upstream do too). From then on the
// reader of either connection copies the call's frames straight into the
// other connection's output: DATA payloads as they arrive, headers decoded
// and encoded again for the other connection's HPACK state. A 1 MiB WRITE
// therefore reaches contentd while its last bytes are still leaving the
// client, instead of after the whole message has been received, decoded into
// a gRPC message and sent again, and no goroutine hands anything to another
// on the way.
//
// Flow control is kept per connection and per stream on both sides: the
// relay grants its senders what it has forwarded, and holds (in order, per
// stream) what the receiving side has no window for yet, so what it holds is
// bounded by the windows it grants.
package relay

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime/debug"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
)

// Windows the relay grants each side, and its I/O buffer sizes: as large as
// the services' own (services/server), so that 1 MiB messages never wait on
// the relay's flow control.
const (
	streamWindow = 4 << 20
	connWindow   = 16 << 20
	ioBuffer     = 256 << 10

	// maxStreams is how many calls a client may have open at once on one
	// connection: enough for any client, a bound on what one can cost.
	maxStreams = 1000

	// defaultWindow and defaultMaxFrame are HTTP/2's initial values, in
	// force until a peer's SETTINGS say otherwise.
	defaultWindow   = 65535
	defaultMaxFrame = 16384

	// goAwayLinger is how long a connection ended for a protocol error
	// stays open for its client to read why.
	goAwayLinger = time.Second
)

// An Upstream is a service the relay sends calls to.
type Upstream struct {
	// Name names the service in errors: "contentd (unix:///run/contentd.sock)".
	Name string
	// Dial connects to the service.
	Dial func(ctx context.Context) (net.Conn, error)
	// Header is metadata the gateway adds to every call it relays here
	// (lower-case names), replacing whatever the caller sent under those
	// names, so a caller cannot pose as another node.
	Header []hpack.HeaderField
}

// A Router picks the upstream of a call by its full method name
// ("/containerd.services.content.v1.Content/Write"). An error answers the
// call instead, with its gRPC status (errdefs kinds are converted).
type Router func(fullMethod string) (*Upstream, error)

// An Observer is told of every call the relay carries: Begin when it starts;
// the function Begin returns, once, with the call's gRPC code when it ends.
type Observer interface {
	Begin(fullMethod string) func(codes.Code)
}

// A CallTracer traces the calls the relay passes on. Start is given a
// call's method and the request headers about to go upstream; it returns
// the headers to send in their place (such as with the trace context of a
// span of its own) and a function the relay calls once, with the call's
// gRPC code, when the call ends. Start runs under the session's lock and
// must be quick.
type CallTracer interface {
	Start(fullMethod string, headers []hpack.HeaderField) ([]hpack.HeaderField, func(codes.Code))
}

// Server relays the calls of the connections it serves.
type Server struct {
	route     Router
	observe   Observer
	tracer    CallTracer
	readyWait time.Duration
	stall     time.Duration
	log       *slog.Logger
	longLived func(fullMethod string) bool
	authorize Authorizer

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	sessions  map[*session]struct{}
	stopping  bool
	idle      *sync.Cond // signalled when a session ends
}

// Option configures a Server.
type Option func(*Server)

// WithObserver has the server report every call to o.
func WithObserver(o Observer) Option { return func(s *Server) { s.observe = o } }

// WithCallTracer has the server trace every call it relays with t.
func WithCallTracer(t CallTracer) Option { return func(s *Server) { s.tracer = t } }

// WithReadyWait sets how long a call waits for an upstream that cannot be
// reached before it fails with Unavailable (1.5 s by default: within the two
// seconds a client may wait for an answer naming the service).
func WithReadyWait(d time.Duration) Option { return func(s *Server) { s.readyWait = d } }

// WithStallTimeout has the relay give up on an upstream connection that
// sends nothing for d while calls are in flight on it: once half of d has
// passed in silence it is sent a PING (which a live peer answers however
// busy its handlers are), and when d has passed its calls fail with
// Unavailable, saying so. Without it (d = 0), a link that goes down without
// a reset holds the calls on it until TCP gives up, many minutes later.
func WithStallTimeout(d time.Duration) Option { return func(s *Server) { s.stall = d } }

// WithLongLived names the methods whose calls last as long as their
// clients stay (event subscriptions, waits): Shutdown ends them at once,
// answering Unavailable, instead of waiting for them until its deadline.
func WithLongLived(f func(fullMethod string) bool) Option {
	return func(s *Server) { s.longLived = f }
}

// An Authorizer decides whether the client on conn may call fullMethod;
// an error answers the call instead (errdefs kinds are converted).
type Authorizer func(conn net.Conn, fullMethod string) error

// WithAuthorizer has every call checked by a before it is routed.
func WithAuthorizer(a Authorizer) Option { return func(s *Server) { s.authorize = a } }

// WithLogger sets where the server logs broken connections.
func WithLogger(l *slog.Logger) Option { return func(s *Server) { s.log = l } }

// New returns a server relaying calls where route says.
func New(route Router, opts ...Option) *Server {
	s := &Server{
		route:     route,
		readyWait: 1500 * time.Millisecond,
		log:       slog.New(slog.DiscardHandler),
		listeners: make(map[net.Listener]struct{}),
		sessions:  make(map[*session]struct{}),
	}
	s.idle = sync.NewCond(&s.mu)
	for _, opt := range opts {
		opt(s)
	}
	return s
}

// ErrStopped is what Serve returns once Shutdown has been called.
var ErrStopped = errors.New("relay stopped")

// Serve accepts connections on l and relays their calls until l fails or
// Shutdown is called.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.stopping {
		s.mu.Unlock()
		l.Close()
		return ErrStopped
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
	}()
	for {
		nc, err := l.Accept()
		if err != nil {
			s.mu.Lock()
			stopping := s.stopping
			s.mu.Unlock()
			if stopping {
				return ErrStopped
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return err
		}
		ss := newSession(s, nc)
		s.mu.Lock()
		if s.stopping {
			s.mu.Unlock()
			nc.Close()
			continue
		}
		s.sessions[ss] = struct{}{}
		s.mu.Unlock()
		go ss.serve()
	}
}

// Shutdown stops accepting connections, tells every client to open no new
// calls (GOAWAY), ends the long-lived calls (WithLongLived) and waits for
// the others in flight to end. When ctx ends
// first, it closes what is left and returns ctx's error.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.stopping = true
	for l := range s.listeners {
		l.Close()
	}
	sessions := make([]*session, 0, len(s.sessions))
	for ss := range s.sessions {
		sessions = append(sessions, ss)
	}
	s.mu.Unlock()
	for _, ss := range sessions {
		ss.goAway()
		if s.longLived != nil {
			ss.endLongLived(s.longLived)
		}
	}

	done := make(chan struct{})
	go func() {
		s.mu.Lock()
		for len(s.sessions) > 0 {
			s.idle.Wait()
		}
		s.mu.Unlock()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		s.mu.Lock()
		for ss := range s.sessions {
			ss.client.nc.Close()
		}
		s.mu.Unlock()
		return ctx.Err()
	}
}

func (s *Server) ended(ss *session) {
	s.mu.Lock()
	delete(s.sessions, ss)
	s.idle.Broadcast()
	s.mu.Unlock()
}

// session relays the calls of one client connection.
type session struct {
	srv    *Server
	client *peer

	// mu guards the session's streams and every peer's state and output.
	// Nothing blocks while holding it: frames are only encoded into output
	// buffers under it, and written to the sockets after (peer.flush).
	mu      sync.Mutex
	streams map[uint32]*stream
	ups     map[*Upstream]*peer // the connection each upstream's new calls go to
	peers   map[*peer]struct{}  // every upstream connection still open
	lastID  uint32              // the highest stream ID the client opened
	closed  bool
	going   bool // GOAWAY sent: calls in flight finish, the session ends after
	full    bool // some peer's output has reached ioBuffer: write it now

	closedIDs  [recentClosed]uint32 // the last client streams to end
	closedNext int
}

func newSession(srv *Server, nc net.Conn) *session {
	ss := &session{
		srv:     srv,
		streams: make(map[uint32]*stream),
		ups:     make(map[*Upstream]*peer),
		peers:   make(map[*peer]struct{}),
	}
	ss.client = newPeer(ss, "client", nil)
	ss.client.nc = nc
	return ss
}

// serve runs the session: it answers the client's preface and reads its
// frames until the connection ends.
func (ss *session) serve() {
	defer ss.srv.ended(ss)
	defer ss.recoverPanic("client")
	c := ss.client
	ss.mu.Lock()
	c.fr.WriteSettings(
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: streamWindow},
		http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: maxStreams},
	)
	c.fr.WriteWindowUpdate(0, connWindow-defaultWindow)
	ss.mu.Unlock()
	c.flush()

	br := bufio.NewReaderSize(c.nc, ioBuffer)
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(br, preface); err != nil || string(preface) != http2.ClientPreface {
		ss.close(fmt.Errorf("bad client preface: %v", err))
		return
	}
	fr := readFramer(br)
	for {
		f, rerr := fr.ReadFrame()
		var done, full bool
		err := ss.locked(func() error {
			var err error
			if rerr != nil {
				err = ss.clientReadError(rerr)
			} else {
				err = ss.fromClient(f)
			}
			var ce connError
			if errors.As(err, &ce) {
				c.fr.WriteGoAway(ss.lastID, ce.code, []byte(ce.reason))
			}
			done = ss.going && len(ss.streams) == 0
			full = ss.full
			ss.full = false
			return err
		})
		if full || done || err != nil || wouldBlock(br) {
			ss.flushAll()
		}
		var ce connError
		if errors.As(err, &ce) {
			// Give the client a moment to read the GOAWAY: closing with
			// its data unread would reset the connection before it does.
			c.nc.SetReadDeadline(time.Now().Add(goAwayLinger))
			io.Copy(io.Discard, br)
		}
		if done || err != nil {
			ss.close(err)
			return
		}
	}
}

// locked runs fn with ss.mu held, and releases it even if fn panics.
func (ss *session) locked(fn func() error) error {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return fn()
}

// recoverPanic ends the session, and only the session, when one of its
// goroutines panics: one client must not take the gateway down.
func (ss *session) recoverPanic(side string) {
	r := recover()
	if r == nil {
		return
	}
	ss.srv.log.Error("relay session panicked: ending it", "side", side, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
	ss.close(fmt.Errorf("panic: %v", r))
}

// connError is a connection error (RFC 9113 §5.4.1): the relay tells the
// peer why with GOAWAY and ends the connection.
type connError struct {
	code   http2.ErrCode
	reason string
}

func (e connError) Error() string { return fmt.Sprintf("connection error %v: %s", e.code, e.reason) }

// clientReadError handles an error reading the client's frames: a stream
// error resets that stream; anything else ends the connection, with GOAWAY
// if it is the client's fault. ss.mu is held.
func (ss *session) clientReadError(err error) error {
	var se http2.StreamError
	var ce http2.ConnectionError
	switch {
	case errors.As(err, &se):
		if se.StreamID%2 == 1 && se.StreamID > ss.lastID {
			// A bad request opens its stream all the same.
			ss.lastID = se.StreamID
		}
		ss.resetClientStream(se.StreamID, se.Code)
		return nil
	case errors.As(err, &ce):
		return connError{http2.ErrCode(ce), err.Error()}
	case errors.Is(err, http2.ErrFrameTooLarge):
		return connError{http2.ErrCodeFrameSize, "frame larger than SETTINGS_MAX_FRAME_SIZE"}
	}
	return err
}

// goAway tells the client to start no new calls, and ends the session once
// those in flight are over.
func (ss *session) goAway() {
	ss.mu.Lock()
	if ss.closed || ss.going {
		ss.mu.Unlock()
		return
	}
	ss.going = true
	ss.client.fr.WriteGoAway(ss.lastID, http2.ErrCodeNo, nil)
	idle := len(ss.streams) == 0
	ss.mu.Unlock()
	ss.client.flush()
	if idle {
		ss.close(nil)
	}
}

// endLongLived ends the session's calls that isLong names, and the
// session with them if no other call is left.
func (ss *session) endLongLived(isLong func(string) bool) {
	var done bool
	ss.locked(func() error {
		if ss.closed {
			return nil
		}
		for _, st := range ss.streams {
			if isLong(st.method) {
				ss.fail(st, codes.Unavailable, "the gateway is shutting down")
			}
		}
		done = len(ss.streams) == 0
		return nil
	})
	ss.flushAll()
	if done {
		// The session ends when its reader next wakes: a moment for the
		// client to read the calls' ends before the connection closes.
		ss.client.nc.SetReadDeadline(time.Now().Add(goAwayLinger))
	}
}

// close ends the session: every call still open is cut, every connection
// closed.
func (ss *session) close(err error) {
	ss.mu.Lock()
	if ss.closed {
		ss.mu.Unlock()
		return
	}
	ss.closed = true
	streams := ss.streams
	ss.streams = map[uint32]*stream{}
	peers := ss.peers
	ss.peers = map[*peer]struct{}{}
	ss.mu.Unlock()
	if err != nil && !isClosedConn(err) {
		ss.srv.log.Debug("client connection ended", "error", err)
	}
	for _, st := range streams {
		st.end(codes.Canceled)
	}
	for p := range peers {
		if p.nc != nil {
			p.nc.Close()
		}
	}
	ss.client.nc.Close()
}

// fromClient handles one frame from the client, holding it to the stream
// states and rules of RFC 9113 as a server must. An error ends the
// connection (a connError: the client is told why with GOAWAY). ss.mu is
// held.
func (ss *session) fromClient(f http2.Frame) error {
	c := ss.client
	id := f.Header().StreamID
	switch f.(type) {
	case *http2.DataFrame, *http2.RSTStreamFrame, *http2.WindowUpdateFrame:
		if id != 0 && ss.idle(id) {
			return connError{http2.ErrCodeProtocol, fmt.Sprintf("%v frame on idle stream %d", f.Header().Type, id)}
		}
	}
	if handled, err := ss.connectionFrame(c, f); handled || err != nil {
		return err
	}
	switch f := f.(type) {
	case *http2.MetaHeadersFrame:
		if f.HasPriority() && f.Priority.StreamDep == id {
			ss.resetClientStream(id, http2.ErrCodeProtocol)
			return nil
		}
		if st := ss.streams[id]; st != nil {
			// Trailers: gRPC clients send none, but pass them on.
			switch {
			case st.clientEnded:
				ss.resetClientStream(id, http2.ErrCodeStreamClosed)
			case !f.StreamEnded() || len(f.PseudoFields()) > 0:
				ss.resetClientStream(id, http2.ErrCodeProtocol)
			default:
				ss.sendHeaders(st, &st.toUp, f.Fields, true)
			}
			return nil
		}
		if id%2 == 0 {
			return connError{http2.ErrCodeProtocol, fmt.Sprintf("client opened even stream %d", id)}
		}
		if id <= ss.lastID {
			if ss.recentlyClosed(id) {
				return connError{http2.ErrCodeStreamClosed, fmt.Sprintf("HEADERS on closed stream %d", id)}
			}
			return connError{http2.ErrCodeProtocol, fmt.Sprintf("stream %d opened after stream %d", id, ss.lastID)}
		}
		ss.lastID = id
		if len(ss.streams) >= maxStreams {
			c.fr.WriteRSTStream(id, http2.ErrCodeRefusedStream)
			return nil
		}
		if err := checkRequest(f.Fields); err != nil {
			ss.resetClientStream(id, http2.ErrCodeProtocol)
			return nil
		}
		ss.open(f)
	case *http2.DataFrame:
		if !c.received(int(f.Length)) {
			return connError{http2.ErrCodeFlowControl, "client sent past its connection window"}
		}
		st := ss.streams[id]
		if st == nil || st.clientEnded {
			// Closed, or half-closed (remote): the client may send no more.
			// Its window comes back all the same.
			ss.credit(c, nil, int(f.Length))
			ss.resetClientStream(id, http2.ErrCodeStreamClosed)
			return nil
		}
		if st.toUp.recvWin -= int64(f.Length); st.toUp.recvWin < 0 {
			ss.credit(c, nil, int(f.Length))
			ss.fail(st, codes.Internal, "the client sent past its stream window")
			return nil
		}
		if st.contentLength >= 0 {
			st.bodyLen += int64(len(f.Data()))
			if st.bodyLen > st.contentLength || (f.StreamEnded() && st.bodyLen != st.contentLength) {
				ss.credit(c, nil, int(f.Length))
				ss.resetClientStream(id, http2.ErrCodeProtocol)
				return nil
			}
		}
		if st.toUp.ended {
			// The relay stopped forwarding the call (it failed it).
			ss.credit(c, nil, int(f.Length))
			return nil
		}
		ss.forwardData(st, &st.toUp, f.Data(), f.StreamEnded(), int(f.Length))
	case *http2.RSTStreamFrame:
		if st := ss.streams[id]; st != nil {
			if st.up != nil && !st.up.dead {
				st.up.fr.WriteRSTStream(id, f.ErrCode)
			}
			ss.finish(st, codes.Canceled)
		}
	case *http2.PriorityFrame:
		if f.StreamDep == id {
			ss.resetClientStream(id, http2.ErrCodeProtocol)
		}
	case *http2.PushPromiseFrame:
		return connError{http2.ErrCodeProtocol, "client sent PUSH_PROMISE"}
	case *http2.GoAwayFrame:
		// The client will close.
	}
	return nil
}

// idle reports whether the client has not opened stream id yet (RFC 9113
// §5.1: frames other than HEADERS and PRIORITY are an error on it).
// Even streams are the server's to open, and the relay opens none.
func (ss *session) idle(id uint32) bool {
	return id > ss.lastID || id%2 == 0
}

// recentClosed is how many of the last streams to end a session
// remembers, to tell a client writing on a closed stream (STREAM_CLOSED)
// from one going back to an unused ID (PROTOCOL_ERROR) without keeping
// every ID.
const recentClosed = 64

func (ss *session) recentlyClosed(id uint32) bool {
	for _, c := range ss.closedIDs {
		if c == id {
			return true
		}
	}
	return false
}

// resetClientStream ends stream id with a stream error: the client is
// sent RST_STREAM with code, the call (if any) is cancelled upstream.
// ss.mu is held.
func (ss *session) resetClientStream(id uint32, code http2.ErrCode) {
	ss.client.fr.WriteRSTStream(id, code)
	st := ss.streams[id]
	if st == nil {
		return
	}
	st.clientEnded = true // the RST ends the client's side too
	ss.dropPending(st, &st.toClient)
	ss.dropPending(st, &st.toUp)
	if st.up != nil && !st.up.dead && !st.toUp.ended {
		st.up.fr.WriteRSTStream(id, http2.ErrCodeCancel)
	}
	ss.finish(st, codes.Internal)
}

// checkRequest holds a request's header block to RFC 9113 §8.3.1 and
// §8.2.2 (the framer has checked names, duplicates and order): request
// pseudo-headers only, :method, :scheme and a non-empty :path present
// (CONNECT aside), no connection-specific field, TE only "trailers".
func checkRequest(fields []hpack.HeaderField) error {
	var method, scheme, path bool
	connect := false
	for _, f := range fields {
		switch f.Name {
		case ":method":
			method, connect = true, f.Value == "CONNECT"
		case ":scheme":
			scheme = true
		case ":path":
			path = f.Value != ""
		case ":authority":
		case "te":
			if f.Value != "trailers" {
				return errors.New(`TE other than "trailers"`)
			}
		default:
			if len(f.Name) > 0 && f.Name[0] == ':' {
				return fmt.Errorf("pseudo-header %s in a request", f.Name)
			}
			if hopByHop[f.Name] {
				return fmt.Errorf("connection-specific header %s", f.Name)
			}
		}
	}
	if !method || (!connect && (!scheme || !path)) {
		return errors.New("request without :method, :scheme or :path")
	}
	return nil
}

// open starts the call the client's HEADERS frame f begins. ss.mu is held.
func (ss *session) open(f *http2.MetaHeadersFrame) {
	method := f.PseudoValue("path")
	st := &stream{id: f.StreamID, method: method, code: codes.OK, contentLength: -1}
	if v := headerValue(f.Fields, "content-length"); v != "" {
		if n, err := strconv.ParseInt(v, 10, 64); err == nil && n >= 0 {
			st.contentLength = n
		}
	}
	st.toClient = half{id: st.id, dst: ss.client, window: ss.client.initWin, recvWin: streamWindow}
	if ss.srv.observe != nil {
		st.observed = ss.srv.observe.Begin(method)
	}
	st.toUp.id = st.id
	st.clientEnded = f.StreamEnded()
	ss.streams[st.id] = st
	if ss.going {
		ss.fail(st, codes.Unavailable, "the gateway is shutting down")
		return
	}
	var err error
	if ss.srv.authorize != nil {
		err = ss.srv.authorize(ss.client.nc, method)
	}
	var u *Upstream
	if err == nil {
		u, err = ss.srv.route(method)
	}
	if err != nil {
		code, msg := statusOf(err)
		ss.fail(st, code, msg)
		return
	}
	p := ss.upstream(u)
	st.up = p
	st.toUp = half{id: st.id, dst: p, window: p.initWin, recvWin: streamWindow}
	p.streams[st.id] = st
	fields := withHeader(forwardable(f.Fields), u.Header)
	if ss.srv.tracer != nil {
		fields, st.traced = ss.srv.tracer.Start(method, fields)
	}
	ss.sendHeaders(st, &st.toUp, fields, f.StreamEnded())
}

// upstream returns the connection new calls to u go on, starting one
// when there is none. ss.mu is held.
func (ss *session) upstream(u *Upstream) *peer {
	if p := ss.ups[u]; p != nil {
		return p
	}
	p := newPeer(ss, u.Name, u)
	p.out = append(p.out, http2.ClientPreface...)
	p.fr.WriteSettings(
		http2.Setting{ID: http2.SettingEnablePush, Val: 0},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: streamWindow},
	)
	p.fr.WriteWindowUpdate(0, connWindow-defaultWindow)
	ss.ups[u] = p
	ss.peers[p] = struct{}{}
	go ss.connect(p)
	return p
}

// connect dials p's upstream, retrying for up to the ready wait, then
// writes what its calls have sent so far and reads its frames until the
// connection ends.
func (ss *session) connect(p *peer) {
	defer ss.recoverPanic(p.name)
	ctx, cancel := context.WithTimeout(context.Background(), ss.srv.readyWait)
	defer cancel()
	var nc net.Conn
	var err error
	for {
		nc, err = p.up.Dial(ctx)
		if err == nil || ctx.Err() != nil {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
		if ss.isClosed() {
			return
		}
	}
	if err != nil {
		ss.mu.Lock()
		ss.lost(p, fmt.Sprintf("%s is unavailable: %s", p.name, dialFailure(err, ss.srv.readyWait)))
		ss.mu.Unlock()
		ss.flushAll()
		return
	}
	ss.mu.Lock()
	if ss.closed || p.dead {
		ss.mu.Unlock()
		nc.Close()
		return
	}
	p.nc = nc
	p.heard = time.Now()
	ss.mu.Unlock()
	p.flush()
	ss.watch(p)
	ss.readUpstream(p)
}

// watch checks upstream connection p four times a stall timeout, from a
// goroutine of its own, until the connection ends (see WithStallTimeout).
func (ss *session) watch(p *peer) {
	d := ss.srv.stall
	if d <= 0 {
		return
	}
	go func() {
		defer ss.recoverPanic(p.name)
		tick := time.NewTicker(d / 4)
		defer tick.Stop()
		for range tick.C {
			var ping, gone, stop bool
			ss.locked(func() error {
				silent := time.Since(p.heard)
				switch {
				case ss.closed || p.dead:
					stop = true
				case len(p.streams) == 0:
					// An idle connection is not checked: no call waits on it.
					p.heard = time.Now()
				case silent >= d:
					ss.lost(p, fmt.Sprintf("%s is unavailable: no answer for %v (the link to it or its host is down)", p.name, d))
					gone = true
				case silent >= d/2 && !p.pinged.After(p.heard):
					// One PING for each silence: its answer ends it.
					p.pinged = time.Now()
					p.fr.WritePing(false, [8]byte{'f', 'l', 'o', 't', 'i', 'l', 'l', 'a'})
					ping = true
				}
				return nil
			})
			switch {
			case gone:
				ss.flushAll()
				return
			case stop:
				return
			case ping:
				// Not on this goroutine: a write to a dead link may block
				// until lost closes the connection, which the next check does.
				go p.flush()
			}
		}
	}()
}

// dialFailure says why an upstream could not be reached, in words an
// operator acts on: a bare "i/o timeout" does not say the service is down.
func dialFailure(err error, waited time.Duration) string {
	var ne net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()):
		return fmt.Sprintf("it is down or unreachable: no answer within %v", waited)
	case errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT):
		return fmt.Sprintf("it is down: nothing listens at its address (%v)", err)
	}
	return err.Error()
}

func (ss *session) isClosed() bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.closed
}

// readUpstream reads p's frames until its connection ends.
func (ss *session) readUpstream(p *peer) {
	defer ss.recoverPanic(p.name)
	br := bufio.NewReaderSize(p.nc, ioBuffer)
	fr := readFramer(br)
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				ss.mu.Lock()
				p.fr.WriteRSTStream(se.StreamID, se.Code)
				if st := p.streams[se.StreamID]; st != nil {
					ss.fail(st, codes.Internal, fmt.Sprintf("%s sent a malformed answer: %v", p.name, se))
				}
				ss.mu.Unlock()
				continue
			}
			ss.mu.Lock()
			ss.lost(p, fmt.Sprintf("%s is unavailable: connection lost: %v", p.name, err))
			ss.mu.Unlock()
			ss.flushAll()
			return
		}
		var done, full bool
		ss.locked(func() error {
			p.heard = time.Now()
			if err := ss.fromUpstream(p, f); err != nil {
				var ce connError
				if errors.As(err, &ce) {
					p.fr.WriteGoAway(0, ce.code, []byte(ce.reason))
				}
				ss.lost(p, fmt.Sprintf("%s broke HTTP/2: %v", p.name, err))
			}
			done = ss.going && len(ss.streams) == 0
			full = ss.full
			ss.full = false
			return nil
		})
		if full || done || wouldBlock(br) {
			ss.flushAll()
		}
		if done {
			ss.close(nil)
			return
		}
	}
}

// fromUpstream handles one frame from upstream connection p. An error
// ends that connection. ss.mu is held.
func (ss *session) fromUpstream(p *peer, f http2.Frame) error {
	if handled, err := ss.connectionFrame(p, f); handled || err != nil {
		return err
	}
	switch f := f.(type) {
	case *http2.MetaHeadersFrame:
		st := p.streams[f.StreamID]
		if st == nil {
			return nil
		}
		if f.StreamEnded() || st.answered {
			if c, ok := grpcStatus(f.Fields); ok {
				st.code = c
			}
		}
		st.answered = true
		ss.sendHeaders(st, &st.toClient, forwardable(f.Fields), f.StreamEnded())
	case *http2.DataFrame:
		if !p.received(int(f.Length)) {
			return connError{http2.ErrCodeFlowControl, "sent past its connection window"}
		}
		st := p.streams[f.StreamID]
		if st == nil || st.toClient.ended {
			ss.credit(p, nil, int(f.Length))
			return nil
		}
		if st.toClient.recvWin -= int64(f.Length); st.toClient.recvWin < 0 {
			ss.credit(p, nil, int(f.Length))
			ss.fail(st, codes.Internal, p.name+" sent past its stream window")
			return nil
		}
		ss.forwardData(st, &st.toClient, f.Data(), f.StreamEnded(), int(f.Length))
	case *http2.RSTStreamFrame:
		st := p.streams[f.StreamID]
		if st == nil {
			return nil
		}
		if f.ErrCode == http2.ErrCodeNo && st.toClient.srcEnded && !st.toClient.ended {
			// The upstream has answered in full and only tells the client
			// to stop sending (a gRPC server does once its handler returns
			// before the client closed its side). What the client has no
			// window for yet, trailers last, still goes first; the reset
			// follows it (maybeFinish).
			ss.dropPending(st, &st.toUp)
			st.toUp.ended = true
			st.resetClient = true
			return nil
		}
		code := st.code
		if !st.toClient.ended {
			code = resetCode(f.ErrCode)
		}
		ss.client.fr.WriteRSTStream(st.id, f.ErrCode)
		ss.finish(st, code)
	case *http2.GoAwayFrame:
		// Calls past the last one it took were never seen; the others
		// finish. New calls go on a new connection.
		if ss.ups[p.up] == p {
			delete(ss.ups, p.up)
		}
		for id, st := range p.streams {
			if id > f.LastStreamID {
				ss.fail(st, codes.Unavailable, fmt.Sprintf("%s is unavailable: it is shutting down", p.name))
			}
		}
	case *http2.PushPromiseFrame:
		return connError{http2.ErrCodeProtocol, "PUSH_PROMISE, though the relay disabled push"}
	}
	return nil
}

// connectionFrame handles the frames that mean the same from the client
// and from an upstream: SETTINGS, PING and WINDOW_UPDATE. It reports
// whether f was one of them; an error is a connection error. ss.mu is held.
func (ss *session) connectionFrame(p *peer, f http2.Frame) (bool, error) {
	switch f := f.(type) {
	case *http2.SettingsFrame:
		if !f.IsAck() {
			if err := ss.applySettings(p, f); err != nil {
				return true, err
			}
			p.fr.WriteSettingsAck()
		}
	case *http2.PingFrame:
		if !f.IsAck() {
			p.fr.WritePing(true, f.Data)
		}
	case *http2.WindowUpdateFrame:
		if f.StreamID == 0 {
			if p.sendConn+int64(f.Increment) > maxWindow {
				return true, connError{http2.ErrCodeFlowControl, "WINDOW_UPDATE past 2^31-1"}
			}
			p.sendConn += int64(f.Increment)
			ss.drainTo(p)
		} else if st := ss.streamsTo(p)[f.StreamID]; st != nil {
			h := st.halfTo(p)
			if h.window+int64(f.Increment) > maxWindow {
				ss.streamError(p, st, http2.ErrCodeFlowControl)
				return true, nil
			}
			h.window += int64(f.Increment)
			ss.drain(st, h)
		}
	default:
		return false, nil
	}
	return true, nil
}

// maxWindow is the largest flow-control window HTTP/2 allows.
const maxWindow = 1<<31 - 1

// streamError resets st for an error of peer p's on it: RST_STREAM with
// code to p, and the call ends on the other side too. ss.mu is held.
func (ss *session) streamError(p *peer, st *stream, code http2.ErrCode) {
	if p == ss.client {
		ss.resetClientStream(st.id, code)
		return
	}
	p.fr.WriteRSTStream(st.id, code)
	st.toUp.ended = true // nothing more goes to p on it
	ss.fail(st, codes.Internal, fmt.Sprintf("%s broke HTTP/2 on the call: %v", p.name, code))
}

// lost ends upstream connection p and fails the calls on it with
// Unavailable. ss.mu is held.
func (ss *session) lost(p *peer, msg string) {
	if p.dead {
		return
	}
	p.dead = true
	if ss.ups[p.up] == p {
		delete(ss.ups, p.up)
	}
	delete(ss.peers, p)
	for _, st := range p.streams {
		ss.fail(st, codes.Unavailable, msg)
	}
	if p.nc != nil {
		p.nc.Close()
	}
}

// applySettings takes in the SETTINGS peer p sent, each checked first as
// RFC 9113 §6.5.2 requires (an invalid one is a connection error). ss.mu
// is held.
func (ss *session) applySettings(p *peer, f *http2.SettingsFrame) error {
	if err := f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			var ce http2.ConnectionError
			errors.As(err, &ce)
			return connError{http2.ErrCode(ce), fmt.Sprintf("invalid setting %v", s)}
		}
		return nil
	}); err != nil {
		return err
	}
	err := f.ForeachSetting(func(s http2.Setting) error {
		switch s.ID {
		case http2.SettingInitialWindowSize:
			delta := int64(s.Val) - p.initWin
			p.initWin = int64(s.Val)
			for _, st := range ss.streamsTo(p) {
				h := st.halfTo(p)
				if h.window+delta > maxWindow {
					return connError{http2.ErrCodeFlowControl, "SETTINGS_INITIAL_WINDOW_SIZE takes a stream window past 2^31-1"}
				}
				h.window += delta
			}
		case http2.SettingMaxFrameSize:
			p.maxFrame = s.Val
		case http2.SettingHeaderTableSize:
			p.enc.SetMaxDynamicTableSizeLimit(s.Val)
		}
		return nil
	})
	if err != nil {
		return err
	}
	ss.drainTo(p)
	return nil
}

// streamsTo returns the streams whose frames go to p.
func (ss *session) streamsTo(p *peer) map[uint32]*stream {
	if p == ss.client {
		return ss.streams
	}
	return p.streams
}

// fail ends st with a gRPC status of the relay's own: to the client, a
// trailers-only answer or, if the upstream's headers went out already,
// trailers; to the upstream, a reset. ss.mu is held.
func (ss *session) fail(st *stream, code codes.Code, msg string) {
	if st.done {
		return
	}
	c := ss.client
	// What was held for either side goes nowhere now.
	ss.dropPending(st, &st.toClient)
	ss.dropPending(st, &st.toUp)
	if !st.toClient.ended {
		fields := []hpack.HeaderField{
			{Name: "grpc-status", Value: strconv.Itoa(int(code))},
			{Name: "grpc-message", Value: encodeGRPCMessage(msg)},
		}
		if !st.answered {
			fields = append([]hpack.HeaderField{
				{Name: ":status", Value: "200"},
				{Name: "content-type", Value: "application/grpc"},
			}, fields...)
		}
		c.writeHeaders(st.id, fields, true)
		st.toClient.ended = true
	}
	if !st.clientEnded {
		// The client may still be sending: it need not.
		c.fr.WriteRSTStream(st.id, http2.ErrCodeNo)
	}
	if st.up != nil && !st.up.dead && !st.toUp.ended {
		st.up.fr.WriteRSTStream(st.id, http2.ErrCodeCancel)
	}
	ss.finish(st, code)
}

// finish forgets st and reports how it ended. ss.mu is held.
func (ss *session) finish(st *stream, code codes.Code) {
	if st.done {
		return
	}
	ss.dropPending(st, &st.toClient)
	ss.dropPending(st, &st.toUp)
	delete(ss.streams, st.id)
	ss.closedIDs[ss.closedNext] = st.id
	ss.closedNext = (ss.closedNext + 1) % recentClosed
	if st.up != nil {
		delete(st.up.streams, st.id)
	}
	st.end(code)
}

// wouldBlock reports whether reading the next frame from br may wait for
// the socket: then what the frames read so far produced is written first,
// so that it never waits behind a read. Flushing at that point, rather than
// after every frame, writes the output of a whole read in one go.
func wouldBlock(br *bufio.Reader) bool {
	n := br.Buffered()
	if n < frameHeaderLen {
		return true
	}
	h, _ := br.Peek(frameHeaderLen)
	length := int(h[0])<<16 | int(h[1])<<8 | int(h[2])
	return n < frameHeaderLen+length
}

const frameHeaderLen = 9

// flushAll writes every peer's pending output.
func (ss *session) flushAll() {
	ss.mu.Lock()
	peers := make([]*peer, 0, len(ss.peers)+1)
	peers = append(peers, ss.client)
	for p := range ss.peers {
		if len(p.out) > 0 && p.nc != nil {
			peers = append(peers, p)
		}
	}
	ss.mu.Unlock()
	for _, p := range peers {
		p.flush()
	}
}
