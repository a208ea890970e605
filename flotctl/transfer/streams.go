package transfer

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	streamingapi "github.com/containerd/containerd/api/services/streaming/v1"
	transfertypes "github.com/containerd/containerd/api/types/transfer"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/anypb"
)

// stream is one Streaming/Stream call bound to an id the server looks up
// when a transfer names it (the progress, import and export streams).
type stream struct {
	s      streamingapi.Streaming_StreamClient
	sendMu sync.Mutex
}

// newStreamID returns a unique stream id with a readable prefix, e.g.
// "progress-1733151234-Q2x…".
func newStreamID(prefix string) string {
	b := make([]byte, 12)
	rand.Read(b)
	return fmt.Sprintf("%s-%d-%s", prefix, time.Now().Unix(), base64.RawURLEncoding.EncodeToString(b))
}

// openStream opens a stream, sends its StreamInit and waits for the
// server's acknowledgement, after which the id can be named in a transfer.
func openStream(ctx context.Context, c streamingapi.StreamingClient, id string) (*stream, error) {
	s, err := c.Stream(ctx)
	if err != nil {
		return nil, fmt.Errorf("open stream %s: %w", id, err)
	}
	init, err := typeurl.MarshalAnyToProto(&streamingapi.StreamInit{ID: id})
	if err != nil {
		return nil, err
	}
	if err := s.Send(init); err != nil {
		return nil, fmt.Errorf("init stream %s: %w", id, recvErr(s, err))
	}
	if _, err := s.Recv(); err != nil {
		return nil, fmt.Errorf("init stream %s: %w", id, err)
	}
	return &stream{s: s}, nil
}

// recvErr returns the server's reason when a Send failed with io.EOF.
func recvErr(s streamingapi.Streaming_StreamClient, err error) error {
	if errors.Is(err, io.EOF) {
		if _, rerr := s.Recv(); rerr != nil && !errors.Is(rerr, io.EOF) {
			return rerr
		}
	}
	return err
}

func (s *stream) send(v any) error {
	a, err := typeurl.MarshalAnyToProto(v)
	if err != nil {
		return err
	}
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	return s.s.Send(a)
}

func (s *stream) recv() (*anypb.Any, error) { return s.s.Recv() }

func (s *stream) closeSend() error {
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	return s.s.CloseSend()
}

// chunk is the most data sent in one message, as containerd's clients do.
const chunk = 32 << 10

// sendReader copies r to the stream as the server grants window: the
// server sends WindowUpdate messages, the client never has more bytes in
// flight than granted. It closes its side at r's end and returns.
func sendReader(ctx context.Context, s *stream, r io.Reader) error {
	window := make(chan int32, 16)
	recvDone := make(chan error, 1)
	go func() {
		defer close(window)
		for {
			a, err := s.recv()
			if err != nil {
				if errors.Is(err, io.EOF) {
					err = nil
				}
				recvDone <- err
				return
			}
			if wu, ok := decode(a).(*transfertypes.WindowUpdate); ok {
				select {
				case window <- wu.Update:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	buf := make([]byte, chunk)
	var credit int32
	for {
		for credit <= 0 {
			select {
			case u, ok := <-window:
				if !ok {
					err := <-recvDone
					if err == nil {
						err = io.ErrUnexpectedEOF
					}
					return fmt.Errorf("server stopped reading: %w", err)
				}
				credit += u
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		n := int32(len(buf))
		if n > credit {
			n = credit
		}
		m, rerr := r.Read(buf[:n])
		if m > 0 {
			if err := s.send(&transfertypes.Data{Data: buf[:m]}); err != nil {
				return fmt.Errorf("send: %w", err)
			}
			credit -= int32(m)
		}
		if rerr == io.EOF {
			return s.closeSend()
		}
		if rerr != nil {
			s.closeSend()
			return rerr
		}
	}
}

// windowSize is how many bytes the client lets the server send ahead.
const windowSize = 2 * chunk

// receiveWriter copies what the server sends on s to w, granting it window
// as it goes, until the server ends the stream.
func receiveWriter(ctx context.Context, s *stream, w io.Writer) error {
	if err := s.send(&transfertypes.WindowUpdate{Update: windowSize}); err != nil {
		return err
	}
	var outstanding int32 = windowSize
	for {
		a, err := s.recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		d, ok := decode(a).(*transfertypes.Data)
		if !ok {
			return fmt.Errorf("export stream: unexpected %s", a.GetTypeUrl())
		}
		if _, err := w.Write(d.Data); err != nil {
			return err
		}
		outstanding -= int32(len(d.Data))
		if outstanding < windowSize/2 {
			if err := s.send(&transfertypes.WindowUpdate{Update: windowSize - outstanding}); err != nil && !errors.Is(err, io.EOF) {
				return err
			}
			outstanding = windowSize
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// decode returns the message in a, or nil. It accepts a type URL with or
// without the "type.googleapis.com/" prefix, as typeurl does.
func decode(a *anypb.Any) any {
	v, err := typeurl.UnmarshalAny(a)
	if err != nil {
		return nil
	}
	return v
}
