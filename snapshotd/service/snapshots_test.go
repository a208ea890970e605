package service

import (
	"context"
	"errors"
	"io"
	"net"
	"sort"
	"strings"
	"sync"
	"testing"

	eventstypes "github.com/containerd/containerd/api/events"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/test/bufconn"

	"github.com/flotilla/flotilla/services/namespace"
	"github.com/flotilla/flotilla/snapshotd/plugins/native"
	"github.com/flotilla/flotilla/snapshotd/snapshotter"
)

// backends resolves names to in-process backends.
type backends map[string]snapshotter.Snapshotter

func (b backends) Get(name string) (snapshotter.Snapshotter, error) {
	if s, ok := b[name]; ok {
		return s, nil
	}
	return nil, errors.Join(errors.New("snapshotter not loaded: "+name), errdefs.ErrInvalidArgument)
}

// recorder is a fake events.Publisher that keeps what it is given.
type recorder struct {
	mu     sync.Mutex
	topics []string
	events []any
}

func (r *recorder) Publish(ctx context.Context, topic string, event any) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.topics = append(r.topics, topic)
	r.events = append(r.events, event)
	return nil
}

// serve runs the service behind a real gRPC server with the kit's
// conventions reduced to what it relies on: namespace in the context,
// errdefs kinds turned into statuses.
func serve(t *testing.T) (snapshotsapi.SnapshotsClient, *recorder) {
	t.Helper()
	sn, err := native.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sn.Close() })
	rec := &recorder{}
	srv := grpc.NewServer(
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			ctx, err := namespace.FromIncoming(ctx)
			if err != nil {
				return nil, errgrpc.ToGRPC(err)
			}
			resp, err := h(ctx, req)
			return resp, errgrpc.ToGRPC(err)
		}),
		grpc.ChainStreamInterceptor(func(s any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			ctx, err := namespace.FromIncoming(ss.Context())
			if err != nil {
				return errgrpc.ToGRPC(err)
			}
			return errgrpc.ToGRPC(h(s, &ctxStream{ss, ctx}))
		}))
	New(backends{"native": sn, DefaultSnapshotter: sn}, rec).Register(srv)
	l := bufconn.Listen(1 << 20)
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("passthrough:///buf",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return l.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return snapshotsapi.NewSnapshotsClient(conn), rec
}

type ctxStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *ctxStream) Context() context.Context { return s.ctx }

func ns(name string) context.Context {
	return metadata.AppendToOutgoingContext(context.Background(), namespace.MetadataKey, name)
}

func list(t *testing.T, c snapshotsapi.SnapshotsClient, ctx context.Context, filters ...string) []string {
	t.Helper()
	stream, err := c.List(ctx, &snapshotsapi.ListSnapshotsRequest{Snapshotter: "native", Filters: filters})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, in := range resp.Info {
			names = append(names, in.Name+"<"+in.Parent)
		}
	}
	sort.Strings(names)
	return names
}

func TestNamespaces(t *testing.T) {
	c, _ := serve(t)
	a, b := ns("team-a"), ns("team-b")
	for _, ctx := range []context.Context{a, b} {
		if _, err := c.Prepare(ctx, &snapshotsapi.PrepareSnapshotRequest{Snapshotter: "native", Key: "k"}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Commit(ctx, &snapshotsapi.CommitSnapshotRequest{Snapshotter: "native", Name: "base", Key: "k"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Prepare(a, &snapshotsapi.PrepareSnapshotRequest{Snapshotter: "native", Key: "child", Parent: "base"}); err != nil {
		t.Fatal(err)
	}

	t.Run("the same key and committed name live apart in two namespaces", func(t *testing.T) {
		if got := list(t, c, a); len(got) != 2 || got[0] != "base<" || got[1] != "child<base" {
			t.Fatalf("team-a sees %v", got)
		}
		if got := list(t, c, b); len(got) != 1 || got[0] != "base<" {
			t.Fatalf("team-b sees %v", got)
		}
	})
	t.Run("filters match the names the client knows", func(t *testing.T) {
		if got := list(t, c, a, "parent==base"); len(got) != 1 || got[0] != "child<base" {
			t.Fatalf("parent==base in team-a: %v", got)
		}
		if got := list(t, c, a, "name==base"); len(got) != 1 {
			t.Fatalf("name==base in team-a: %v", got)
		}
	})
	t.Run("a snapshot of another namespace is NotFound", func(t *testing.T) {
		_, err := c.Stat(b, &snapshotsapi.StatSnapshotRequest{Snapshotter: "native", Key: "child"})
		if !errdefs.IsNotFound(errgrpc.ToNative(err)) {
			t.Fatalf("err = %v", err)
		}
		_, err = c.Prepare(ns("team-c"), &snapshotsapi.PrepareSnapshotRequest{Snapshotter: "native", Key: "x", Parent: "base"})
		if !errdefs.IsNotFound(errgrpc.ToNative(err)) {
			t.Fatalf("parent from another namespace: err = %v", err)
		}
	})
	t.Run("errors quote the client's keys, not the scoped ones", func(t *testing.T) {
		_, err := c.Prepare(a, &snapshotsapi.PrepareSnapshotRequest{Snapshotter: "native", Key: "child"})
		if !errdefs.IsAlreadyExists(errgrpc.ToNative(err)) || containsStr(err.Error(), "team-a/") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("stat and update answer with unscoped names", func(t *testing.T) {
		resp, err := c.Stat(a, &snapshotsapi.StatSnapshotRequest{Snapshotter: "native", Key: "child"})
		if err != nil || resp.Info.Name != "child" || resp.Info.Parent != "base" {
			t.Fatalf("stat = %v, %v", resp, err)
		}
		up, err := c.Update(a, &snapshotsapi.UpdateSnapshotRequest{Snapshotter: "native",
			Info: &snapshotsapi.Info{Name: "child", Labels: map[string]string{"x": "y"}}})
		if err != nil || up.Info.Name != "child" || up.Info.Labels["x"] != "y" {
			t.Fatalf("update = %v, %v", up, err)
		}
	})
}

func TestRequests(t *testing.T) {
	c, rec := serve(t)
	ctx := ns("default")
	t.Run("a call without a namespace is FailedPrecondition", func(t *testing.T) {
		_, err := c.Stat(context.Background(), &snapshotsapi.StatSnapshotRequest{Snapshotter: "native", Key: "k"})
		if !errdefs.IsFailedPrecondition(errgrpc.ToNative(err)) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("an unknown snapshotter is InvalidArgument", func(t *testing.T) {
		_, err := c.Stat(ctx, &snapshotsapi.StatSnapshotRequest{Snapshotter: "zfs", Key: "k"})
		if !errdefs.IsInvalidArgument(errgrpc.ToNative(err)) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("no snapshotter name means overlayfs", func(t *testing.T) {
		if _, err := c.Prepare(ctx, &snapshotsapi.PrepareSnapshotRequest{Key: "d"}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Remove(ctx, &snapshotsapi.RemoveSnapshotRequest{Key: "d"}); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("prepare, commit and remove publish containerd's events", func(t *testing.T) {
		rec.mu.Lock()
		rec.topics, rec.events = nil, nil
		rec.mu.Unlock()
		c.Prepare(ctx, &snapshotsapi.PrepareSnapshotRequest{Snapshotter: "native", Key: "k"})
		c.Commit(ctx, &snapshotsapi.CommitSnapshotRequest{Snapshotter: "native", Key: "k", Name: "n"})
		c.Remove(ctx, &snapshotsapi.RemoveSnapshotRequest{Snapshotter: "native", Key: "n"})
		c.Remove(ctx, &snapshotsapi.RemoveSnapshotRequest{Snapshotter: "native", Key: "n"}) // fails: no event
		rec.mu.Lock()
		defer rec.mu.Unlock()
		if len(rec.topics) != 3 || rec.topics[0] != TopicPrepare || rec.topics[1] != TopicCommit || rec.topics[2] != TopicRemove {
			t.Fatalf("topics = %v", rec.topics)
		}
		if e, ok := rec.events[1].(*eventstypes.SnapshotCommit); !ok || e.Key != "k" || e.Name != "n" || e.Snapshotter != "native" {
			t.Fatalf("commit event = %#v", rec.events[1])
		}
	})
	t.Run("usage and mounts of a snapshot", func(t *testing.T) {
		c.Prepare(ctx, &snapshotsapi.PrepareSnapshotRequest{Snapshotter: "native", Key: "u"})
		if _, err := c.Usage(ctx, &snapshotsapi.UsageRequest{Snapshotter: "native", Key: "u"}); err != nil {
			t.Fatal(err)
		}
		resp, err := c.Mounts(ctx, &snapshotsapi.MountsRequest{Snapshotter: "native", Key: "u"})
		if err != nil || len(resp.Mounts) != 1 || resp.Mounts[0].Type != "bind" {
			t.Fatalf("mounts = %v, %v", resp, err)
		}
	})
}

func TestSnapshotRef(t *testing.T) {
	c, rec := serve(t)
	ctx := ns("default")
	ref := map[string]string{LabelSnapshotRef: "sha256:layer"}
	if _, err := c.Prepare(ctx, &snapshotsapi.PrepareSnapshotRequest{Snapshotter: "native", Key: "extract-1", Labels: ref}); err != nil {
		t.Fatalf("prepare with a ref to a snapshot not there yet: %v", err)
	}
	if _, err := c.Commit(ctx, &snapshotsapi.CommitSnapshotRequest{Snapshotter: "native", Key: "extract-1", Name: "sha256:layer", Labels: ref}); err != nil {
		t.Fatal(err)
	}
	rec.mu.Lock()
	published := len(rec.topics)
	rec.mu.Unlock()

	t.Run("prepare naming a committed snapshot is AlreadyExists and creates nothing", func(t *testing.T) {
		_, err := c.Prepare(ctx, &snapshotsapi.PrepareSnapshotRequest{Snapshotter: "native", Key: "extract-2", Labels: ref})
		if !errdefs.IsAlreadyExists(errgrpc.ToNative(err)) || !strings.Contains(err.Error(), `"sha256:layer"`) {
			t.Fatalf("err = %v, want AlreadyExists naming the target", err)
		}
		if _, err := c.Stat(ctx, &snapshotsapi.StatSnapshotRequest{Snapshotter: "native", Key: "extract-2"}); !errdefs.IsNotFound(errgrpc.ToNative(err)) {
			t.Fatalf("stat extract-2: %v, want NotFound", err)
		}
		rec.mu.Lock()
		defer rec.mu.Unlock()
		if len(rec.topics) != published {
			t.Fatalf("events published: %v", rec.topics[published:])
		}
	})
	t.Run("view naming a committed snapshot is AlreadyExists", func(t *testing.T) {
		_, err := c.View(ctx, &snapshotsapi.ViewSnapshotRequest{Snapshotter: "native", Key: "view-1", Labels: ref})
		if !errdefs.IsAlreadyExists(errgrpc.ToNative(err)) {
			t.Fatalf("err = %v, want AlreadyExists", err)
		}
	})
	t.Run("the ref is looked up in the caller's namespace only", func(t *testing.T) {
		if _, err := c.Prepare(ns("other"), &snapshotsapi.PrepareSnapshotRequest{Snapshotter: "native", Key: "extract-1", Labels: ref}); err != nil {
			t.Fatalf("prepare in another namespace: %v", err)
		}
	})
}

func containsStr(s, sub string) bool { return strings.Contains(s, sub) }

func TestLimits(t *testing.T) {
	c, _ := serve(t)
	ctx := ns("default")
	bigKey := strings.Repeat("k", 1<<20)
	tests := []struct {
		name string
		call func() error
	}{
		{"prepare with an empty label key is InvalidArgument", func() error {
			_, err := c.Prepare(ctx, &snapshotsapi.PrepareSnapshotRequest{Snapshotter: "native", Key: "a", Labels: map[string]string{"": "v"}})
			return err
		}},
		{"prepare with a label key over 4096 bytes is InvalidArgument", func() error {
			_, err := c.Prepare(ctx, &snapshotsapi.PrepareSnapshotRequest{Snapshotter: "native", Key: "b", Labels: map[string]string{strings.Repeat("k", 4097): ""}})
			return err
		}},
		{"view with key and value over 4096 bytes is InvalidArgument", func() error {
			_, err := c.View(ctx, &snapshotsapi.ViewSnapshotRequest{Snapshotter: "native", Key: "c", Labels: map[string]string{"k": strings.Repeat("v", 4096)}})
			return err
		}},
		{"commit with an oversized label is InvalidArgument", func() error {
			_, err := c.Commit(ctx, &snapshotsapi.CommitSnapshotRequest{Snapshotter: "native", Key: "held", Name: "n", Labels: map[string]string{"k": strings.Repeat("v", 5000)}})
			return err
		}},
		{"update with an empty label key is InvalidArgument", func() error {
			_, err := c.Update(ctx, &snapshotsapi.UpdateSnapshotRequest{Snapshotter: "native",
				Info: &snapshotsapi.Info{Name: "held", Labels: map[string]string{"": "v"}}})
			return err
		}},
		{"prepare with a 1 MiB key is InvalidArgument", func() error {
			_, err := c.Prepare(ctx, &snapshotsapi.PrepareSnapshotRequest{Snapshotter: "native", Key: bigKey})
			return err
		}},
		{"stat of a 1 MiB key is InvalidArgument", func() error {
			_, err := c.Stat(ctx, &snapshotsapi.StatSnapshotRequest{Snapshotter: "native", Key: bigKey})
			return err
		}},
		{"prepare with a 1 MiB parent is InvalidArgument", func() error {
			_, err := c.Prepare(ctx, &snapshotsapi.PrepareSnapshotRequest{Snapshotter: "native", Key: "d", Parent: bigKey})
			return err
		}},
	}
	if _, err := c.Prepare(ctx, &snapshotsapi.PrepareSnapshotRequest{Snapshotter: "native", Key: "held"}); err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			if !errdefs.IsInvalidArgument(errgrpc.ToNative(err)) {
				t.Fatalf("error %v, want InvalidArgument", err)
			}
			if n := len(err.Error()); n > 300 {
				t.Errorf("error message is %d bytes: it echoes the key", n)
			}
		})
	}
	t.Run("nothing was created", func(t *testing.T) {
		if got := list(t, c, ctx); len(got) != 1 || got[0] != "held<" {
			t.Errorf("snapshots %v, want only held", got)
		}
	})
}
