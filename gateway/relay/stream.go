package relay

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
)

// stream is one call: a stream ID on the client's connection and the same
// ID on its upstream's.
type stream struct {
	id     uint32
	method string
	up     *peer // nil when the relay answered the call itself

	toUp, toClient half

	// clientEnded: the client sent END_STREAM (or the relay stopped reading
	// it); answered: the upstream's response headers went to the client.
	clientEnded bool
	answered    bool
	// resetClient: the upstream reset the stream (NO_ERROR) after its
	// whole answer; the client gets the reset once it has the answer.
	resetClient bool
	code        codes.Code // from the upstream's trailers
	done        bool
	// contentLength is the request's content-length, -1 if none; bodyLen
	// counts the DATA received against it.
	contentLength, bodyLen int64
	observed               func(codes.Code)
	traced                 func(codes.Code) // ends the CallTracer's span
}

// end reports the call's outcome, once.
func (st *stream) end(code codes.Code) {
	if st.done {
		return
	}
	st.done = true
	if st.observed != nil {
		st.observed(code)
	}
	if st.traced != nil {
		st.traced(code)
	}
}

// halfTo is st's direction toward p.
func (st *stream) halfTo(p *peer) *half {
	if p == st.up {
		return &st.toUp
	}
	return &st.toClient
}

// half is one direction of a stream, named by where its frames go.
type half struct {
	id  uint32
	dst *peer
	// window is what dst still lets the relay send on the stream.
	window int64
	// pending holds, in order, what dst has no window for yet (and headers
	// that must follow it).
	pending []item
	// ended: END_STREAM has gone to dst.
	ended bool
	// unacked is what the other side sent on the stream, and the relay
	// passed on, without being granted back yet; srcEnded: the other side
	// has ended its half, so it needs no more window.
	unacked  int64
	srcEnded bool
	// recvWin is what the relay still lets the other side send on the
	// stream; a peer that sends past it breaks the protocol.
	recvWin int64
}

type item struct {
	data    []byte
	headers []hpack.HeaderField
	isHdr   bool
	end     bool
	// size is how much of the sender's window the item holds.
	size int
}

// source is the peer whose frames travel along h.
func (ss *session) source(st *stream, h *half) *peer {
	if h == &st.toUp {
		return ss.client
	}
	return st.up
}

// forwardData passes a DATA frame's payload along h; frameLen is the
// frame's length (payload and padding) for flow control. ss.mu is held.
func (ss *session) forwardData(st *stream, h *half, data []byte, end bool, frameLen int) {
	src := ss.source(st, h)
	if pad := frameLen - len(data); pad > 0 {
		ss.credit(src, h, pad)
	}
	if end {
		h.srcEnded = true
		if h == &st.toUp {
			st.clientEnded = true
		}
	}
	if len(h.pending) > 0 {
		h.pending = append(h.pending, item{data: bytes.Clone(data), end: end, size: len(data)})
		return
	}
	n := ss.writeData(st, h, data, end)
	if n < len(data) || (end && !h.ended) {
		h.pending = append(h.pending, item{data: bytes.Clone(data[n:]), end: end, size: len(data) - n})
	}
	ss.credit(src, h, n)
	ss.maybeFinish(st)
}

// writeData writes as much of data along h as the windows allow, ending
// the stream with the last of it if end. It returns how much it wrote.
func (ss *session) writeData(st *stream, h *half, data []byte, end bool) int {
	dst := h.dst
	written := 0
	for {
		// A window may be negative (a peer lowered its initial window);
		// an empty frame, such as a bare END_STREAM, needs none.
		n := max(0, min(int64(len(data)-written), h.window, dst.sendConn, int64(dst.maxFrame)))
		if n == 0 && len(data)-written > 0 {
			return written
		}
		last := written+int(n) == len(data)
		dst.writeDataFrame(st.id, data[written:written+int(n)], end && last)
		written += int(n)
		h.window -= n
		dst.sendConn -= n
		if last {
			if end {
				h.ended = true
			}
			return written
		}
	}
}

// sendHeaders passes a header block along h, after anything held there.
// ss.mu is held.
func (ss *session) sendHeaders(st *stream, h *half, fields []hpack.HeaderField, end bool) {
	if end {
		h.srcEnded = true
		if h == &st.toUp {
			st.clientEnded = true
		}
	}
	if len(h.pending) > 0 {
		h.pending = append(h.pending, item{headers: fields, isHdr: true, end: end})
		return
	}
	h.dst.writeHeaders(st.id, fields, end)
	if end {
		h.ended = true
	}
	ss.maybeFinish(st)
}

// drain writes what h holds as far as the windows allow. ss.mu is held.
func (ss *session) drain(st *stream, h *half) {
	src := ss.source(st, h)
	for len(h.pending) > 0 {
		it := &h.pending[0]
		if it.isHdr {
			h.dst.writeHeaders(st.id, it.headers, it.end)
			if it.end {
				h.ended = true
			}
		} else {
			n := ss.writeData(st, h, it.data, it.end)
			ss.credit(src, h, n)
			it.size -= n
			if n < len(it.data) || (it.end && !h.ended) {
				it.data = it.data[n:]
				return
			}
		}
		h.pending[0] = item{}
		h.pending = h.pending[1:]
	}
	ss.maybeFinish(st)
}

// drainTo drains every stream toward p, once p's connection window grew.
func (ss *session) drainTo(p *peer) {
	for _, st := range ss.streamsTo(p) {
		if p.sendConn <= 0 {
			return
		}
		h := st.halfTo(p)
		if len(h.pending) > 0 {
			ss.drain(st, h)
		}
	}
}

// dropPending discards what h holds, giving its sender the window back.
func (ss *session) dropPending(st *stream, h *half) {
	if len(h.pending) == 0 {
		return
	}
	held := 0
	for _, it := range h.pending {
		held += it.size
	}
	h.pending = nil
	if src := ss.source(st, h); src != nil && !src.dead {
		ss.credit(src, nil, held)
	}
}

// maybeFinish forgets st once both directions have ended.
func (ss *session) maybeFinish(st *stream) {
	if st.toUp.ended && st.toClient.ended && !st.done {
		if st.resetClient && !st.clientEnded {
			ss.client.fr.WriteRSTStream(st.id, http2.ErrCodeNo)
		}
		ss.finish(st, st.code)
	}
}

// credit records that n bytes src sent (on the stream of h, or none) were
// passed on or dropped, and grants src its windows back in batches.
func (ss *session) credit(src *peer, h *half, n int) {
	if n <= 0 || src == nil {
		return
	}
	src.unacked += int64(n)
	if src.unacked >= connWindow/4 {
		src.fr.WriteWindowUpdate(0, uint32(src.unacked))
		src.recvConn += src.unacked
		src.unacked = 0
	}
	if h == nil {
		return
	}
	h.unacked += int64(n)
	// Once the sender has ended the stream it sends nothing more: no update.
	if h.unacked >= streamWindow/4 && !h.srcEnded {
		src.fr.WriteWindowUpdate(h.id, uint32(h.unacked))
		h.recvWin += h.unacked
		h.unacked = 0
	}
}

// peer is one HTTP/2 connection of a session: the client's, or one to an
// upstream.
type peer struct {
	ss   *session
	name string
	up   *Upstream // nil for the client
	nc   net.Conn  // nil until an upstream connection is made

	// Under ss.mu: output not yet written, and the writer that encodes it.
	out []byte
	fr  *http2.Framer
	enc *hpack.Encoder
	hb  bytes.Buffer // header block scratch

	sendConn int64  // connection window the peer grants the relay
	recvConn int64  // connection window the relay grants the peer
	initWin  int64  // the peer's initial stream window
	maxFrame uint32 // the largest frame the peer takes
	unacked  int64  // bytes the peer sent that were passed on, not yet granted back
	dead     bool
	heard    time.Time // upstream only: when it last sent a frame (WithStallTimeout)
	pinged   time.Time // upstream only: when the relay last sent it a PING

	streams map[uint32]*stream // upstream only: the streams on this connection

	wmu   sync.Mutex // serializes writes to nc
	spare []byte
}

func newPeer(ss *session, name string, up *Upstream) *peer {
	p := &peer{
		ss:       ss,
		name:     name,
		up:       up,
		sendConn: defaultWindow,
		recvConn: connWindow, // granted with the first frames the relay sends
		initWin:  defaultWindow,
		maxFrame: defaultMaxFrame,
		streams:  make(map[uint32]*stream),
	}
	p.fr = http2.NewFramer(outWriter{p}, nil)
	p.enc = hpack.NewEncoder(&p.hb)
	return p
}

// received accounts for n bytes of DATA from the peer against the
// connection window the relay granted it; false means the peer sent past it.
func (p *peer) received(n int) bool {
	p.recvConn -= int64(n)
	return p.recvConn >= 0
}

// outWriter appends what the framer writes to the peer's output.
type outWriter struct{ p *peer }

func (w outWriter) Write(b []byte) (int, error) {
	w.p.out = append(w.p.out, b...)
	return len(b), nil
}

// writeDataFrame appends a DATA frame; the header is written by hand so that
// the payload is copied once, into the output. ss.mu is held.
func (p *peer) writeDataFrame(id uint32, data []byte, end bool) {
	var hdr [9]byte
	n := len(data)
	hdr[0], hdr[1], hdr[2] = byte(n>>16), byte(n>>8), byte(n)
	hdr[3] = byte(http2.FrameData)
	if end {
		hdr[4] = byte(http2.FlagDataEndStream)
	}
	binary.BigEndian.PutUint32(hdr[5:], id&(1<<31-1))
	p.out = append(p.out, hdr[:]...)
	p.out = append(p.out, data...)
	if len(p.out) >= ioBuffer {
		p.ss.full = true
	}
}

// writeHeaders encodes fields with the peer's HPACK state and appends them
// as HEADERS and, past the peer's frame size, CONTINUATION frames.
func (p *peer) writeHeaders(id uint32, fields []hpack.HeaderField, end bool) {
	p.hb.Reset()
	for _, f := range fields {
		p.enc.WriteField(f)
	}
	block := p.hb.Bytes()
	first := true
	for first || len(block) > 0 {
		n := min(len(block), int(p.maxFrame))
		frag, rest := block[:n], block[n:]
		if first {
			p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: frag, EndStream: end, EndHeaders: len(rest) == 0})
			first = false
		} else {
			p.fr.WriteContinuation(id, len(rest) == 0, frag)
		}
		block = rest
	}
}

// headerValue is the value of the field named name, or "".
func headerValue(fields []hpack.HeaderField, name string) string {
	for _, f := range fields {
		if f.Name == name {
			return f.Value
		}
	}
	return ""
}

// flush writes the peer's pending output to its connection.
func (p *peer) flush() {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	ss := p.ss
	ss.mu.Lock()
	if p.nc == nil || len(p.out) == 0 {
		ss.mu.Unlock()
		return
	}
	buf := p.out
	p.out = p.spare[:0]
	p.spare = nil
	ss.mu.Unlock()

	_, err := p.nc.Write(buf)

	ss.locked(func() error {
		if cap(buf) <= 4*ioBuffer {
			p.spare = buf[:0]
		}
		if err != nil && p != ss.client {
			ss.lost(p, p.name+" is unavailable: "+err.Error())
		}
		return nil
	})
	if err != nil && p == ss.client {
		ss.close(err)
	}
}

// readFramer returns a framer reading frames, with header blocks decoded.
func readFramer(r io.Reader) *http2.Framer {
	fr := http2.NewFramer(io.Discard, r)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	fr.MaxHeaderListSize = 16 << 20
	// The relay never raises SETTINGS_MAX_FRAME_SIZE: larger frames are an error.
	fr.SetMaxReadFrameSize(defaultMaxFrame)
	return fr
}
