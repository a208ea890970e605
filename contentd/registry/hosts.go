package registry

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/BurntSushi/toml"
	"github.com/containerd/errdefs"
)

// Capabilities of a host, as containerd's hosts.toml names them.
const (
	CapPull    = "pull"
	CapResolve = "resolve"
	CapPush    = "push"
)

// Host is one endpoint a registry name is reached through: a mirror from
// hosts.toml or the registry itself.
type Host struct {
	// Host is host[:port] as the HTTP requests address it.
	Host string
	// PlainHTTP is true for http:// endpoints.
	PlainHTTP bool
	// Capabilities lists what the host may be used for (pull, resolve, push).
	Capabilities []string
	// TLS is the client TLS configuration (nil: the system's defaults).
	TLS *tls.Config
	// Header holds extra request headers for this host.
	Header map[string][]string
	// APIPath is the path the registry API is served under, "/v2" but for
	// a mirror whose URL has a path: that path with /v2 appended, or, with
	// override_path, the path as written (containerd's hosts semantics).
	APIPath string
}

// Can reports whether h has capability c.
func (h Host) Can(c string) bool { return slices.Contains(h.Capabilities, c) }

// hostsFile is containerd's hosts.toml (certs.d layout): the registry's own
// settings at the top, then mirrors under [host."scheme://host"], tried in
// the order they are written, before the server.
type hostsFile struct {
	Server string `toml:"server"`
	hostSettings
	Host map[string]hostSettings `toml:"host"`
}

type hostSettings struct {
	Capabilities []string       `toml:"capabilities"`
	SkipVerify   *bool          `toml:"skip_verify"`
	CA           any            `toml:"ca"` // a path or a list of paths
	Header       map[string]any `toml:"header"`
	OverridePath bool           `toml:"override_path"`
}

// Hosts returns the endpoints for registry name (host[:port] of an image
// reference), mirrors first: from dir/<name>/hosts.toml when dir is set and
// the file exists, otherwise the registry itself. defaultScheme "http"
// makes endpoints without a scheme plain HTTP (ctr --plain-http); so does a
// loopback registry, as containerd and Docker treat localhost.
func Hosts(dir, name, defaultScheme string) ([]Host, error) {
	server := Host{Host: name, Capabilities: []string{CapPull, CapResolve, CapPush}, APIPath: "/v2"}
	if name == "docker.io" {
		server.Host = "registry-1.docker.io"
	}
	server.PlainHTTP = defaultScheme == "http" || (defaultScheme == "" && isLoopback(name))
	if dir == "" {
		return []Host{server}, nil
	}
	var hf hostsFile
	path := ""
	for _, candidate := range []string{hostDirName(name), "_default"} {
		p := filepath.Join(dir, candidate, "hosts.toml")
		if _, err := os.Stat(p); err == nil {
			path = p
			break
		} else if !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("hosts config: %w", err)
		}
	}
	if path == "" {
		return []Host{server}, nil
	}
	md, err := toml.DecodeFile(path, &hf)
	if err != nil {
		return nil, fmt.Errorf("hosts config %s: %v: %w", path, err, errdefs.ErrInvalidArgument)
	}
	var hosts []Host
	// Mirrors in the order the file lists them.
	for _, k := range md.Keys() {
		if len(k) != 2 || k[0] != "host" {
			continue
		}
		h, err := hostFrom(k[1], defaultScheme, hf.Host[k[1]], path)
		if err != nil {
			return nil, err
		}
		hosts = append(hosts, h)
	}
	if hf.Server != "" {
		s, err := hostFrom(hf.Server, defaultScheme, hf.hostSettings, path)
		if err != nil {
			return nil, err
		}
		if len(hf.hostSettings.Capabilities) == 0 {
			s.Capabilities = []string{CapPull, CapResolve, CapPush}
		}
		server = s
	} else if hf.hostSettings.SkipVerify != nil || hf.hostSettings.CA != nil || hf.hostSettings.Header != nil {
		s, err := hostFrom(name, defaultScheme, hf.hostSettings, path)
		if err != nil {
			return nil, err
		}
		if len(hf.hostSettings.Capabilities) == 0 {
			s.Capabilities = server.Capabilities
		}
		s.Host, s.PlainHTTP = server.Host, server.PlainHTTP
		server = s
	}
	return append(hosts, server), nil
}

// apiPath is where the registry API of a host URL with path p is: as
// containerd reads hosts.toml, p itself with override_path, otherwise p
// with "/v2" appended unless it already ends so.
func apiPath(p string, override bool) string {
	p = strings.TrimSuffix(p, "/")
	if override {
		return p
	}
	if !strings.HasSuffix(p, "/v2") {
		p += "/v2"
	}
	return p
}

// hostDirName is the certs.d directory name of a registry: host:port
// becomes host_port_ only where the OS forbids ':'; Linux keeps it.
func hostDirName(name string) string { return name }

func isLoopback(name string) bool {
	host, _, err := net.SplitHostPort(name)
	if err != nil {
		host = name
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func hostFrom(raw, defaultScheme string, s hostSettings, path string) (Host, error) {
	if !strings.Contains(raw, "://") {
		scheme := "https"
		if defaultScheme == "http" {
			scheme = "http"
		}
		raw = scheme + "://" + raw
	}
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return Host{}, fmt.Errorf("hosts config %s: bad host %q: %w", path, raw, errdefs.ErrInvalidArgument)
	}
	h := Host{Host: u.Host, PlainHTTP: u.Scheme == "http", Capabilities: s.Capabilities, APIPath: apiPath(u.Path, s.OverridePath)}
	if len(h.Capabilities) == 0 {
		h.Capabilities = []string{CapPull, CapResolve}
	}
	for _, c := range h.Capabilities {
		if c != CapPull && c != CapResolve && c != CapPush {
			return Host{}, fmt.Errorf("hosts config %s: host %q: unknown capability %q: %w", path, raw, c, errdefs.ErrInvalidArgument)
		}
	}
	if s.SkipVerify != nil || s.CA != nil {
		tc := &tls.Config{}
		if s.SkipVerify != nil && *s.SkipVerify {
			tc.InsecureSkipVerify = true
		}
		var cas []string
		switch v := s.CA.(type) {
		case nil:
		case string:
			cas = []string{v}
		case []any:
			for _, c := range v {
				if str, ok := c.(string); ok {
					cas = append(cas, str)
				}
			}
		default:
			return Host{}, fmt.Errorf("hosts config %s: ca must be a path or a list of paths: %w", path, errdefs.ErrInvalidArgument)
		}
		if len(cas) > 0 {
			pool, err := x509.SystemCertPool()
			if err != nil {
				pool = x509.NewCertPool()
			}
			for _, ca := range cas {
				if !filepath.IsAbs(ca) {
					ca = filepath.Join(filepath.Dir(path), ca)
				}
				pem, err := os.ReadFile(ca)
				if err != nil {
					return Host{}, fmt.Errorf("hosts config %s: ca: %w", path, err)
				}
				if !pool.AppendCertsFromPEM(pem) {
					return Host{}, fmt.Errorf("hosts config %s: ca %s holds no PEM certificate: %w", path, ca, errdefs.ErrInvalidArgument)
				}
			}
			tc.RootCAs = pool
		}
		h.TLS = tc
	}
	if len(s.Header) > 0 {
		h.Header = map[string][]string{}
		for k, v := range s.Header {
			switch v := v.(type) {
			case string:
				h.Header[k] = []string{v}
			case []any:
				for _, x := range v {
					if str, ok := x.(string); ok {
						h.Header[k] = append(h.Header[k], str)
					}
				}
			}
		}
	}
	return h, nil
}
