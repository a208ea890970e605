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
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/errdefs"
	"oras.land/oras-go/v2/registry"
	"oras.land/oras-go/v2/registry/remote"
	"oras.land/oras-go/v2/registry/remote/auth"
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
		rr.Client = &auth.Client{
			Client:     &http.Client{Transport: transport(h, o.Stall)},
			Header:     header,
			Cache:      auth.NewCache(),
			Credential: creds,
		}
		repos = append(repos, &Repository{Repository: rr, Endpoint: h, Name: ref.Registry, Path: ref.Repository, stall: o.Stall})
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

func transport(h Host, stall time.Duration) http.RoundTripper {
	t := http.DefaultTransport.(*http.Transport).Clone()
	if h.TLS != nil {
		t.TLSClientConfig = h.TLS
	}
	t.MaxIdleConnsPerHost = 16
	if stall > 0 {
		t.ResponseHeaderTimeout = stall
		t.TLSHandshakeTimeout = stall
		t.DialContext = (&net.Dialer{Timeout: stall, KeepAlive: 30 * time.Second}).DialContext
		return &stallTransport{next: t, stall: stall}
	}
	return t
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
