package client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/types/known/emptypb"
)

func TestExplainSaysWhatToDoWhenNothingListens(t *testing.T) {
	addr := filepath.Join(t.TempDir(), "none.sock")
	c, err := New(addr, "default")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = c.Version.Version(ctx, &emptypb.Empty{})
	if !errdefs.IsUnavailable(err) {
		t.Fatalf("err = %v, want Unavailable", err)
	}
	got := Explain(err, addr, "default")
	if want := "cannot reach Flotilla at " + addr + ": is the stack up? (make up"; !strings.HasPrefix(got.Error(), want) {
		t.Errorf("got %q, want it to start %q", got, want)
	}
	if !errdefs.IsUnavailable(got) {
		t.Error("the explained error lost its kind")
	}
}

func TestExplainKeepsABackendsOwnMessage(t *testing.T) {
	// Something listens: an Unavailable answer is about what the gateway
	// could not reach, and its message says so.
	addr := filepath.Join(t.TempDir(), "up.sock")
	l, err := net.Listen("unix", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	in := fmt.Errorf("contentd at /run/x.sock: %w", errdefs.ErrUnavailable)
	if got := Explain(in, addr, "default"); !errors.Is(got, in) || got.Error() != in.Error() {
		t.Errorf("got %q, want the error unchanged", got)
	}
	if Explain(nil, addr, "default") != nil {
		t.Error("nil became an error")
	}
}
