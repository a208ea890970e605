package integration

import (
	"archive/tar"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flotilla/flotilla/integration/imagekit"
)

// writeDockerSave writes img as the older docker save writes an image
// (Docker's image archive 1.2: manifest.json and repositories, a
// <id>/layer.tar with VERSION and json per layer, the config as
// <hex>.json; no index.json, no blobs/), tagged repoTag. img's layers must
// be uncompressed tars, as docker save writes them. missing are layer
// files manifest.json names first but the archive lacks.
func writeDockerSave(t *testing.T, img *imagekit.Image, repoTag, path string, missing ...string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	add := func(name string, data []byte) {
		t.Helper()
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(data))}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	blob := func(b imagekit.Blob) []byte {
		t.Helper()
		rc, err := b.Open()
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		data, err := io.ReadAll(rc)
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	layers := append([]string(nil), missing...)
	for _, l := range img.Layers {
		id := l.DiffID.Encoded()
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: id + "/", Mode: 0o755}); err != nil {
			t.Fatal(err)
		}
		add(id+"/VERSION", []byte("1.0"))
		add(id+"/json", []byte(`{"id":"`+id+`"}`))
		add(id+"/layer.tar", blob(l.Blob))
		layers = append(layers, id+"/layer.tar")
	}
	cfgName := img.Config.Digest.Encoded() + ".json"
	cfg, ok := img.Blob(img.Config.Digest)
	if !ok {
		t.Fatal("image has no config blob")
	}
	add(cfgName, blob(cfg))
	manifest, _ := json.Marshal([]map[string]any{{"Config": cfgName, "RepoTags": []string{repoTag}, "Layers": layers}})
	add("manifest.json", manifest)
	repo, tag, _ := strings.Cut(repoTag, ":")
	repositories, _ := json.Marshal(map[string]map[string]string{repo: {tag: img.Layers[len(img.Layers)-1].DiffID.Encoded()}})
	add("repositories", repositories)
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestTransferImportOfADockerSaveArchive(t *testing.T) {
	requireRootForMounts(t)
	ctr2 := ctr2Bin(t)
	img, err := imagekit.BuildBusybox(imagekit.WithCompression(imagekit.CompressionNone))
	if err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(t.TempDir(), "saved.tar")
	writeDockerSave(t, img, "flotilla/saved:1", archive)
	const name = "docker.io/flotilla/saved:1"

	s := startStack(t)
	stopPluginsOnCleanup(t, s)
	sock24 := startContainerd(t, filepath.Join(filepath.Dir(ctr2), "containerd"), filepath.Dir(ctr2))
	on24 := ctrClient{bin: ctr2, address: sock24, ns: "docker-save"}
	on24.must(t, "images", "import", archive)
	want := ""
	for _, line := range strings.Split(on24.must(t, "images", "ls"), "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == name {
			want = f[2]
		}
	}
	if want == "" {
		t.Fatalf("containerd 2.4 did not name the imported image %s:\n%s", name, on24.must(t, "images", "ls"))
	}

	t.Run("ctr 2.x import names the image as containerd does and it runs", func(t *testing.T) {
		ns := "docker-save"
		s.MustCtr2(ns, "images", "import", archive)
		if got := imageDigest(t, s, ns, name); got != want {
			t.Errorf("imported %s points at %s, containerd 2.4 made %s", name, got, want)
		}
		if out := s.MustCtr2(ns, "run", "--rm", name, "docker-save-run", "echo", "hi"); strings.TrimSpace(out) != "hi" {
			t.Errorf("ctr run printed %q, want hi", out)
		}
	})

	t.Run("flotctl import of the same archive runs", func(t *testing.T) {
		f := flotctlOn{t: t, address: s.Socket, ns: "docker-save-flotctl"}
		f.must("images", "import", archive)
		if got := imageDigest(t, s, "docker-save-flotctl", name); got != want {
			t.Errorf("imported %s points at %s, containerd 2.4 made %s", name, got, want)
		}
		if r := f.run(nil, "run", "--rm", name, "echo", "hi"); r.code != 0 || strings.TrimSpace(r.stdout) != "hi" {
			t.Errorf("flotctl run: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
		}
	})

	t.Run("an archive whose manifest.json names a missing layer is refused and names nothing", func(t *testing.T) {
		bad := filepath.Join(t.TempDir(), "bad.tar")
		writeDockerSave(t, img, "flotilla/broken:1", bad, "missing/layer.tar")
		ns := "docker-save-bad"
		out, err := s.Ctr2(ns, "images", "import", bad)
		if err == nil {
			t.Fatalf("import of an archive lacking a layer succeeded:\n%s", out)
		}
		if !strings.Contains(out, "missing/layer.tar") {
			t.Errorf("the error does not name the missing layer:\n%s", out)
		}
		if ls := s.MustCtr2(ns, "images", "ls", "-q"); strings.TrimSpace(ls) != "" {
			t.Errorf("images after a refused import: %q", ls)
		}
	})
}
