package streaming

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	transfertypes "github.com/containerd/containerd/api/types/transfer"
	"github.com/containerd/errdefs"
)

// window is how many bytes a reader lets the sender have in flight. The
// client sends at most what it was granted, in messages of up to 32 KiB.
const window = 1 << 20

// maxData is the largest Data message a writer sends.
const maxData = 256 << 10

// NewReader returns the bytes the client sends on s (containerd's
// SendStream: Data messages, paced by WindowUpdate messages from here),
// ending with io.EOF when the client closes its side. Close closes s.
func NewReader(s Stream) io.ReadCloser { return &reader{s: s} }

type reader struct {
	s       Stream
	granted int64 // bytes granted and not yet received
	buf     []byte
	err     error
}

func (r *reader) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		if r.granted < window/2 {
			upd, err := ToAny(&transfertypes.WindowUpdate{Update: window})
			if err != nil {
				return 0, err
			}
			if err := r.s.Send(upd); err != nil && !errors.Is(err, io.EOF) {
				r.err = fmt.Errorf("grant stream window: %w", err)
				return 0, r.err
			}
			r.granted += window
		}
		a, err := r.s.Recv()
		if err != nil {
			r.err = err
			if !errors.Is(err, io.EOF) {
				r.err = fmt.Errorf("receive stream: %w", err)
			}
			continue
		}
		var d transfertypes.Data
		if err := a.UnmarshalTo(&d); err != nil {
			r.err = fmt.Errorf("stream sent %s where data was expected: %w", a.GetTypeUrl(), errdefs.ErrInvalidArgument)
			continue
		}
		r.granted -= int64(len(d.Data))
		r.buf = d.Data
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

func (r *reader) Close() error { return r.s.Close() }

// NewWriter returns a writer sending to the client on s (containerd's
// ReceiveStream: Data messages no larger than the window the client has
// granted with WindowUpdate messages). Close closes s, which the client
// reads as the end of the data. Writes fail once ctx is done.
func NewWriter(ctx context.Context, s Stream) io.WriteCloser {
	w := &writer{ctx: ctx, s: s, more: make(chan struct{}, 1)}
	go w.receiveWindows()
	return w
}

type writer struct {
	ctx  context.Context
	s    Stream
	mu   sync.Mutex
	room int64
	err  error
	more chan struct{}
}

func (w *writer) receiveWindows() {
	for {
		a, err := w.s.Recv()
		if err != nil {
			w.mu.Lock()
			if errors.Is(err, io.EOF) {
				err = fmt.Errorf("client stopped reading: %w", io.ErrClosedPipe)
			}
			w.err = err
			w.mu.Unlock()
			w.signal()
			return
		}
		var u transfertypes.WindowUpdate
		if a.UnmarshalTo(&u) != nil {
			continue
		}
		w.mu.Lock()
		w.room += int64(u.Update)
		w.mu.Unlock()
		w.signal()
	}
}

func (w *writer) signal() {
	select {
	case w.more <- struct{}{}:
	default:
	}
}

func (w *writer) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		w.mu.Lock()
		room, err := w.room, w.err
		w.mu.Unlock()
		if room == 0 {
			if err != nil {
				return written, err
			}
			select {
			case <-w.ctx.Done():
				return written, w.ctx.Err()
			case <-w.more:
			}
			continue
		}
		n := min(int64(len(p)), room, maxData)
		a, err := ToAny(&transfertypes.Data{Data: p[:n]})
		if err != nil {
			return written, err
		}
		if err := w.s.Send(a); err != nil {
			return written, fmt.Errorf("send stream: %w", err)
		}
		w.mu.Lock()
		w.room -= n
		w.mu.Unlock()
		written += int(n)
		p = p[n:]
	}
	return written, nil
}

func (w *writer) Close() error { return w.s.Close() }
