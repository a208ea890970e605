package service

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/flotilla/flotilla/contentd/content"
	"github.com/flotilla/flotilla/contentd/content/contenttest"
	"github.com/flotilla/flotilla/contentd/internal/testserver"
	"github.com/flotilla/flotilla/services/contentclient"
	"github.com/flotilla/flotilla/services/dial"
)

// The content conformance suite through gRPC on a unix socket, reached
// with the kit's remote client (services/contentclient over a dial.Dial
// connection, as snapshotd and taskd reach contentd):
//   - the service served in this process by the kit's server, so a
//     failure points at the service or the client, not at a process;
//   - a separate content server process, as contentd runs.
func TestConformance(t *testing.T) {
	t.Run("service in process", func(t *testing.T) {
		contenttest.Run(t, func(t *testing.T) content.Store {
			return remoteStore{dialClient(t, serveInProcess(t).sock)}
		}, contenttest.Options{Rounds: 50})
	})
	t.Run("server process", func(t *testing.T) {
		contenttest.Run(t, func(t *testing.T) content.Store {
			dir := testserver.ShortDir(t)
			p := startProcess(t, filepath.Join(dir, "root"), filepath.Join(dir, "c.sock"))
			return remoteStore{dialClient(t, p.sock)}
		}, contenttest.Options{Rounds: 50})
	})
}

func dialClient(t *testing.T, sock string) *contentclient.Client {
	t.Helper()
	conn, err := dial.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return contentclient.New(conn)
}

// remoteStore is content.Store over the kit's remote client.
type remoteStore struct{ c *contentclient.Client }

func infoOf(in contentclient.Info) content.Info {
	return content.Info{Digest: in.Digest, Size: in.Size, CreatedAt: in.CreatedAt, UpdatedAt: in.UpdatedAt, Labels: in.Labels}
}

func statusOf(in contentclient.Status) content.Status {
	return content.Status{Ref: in.Ref, Offset: in.Offset, Total: in.Total, Expected: in.Expected,
		StartedAt: in.StartedAt, UpdatedAt: in.UpdatedAt}
}

func (r remoteStore) Info(ctx context.Context, dgst digest.Digest) (content.Info, error) {
	info, err := r.c.Info(ctx, dgst)
	return infoOf(info), err
}

func (r remoteStore) Update(ctx context.Context, info content.Info, paths ...string) (content.Info, error) {
	out, err := r.c.Update(ctx, contentclient.Info{Digest: info.Digest, Labels: info.Labels}, paths...)
	return infoOf(out), err
}

func (r remoteStore) Walk(ctx context.Context, fn func(content.Info) error, filters ...string) error {
	return r.c.Walk(ctx, func(info contentclient.Info) error { return fn(infoOf(info)) }, filters...)
}

func (r remoteStore) Delete(ctx context.Context, dgst digest.Digest) error {
	return r.c.Delete(ctx, dgst)
}

func (r remoteStore) ReaderAt(ctx context.Context, dgst digest.Digest) (content.ReaderAt, error) {
	return r.c.ReaderAt(ctx, ocispec.Descriptor{Digest: dgst})
}

func (r remoteStore) Status(ctx context.Context, ref string) (content.Status, error) {
	st, err := r.c.Status(ctx, ref)
	return statusOf(st), err
}

func (r remoteStore) ListStatuses(ctx context.Context, filters ...string) ([]content.Status, error) {
	sts, err := r.c.ListStatuses(ctx, filters...)
	var out []content.Status
	for _, st := range sts {
		out = append(out, statusOf(st))
	}
	return out, err
}

func (r remoteStore) Abort(ctx context.Context, ref string) error { return r.c.Abort(ctx, ref) }

func (r remoteStore) Writer(ctx context.Context, ref string, total int64, expected digest.Digest) (content.Writer, error) {
	w, err := r.c.ResumeWriter(ctx, ref, total, expected)
	if err != nil {
		return nil, err
	}
	return remoteWriter{w}, nil
}

// remoteWriter is content.Writer over the remote client's writer; Status
// and Digest, which ask the store, report nothing when it cannot answer.
type remoteWriter struct{ *contentclient.Writer }

func (w remoteWriter) Status() content.Status {
	st, _ := w.Writer.Status()
	return statusOf(st)
}

func (w remoteWriter) Digest() digest.Digest {
	d, _ := w.Writer.Digest()
	return d
}
