package integration

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	digest "github.com/opencontainers/go-digest"

	"github.com/flotilla/flotilla/flotctl/stack"
	"github.com/flotilla/flotilla/integration/imagekit"
)

// runRegistry starts docker-registry for a test (access log on), stopped
// when the test ends.
func runRegistry(t *testing.T) *imagekit.Registry {
	t.Helper()
	if _, err := os.Stat(imagekit.RegistryBinary); err != nil {
		requireTool(t, imagekit.RegistryBinary)
	}
	r, err := imagekit.RunRegistry(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Stop() })
	return r
}

// blobFetches counts the registry's answered GETs of each blob (200 or 206).
func blobFetches(t *testing.T, r *imagekit.Registry) (full, ranged map[digest.Digest]int) {
	t.Helper()
	lines, err := r.AccessLog()
	if err != nil {
		t.Fatal(err)
	}
	full, ranged = map[digest.Digest]int{}, map[digest.Digest]int{}
	for _, l := range lines {
		i := strings.Index(l, "\"GET /v2/")
		if i < 0 || !strings.Contains(l, "/blobs/") {
			continue
		}
		req := strings.Fields(l[i+1:])
		if len(req) < 4 {
			continue
		}
		d := digest.Digest(req[1][strings.LastIndex(req[1], "/")+1:])
		switch req[3] {
		case "200":
			full[d]++
		case "206":
			ranged[d]++
		}
	}
	return full, ranged
}

// blobBytes sums the bytes the registry sent for each blob in answered
// GETs (200 or 206): with ranged parts, a blob fetched once is its size.
func blobBytes(t *testing.T, r *imagekit.Registry) map[digest.Digest]int64 {
	t.Helper()
	lines, err := r.AccessLog()
	if err != nil {
		t.Fatal(err)
	}
	sent := map[digest.Digest]int64{}
	for _, l := range lines {
		i := strings.Index(l, "\"GET /v2/")
		if i < 0 || !strings.Contains(l, "/blobs/") {
			continue
		}
		req := strings.Fields(l[i+1:])
		if len(req) < 5 || (req[3] != "200" && req[3] != "206") {
			continue
		}
		n, err := strconv.ParseInt(req[4], 10, 64)
		if err != nil {
			continue
		}
		sent[digest.Digest(req[1][strings.LastIndex(req[1], "/")+1:])] += n
	}
	return sent
}

// blobProxy relays to a registry, letting a test cut into the body of one
// blob: hook sees the bytes flow and may stop them.
type blobProxy struct {
	Addr string
	mu   sync.Mutex
	hook map[digest.Digest]func(io.ReadCloser) io.ReadCloser
	// user and pass, when set, are required as HTTP basic auth.
	user, pass string
	// noRanges makes the registry look as if it did not do ranges: the
	// Range header is dropped, so every GET answers the whole blob.
	noRanges bool
}

func newBlobProxy(t *testing.T, registry string) *blobProxy {
	t.Helper()
	p := &blobProxy{hook: map[digest.Digest]func(io.ReadCloser) io.ReadCloser{}}
	target, _ := url.Parse("http://" + registry)
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.FlushInterval = -1
	rp.ModifyResponse = func(resp *http.Response) error {
		d := digest.Digest(resp.Request.URL.Path[strings.LastIndex(resp.Request.URL.Path, "/")+1:])
		p.mu.Lock()
		h := p.hook[d]
		noRanges := p.noRanges
		p.mu.Unlock()
		if noRanges {
			resp.Header.Del("Accept-Ranges")
		}
		if h != nil && strings.Contains(resp.Request.URL.Path, "/blobs/") && resp.Request.Method == http.MethodGet {
			resp.Body = h(resp.Body)
		}
		return nil
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		user, pass, noRanges := p.user, p.pass, p.noRanges
		p.mu.Unlock()
		if noRanges {
			r.Header.Del("Range")
		}
		if u, pw, ok := r.BasicAuth(); user != "" && (!ok || u != user || pw != pass) {
			w.Header().Set("WWW-Authenticate", `Basic realm="flotilla-test"`)
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`, http.StatusUnauthorized)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	p.Addr = strings.TrimPrefix(srv.URL, "http://")
	return p
}

func (p *blobProxy) Hook(d digest.Digest, h func(io.ReadCloser) io.ReadCloser) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if h == nil {
		delete(p.hook, d)
		return
	}
	p.hook[d] = h
}

// cut passes n bytes of a blob, counted over every body of it (a blob
// fetched in ranged parts has several), then calls at (once) and fails
// every read with what at returns.
type cut struct {
	mu   sync.Mutex
	n    int64
	at   func() error
	once sync.Once
	err  error
}

func newCut(n int64, at func() error) *cut { return &cut{n: n, at: at} }

// body wraps one response body of the blob.
func (c *cut) body(rc io.ReadCloser) io.ReadCloser { return &cutBody{ReadCloser: rc, c: c} }

type cutBody struct {
	io.ReadCloser
	c *cut
}

func (b *cutBody) Read(p []byte) (int, error) {
	c := b.c
	c.mu.Lock()
	left := c.n
	c.mu.Unlock()
	if left <= 0 {
		c.once.Do(func() { c.err = c.at() })
		return 0, c.err
	}
	if int64(len(p)) > left {
		p = p[:left]
	}
	n, err := b.ReadCloser.Read(p)
	c.mu.Lock()
	c.n -= int64(n)
	c.mu.Unlock()
	return n, err
}

func largestLayer(img *imagekit.Image) imagekit.Layer {
	best := img.Layers[0]
	for _, l := range img.Layers {
		if l.Descriptor.Size > best.Descriptor.Size {
			best = l
		}
	}
	return best
}

func TestTransferConcurrentPullsFetchEachBlobOnce(t *testing.T) {
	requireRootForMounts(t)
	ctr2Bin(t)
	reg := runRegistry(t)
	s := startStack(t)
	stopPluginsOnCleanup(t, s)
	p := pushImage(t, reg.Addr, "large", func() (*imagekit.Image, error) {
		return imagekit.BuildLarge(imagekit.WithSize(32<<20), imagekit.WithTempDir(os.TempDir()))
	})
	before := blobBytes(t, reg)

	var wg sync.WaitGroup
	errs := make([]error, 2)
	outs := make([]string, 2)
	for i, ns := range []string{"transfer-twice-a", "transfer-twice-b"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			outs[i], errs[i] = s.Ctr2(ns, "images", "pull", "--plain-http", p.ref)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("pull %d: %v\n%s", i, err, outs[i])
		}
	}
	// Each byte once: a large layer comes in ranged parts.
	after := blobBytes(t, reg)
	for _, b := range p.img.Blobs {
		d := b.Descriptor.Digest
		if isManifestBlob(b.Descriptor.MediaType) {
			continue
		}
		if got := after[d] - before[d]; got != b.Descriptor.Size {
			t.Errorf("blob %s (%s, %d bytes): the registry sent %d bytes of it to two concurrent pulls, want each byte once", d, b.Descriptor.MediaType, b.Descriptor.Size, got)
		}
	}
}

func isManifestBlob(mt string) bool {
	return strings.Contains(mt, "manifest") || strings.Contains(mt, "index")
}

func TestTransferPullOfWrongBytesFailsAndLeavesNothing(t *testing.T) {
	requireRootForMounts(t)
	ctr2Bin(t)
	reg := runRegistry(t)
	s := startStack(t)
	stopPluginsOnCleanup(t, s)
	p := pushImage(t, reg.Addr, "busybox", func() (*imagekit.Image, error) { return imagekit.BuildBusybox() })
	layer := p.img.Layers[0].Descriptor.Digest
	data := filepath.Join(reg.Dir, "data", "docker", "registry", "v2", "blobs", "sha256", layer.Encoded()[:2], layer.Encoded(), "data")
	orig, err := os.ReadFile(data)
	if err != nil {
		t.Fatal(err)
	}
	bad := append([]byte(nil), orig...)
	bad[len(bad)/2] ^= 0xff
	if err := os.WriteFile(data, bad, 0o644); err != nil {
		t.Fatal(err)
	}

	ns := "transfer-corrupt"
	out, err := s.Ctr2(ns, "images", "pull", "--plain-http", p.ref)
	if err == nil {
		t.Fatalf("pull of a corrupt blob succeeded:\n%s", out)
	}
	if !strings.Contains(out, layer.String()) {
		t.Errorf("pull error does not name the corrupt blob %s:\n%s", layer, lastLines(out, 5))
	}
	if ls := s.MustCtr2(ns, "images", "ls", "-q"); strings.TrimSpace(ls) != "" {
		t.Errorf("images left after a failed pull:\n%s", ls)
	}
	if ls := s.MustCtr2(ns, "content", "active"); strings.Contains(ls, layer.Encoded()) {
		t.Errorf("ingest of the corrupt blob left:\n%s", ls)
	}
	// What the pull committed stays under its lease until ctr deletes it,
	// then the collection that follows takes it (as in containerd).
	eventually(t, "the failed pull's blobs go with its lease", func() bool {
		return strings.TrimSpace(s.MustCtr2(ns, "content", "ls", "-q")) == ""
	})

	if err := os.WriteFile(data, orig, 0o644); err != nil {
		t.Fatal(err)
	}
	s.MustCtr2(ns, "images", "pull", "--plain-http", p.ref)
	if out := s.MustCtr2(ns, "run", "--rm", p.ref, "transfer-fixed", "echo", "hi"); strings.TrimSpace(out) != "hi" {
		t.Errorf("ctr run printed %q, want hi", out)
	}
}

func TestTransferPullFailsWhenTheRegistryStallsMidBlob(t *testing.T) {
	requireRootForMounts(t)
	ctr2Bin(t)
	reg := runRegistry(t)
	s := startStackWith(t, func(l *stack.Layout) {
		if l.ExtraArgs == nil {
			l.ExtraArgs = map[string][]string{}
		}
		l.ExtraArgs["contentd"] = append(l.ExtraArgs["contentd"], "--stall-timeout", "2s")
	})
	stopPluginsOnCleanup(t, s)
	p := pushImage(t, reg.Addr, "large", func() (*imagekit.Image, error) {
		return imagekit.BuildLarge(imagekit.WithSize(16<<20), imagekit.WithTempDir(os.TempDir()))
	})
	proxy := newBlobProxy(t, reg.Addr)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	layer := largestLayer(p.img).Descriptor
	proxy.Hook(layer.Digest, newCut(layer.Size/2, func() error {
		<-release // the registry keeps the connection open and sends nothing
		return errors.New("released")
	}).body)
	ref := proxy.Addr + "/large:1"
	out, err := s.Ctr2("transfer-stall", "images", "pull", "--plain-http", ref)
	if err == nil {
		t.Fatalf("pull from a stalled registry succeeded:\n%s", out)
	}
	if !strings.Contains(out, "nothing received for 2s") || !strings.Contains(out, layer.Digest.String()) {
		t.Errorf("pull error does not say the registry stalled on %s:\n%s", layer.Digest, lastLines(out, 5))
	}
}

func TestTransferPullResumesAfterTheRegistryStoppedMidBlob(t *testing.T) {
	requireRootForMounts(t)
	ctr2Bin(t)
	reg := runRegistry(t)
	s := startStack(t)
	stopPluginsOnCleanup(t, s)
	p := pushImage(t, reg.Addr, "large", func() (*imagekit.Image, error) {
		return imagekit.BuildLarge(imagekit.WithSize(32<<20), imagekit.WithTempDir(os.TempDir()))
	})
	proxy := newBlobProxy(t, reg.Addr)
	layer := largestLayer(p.img).Descriptor
	proxy.Hook(layer.Digest, newCut(layer.Size/2, func() error {
		if err := reg.Stop(); err != nil {
			return err
		}
		return fmt.Errorf("registry stopped")
	}).body)
	ref := proxy.Addr + "/large:1"
	ns := "transfer-resume"
	if out, err := s.Ctr2(ns, "images", "pull", "--plain-http", ref); err == nil {
		t.Fatalf("pull succeeded although the registry stopped midway:\n%s", out)
	}
	active := s.MustCtr2(ns, "content", "active")
	if !strings.Contains(active, layer.Digest.Encoded()) {
		t.Errorf("no ingest kept for %s to resume:\n%s", layer.Digest, active)
	}

	proxy.Hook(layer.Digest, nil)
	if err := reg.Restart(context.Background()); err != nil {
		t.Fatal(err)
	}
	before := blobBytes(t, reg)
	s.MustCtr2(ns, "images", "pull", "--plain-http", ref)
	line := checkLine(s.MustCtr2(ns, "images", "check"), ref)
	if f := strings.Fields(line); len(f) < 4 || f[3] != "complete" {
		t.Errorf("images check: %q, want complete", line)
	}
	_, ranged := blobFetches(t, reg)
	if sent := blobBytes(t, reg)[layer.Digest] - before[layer.Digest]; ranged[layer.Digest] == 0 || sent >= layer.Size {
		lines, _ := reg.AccessLog()
		t.Errorf("the second pull fetched %d of the %d bytes of %s, want only the rest with ranged GETs; registry log:\n%s",
			sent, layer.Size, layer.Digest, strings.Join(lines, "\n"))
	}
}

func TestTransferPullAsksTheClientForCredentials(t *testing.T) {
	requireRootForMounts(t)
	ctr2Bin(t)
	reg := runRegistry(t)
	s := startStack(t)
	stopPluginsOnCleanup(t, s)
	pushImage(t, reg.Addr, "busybox", func() (*imagekit.Image, error) { return imagekit.BuildBusybox() })
	proxy := newBlobProxy(t, reg.Addr)
	proxy.mu.Lock()
	proxy.user, proxy.pass = "flotilla", "s3cret"
	proxy.mu.Unlock()
	ref := proxy.Addr + "/busybox:1"
	ns := "transfer-auth"
	if out, err := s.Ctr2(ns, "images", "pull", "--plain-http", ref); err == nil {
		t.Fatalf("anonymous pull from a registry requiring basic auth succeeded:\n%s", out)
	}
	if out, err := s.Ctr2(ns, "images", "pull", "--plain-http", "--user", "flotilla:wrong", ref); err == nil {
		t.Fatalf("pull with a wrong password succeeded:\n%s", out)
	}
	s.MustCtr2(ns, "images", "pull", "--plain-http", "--user", "flotilla:s3cret", ref)
	if out := s.MustCtr2(ns, "run", "--rm", ref, "transfer-auth-run", "echo", "hi"); strings.TrimSpace(out) != "hi" {
		t.Errorf("ctr run printed %q, want hi", out)
	}
}
