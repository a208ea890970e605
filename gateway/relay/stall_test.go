package relay_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/gateway/internal/sockdir"
	"github.com/flotilla/flotilla/gateway/relay"
)

// TestSilentUpstreamFailsItsCallsWithinTheStallTimeout: an upstream that
// took a call and then sends nothing, not even a PING's answer (a link
// gone down), fails the call with Unavailable saying so, instead of
// holding it until TCP gives up.
func TestSilentUpstreamFailsItsCallsWithinTheStallTimeout(t *testing.T) {
	dir := sockdir.New(t)
	u := startRawUpstream(t, dir)
	const stall = 400 * time.Millisecond
	f := startRelay(t, dir, u.addr, relay.WithStallTimeout(stall))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := f.conn.NewStream(ctx, bidi, "/test.Pull/Forever")
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("x")
	if err := s.SendMsg(&msg); err != nil {
		t.Fatal(err)
	}
	u.next(t, "the relay's PING to the silent upstream", func(f http2.Frame) bool {
		p, ok := f.(*http2.PingFrame)
		return ok && !p.IsAck()
	})
	var reply []byte
	err = s.RecvMsg(&reply)
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "no answer for "+stall.String()) {
		t.Fatalf("call on a silent upstream = %v, want Unavailable saying it had no answer for %v", err, stall)
	}
}

// TestBusyUpstreamAnsweringPingsKeepsItsCalls: a call whose handler takes
// longer than the stall timeout, on an upstream that answers PINGs, is
// not cut.
func TestBusyUpstreamAnsweringPingsKeepsItsCalls(t *testing.T) {
	dir := sockdir.New(t)
	const stall = 400 * time.Millisecond
	b := startBackend(t, dir, func(_ any, ss grpc.ServerStream) error {
		var msg []byte
		if err := ss.RecvMsg(&msg); err != nil {
			return err
		}
		select {
		case <-time.After(4 * stall): // the work: longer than the stall timeout
		case <-ss.Context().Done():
			return ss.Context().Err()
		}
		return ss.SendMsg(&msg)
	}, grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: stall / 4, PermitWithoutStream: true}))
	f := startRelay(t, dir, b.addr, relay.WithStallTimeout(stall))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := f.conn.NewStream(ctx, bidi, "/test.Slow/Work")
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("slow")
	if err := s.SendMsg(&msg); err != nil {
		t.Fatal(err)
	}
	var reply []byte
	if err := s.RecvMsg(&reply); err != nil || string(reply) != "slow" {
		t.Fatalf("slow call on a live upstream = %q, %v; want its answer", reply, err)
	}
}
