package service

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	api "github.com/containerd/containerd/api/services/content/v1"
	"github.com/opencontainers/go-digest"

	"github.com/flotilla/flotilla/contentd/internal/testserver"
	"github.com/flotilla/flotilla/services/namespace"
)

// TestKillDuringConcurrentIngests kills the server with SIGKILL while 20
// ingests run, ten of them done and ten halfway, restarts it on the same
// root and checks that every visible blob verifies, no partial blob shows,
// and each interrupted ingest resumes from the offset STAT returns.
func TestKillDuringConcurrentIngests(t *testing.T) {
	dir := testserver.ShortDir(t)
	root, sock := filepath.Join(dir, "root"), filepath.Join(dir, "c.sock")
	p := startProcess(t, root, sock)
	ctx := namespace.WithNamespace(context.Background(), "crash")

	const n = 20
	blobs := make([][]byte, n)
	for i := range blobs {
		blobs[i] = make([]byte, (1<<20)+i*4099)
		rand.NewChaCha8([32]byte{5, byte(i)}).Read(blobs[i])
	}
	ref := func(i int) string { return fmt.Sprintf("blob-%d", i) }

	client := api.NewContentClient(connect(t, sock))
	var wg sync.WaitGroup
	committed := make([]atomic.Bool, n)
	halfway := make(chan struct{}, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Even-numbered ingests finish; the others stop halfway and
			// wait, holding their streams open, for the kill.
			finish := i%2 == 0
			err := stream(ctx, client, ref(i), blobs[i], finish, halfway)
			committed[i].Store(finish && err == nil)
		}()
	}
	for range n / 2 {
		select {
		case <-halfway:
		case <-time.After(30 * time.Second):
			t.Fatal("ingests did not reach halfway")
		}
	}
	for deadline := time.Now().Add(30 * time.Second); ; {
		if countDone(committed) == n/2 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	p.kill()
	wg.Wait()
	for i := 0; i < n; i += 2 {
		if !committed[i].Load() {
			t.Fatalf("ingest %d did not commit before the kill", i)
		}
	}

	startProcess(t, root, sock)
	client = api.NewContentClient(connect(t, sock))

	t.Run("every blob on disk verifies against its digest", func(t *testing.T) {
		files, _ := filepath.Glob(filepath.Join(root, "content", "blobs", "sha256", "*"))
		if len(files) != n/2 {
			t.Errorf("%d blobs on disk, want %d", len(files), n/2)
		}
		for _, f := range files {
			if got := fileSHA256(t, f); got != filepath.Base(f) {
				t.Errorf("blob %s hashes to %s", filepath.Base(f), got)
			}
		}
	})
	t.Run("committed blobs read back, interrupted ones are not visible", func(t *testing.T) {
		for i, data := range blobs {
			dgst := digest.FromBytes(data)
			got, err := readRange(ctx, client, dgst, 0, 0)
			switch {
			case committed[i].Load() && (err != nil || digest.FromBytes(got) != dgst):
				t.Errorf("blob %d: %v", i, err)
			case !committed[i].Load() && err == nil:
				t.Errorf("interrupted blob %d is visible", i)
			}
		}
	})
	t.Run("interrupted ingests resume from the offset STAT returns", func(t *testing.T) {
		for i := 1; i < n; i += 2 {
			if err := resume(ctx, client, ref(i), blobs[i]); err != nil {
				t.Errorf("resume %s: %v", ref(i), err)
			}
		}
	})
}

func countDone(done []atomic.Bool) int {
	c := 0
	for i := range done {
		if done[i].Load() {
			c++
		}
	}
	return c
}

// stream writes data under ref in 64 KiB messages. With finish it commits;
// otherwise it signals halfway after half the data and blocks until the
// stream breaks.
func stream(ctx context.Context, client api.ContentClient, ref string, data []byte, finish bool, halfway chan<- struct{}) error {
	s, err := client.Write(ctx)
	if err != nil {
		return err
	}
	dgst := digest.FromBytes(data)
	if err := s.Send(&api.WriteContentRequest{Action: stat, Ref: ref, Total: int64(len(data)), Expected: dgst.String()}); err != nil {
		return err
	}
	if _, err := s.Recv(); err != nil {
		return err
	}
	end := len(data)
	if !finish {
		end = len(data) / 2
	}
	for off := 0; off < end; off += 64 << 10 {
		chunk := data[off:min(off+64<<10, end)]
		if err := s.Send(&api.WriteContentRequest{Action: write, Offset: int64(off), Data: chunk}); err != nil {
			return err
		}
		if _, err := s.Recv(); err != nil {
			return err
		}
	}
	if !finish {
		halfway <- struct{}{}
		_, err := s.Recv() // until the server dies
		return err
	}
	if err := s.Send(&api.WriteContentRequest{Action: commit, Offset: int64(len(data)), Total: int64(len(data)), Expected: dgst.String()}); err != nil {
		return err
	}
	_, err = s.Recv()
	return err
}

// resume finishes ingest ref from the offset the server reports.
func resume(ctx context.Context, client api.ContentClient, ref string, data []byte) error {
	s, err := client.Write(ctx)
	if err != nil {
		return err
	}
	dgst := digest.FromBytes(data)
	if err := s.Send(&api.WriteContentRequest{Action: stat, Ref: ref, Total: int64(len(data)), Expected: dgst.String()}); err != nil {
		return err
	}
	st, err := s.Recv()
	if err != nil {
		return err
	}
	if st.Offset == 0 || st.Offset > int64(len(data)) {
		return fmt.Errorf("STAT offset %d after half of %d bytes was written", st.Offset, len(data))
	}
	if want := digest.FromBytes(data[:st.Offset]).String(); st.Digest != want {
		return fmt.Errorf("STAT digest %s, want %s", st.Digest, want)
	}
	if err := s.Send(&api.WriteContentRequest{Action: commit, Offset: st.Offset, Total: int64(len(data)),
		Expected: dgst.String(), Data: data[st.Offset:]}); err != nil {
		return err
	}
	if _, err := s.Recv(); err != nil {
		return err
	}
	s.CloseSend()
	if _, err := s.Recv(); !errors.Is(err, io.EOF) {
		return err
	}
	return nil
}

func fileSHA256(t *testing.T, path string) string {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	io.Copy(h, f)
	return hex.EncodeToString(h.Sum(nil))
}
