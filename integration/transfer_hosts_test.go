package integration

import (
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/flotilla/flotilla/integration/imagekit"
)

// writeHostsDir writes a certs.d directory holding hosts.toml for registry
// name, and returns the directory.
func writeHostsDir(t *testing.T, name, hostsToml string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, name), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name, "hosts.toml"), []byte(hostsToml), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// pathCounter counts the requests a server saw under each path prefix.
type pathCounter struct {
	mu   sync.Mutex
	hits map[string]int
}

func (c *pathCounter) add(prefix string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.hits[prefix]++
}

func (c *pathCounter) get(prefix string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.hits[prefix]
}

func TestTransferPullThroughAMirrorWithAPath(t *testing.T) {
	requireRootForMounts(t)
	ctr2 := ctr2Bin(t)
	reg := runRegistry(t)
	pushImage(t, reg.Addr, "busybox", func() (*imagekit.Image, error) { return imagekit.BuildBusybox() })
	// The mirror serves the registry API under /override/api (reached
	// with override_path) and /prefix/v2 (a URL path /prefix, to which
	// /v2 is appended); nothing else.
	target, _ := url.Parse("http://" + reg.Addr)
	rp := httputil.NewSingleHostReverseProxy(target)
	hits := &pathCounter{hits: map[string]int{}}
	mirror := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for _, prefix := range []string{"/override/api", "/prefix/v2"} {
			if rest, ok := strings.CutPrefix(r.URL.Path, prefix); ok && (rest == "" || strings.HasPrefix(rest, "/")) {
				hits.add(prefix)
				r.URL.Path = "/v2" + rest
				r.URL.RawPath = ""
				rp.ServeHTTP(w, r)
				return
			}
		}
		http.NotFound(w, r)
	}))
	t.Cleanup(mirror.Close)

	s := startStack(t)
	stopPluginsOnCleanup(t, s)
	sock24 := startContainerd(t, filepath.Join(filepath.Dir(ctr2), "containerd"), filepath.Dir(ctr2))
	// The reference names a registry that does not exist: only the mirror
	// can serve it.
	const ref = "registry.flotilla.invalid/busybox:1"
	for _, tc := range []struct{ name, host, prefix string }{
		{"override_path uses the mirror's path as it is", `[host."` + mirror.URL + `/override/api"]
  capabilities = ["pull", "resolve"]
  override_path = true
`, "/override/api"},
		{"without override_path /v2 is appended to the mirror's path", `[host."` + mirror.URL + `/prefix"]
  capabilities = ["pull", "resolve"]
`, "/prefix/v2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hostsDir := writeHostsDir(t, "registry.flotilla.invalid", "server = \"https://registry.flotilla.invalid\"\n"+tc.host)
			for _, sys := range []struct{ name, sock string }{{"flotilla", s.Socket}, {"containerd 2.4", sock24}} {
				before := hits.get(tc.prefix)
				c := ctrClient{bin: ctr2, address: sys.sock, ns: "mirror-path"}
				c.must(t, "images", "pull", "--hosts-dir", hostsDir, ref)
				c.must(t, "images", "rm", ref)
				if hits.get(tc.prefix) == before {
					t.Errorf("%s pulled without asking the mirror under %s", sys.name, tc.prefix)
				}
			}
		})
	}
}

// tokenRegistry fronts a registry over TLS and requires a bearer token,
// which its /token endpoint issues for basic-auth credentials, as Docker
// Hub's token service does.
type tokenRegistry struct {
	srv        *httptest.Server
	user, pass string
	token      string
	issued     pathCounter // "token" counts tokens issued
}

func newTokenRegistry(t *testing.T, registry string) *tokenRegistry {
	t.Helper()
	target, _ := url.Parse("http://" + registry)
	rp := httputil.NewSingleHostReverseProxy(target)
	tr := &tokenRegistry{user: "flotilla", pass: "s3cret", token: "flotilla-token-1", issued: pathCounter{hits: map[string]int{}}}
	tr.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/token" {
			if u, p, ok := r.BasicAuth(); !ok || u != tr.user || p != tr.pass {
				http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}`, http.StatusUnauthorized)
				return
			}
			if !strings.Contains(r.URL.Query().Get("scope"), "repository:busybox:pull") {
				http.Error(w, "scope "+r.URL.Query().Get("scope"), http.StatusForbidden)
				return
			}
			tr.issued.add("token")
			w.Header().Set("Content-Type", "application/json")
			json.NewEncoder(w).Encode(map[string]any{"token": tr.token, "access_token": tr.token, "expires_in": 300})
			return
		}
		if r.Header.Get("Authorization") != "Bearer "+tr.token {
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="%s/token",service="flotilla-test",scope="repository:busybox:pull"`, tr.srv.URL))
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"token required"}]}`, http.StatusUnauthorized)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(tr.srv.Close)
	return tr
}

func TestTransferPullWithABearerTokenFromARegistryOverTLS(t *testing.T) {
	requireRootForMounts(t)
	ctr2Bin(t)
	reg := runRegistry(t)
	pushImage(t, reg.Addr, "busybox", func() (*imagekit.Image, error) { return imagekit.BuildBusybox() })
	tr := newTokenRegistry(t, reg.Addr)
	host := strings.TrimPrefix(tr.srv.URL, "https://")
	ref := host + "/busybox:1"
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: tr.srv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	// A loopback registry is plain HTTP unless hosts.toml says otherwise.
	withCA := writeHostsDir(t, host, fmt.Sprintf("server = %q\nca = %q\n", tr.srv.URL, caFile))
	withoutCA := writeHostsDir(t, host, fmt.Sprintf("server = %q\n", tr.srv.URL))

	s := startStack(t)
	stopPluginsOnCleanup(t, s)
	ns := "transfer-bearer"
	if out, err := s.Ctr2(ns, "images", "pull", "--hosts-dir", withoutCA, "--user", "flotilla:s3cret", ref); err == nil {
		t.Fatalf("pull from a registry whose certificate no CA vouches for succeeded:\n%s", out)
	} else if !strings.Contains(out, "certificate") {
		t.Errorf("the failed pull does not say the certificate is the trouble:\n%s", out)
	}
	if out, err := s.Ctr2(ns, "images", "pull", "--hosts-dir", withCA, ref); err == nil {
		t.Fatalf("anonymous pull from a registry requiring a token succeeded:\n%s", out)
	}
	if out, err := s.Ctr2(ns, "images", "pull", "--hosts-dir", withCA, "--user", "flotilla:wrong", ref); err == nil {
		t.Fatalf("pull with a wrong password succeeded:\n%s", out)
	}
	if n := tr.issued.get("token"); n != 0 {
		t.Fatalf("%d tokens issued before the right credentials were given", n)
	}
	s.MustCtr2(ns, "images", "pull", "--hosts-dir", withCA, "--user", "flotilla:s3cret", ref)
	if tr.issued.get("token") == 0 {
		t.Error("the pull succeeded without a token from the token service")
	}
	if out := s.MustCtr2(ns, "run", "--rm", ref, "transfer-bearer-run", "echo", "hi"); strings.TrimSpace(out) != "hi" {
		t.Errorf("ctr run printed %q, want hi", out)
	}
}
