package service

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

const registryPath = "/usr/bin/docker-registry"

// startRegistry runs docker-registry on 127.0.0.1 with storage in a
// temporary directory and returns its host:port.
func startRegistry(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	cfg := fmt.Sprintf("version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s\n",
		filepath.Join(dir, "data"), addr)
	cfgPath := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(registryPath, "serve", cfgPath)
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("registry log:\n%s", logs.String())
		}
	})
	for i := 0; ; i++ {
		resp, err := http.Get("http://" + addr + "/v2/")
		if err == nil {
			resp.Body.Close()
			return addr
		}
		if i == 300 {
			t.Fatalf("registry did not start: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// pushBlob uploads data to repo monolithically.
func pushBlob(t *testing.T, addr, repo string, data []byte) digest.Digest {
	t.Helper()
	dgst := digest.FromBytes(data)
	resp, err := http.Post("http://"+addr+"/v2/"+repo+"/blobs/uploads/", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc := resp.Header.Get("Location")
	if resp.StatusCode != http.StatusAccepted || loc == "" {
		t.Fatalf("start upload: %s", resp.Status)
	}
	if !strings.HasPrefix(loc, "http") {
		loc = "http://" + addr + loc
	}
	sep := "?"
	if strings.Contains(loc, "?") {
		sep = "&"
	}
	req, _ := http.NewRequest(http.MethodPut, loc+sep+"digest="+dgst.String(), bytes.NewReader(data))
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("upload %s: %s", dgst, resp.Status)
	}
	return dgst
}

type descriptor struct {
	MediaType string        `json:"mediaType"`
	Digest    digest.Digest `json:"digest"`
	Size      int64         `json:"size"`
}

// pushImage pushes an OCI image of a config and the given layers as
// repo:tag and returns every blob pushed, manifest first.
func pushImage(t *testing.T, addr, repo, tag string, layers ...[]byte) map[digest.Digest][]byte {
	t.Helper()
	blobs := map[digest.Digest][]byte{}
	var diffIDs []string
	var layerDescs []descriptor
	for _, l := range layers {
		var gz bytes.Buffer
		zw := gzip.NewWriter(&gz)
		zw.Write(l)
		zw.Close()
		diffIDs = append(diffIDs, digest.FromBytes(l).String())
		d := pushBlob(t, addr, repo, gz.Bytes())
		blobs[d] = gz.Bytes()
		layerDescs = append(layerDescs, descriptor{"application/vnd.oci.image.layer.v1.tar+gzip", d, int64(gz.Len())})
	}
	config, _ := json.Marshal(map[string]any{
		"architecture": "amd64", "os": "linux",
		"rootfs": map[string]any{"type": "layers", "diff_ids": diffIDs},
	})
	cd := pushBlob(t, addr, repo, config)
	blobs[cd] = config
	manifest, _ := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        descriptor{"application/vnd.oci.image.config.v1+json", cd, int64(len(config))},
		"layers":        layerDescs,
	})
	req, _ := http.NewRequest(http.MethodPut, "http://"+addr+"/v2/"+repo+"/manifests/"+tag, bytes.NewReader(manifest))
	req.Header.Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("push manifest: %s", resp.Status)
	}
	blobs[digest.FromBytes(manifest)] = manifest
	return blobs
}

func tarOf(t *testing.T, files map[string][]byte) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for name, data := range files {
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg})
		tw.Write(data)
	}
	tw.Close()
	return b.Bytes()
}

func TestCtrFetchFromRegistry(t *testing.T) {
	for _, bin := range []string{ctrPath, registryPath} {
		if _, err := os.Stat(bin); err != nil {
			t.Skipf("%s is not installed", bin)
		}
	}
	addr := startRegistry(t)
	big := make([]byte, 5<<20)
	rand.NewChaCha8([32]byte{3}).Read(big)
	blobs := pushImage(t, addr, "flotilla/tiny", "v1",
		tarOf(t, map[string][]byte{"etc/hello": []byte("hello\n")}),
		tarOf(t, map[string][]byte{"data/random": big}))

	ts := serveInProcess(t)
	ns := "fetch"
	mustCtr(t, ts.sock, ns, nil, "content", "fetch", "--plain-http", addr+"/flotilla/tiny:v1")

	ls := mustCtr(t, ts.sock, ns, nil, "content", "ls")
	for dgst, data := range blobs {
		var line string
		for _, l := range strings.Split(ls, "\n") {
			if strings.HasPrefix(l, dgst.String()) {
				line = l
			}
		}
		if line == "" {
			t.Errorf("blob %s (%d bytes) not listed:\n%s", dgst, len(data), ls)
			continue
		}
		if got := mustCtr(t, ts.sock, ns, nil, "content", "get", dgst.String()); got != string(data) {
			t.Errorf("content get %s: %d bytes differ from the registry's %d", dgst, len(got), len(data))
		}
	}
	if out := mustCtr(t, ts.sock, ns, nil, "content", "active"); strings.Count(out, "\n") > 1 {
		t.Errorf("ingests left after fetch:\n%s", out)
	}
	// A second fetch finds everything in place.
	mustCtr(t, ts.sock, ns, nil, "content", "fetch", "--plain-http", addr+"/flotilla/tiny:v1")
}
