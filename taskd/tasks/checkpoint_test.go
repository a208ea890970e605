package tasks

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"

	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	api "github.com/containerd/containerd/api/services/tasks/v1"
	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/flotilla/flotilla/taskd/checkpoint"
)

type fakeContainers map[string]*containersapi.Container

func (f fakeContainers) Get(_ context.Context, id string) (*containersapi.Container, error) {
	c, ok := f[id]
	if !ok {
		return nil, fmt.Errorf("container %q: %w", id, errdefs.ErrNotFound)
	}
	return c, nil
}

// fakeTask stands for a shim: its Checkpoint writes files into dir, or
// fails with err.
type fakeTask struct {
	files   map[string]string
	err     error
	dirs    []string
	options []*anypb.Any
}

func (f *fakeTask) Checkpoint(_ context.Context, dir string, options *anypb.Any) error {
	f.dirs = append(f.dirs, dir)
	f.options = append(f.options, options)
	if f.err != nil {
		return f.err
	}
	for name, data := range f.files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
			return err
		}
	}
	return nil
}

// memIngester keeps committed blobs in memory.
type memIngester struct {
	mu    sync.Mutex
	blobs map[digest.Digest][]byte
}

func (m *memIngester) Writer(context.Context, string) (checkpoint.Writer, error) {
	return &memWriter{m: m}, nil
}

func (m *memIngester) count() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.blobs)
}

type memWriter struct {
	m   *memIngester
	buf bytes.Buffer
}

func (w *memWriter) Write(p []byte) (int, error) { return w.buf.Write(p) }
func (w *memWriter) Close() error                { return nil }

func (w *memWriter) Commit(_ context.Context, size int64, expected digest.Digest) error {
	if int64(w.buf.Len()) != size || digest.FromBytes(w.buf.Bytes()) != expected {
		return fmt.Errorf("commit mismatch: %w", errdefs.ErrFailedPrecondition)
	}
	w.m.mu.Lock()
	defer w.m.mu.Unlock()
	w.m.blobs[expected] = bytes.Clone(w.buf.Bytes())
	return nil
}

var testSpec = &anypb.Any{
	TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Spec",
	Value:   []byte(`{"ociVersion":"1.1.0"}`),
}

// newCheckpointService returns a Service whose only task is c1, task, and
// whose CRIU check answers criu.
func newCheckpointService(task *fakeTask, content checkpoint.Ingester, criu error) *Service {
	s := NewService(fakeContainers{"c1": {ID: "c1", Spec: testSpec}}, nil, content, slog.New(slog.DiscardHandler))
	s.checkpointer = func(_ context.Context, id string) (checkpointer, error) {
		if id != "c1" {
			return nil, fmt.Errorf("task %q: %w", id, errdefs.ErrNotFound)
		}
		return task, nil
	}
	s.criuUsable = func(context.Context) error { return criu }
	return s
}

func tarEntries(t *testing.T, data []byte) map[string]string {
	t.Helper()
	out := map[string]string{}
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		out[hdr.Name] = string(b)
	}
}

func TestCheckpoint(t *testing.T) {
	ctx := context.Background()
	files := map[string]string{"inventory.img": "inv", "pages-1.img": "pages", "dump.log": "done"}

	t.Run("stores the dump as a tar and the spec, and answers their descriptors", func(t *testing.T) {
		task := &fakeTask{files: files}
		content := &memIngester{blobs: map[digest.Digest][]byte{}}
		s := newCheckpointService(task, content, nil)
		opts, err := anypb.New(&runcoptions.CheckpointOptions{Exit: true})
		if err != nil {
			t.Fatal(err)
		}
		resp, err := s.Checkpoint(ctx, &api.CheckpointTaskRequest{ContainerID: "c1", Options: opts})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Descriptors) != 2 {
			t.Fatalf("%d descriptors, want 2", len(resp.Descriptors))
		}
		image, config := resp.Descriptors[0], resp.Descriptors[1]
		if image.MediaType != checkpoint.MediaTypeCheckpoint || config.MediaType != checkpoint.MediaTypeConfig {
			t.Errorf("media types %q, %q", image.MediaType, config.MediaType)
		}
		got := tarEntries(t, content.blobs[digest.Digest(image.Digest)])
		if len(got) != len(files) {
			t.Errorf("tar entries %q, want %q", got, files)
		}
		for name, data := range files {
			if got[name] != data {
				t.Errorf("tar entry %q = %q, want %q", name, got[name], data)
			}
		}
		var spec anypb.Any
		if err := proto.Unmarshal(content.blobs[digest.Digest(config.Digest)], &spec); err != nil || !proto.Equal(&spec, testSpec) {
			t.Errorf("config blob holds %v (%v), want the container's spec", &spec, err)
		}
		if !proto.Equal(task.options[0], opts) {
			t.Errorf("shim got options %v, want %v", task.options[0], opts)
		}
		if _, err := os.Stat(task.dirs[0]); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("image directory %s left behind (%v)", task.dirs[0], err)
		}
	})

	t.Run("without a usable CRIU it is FailedPrecondition and the task is not touched", func(t *testing.T) {
		task := &fakeTask{files: files}
		content := &memIngester{blobs: map[digest.Digest][]byte{}}
		s := newCheckpointService(task, content, fmt.Errorf("CRIU is not installed: %w", errdefs.ErrFailedPrecondition))
		_, err := s.Checkpoint(ctx, &api.CheckpointTaskRequest{ContainerID: "c1"})
		if !errdefs.IsFailedPrecondition(err) {
			t.Fatalf("got %v, want FailedPrecondition", err)
		}
		if len(task.dirs) != 0 || content.count() != 0 {
			t.Errorf("shim called %d times, %d blobs stored; want neither", len(task.dirs), content.count())
		}
	})

	t.Run("the shim's error is answered and nothing is stored or left behind", func(t *testing.T) {
		task := &fakeTask{err: fmt.Errorf("checkpoint: runc: criu failed: %w", errdefs.ErrUnknown)}
		content := &memIngester{blobs: map[digest.Digest][]byte{}}
		s := newCheckpointService(task, content, nil)
		_, err := s.Checkpoint(ctx, &api.CheckpointTaskRequest{ContainerID: "c1"})
		if !errdefs.IsUnknown(err) {
			t.Fatalf("got %v, want the shim's Unknown", err)
		}
		if content.count() != 0 {
			t.Errorf("%d blobs stored, want none", content.count())
		}
		if _, err := os.Stat(task.dirs[0]); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("image directory %s left behind (%v)", task.dirs[0], err)
		}
	})

	t.Run("an image path in the runc options keeps the dump there and stores nothing", func(t *testing.T) {
		task := &fakeTask{files: files}
		content := &memIngester{blobs: map[digest.Digest][]byte{}}
		s := newCheckpointService(task, content, nil)
		path := t.TempDir()
		opts, err := anypb.New(&runcoptions.CheckpointOptions{ImagePath: path})
		if err != nil {
			t.Fatal(err)
		}
		resp, err := s.Checkpoint(ctx, &api.CheckpointTaskRequest{ContainerID: "c1", Options: opts})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Descriptors) != 0 || content.count() != 0 {
			t.Errorf("%d descriptors, %d blobs; want none", len(resp.Descriptors), content.count())
		}
		if task.dirs[0] != path {
			t.Errorf("dumped into %s, want %s", task.dirs[0], path)
		}
		if _, err := os.Stat(filepath.Join(path, "inventory.img")); err != nil {
			t.Errorf("dump not kept: %v", err)
		}
	})

	t.Run("a container without a task is NotFound", func(t *testing.T) {
		s := newCheckpointService(&fakeTask{}, &memIngester{blobs: map[digest.Digest][]byte{}}, nil)
		s.containers = fakeContainers{"c1": {ID: "c1", Spec: testSpec}, "c2": {ID: "c2", Spec: testSpec}}
		for _, id := range []string{"c2", "missing"} {
			if _, err := s.Checkpoint(ctx, &api.CheckpointTaskRequest{ContainerID: id}); !errdefs.IsNotFound(err) {
				t.Errorf("checkpoint %s: got %v, want NotFound", id, err)
			}
		}
	})

	t.Run("without a content store it is FailedPrecondition", func(t *testing.T) {
		task := &fakeTask{files: files}
		s := newCheckpointService(task, nil, nil)
		if _, err := s.Checkpoint(ctx, &api.CheckpointTaskRequest{ContainerID: "c1"}); !errdefs.IsFailedPrecondition(err) {
			t.Fatalf("got %v, want FailedPrecondition", err)
		}
		if len(task.dirs) != 0 {
			t.Errorf("shim called without a place to store the dump")
		}
	})
}
