package integration

import (
	"bytes"
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/transfer/archive"
	"github.com/containerd/containerd/v2/pkg/namespaces"
)

// closedBuffer is a bytes.Buffer that tells when the export stream closed it.
type closedBuffer struct {
	bytes.Buffer
	once   sync.Once
	closed chan struct{}
}

func (b *closedBuffer) Close() error {
	b.once.Do(func() { close(b.closed) })
	return nil
}

// TestTransferEchoCopiesTheImportStream transfers an import stream to an
// export stream with the 2.x Go client, as containerd's TestTransferEcho
// does, on Flotilla and containerd 2.4.2: the bytes come back as they were
// sent, big, small or none.
func TestTransferEchoCopiesTheImportStream(t *testing.T) {
	dir2 := filepath.Dir(ctr2Bin(t))
	targets := []struct{ name, socket string }{
		{"flotilla", startStack(t).Socket},
		{"containerd2.4", startContainerd(t, filepath.Join(dir2, "containerd"), dir2)},
	}
	payloads := map[string][]byte{
		"big":   bytes.Repeat([]byte("somecontent"), 17*1024),
		"small": []byte("somecontent"),
		"empty": {},
	}
	for _, tg := range targets {
		t.Run(tg.name, func(t *testing.T) {
			client, err := containerd.New(tg.socket)
			if err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			for name, want := range payloads {
				t.Run(name, func(t *testing.T) {
					ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), "echo"), time.Minute)
					defer cancel()
					out := &closedBuffer{closed: make(chan struct{})}
					src := archive.NewImageImportStream(bytes.NewReader(want), "application/octet-stream")
					if err := client.Transfer(ctx, src, archive.NewImageExportStream(out, "application/octet-stream")); err != nil {
						t.Fatalf("Transfer: %v", err)
					}
					select {
					case <-out.closed:
					case <-ctx.Done():
						t.Fatal("the export stream was never closed")
					}
					if !bytes.Equal(out.Bytes(), want) {
						t.Fatalf("got %d bytes back, want the %d sent", out.Len(), len(want))
					}
				})
			}
		})
	}
}
