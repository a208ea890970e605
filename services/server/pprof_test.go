package server

import (
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"

	"github.com/flotilla/flotilla/services/config"
)

func TestPprof(t *testing.T) {
	get := func(t *testing.T, url string) int {
		t.Helper()
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	t.Run("off unless asked for", func(t *testing.T) {
		dir := shortDir(t)
		metricsAddr := freePort(t)
		startServer(t, config.Common{Address: filepath.Join(dir, "p.sock"), MetricsAddress: metricsAddr, ShutdownTimeout: config.Duration(1e9)})
		if code := get(t, "http://"+metricsAddr+"/debug/pprof/"); code != http.StatusNotFound {
			t.Fatalf("GET /debug/pprof/ = %d, want 404", code)
		}
		if code := get(t, "http://"+metricsAddr+"/metrics"); code != http.StatusOK {
			t.Fatalf("GET /metrics = %d, want 200", code)
		}
	})
	t.Run("asked for, served to loopback clients", func(t *testing.T) {
		dir := shortDir(t)
		metricsAddr := freePort(t)
		startServer(t, config.Common{Address: filepath.Join(dir, "p.sock"), MetricsAddress: metricsAddr, Pprof: true, ShutdownTimeout: config.Duration(1e9)})
		if code := get(t, "http://"+metricsAddr+"/debug/pprof/"); code != http.StatusOK {
			t.Fatalf("GET /debug/pprof/ from loopback = %d, want 200", code)
		}
	})
	t.Run("asked for, refused to other hosts", func(t *testing.T) {
		h := loopbackOnly(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {}))
		for _, remote := range []string{"10.1.2.3:4000", "[2001:db8::1]:4000", "garbage"} {
			rec := httptest.NewRecorder()
			req := httptest.NewRequest("GET", "/debug/pprof/", nil)
			req.RemoteAddr = remote
			h.ServeHTTP(rec, req)
			if rec.Code != http.StatusForbidden {
				t.Errorf("from %s: %d, want 403", remote, rec.Code)
			}
		}
		for _, remote := range []string{"127.0.0.1:4000", "[::1]:4000"} {
			rec := httptest.NewRecorder()
			req := httptest.NewRequest("GET", "/debug/pprof/", nil)
			req.RemoteAddr = remote
			h.ServeHTTP(rec, req)
			if rec.Code != http.StatusOK {
				t.Errorf("from %s: %d, want 200", remote, rec.Code)
			}
		}
	})
}
