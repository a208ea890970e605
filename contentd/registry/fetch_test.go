package registry

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2/registry"
)

func TestFetchFromAsksOnlyForTheRest(t *testing.T) {
	blob := bytes.Repeat([]byte("0123456789"), 1000)
	desc := ocispec.Descriptor{Digest: digest.FromBytes(blob), Size: int64(len(blob))}
	for _, tc := range []struct {
		name       string
		ranges     bool
		wantStart  int64
		wantHeader string
	}{
		{"a registry serving ranges sends the rest from the offset", true, 4000, "bytes=4000-"},
		{"a registry ignoring ranges sends the whole blob, from 0", false, 0, "bytes=4000-"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var requests atomic.Int32
			var gotRange atomic.Value
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				requests.Add(1)
				gotRange.Store(r.Header.Get("Range"))
				if !strings.HasSuffix(r.URL.Path, "/v2/team/app/blobs/"+desc.Digest.String()) {
					http.NotFound(w, r)
					return
				}
				if !tc.ranges {
					r.Header.Del("Range")
				}
				http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(blob))
			}))
			defer srv.Close()
			host := strings.TrimPrefix(srv.URL, "http://")
			repos, err := Repositories(registry.Reference{Registry: host, Repository: "team/app"}, CapPull, Options{DefaultScheme: "http"})
			if err != nil {
				t.Fatal(err)
			}
			rc, start, err := repos[0].FetchFrom(context.Background(), desc, 4000)
			if err != nil {
				t.Fatal(err)
			}
			defer rc.Close()
			got, err := io.ReadAll(rc)
			if err != nil {
				t.Fatal(err)
			}
			if start != tc.wantStart || !bytes.Equal(got, blob[start:]) {
				t.Errorf("FetchFrom(4000) started at %d with %d bytes, want %d and the blob from there", start, len(got), tc.wantStart)
			}
			if n := requests.Load(); n != 1 {
				t.Errorf("%d requests, want one", n)
			}
			if r := gotRange.Load(); r != tc.wantHeader {
				t.Errorf("Range header %q, want %q", r, tc.wantHeader)
			}
		})
	}
}

// TestCloseLeavesNoConnection: once a transfer is done with its
// repositories, none of their keep-alive connections stays open.
func TestCloseLeavesNoConnection(t *testing.T) {
	blob := []byte("layer bytes")
	desc := ocispec.Descriptor{Digest: digest.FromBytes(blob), Size: int64(len(blob))}
	var open atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(blob))
	}))
	closed := make(chan struct{}, 16)
	srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		switch st {
		case http.StateNew:
			open.Add(1)
		case http.StateClosed, http.StateHijacked:
			open.Add(-1)
			closed <- struct{}{}
		}
	}
	srv.Start()
	defer srv.Close()
	repos, err := Repositories(registry.Reference{Registry: strings.TrimPrefix(srv.URL, "http://"), Repository: "team/app"}, CapPull, Options{DefaultScheme: "http"})
	if err != nil {
		t.Fatal(err)
	}
	rc, _, err := repos[0].FetchFrom(context.Background(), desc, 0)
	if err != nil {
		t.Fatal(err)
	}
	io.ReadAll(rc)
	rc.Close()
	if n := open.Load(); n != 1 {
		t.Fatalf("%d connections open after the fetch, want the one kept alive", n)
	}
	repos[0].Close()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("the kept-alive connection stayed open after Close")
	}
	if n := open.Load(); n != 0 {
		t.Fatalf("%d connections open after Close", n)
	}
}
