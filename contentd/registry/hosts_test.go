package registry

import (
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/containerd/errdefs"
)

func writeHosts(t *testing.T, dir, host, body string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(dir, host), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, host, "hosts.toml"), []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestHosts(t *testing.T) {
	tests := []struct {
		name          string
		registry      string
		defaultScheme string
		file          string // hosts.toml for registry, "" for none
		want          []Host
	}{
		{name: "no config uses the registry over HTTPS", registry: "registry.example:5000",
			want: []Host{{Host: "registry.example:5000", Capabilities: []string{CapPull, CapResolve, CapPush}}}},
		{name: "plain-http is asked for", registry: "registry.example", defaultScheme: "http",
			want: []Host{{Host: "registry.example", PlainHTTP: true, Capabilities: []string{CapPull, CapResolve, CapPush}}}},
		{name: "a loopback registry is plain HTTP", registry: "127.0.0.1:5000",
			want: []Host{{Host: "127.0.0.1:5000", PlainHTTP: true, Capabilities: []string{CapPull, CapResolve, CapPush}}}},
		{name: "docker.io is reached at registry-1", registry: "docker.io",
			want: []Host{{Host: "registry-1.docker.io", Capabilities: []string{CapPull, CapResolve, CapPush}}}},
		{name: "mirrors come first, in file order, then the server", registry: "registry.example",
			file: `server = "https://registry.example"
[host."http://mirror-b.example:5000"]
  capabilities = ["pull"]
[host."https://mirror-a.example"]
  capabilities = ["pull", "resolve"]
`,
			want: []Host{
				{Host: "mirror-b.example:5000", PlainHTTP: true, Capabilities: []string{CapPull}},
				{Host: "mirror-a.example", Capabilities: []string{CapPull, CapResolve}},
				{Host: "registry.example", Capabilities: []string{CapPull, CapResolve, CapPush}},
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if tt.file != "" {
				writeHosts(t, dir, tt.registry, tt.file)
			}
			got, err := Hosts(dir, tt.registry, tt.defaultScheme)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %d hosts %+v, want %+v", len(got), got, tt.want)
			}
			for i := range got {
				g, w := got[i], tt.want[i]
				if g.Host != w.Host || g.PlainHTTP != w.PlainHTTP || len(g.Capabilities) != len(w.Capabilities) {
					t.Errorf("host %d: got %+v, want %+v", i, g, w)
				}
			}
		})
	}
}

func TestHostsSkipVerifyAndCA(t *testing.T) {
	dir := t.TempDir()
	writeHosts(t, dir, "secure.example", `server = "https://secure.example"
skip_verify = true
[host."https://mirror.example"]
  ca = "missing.pem"
`)
	_, err := Hosts(dir, "secure.example", "")
	if err == nil {
		t.Fatal("a CA file that does not exist was accepted")
	}
	writeHosts(t, dir, "secure.example", `server = "https://secure.example"
skip_verify = true
`)
	hosts, err := Hosts(dir, "secure.example", "")
	if err != nil {
		t.Fatal(err)
	}
	if len(hosts) != 1 || hosts[0].TLS == nil || !hosts[0].TLS.InsecureSkipVerify {
		t.Errorf("skip_verify not applied: %+v", hosts)
	}
}

func TestHostsRefusesBadConfig(t *testing.T) {
	for name, body := range map[string]string{
		"unknown capability": `[host."https://m.example"]
  capabilities = ["pull", "teleport"]`,
		"not TOML": `server = `,
	} {
		t.Run(name+" is InvalidArgument", func(t *testing.T) {
			dir := t.TempDir()
			writeHosts(t, dir, "r.example", body)
			if _, err := Hosts(dir, "r.example", ""); !errdefs.IsInvalidArgument(err) {
				t.Errorf("err = %v, want InvalidArgument", err)
			}
		})
	}
}

func TestHostsAPIPath(t *testing.T) {
	dir := t.TempDir()
	writeHosts(t, dir, "r.example", `server = "https://r.example"
[host."https://plain.example"]
[host."https://prefixed.example/mirror"]
[host."https://prefixed-v2.example/mirror/v2"]
[host."https://overridden.example/some/api"]
  override_path = true
`)
	hosts, err := Hosts(dir, "r.example", "")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"plain.example":       "/v2",
		"prefixed.example":    "/mirror/v2",
		"prefixed-v2.example": "/mirror/v2",
		"overridden.example":  "/some/api",
		"r.example":           "/v2",
	}
	for _, h := range hosts {
		if h.APIPath != want[h.Host] {
			t.Errorf("%s: API path %q, want %q", h.Host, h.APIPath, want[h.Host])
		}
	}
}

func TestAPIPathTransportMovesRegistryRequestsOnly(t *testing.T) {
	var seen []string
	rt := &apiPathTransport{host: "mirror.example", path: "/some/api", next: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		seen = append(seen, r.URL.Host+r.URL.Path)
		return &http.Response{StatusCode: http.StatusOK, Body: http.NoBody, Request: r}, nil
	})}
	for _, u := range []string{
		"https://mirror.example/v2/",
		"https://mirror.example/v2/library/busybox/manifests/1",
		"https://auth.example/v2/token",
		"https://mirror.example/v2x/other",
	} {
		req, _ := http.NewRequest(http.MethodGet, u, nil)
		if _, err := rt.RoundTrip(req); err != nil {
			t.Fatal(err)
		}
		if req.URL.String() != u {
			t.Errorf("the caller's request was changed to %s", req.URL)
		}
	}
	want := []string{
		"mirror.example/some/api/",
		"mirror.example/some/api/library/busybox/manifests/1",
		"auth.example/v2/token",
		"mirror.example/v2x/other",
	}
	if !slices.Equal(seen, want) {
		t.Errorf("requests went to %q, want %q", seen, want)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
