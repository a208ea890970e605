package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	api "github.com/containerd/containerd/api/services/content/v1"
	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestContentKill9DuringConcurrentIngests kills contentd with SIGKILL while
// 20 ingests stream through the gateway: some have committed, the others are
// mid-blob. After contentd restarts, every committed blob verifies against
// its digest, no partial blob is visible, and every interrupted ingest
// resumes from the offset STAT gives and commits.
func TestContentKill9DuringConcurrentIngests(t *testing.T) {
	const (
		ingests   = 20
		committed = 5 // these finish before the kill
		size      = 24 << 20
		chunk     = 256 << 10
	)
	s := startStack(t)
	c := contentAPI(t, s)
	ctx := inNamespace(context.Background(), "crash")

	blobs := make([][]byte, ingests)
	for i := range blobs {
		blobs[i] = randomBlob(byte(100+i), size+i*4099)
	}
	ref := func(i int) string { return fmt.Sprintf("crash-%02d", i) }

	// The interrupted ingests write half their blob, wait at a gate until all
	// are there, then stream the rest while contentd is killed.
	var halfway, finished, done sync.WaitGroup
	gate := make(chan struct{})
	errs := make([]error, ingests)
	halfway.Add(ingests - committed)
	finished.Add(committed)
	for i := range ingests {
		done.Add(1)
		go func() {
			defer done.Done()
			data, dgst := blobs[i], digest.FromBytes(blobs[i])
			if i < committed {
				errs[i] = writeBlob(ctx, c, ref(i), data, nil)
				finished.Done()
				return
			}
			reached := false
			defer func() {
				if !reached {
					halfway.Done()
				}
			}()
			stream, err := c.Write(ctx)
			if err != nil {
				errs[i] = err
				return
			}
			if _, err = writeMsg(stream, &api.WriteContentRequest{Action: api.WriteAction_STAT, Ref: ref(i),
				Total: int64(len(data)), Expected: dgst.String()}); err != nil {
				errs[i] = err
				return
			}
			for off := 0; off < len(data); off += chunk {
				if off >= len(data)/2 && !reached {
					reached = true
					halfway.Done()
					<-gate
				}
				end := min(off+chunk, len(data))
				if _, err := writeMsg(stream, &api.WriteContentRequest{Action: api.WriteAction_WRITE, Offset: int64(off), Data: data[off:end]}); err != nil {
					errs[i] = err
					return
				}
			}
			_, errs[i] = writeMsg(stream, &api.WriteContentRequest{Action: api.WriteAction_COMMIT, Offset: int64(len(data)),
				Total: int64(len(data)), Expected: dgst.String()})
		}()
	}
	halfway.Wait()
	finished.Wait()
	for i, err := range errs[:committed] {
		if err != nil {
			t.Fatalf("ingest %d, to finish before the kill: %v", i, err)
		}
	}
	close(gate)
	s.Kill9("contentd")
	done.Wait()

	interrupted := 0
	for _, err := range errs {
		if err != nil {
			interrupted++
		}
	}
	if interrupted == 0 {
		t.Fatal("the kill interrupted no ingest: the test proves nothing")
	}
	t.Logf("%d ingests committed before the kill, %d interrupted", ingests-interrupted, interrupted)

	s.Up() // starts contentd again; the gateway finds it by itself

	var resumed []int
	t.Run("every committed blob verifies and no partial blob is visible", func(t *testing.T) {
		want := map[digest.Digest]int64{}
		for i, data := range blobs {
			dgst := digest.FromBytes(data)
			var info *api.InfoResponse
			var err error
			waitFor(t, func() error { // until the gateway has reconnected
				info, err = c.Info(ctx, &api.InfoRequest{Digest: dgst.String()})
				if status.Code(err) == codes.Unavailable {
					return err
				}
				return nil
			})
			switch {
			case err == nil:
				if info.GetInfo().GetSize() != int64(len(data)) {
					t.Errorf("blob %d: Info size %d, want %d", i, info.GetInfo().GetSize(), len(data))
				}
				got, n, err := readBlob(ctx, c, dgst)
				if err != nil || got != dgst || n != int64(len(data)) {
					t.Errorf("blob %d: read back %s, %d bytes, %v; want %s, %d bytes", i, got, n, err, dgst, len(data))
				}
				want[dgst] = int64(len(data))
			case status.Code(err) == codes.NotFound:
				if i < committed {
					t.Errorf("blob %d, committed before the kill, is gone", i)
				}
				resumed = append(resumed, i)
			default:
				t.Fatalf("blob %d: Info: %v", i, err)
			}
		}
		for _, info := range contentInfos(t, c, ctx) {
			if size, ok := want[digest.Digest(info.GetDigest())]; !ok || size != info.GetSize() {
				t.Errorf("List shows %s (%d bytes), which is not a verified complete blob", info.GetDigest(), info.GetSize())
			}
		}
		// On disk too: every file in the blob store is a complete blob.
		dir := filepath.Join(s.Layout.Root, "contentd", "content", "blobs", "sha256")
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			f, err := os.Open(filepath.Join(dir, e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			got, _, err := blobDigest(f)
			f.Close()
			if err != nil || got.Encoded() != e.Name() {
				t.Errorf("blob file %s holds bytes of digest %s (%v)", e.Name(), got, err)
			}
		}
	})
	if len(resumed) == 0 {
		t.Fatal("no ingest was left to resume")
	}
	t.Run("interrupted ingests resume from the offset STAT gives and commit", func(t *testing.T) {
		sts, err := c.ListStatuses(ctx, &api.ListStatusesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		active := map[string]*api.Status{}
		for _, st := range sts.GetStatuses() {
			active[st.GetRef()] = st
		}
		for _, i := range resumed {
			data, dgst := blobs[i], digest.FromBytes(blobs[i])
			if st, ok := active[ref(i)]; !ok || st.GetOffset() <= 0 || st.GetTotal() != int64(len(data)) || st.GetExpected() != dgst.String() {
				t.Errorf("ListStatuses entry of %s: %v (present %v), want offset > 0, total %d, expected %s", ref(i), st, ok, len(data), dgst)
			}
			sctx, cancel := context.WithCancel(ctx)
			stream, err := c.Write(sctx)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := writeMsg(stream, &api.WriteContentRequest{Action: api.WriteAction_STAT, Ref: ref(i),
				Total: int64(len(data)), Expected: dgst.String()})
			if err != nil {
				t.Fatalf("STAT %s: %v", ref(i), err)
			}
			off := resp.GetOffset()
			if off <= 0 || off > int64(len(data)) {
				t.Fatalf("STAT %s: offset %d, want within (0, %d]", ref(i), off, len(data))
			}
			if want := digest.FromBytes(data[:off]).String(); resp.GetDigest() != want {
				t.Fatalf("STAT %s: digest %s of the first %d bytes, want %s", ref(i), resp.GetDigest(), off, want)
			}
			for off < int64(len(data)) {
				end := min(off+chunk, int64(len(data)))
				if _, err := writeMsg(stream, &api.WriteContentRequest{Action: api.WriteAction_WRITE, Offset: off, Data: data[off:end]}); err != nil {
					t.Fatalf("WRITE %s at %d: %v", ref(i), off, err)
				}
				off = end
			}
			if _, err := writeMsg(stream, &api.WriteContentRequest{Action: api.WriteAction_COMMIT, Offset: off,
				Total: int64(len(data)), Expected: dgst.String()}); err != nil {
				t.Fatalf("COMMIT %s: %v", ref(i), err)
			}
			cancel()
			got, n, err := readBlob(ctx, c, dgst)
			if err != nil || got != dgst || n != int64(len(data)) {
				t.Fatalf("%s read back: %s, %d bytes, %v", ref(i), got, n, err)
			}
		}
		if sts, err := c.ListStatuses(ctx, &api.ListStatusesRequest{}); err != nil || len(sts.GetStatuses()) != 0 {
			t.Fatalf("ingests left after resuming all: %v, %v", sts.GetStatuses(), err)
		}
	})
}
