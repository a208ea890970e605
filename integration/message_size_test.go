package integration

import (
	"context"
	"testing"

	api "github.com/containerd/containerd/api/services/content/v1"
	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestMessagesUpTo16MiBThroughGateway checks the message limit containerd
// has, 16 MiB, on the way through the gateway to a backend: a 9 MiB Write
// message is taken (gRPC's 4 MiB default refused it with "received message
// larger than max (8388615 vs. 4194304)" in containerd's content suite), and
// one past 16 MiB is refused with ResourceExhausted, as containerd refuses it.
func TestMessagesUpTo16MiBThroughGateway(t *testing.T) {
	s := startStack(t)
	c := contentAPI(t, s)
	ctx := inNamespace(context.Background(), uniqueName("msgsize"))

	for _, tc := range []struct {
		name string
		size int
		code codes.Code
	}{
		{"a 9 MiB message is taken", 9 << 20, codes.OK},
		{"a message past 16 MiB is ResourceExhausted", 16<<20 + 1024, codes.ResourceExhausted},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := randomBlob(byte(tc.size), tc.size)
			dgst := digest.FromBytes(data)
			sctx, cancel := context.WithCancel(ctx)
			defer cancel()
			stream, err := c.Write(sctx)
			if err != nil {
				t.Fatal(err)
			}
			_, err = writeMsg(stream, &api.WriteContentRequest{Action: api.WriteAction_COMMIT, Ref: tc.name,
				Total: int64(len(data)), Expected: dgst.String(), Data: data})
			if status.Code(err) != tc.code {
				t.Fatalf("WRITE+COMMIT of %d bytes in one message: %v, want %s", tc.size, err, tc.code)
			}
			if tc.code != codes.OK {
				return
			}
			got, _, err := readBlob(ctx, c, dgst)
			if err != nil || got != dgst {
				t.Errorf("read back: %s, %v; want %s", got, err, dgst)
			}
		})
	}
}
