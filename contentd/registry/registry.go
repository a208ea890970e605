// Package registry reaches OCI registries for contentd's transfers through
// oras-go: endpoints from containerd's hosts.toml (certs.d layout), plain
// HTTP only where asked, anonymous, basic and bearer-token auth with
// credentials asked of the caller, and a stall watchdog on every response
// body so a registry that stops sending fails the transfer.
package registry

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2/errdef"
	"oras.land/oras-go/v2/registry"
	"oras.land/oras-go/v2/registry/remote"
	"oras.land/oras-go/v2/registry/remote/auth"
	"oras.land/oras-go/v2/registry/remote/errcode"
)

// Credentials answers a registry's authentication challenge for host; an
// empty Credentials means anonymous access.
type Credentials func(ctx context.Context, host string) (Credential, error)

// Credential is what a caller hands over for a host: a user name and
// secret, a refresh (identity) token, or a whole Authorization header.
type Credential struct {
	Username, Secret string
	RefreshToken     string
	Header           string
}

// Options configure access to the registry of one transfer.
type Options struct {
	// HostsDir is the certs.d directory holding <host>/hosts.toml; empty
	// uses the registry directly.
	HostsDir string
	// DefaultScheme is "http" for plain HTTP, otherwise HTTPS (loopback
	// registries are plain HTTP unless a scheme is given).
	DefaultScheme string
	// Header is added to every request.
	Header http.Header
	// Credentials is asked when a registry requires authentication; nil
	// means anonymous.
	Credentials Credentials
	// Stall fails a request that receives nothing for this long (0: never).
	Stall time.Duration
}

// ErrStalled is the cause of a request that received nothing within the
// stall timeout.
var ErrStalled = errors.New("registry stopped sending")

// Repository is one image repository as reached through one endpoint.
type Repository struct {
	*remote.Repository
	Endpoint Host
	// Name is the reference's registry name (as written in the image
	// reference), which distribution-source labels use.
	Name string
	// Path is the repository path ("library/busybox").
	Path  string
	stall time.Duration
	// conns is the transport of this repository's connections.
	conns *http.Transport
}

// Close releases the repository's idle connections. Each Repositories call
// makes transports of its own (a host's TLS settings are read anew each
// time), so without it a finished transfer's keep-alive connections, and
// their goroutines, would linger until their idle timeout.
func (r *Repository) Close() { r.conns.CloseIdleConnections() }

// FetchFrom opens blob desc at offset: a GET with a Range header, so a
// resumed download asks the registry only for the bytes it lacks (oras's
// Fetch asks for the whole blob, and a Seek after it for the rest: two
// requests, the first cut short). It returns where the body starts: a
// registry that ignores ranges answers the whole blob, from 0.
func (r *Repository) FetchFrom(ctx context.Context, desc ocispec.Descriptor, offset int64) (io.ReadCloser, int64, error) {
	if offset <= 0 {
		rc, err := r.Fetch(ctx, desc)
		return rc, 0, err
	}
	rg, err := r.FetchRange(ctx, desc, offset, -1)
	if err != nil {
		return nil, 0, err
	}
	if !rg.Partial {
		return rg, 0, nil
	}
	return rg, offset, nil
}

// Repositories returns ref's repository through every endpoint that has
// capability cap, in the order they should be tried.
func Repositories(ref registry.Reference, cap string, o Options) ([]*Repository, error) {
	hosts, err := Hosts(o.HostsDir, ref.Registry, o.DefaultScheme)
	if err != nil {
		return nil, err
	}
	creds := credentialCache(o.Credentials)
	var repos []*Repository
	for _, h := range hosts {
		if !h.Can(cap) {
			continue
		}
		r := ref
		r.Registry = h.Host
		rr, err := remote.NewRepository(r.Registry + "/" + r.Repository)
		if err != nil {
			return nil, fmt.Errorf("repository %s: %v: %w", r, err, errdefs.ErrInvalidArgument)
		}
		rr.PlainHTTP = h.PlainHTTP
		header := http.Header{}
		for k, v := range o.Header {
			header[k] = v
		}
		for k, v := range h.Header {
			header[k] = v
		}
		conns, rt := transport(h, o.Stall)
		rr.Client = &auth.Client{
			Client:     &http.Client{Transport: rt},
			Header:     header,
			Cache:      auth.NewCache(),
			Credential: creds,
		}
		repos = append(repos, &Repository{Repository: rr, Endpoint: h, Name: ref.Registry, Path: ref.Repository, stall: o.Stall, conns: conns})
	}
	if len(repos) == 0 {
		return nil, fmt.Errorf("no host of %s may %s: %w", ref.Registry, cap, errdefs.ErrNotFound)
	}
	return repos, nil
}

// credentialCache asks creds once per host and turns its answer into
// oras's form.
func credentialCache(creds Credentials) auth.CredentialFunc {
	if creds == nil {
		return nil
	}
	var mu sync.Mutex
	known := map[string]auth.Credential{}
	return func(ctx context.Context, host string) (auth.Credential, error) {
		mu.Lock()
		defer mu.Unlock()
		if c, ok := known[host]; ok {
			return c, nil
		}
		c, err := creds(ctx, host)
		if err != nil {
			return auth.EmptyCredential, fmt.Errorf("credentials for %s: %w", host, err)
		}
		ac := auth.Credential{Username: c.Username, Password: c.Secret, RefreshToken: c.RefreshToken}
		if c.Username == "" && c.Secret != "" {
			ac = auth.Credential{RefreshToken: c.Secret}
		}
		if scheme, value, ok := strings.Cut(c.Header, " "); ok {
			switch strings.ToLower(scheme) {
			case "bearer":
				ac = auth.Credential{AccessToken: value}
			case "basic":
				if raw, err := base64.StdEncoding.DecodeString(value); err == nil {
					u, p, _ := strings.Cut(string(raw), ":")
					ac = auth.Credential{Username: u, Password: p}
				}
			}
		}
		known[host] = ac
		return ac, nil
	}
}

// transport returns the connections' transport for host h and the round
// tripper requests go through.
func transport(h Host, stall time.Duration) (*http.Transport, http.RoundTripper) {
	t := http.DefaultTransport.(*http.Transport).Clone()
	if h.TLS != nil {
		t.TLSClientConfig = h.TLS
	}
	t.MaxIdleConnsPerHost = 16
	var rt http.RoundTripper = t
	if stall > 0 {
		t.ResponseHeaderTimeout = stall
		t.TLSHandshakeTimeout = stall
		t.DialContext = (&net.Dialer{Timeout: stall, KeepAlive: 30 * time.Second}).DialContext
		rt = &stallTransport{next: t, stall: stall}
	}
	if h.APIPath != "" && h.APIPath != "/v2" {
		rt = &apiPathTransport{next: rt, host: h.Host, path: h.APIPath}
	}
	return t, rt
}

// apiPathTransport serves a registry whose API is under path rather than
// /v2 (a mirror's URL path, hosts.toml): oras addresses every request to
// /v2/..., which is moved there. Requests to other hosts (a token realm)
// are left alone.
type apiPathTransport struct {
	next       http.RoundTripper
	host, path string
}

func (a *apiPathTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	rest, ok := strings.CutPrefix(req.URL.Path, "/v2")
	if req.URL.Host != a.host || !ok || (rest != "" && !strings.HasPrefix(rest, "/")) {
		return a.next.RoundTrip(req)
	}
	r := req.Clone(req.Context())
	r.URL.Path = a.path + rest
	r.URL.RawPath = ""
	return a.next.RoundTrip(r)
}

// stallTransport watches every response body: when no byte arrives for
// stall, the request is cancelled and reads fail with ErrStalled.
type stallTransport struct {
	next  http.RoundTripper
	stall time.Duration
}

func (s *stallTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx, cancel := context.WithCancelCause(req.Context())
	resp, err := s.next.RoundTrip(req.WithContext(ctx))
	if err != nil {
		cancel(nil)
		if errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
			return nil, fmt.Errorf("%s %s: no answer within %s: %w", req.Method, req.URL.Redacted(), s.stall, ErrStalled)
		}
		return nil, err
	}
	b := &stallBody{ReadCloser: resp.Body, cancel: cancel, stall: s.stall, desc: req.Method + " " + req.URL.Redacted()}
	b.last.Store(time.Now().UnixNano())
	b.timer = time.AfterFunc(s.stall, b.check)
	resp.Body = b
	return resp, nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

type stallBody struct {
	io.ReadCloser
	cancel  context.CancelCauseFunc
	stall   time.Duration
	desc    string
	last    atomic.Int64
	stalled atomic.Bool
	timer   *time.Timer
}

func (b *stallBody) check() {
	idle := time.Since(time.Unix(0, b.last.Load()))
	if idle < b.stall {
		b.timer.Reset(b.stall - idle)
		return
	}
	b.stalled.Store(true)
	b.cancel(ErrStalled)
}

func (b *stallBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		b.last.Store(time.Now().UnixNano())
	}
	if err != nil && b.stalled.Load() {
		err = fmt.Errorf("%s: nothing received for %s: %w", b.desc, b.stall, ErrStalled)
	}
	return n, err
}

func (b *stallBody) Close() error {
	b.timer.Stop()
	b.cancel(nil)
	return b.ReadCloser.Close()
}

// Range is an answer to a ranged blob request.
type Range struct {
	io.ReadCloser
	// Partial says the registry sent the bytes asked for (206); otherwise
	// it ignored the range and the body is the whole blob from byte 0.
	Partial bool
}

// FetchRange asks for bytes [start, end) of blob desc (not a manifest);
// end < 0 asks for everything from start. A registry that does not do
// ranges answers with the whole blob (Range.Partial false), as the
// distribution spec allows; a 206 whose Content-Range is not the range
// asked for is an error, so no byte lands at the wrong offset.
func (r *Repository) FetchRange(ctx context.Context, desc ocispec.Descriptor, start, end int64) (*Range, error) {
	ref := r.Reference
	ref.Reference = desc.Digest.String()
	ctx = auth.AppendRepositoryScope(ctx, ref, auth.ActionPull)
	scheme := "https"
	if r.PlainHTTP {
		scheme = "http"
	}
	u := scheme + "://" + ref.Host() + "/v2/" + ref.Repository + "/blobs/" + ref.Reference
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("blob %s: %v: %w", desc.Digest, err, errdefs.ErrInvalidArgument)
	}
	want := fmt.Sprintf("bytes=%d-", start)
	if end >= 0 {
		want += strconv.FormatInt(end-1, 10)
	}
	req.Header.Set("Range", want)
	resp, err := r.Client.Do(req)
	if err != nil {
		return nil, err
	}
	switch resp.StatusCode {
	case http.StatusOK:
		if resp.ContentLength >= 0 && resp.ContentLength != desc.Size {
			resp.Body.Close()
			return nil, fmt.Errorf("GET %s: Content-Length %d, the blob has %d bytes: %w", resp.Request.URL.Redacted(), resp.ContentLength, desc.Size, errdefs.ErrDataLoss)
		}
		return &Range{ReadCloser: resp.Body}, nil
	case http.StatusPartialContent:
		last := desc.Size - 1
		if end >= 0 {
			last = end - 1
		}
		if cr := resp.Header.Get("Content-Range"); !strings.HasPrefix(cr, fmt.Sprintf("bytes %d-%d/", start, last)) {
			resp.Body.Close()
			return nil, fmt.Errorf("GET %s with Range %s: answered Content-Range %q: %w", resp.Request.URL.Redacted(), want, cr, errdefs.ErrDataLoss)
		}
		return &Range{ReadCloser: resp.Body, Partial: true}, nil
	case http.StatusNotFound:
		resp.Body.Close()
		return nil, fmt.Errorf("%s: %w", desc.Digest, errdef.ErrNotFound)
	default:
		resp.Body.Close()
		return nil, &errcode.ErrorResponse{Method: req.Method, URL: resp.Request.URL, StatusCode: resp.StatusCode}
	}
}
