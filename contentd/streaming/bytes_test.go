package streaming

import (
	"bytes"
	"context"
	"io"
	"testing"

	transfertypes "github.com/containerd/containerd/api/types/transfer"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/anypb"
)

// pipeStream is one end of an in-memory stream. The client side decodes
// with typeurl.UnmarshalTo, as containerd's clients do, so the type URLs
// the server sends are checked too.
type pipeStream struct {
	in  <-chan *anypb.Any
	out chan<- *anypb.Any
}

func (p pipeStream) Send(a *anypb.Any) error { p.out <- a; return nil }
func (p pipeStream) Recv() (*anypb.Any, error) {
	a, ok := <-p.in
	if !ok {
		return nil, io.EOF
	}
	return a, nil
}
func (p pipeStream) Close() error { return nil }

func TestReaderGrantsWindowsAndReadsAllData(t *testing.T) {
	toServer, toClient := make(chan *anypb.Any, 16), make(chan *anypb.Any, 16)
	r := NewReader(pipeStream{in: toServer, out: toClient})
	payload := bytes.Repeat([]byte("0123456789"), 300_000) // 3 MB: several windows
	go func() {
		// The client: sends only what it was granted, 32 KiB at a time.
		defer close(toServer)
		rest := payload
		var granted int64
		for len(rest) > 0 {
			for granted == 0 {
				var u transfertypes.WindowUpdate
				if err := typeurl.UnmarshalTo(<-toClient, &u); err != nil {
					t.Error(err)
					return
				}
				granted += int64(u.Update)
			}
			n := min(int64(len(rest)), granted, 32<<10)
			a, _ := ToAny(&transfertypes.Data{Data: rest[:n]})
			toServer <- a
			granted -= n
			rest = rest[n:]
		}
	}()
	got, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, payload) {
		t.Errorf("read %d bytes, want the %d sent", len(got), len(payload))
	}
}

func TestWriterSendsNoMoreThanGranted(t *testing.T) {
	toServer, toClient := make(chan *anypb.Any, 16), make(chan *anypb.Any, 1024)
	w := NewWriter(context.Background(), pipeStream{in: toServer, out: toClient})
	payload := bytes.Repeat([]byte("x"), 200_000)
	done := make(chan error, 1)
	go func() { _, err := w.Write(payload); done <- err }()
	var got int
	for _, grant := range []int32{65536, 65536, 65536, 65536} {
		u, _ := ToAny(&transfertypes.WindowUpdate{Update: grant})
		toServer <- u
		received := 0
		for received < int(grant) && got+received < len(payload) {
			var d transfertypes.Data
			if err := typeurl.UnmarshalTo(<-toClient, &d); err != nil {
				t.Fatal(err)
			}
			received += len(d.Data)
		}
		if received > int(grant) {
			t.Fatalf("writer sent %d bytes on a window of %d", received, grant)
		}
		got += received
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got != len(payload) {
		t.Errorf("client received %d bytes, want %d", got, len(payload))
	}
}
