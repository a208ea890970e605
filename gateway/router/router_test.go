package router_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	namespacesapi "github.com/containerd/containerd/api/services/namespaces/v1"
	"github.com/containerd/errdefs"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/flotilla/flotilla/gateway/backend"
	"github.com/flotilla/flotilla/gateway/router"
)

func TestUnary(t *testing.T) {
	s := newStack(t)
	client := namespacesapi.NewNamespacesClient(s.gateway)

	t.Run("answer comes back with the caller's namespace and lease forwarded", func(t *testing.T) {
		ctx := withNamespace(context.Background(), "team-a", "containerd-lease", "lease-1")
		var header, trailer metadata.MD
		resp, err := client.Get(ctx, &namespacesapi.GetNamespaceRequest{Name: "x"}, grpc.Header(&header), grpc.Trailer(&trailer))
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]string{"caller-namespace": "team-a", "caller-lease": "lease-1"}
		if got := resp.Namespace.Labels; got["caller-namespace"] != want["caller-namespace"] || got["caller-lease"] != want["caller-lease"] {
			t.Errorf("backend saw %v, want %v", got, want)
		}
		if got := header.Get("x-backend-header"); len(got) != 1 || got[0] != "h" {
			t.Errorf("header x-backend-header = %v, want [h]", got)
		}
		if got := trailer.Get("x-backend-trailer"); len(got) != 1 || got[0] != "t" {
			t.Errorf("trailer x-backend-trailer = %v, want [t]", got)
		}
	})

	t.Run("backend error arrives with its code and message unchanged", func(t *testing.T) {
		ctx := withNamespace(context.Background(), "default")
		_, direct := namespacesapi.NewNamespacesClient(s.direct).Get(ctx, &namespacesapi.GetNamespaceRequest{Name: "missing"})
		var trailer metadata.MD
		_, err := client.Get(ctx, &namespacesapi.GetNamespaceRequest{Name: "missing"}, grpc.Trailer(&trailer))
		if status.Code(err) != codes.NotFound {
			t.Fatalf("got %v, want NotFound", err)
		}
		if got, want := status.Convert(err).Message(), status.Convert(direct).Message(); got != want {
			t.Errorf("message %q, want the backend's %q", got, want)
		}
		if got := trailer.Get("x-backend-trailer"); len(got) != 1 {
			t.Errorf("trailer of a failed call = %v, want the backend's", got)
		}
	})

	t.Run("invalid namespace is refused with InvalidArgument", func(t *testing.T) {
		ctx := withNamespace(context.Background(), "-bad")
		_, err := client.Get(ctx, &namespacesapi.GetNamespaceRequest{Name: "x"})
		if status.Code(err) != codes.InvalidArgument {
			t.Fatalf("got %v, want InvalidArgument", err)
		}
	})
}

func TestStreams(t *testing.T) {
	s := newStack(t)
	client := contentapi.NewContentClient(s.gateway)
	ctx := withNamespace(context.Background(), "default")

	t.Run("server stream delivers every message intact", func(t *testing.T) {
		const size = 3*readChunk + 100
		stream, err := client.Read(ctx, &contentapi.ReadContentRequest{Size: size})
		if err != nil {
			t.Fatal(err)
		}
		var got bytes.Buffer
		messages := 0
		for {
			resp, err := stream.Recv()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if resp.Offset != int64(got.Len()) {
				t.Fatalf("message %d at offset %d, want %d", messages, resp.Offset, got.Len())
			}
			got.Write(resp.Data)
			messages++
		}
		if messages != 4 || got.Len() != size {
			t.Fatalf("got %d messages, %d bytes; want 4, %d", messages, got.Len(), size)
		}
		for i, b := range got.Bytes() {
			if b != byte(i%251) {
				t.Fatalf("byte %d = %d, want %d", i, b, i%251)
			}
		}
	})

	t.Run("server stream error arrives with its code", func(t *testing.T) {
		stream, err := client.Read(ctx, &contentapi.ReadContentRequest{Size: -1})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := stream.Recv(); status.Code(err) != codes.InvalidArgument {
			t.Fatalf("got %v, want InvalidArgument", err)
		}
	})

	t.Run("bidi stream answers each message in turn", func(t *testing.T) {
		stream, err := client.Write(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for i, data := range [][]byte{[]byte("abc"), bytes.Repeat([]byte("x"), readChunk), nil} {
			if err := stream.Send(&contentapi.WriteContentRequest{Action: contentapi.WriteAction_WRITE, Ref: "r", Data: data}); err != nil {
				t.Fatal(err)
			}
			resp, err := stream.Recv()
			if err != nil {
				t.Fatalf("message %d: %v", i, err)
			}
			want := map[int]int64{0: 3, 1: 3 + readChunk, 2: 3 + readChunk}[i]
			if resp.Offset != want {
				t.Errorf("message %d: offset %d, want %d", i, resp.Offset, want)
			}
		}
		if err := stream.CloseSend(); err != nil {
			t.Fatal(err)
		}
		if _, err := stream.Recv(); err != io.EOF {
			t.Fatalf("after CloseSend got %v, want EOF", err)
		}
	})

	t.Run("bidi stream error from the backend ends the call with its code", func(t *testing.T) {
		stream, err := client.Write(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.Send(&contentapi.WriteContentRequest{Ref: "fail"}); err != nil {
			t.Fatal(err)
		}
		_, err = stream.Recv()
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(status.Convert(err).Message(), `"fail"`) {
			t.Fatalf("got %v, want the backend's FailedPrecondition", err)
		}
	})

	t.Run("caller cancelling a stream ends it", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		stream, err := client.Write(cctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.Send(&contentapi.WriteContentRequest{Ref: "r", Data: []byte("a")}); err != nil {
			t.Fatal(err)
		}
		if _, err := stream.Recv(); err != nil {
			t.Fatal(err)
		}
		cancel()
		if _, err := stream.Recv(); status.Code(err) != codes.Canceled {
			t.Fatalf("got %v, want Canceled", err)
		}
	})
}

func TestUnroutedServices(t *testing.T) {
	var logs syncBuffer
	s := newStackLogging(t, slog.New(slog.NewTextHandler(&logs, nil)))
	for _, tc := range []struct {
		name, method, mention string
	}{
		{"containerd service without a backend is Unimplemented", "/containerd.services.sandbox.v1.Store/List", `"sandbox"`},
		{"foreign service is Unimplemented", "/acme.Widgets/List", "acme.Widgets"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := s.gateway.Invoke(context.Background(), tc.method, &emptypb.Empty{}, &emptypb.Empty{})
			if status.Code(err) != codes.Unimplemented || !strings.Contains(status.Convert(err).Message(), tc.mention) {
				t.Fatalf("got %v, want Unimplemented mentioning %s", err, tc.mention)
			}
			// Logged once at the default level, with method and code.
			want := "level=INFO msg=\"call failed\" method=" + tc.method + " code=Unimplemented"
			if n := strings.Count(logs.String(), want); n != 1 {
				t.Errorf("the gateway logged %q %d times, want once; log:\n%s", want, n, logs.String())
			}
		})
	}
}

// syncBuffer is a bytes.Buffer safe for a logger and a test to share.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestLookup(t *testing.T) {
	content, err := backend.Dial("contentd", "/nonexistent/contentd.sock", []string{"content", "namespaces"})
	if err != nil {
		t.Fatal(err)
	}
	defer content.Close()
	events, err := backend.Dial("eventd", "/nonexistent/eventd.sock", []string{"events"})
	if err != nil {
		t.Fatal(err)
	}
	defer events.Close()
	r := router.New()
	r.Route(content)
	r.Route(events)

	for _, tc := range []struct {
		method string
		want   string
	}{
		{"/containerd.services.content.v1.Content/Write", "contentd"},
		{"/containerd.services.namespaces.v1.Namespaces/List", "contentd"},
		{"/containerd.services.events.v1.Events/Subscribe", "eventd"},
		{"/containerd.services.tasks.v1.Tasks/Create", ""},
		{"/containerd.services.eventsx.v1.Events/Subscribe", ""},
		{"/grpc.health.v1.Health/Check", ""},
	} {
		b, err := r.Lookup(tc.method)
		got := ""
		if err == nil {
			got = b.Name()
		}
		if got != tc.want {
			t.Errorf("Lookup(%s) = %q (err %v), want %q", tc.method, got, err, tc.want)
		}
	}
}

func TestLookupFlotillaServices(t *testing.T) {
	snapshotd, err := backend.Dial("snapshotd", "/nonexistent/snapshotd.sock", []string{"snapshots", "diff"})
	if err != nil {
		t.Fatal(err)
	}
	defer snapshotd.Close()
	r := router.New()
	r.Route(snapshotd)
	for _, tc := range []struct {
		name, method, want string
	}{
		{"flotilla.<component> service goes to the backend of that name", "/flotilla.snapshotd.v1.Snapshotters/List", "snapshotd"},
		{"flotilla service of an unknown component is not routed", "/flotilla.taskd.v1.Shims/List", ""},
		{"component name must match exactly", "/flotilla.snapshotdx.v1.Snapshotters/List", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := r.Lookup(tc.method)
			got := ""
			if err == nil {
				got = b.Name()
			} else if !errdefs.IsNotImplemented(err) {
				t.Fatalf("err = %v, want NotImplemented", err)
			}
			if got != tc.want {
				t.Fatalf("Lookup(%s) = %q (err %v), want %q", tc.method, got, err, tc.want)
			}
		})
	}
}

func TestBackendDown(t *testing.T) {
	s := newStack(t)
	client := namespacesapi.NewNamespacesClient(s.gateway)
	ctx := withNamespace(context.Background(), "default")
	if _, err := client.List(ctx, &namespacesapi.ListNamespacesRequest{}); err != nil {
		t.Fatal(err)
	}

	s.stopBackend()
	start := time.Now()
	_, err := client.List(ctx, &namespacesapi.ListNamespacesRequest{})
	elapsed := time.Since(start)
	t.Logf("call to a stopped backend failed after %s: %v", elapsed, err)
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("got %v, want Unavailable", err)
	}
	if msg := status.Convert(err).Message(); !strings.Contains(msg, "contentd (unix://"+s.backendAddr+") is unavailable") {
		t.Errorf("message %q does not name the backend and its address", msg)
	}
	if elapsed > 2500*time.Millisecond {
		t.Errorf("call hung for %s", elapsed)
	}

	t.Run("stream call to a stopped backend is Unavailable too", func(t *testing.T) {
		stream, err := contentapi.NewContentClient(s.gateway).Read(ctx, &contentapi.ReadContentRequest{Size: 1})
		if err == nil {
			_, err = stream.Recv()
		}
		if status.Code(err) != codes.Unavailable || !strings.Contains(status.Convert(err).Message(), "contentd (unix://") {
			t.Fatalf("got %v, want Unavailable naming contentd", err)
		}
	})

	t.Run("restarted backend answers the next call through the same gateway", func(t *testing.T) {
		s.restartBackend(t)
		resp, err := client.List(ctx, &namespacesapi.ListNamespacesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Namespaces) != 1 {
			t.Fatalf("got %v", resp.Namespaces)
		}
	})
}
