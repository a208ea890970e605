package server

import (
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	eventsapi "github.com/containerd/containerd/api/services/events/v1"
	"github.com/containerd/containerd/api/types"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/services/config"
	"github.com/flotilla/flotilla/services/namespace"
)

// subscribeUntilDone is an Events service whose subscriptions last until
// their context ends, as eventd's do.
type subscribeUntilDone struct {
	eventsapi.UnimplementedEventsServer
}

func (subscribeUntilDone) Subscribe(_ *eventsapi.SubscribeRequest, s eventsapi.Events_SubscribeServer) error {
	if err := s.Send(&types.Envelope{Topic: "/subscribed"}); err != nil {
		return err
	}
	<-s.Context().Done()
	return nil
}

func TestStopEndsLongLivedCallsFirst(t *testing.T) {
	dir := shortDir(t)
	sock := filepath.Join(dir, "l.sock")
	// A timeout far longer than the stop may take: a stop that waited for
	// the subscription would take all of it.
	const timeout = 30 * time.Second
	srv := New("testd", config.Common{Address: sock, ShutdownTimeout: config.Duration(timeout)}, discardLogger())
	eventsapi.RegisterEventsServer(srv.GRPC(), subscribeUntilDone{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	waitSocket(t, sock)

	events := eventsapi.NewEventsClient(client(t, sock))
	cctx := metadata.AppendToOutgoingContext(context.Background(), namespace.MetadataKey, "default")
	sub, err := events.Subscribe(cctx, &eventsapi.SubscribeRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sub.Recv(); err != nil {
		t.Fatalf("subscription not in place: %v", err)
	}

	start := time.Now()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
		t.Logf("stopped %v after being asked, with a subscriber attached", time.Since(start))
	case <-time.After(timeout / 3):
		t.Fatalf("still stopping after %v with a subscriber attached (timeout %v)", timeout/3, timeout)
	}
	_, err = sub.Recv()
	if status.Code(err) != codes.Unavailable || !strings.Contains(status.Convert(err).Message(), "testd is shutting down") {
		t.Fatalf("the subscription ended with %v, want Unavailable: testd is shutting down", err)
	}
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }
