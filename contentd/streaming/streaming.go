// Package streaming serves containerd's Streaming API: a client opens a
// bidirectional stream of Any messages, names it in a StreamInit, and later
// calls (Transfer) refer to it by that name to send progress, ask for
// credentials or carry an archive's bytes. The Manager keeps the open
// streams of each namespace by name; the byte-stream helpers speak the
// window protocol containerd's clients use for raw data.
package streaming

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	streamingapi "github.com/containerd/containerd/api/services/streaming/v1"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/flotilla/flotilla/services/namespace"
)

// ToAny encodes m as containerd's clients do (typeurl: the message's
// full name as type URL, with no type.googleapis.com/ prefix), which is
// what their typeurl.UnmarshalTo expects. Received messages are decoded
// with anypb's UnmarshalTo, which accepts either form.
func ToAny(m proto.Message) (*anypb.Any, error) {
	a, err := typeurl.MarshalAny(m)
	if err != nil {
		return nil, err
	}
	return typeurl.MarshalProto(a), nil
}

// Stream is one registered stream, as the server sees it.
type Stream interface {
	// Send sends a message to the client. It is safe for concurrent use.
	Send(*anypb.Any) error
	// Recv receives the client's next message; io.EOF once the client has
	// closed its side.
	Recv() (*anypb.Any, error)
	// Close ends the stream: the client's call returns and the name is
	// free again. Closing twice does nothing.
	Close() error
}

// Getter finds registered streams.
type Getter interface {
	// Get returns the stream called name in the context's namespace;
	// NotFound if none is open under that name.
	Get(ctx context.Context, name string) (Stream, error)
}

// Manager keeps the open streams by namespace and name. It is safe for
// concurrent use.
type Manager struct {
	mu      sync.Mutex
	streams map[key]*serverStream
}

type key struct{ ns, name string }

// NewManager returns a manager with no streams.
func NewManager() *Manager { return &Manager{streams: map[key]*serverStream{}} }

// Get implements Getter.
func (m *Manager) Get(ctx context.Context, name string) (Stream, error) {
	ns, err := namespace.Required(ctx)
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.streams[key{ns, name}]
	if !ok {
		return nil, fmt.Errorf("stream %q: %w", name, errdefs.ErrNotFound)
	}
	return s, nil
}

func (m *Manager) register(ns, name string, s *serverStream) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := key{ns, name}
	if _, ok := m.streams[k]; ok {
		return fmt.Errorf("stream %q: %w", name, errdefs.ErrAlreadyExists)
	}
	m.streams[k] = s
	return nil
}

func (m *Manager) unregister(ns, name string, s *serverStream) {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := key{ns, name}
	if m.streams[k] == s {
		delete(m.streams, k)
	}
}

// Service serves containerd.services.streaming.v1.Streaming over a Manager.
type Service struct {
	streamingapi.UnimplementedStreamingServer
	m *Manager
}

// NewService returns the Streaming service registering streams in m.
func NewService(m *Manager) *Service { return &Service{m: m} }

// Stream implements the Streaming API: the first message is a StreamInit
// naming the stream; once registered, the server answers with an Empty so
// the client knows the name can be used, then the stream stays open until
// the client goes away or the server side closes it.
func (s *Service) Stream(srv streamingapi.Streaming_StreamServer) error {
	ctx := srv.Context()
	ns, err := namespace.Required(ctx)
	if err != nil {
		return err
	}
	first, err := srv.Recv()
	if err != nil {
		return err
	}
	var init streamingapi.StreamInit
	if err := first.UnmarshalTo(&init); err != nil {
		return fmt.Errorf("first message of a stream must be a StreamInit, got %s: %w", first.GetTypeUrl(), errdefs.ErrInvalidArgument)
	}
	if init.GetID() == "" {
		return fmt.Errorf("stream id is required: %w", errdefs.ErrInvalidArgument)
	}
	ss := &serverStream{srv: srv, closed: make(chan struct{})}
	if err := s.m.register(ns, init.GetID(), ss); err != nil {
		return err
	}
	defer s.m.unregister(ns, init.GetID(), ss)
	ack, err := ToAny(&emptypb.Empty{})
	if err != nil {
		return err
	}
	if err := ss.Send(ack); err != nil {
		return err
	}
	select {
	case <-ctx.Done():
	case <-ss.closed:
	}
	return nil
}

// serverStream is a registered stream. Sends are serialised (progress is
// reported from many goroutines); there is one receiver at a time.
type serverStream struct {
	srv    streamingapi.Streaming_StreamServer
	sendMu sync.Mutex
	once   sync.Once
	closed chan struct{}
}

func (s *serverStream) Send(a *anypb.Any) error {
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	select {
	case <-s.closed:
		return fmt.Errorf("stream closed: %w", io.ErrClosedPipe)
	default:
	}
	return s.srv.Send(a)
}

func (s *serverStream) Recv() (*anypb.Any, error) {
	a, err := s.srv.Recv()
	if err != nil && !errors.Is(err, io.EOF) {
		select {
		case <-s.closed:
			return nil, io.EOF
		default:
		}
	}
	return a, err
}

// Close waits for a Send in progress, so nothing is sent once the
// handler has returned.
func (s *serverStream) Close() error {
	s.once.Do(func() {
		s.sendMu.Lock()
		close(s.closed)
		s.sendMu.Unlock()
	})
	return nil
}
