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
	"strconv"
	"sync"
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

// Server relays the calls of the connections it serves.
type Server struct {
	route     Router
	observe   Observer
	readyWait time.Duration
	log       *slog.Logger

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

// WithReadyWait sets how long a call waits for an upstream that cannot be
// reached before it fails with Unavailable (1.5 s by default: within the two
// seconds a client may wait for an answer naming the service).
func WithReadyWait(d time.Duration) Option { return func(s *Server) { s.readyWait = d } }

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
// calls (GOAWAY), and waits for the calls in flight to end. When ctx ends
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
		f, err := fr.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				ss.mu.Lock()
				ss.resetFromClient(se.StreamID, se.Code)
				ss.mu.Unlock()
				continue
			}
			ss.close(err)
			return
		}
		ss.mu.Lock()
		err = ss.fromClient(f)
		done := ss.going && len(ss.streams) == 0
		full := ss.full
		ss.full = false
		ss.mu.Unlock()
		if full || done || err != nil || wouldBlock(br) {
			ss.flushAll()
		}
		if err != nil {
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

// fromClient handles one frame from the client. An error ends the
// connection, the client told why with GOAWAY. ss.mu is held.
func (ss *session) fromClient(f http2.Frame) error {
	c := ss.client
	if ss.connectionFrame(c, f) {
		return nil
	}
	switch f := f.(type) {
	case *http2.MetaHeadersFrame:
		if st := ss.streams[f.StreamID]; st != nil {
			// Trailers from the client: gRPC sends none, but pass them on.
			ss.sendHeaders(st, &st.toUp, f.Fields, f.StreamEnded())
			return nil
		}
		if f.StreamID <= ss.lastID || f.StreamID%2 == 0 {
			return nil // a stream that is over, or not the client's to open
		}
		ss.lastID = f.StreamID
		if len(ss.streams) >= maxStreams {
			c.fr.WriteRSTStream(f.StreamID, http2.ErrCodeRefusedStream)
			return nil
		}
		ss.open(f)
	case *http2.DataFrame:
		if !c.received(int(f.Length)) {
			c.fr.WriteGoAway(ss.lastID, http2.ErrCodeFlowControl, nil)
			return errors.New("client sent past its connection window")
		}
		st := ss.streams[f.StreamID]
		if st == nil || st.toUp.ended {
			// A call that is over (answered, reset): its data goes nowhere,
			// but the client gets its window back.
			ss.credit(c, nil, int(f.Length))
			return nil
		}
		if st.toUp.recvWin -= int64(f.Length); st.toUp.recvWin < 0 {
			ss.credit(c, nil, int(f.Length))
			ss.fail(st, codes.Internal, "the client sent past its stream window")
			return nil
		}
		ss.forwardData(st, &st.toUp, f.Data(), f.StreamEnded(), int(f.Length))
	case *http2.RSTStreamFrame:
		ss.resetFromClient(f.StreamID, f.ErrCode)
	case *http2.GoAwayFrame, *http2.PriorityFrame:
		// The client will close; priorities do not matter to a relay.
	}
	return nil
}

// resetFromClient ends stream id at the client's request. ss.mu is held.
func (ss *session) resetFromClient(id uint32, code http2.ErrCode) {
	st := ss.streams[id]
	if st == nil {
		return
	}
	if st.up != nil && !st.up.dead {
		st.up.fr.WriteRSTStream(id, code)
	}
	ss.finish(st, codes.Canceled)
}

// open starts the call the client's HEADERS frame f begins. ss.mu is held.
func (ss *session) open(f *http2.MetaHeadersFrame) {
	method := f.PseudoValue("path")
	st := &stream{id: f.StreamID, method: method, code: codes.OK}
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
	u, err := ss.srv.route(method)
	if err != nil {
		code, msg := statusOf(err)
		ss.fail(st, code, msg)
		return
	}
	p := ss.upstream(u)
	st.up = p
	st.toUp = half{id: st.id, dst: p, window: p.initWin, recvWin: streamWindow}
	p.streams[st.id] = st
	ss.sendHeaders(st, &st.toUp, withHeader(forwardable(f.Fields), u.Header), f.StreamEnded())
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
		ss.lost(p, fmt.Sprintf("%s is unavailable: %v", p.name, err))
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
	ss.mu.Unlock()
	p.flush()
	ss.readUpstream(p)
}

func (ss *session) isClosed() bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.closed
}

// readUpstream reads p's frames until its connection ends.
func (ss *session) readUpstream(p *peer) {
	br := bufio.NewReaderSize(p.nc, ioBuffer)
	fr := readFramer(br)
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				ss.mu.Lock()
				if st := p.streams[se.StreamID]; st != nil {
					p.fr.WriteRSTStream(se.StreamID, se.Code)
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
		ss.mu.Lock()
		ss.fromUpstream(p, f)
		done := ss.going && len(ss.streams) == 0
		full := ss.full
		ss.full = false
		ss.mu.Unlock()
		if full || done || wouldBlock(br) {
			ss.flushAll()
		}
		if done {
			ss.close(nil)
			return
		}
	}
}

// fromUpstream handles one frame from upstream connection p. ss.mu is held.
func (ss *session) fromUpstream(p *peer, f http2.Frame) {
	if ss.connectionFrame(p, f) {
		return
	}
	switch f := f.(type) {
	case *http2.MetaHeadersFrame:
		st := p.streams[f.StreamID]
		if st == nil {
			return
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
			p.fr.WriteGoAway(0, http2.ErrCodeFlowControl, nil)
			ss.lost(p, p.name+" sent past its connection window")
			return
		}
		st := p.streams[f.StreamID]
		if st == nil || st.toClient.ended {
			ss.credit(p, nil, int(f.Length))
			return
		}
		if st.toClient.recvWin -= int64(f.Length); st.toClient.recvWin < 0 {
			ss.credit(p, nil, int(f.Length))
			ss.fail(st, codes.Internal, p.name+" sent past its stream window")
			return
		}
		ss.forwardData(st, &st.toClient, f.Data(), f.StreamEnded(), int(f.Length))
	case *http2.RSTStreamFrame:
		st := p.streams[f.StreamID]
		if st == nil {
			return
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
	}
}

// connectionFrame handles the frames that mean the same from the client
// and from an upstream: SETTINGS, PING and WINDOW_UPDATE. It reports
// whether f was one of them. ss.mu is held.
func (ss *session) connectionFrame(p *peer, f http2.Frame) bool {
	switch f := f.(type) {
	case *http2.SettingsFrame:
		if !f.IsAck() {
			ss.applySettings(p, f)
			p.fr.WriteSettingsAck()
		}
	case *http2.PingFrame:
		if !f.IsAck() {
			p.fr.WritePing(true, f.Data)
		}
	case *http2.WindowUpdateFrame:
		if f.StreamID == 0 {
			p.sendConn += int64(f.Increment)
			ss.drainTo(p)
		} else if st := ss.streamsTo(p)[f.StreamID]; st != nil {
			h := st.halfTo(p)
			h.window += int64(f.Increment)
			ss.drain(st, h)
		}
	default:
		return false
	}
	return true
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

// applySettings takes in the SETTINGS peer p sent. ss.mu is held.
func (ss *session) applySettings(p *peer, f *http2.SettingsFrame) {
	f.ForeachSetting(func(s http2.Setting) error {
		switch s.ID {
		case http2.SettingInitialWindowSize:
			delta := int64(s.Val) - p.initWin
			p.initWin = int64(s.Val)
			for _, st := range ss.streamsTo(p) {
				h := st.halfTo(p)
				h.window += delta
			}
		case http2.SettingMaxFrameSize:
			p.maxFrame = s.Val
		case http2.SettingHeaderTableSize:
			p.enc.SetMaxDynamicTableSizeLimit(s.Val)
		}
		return nil
	})
	ss.drainTo(p)
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
