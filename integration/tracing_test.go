package integration

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/transfer/image"
	"github.com/containerd/containerd/v2/core/transfer/registry"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/platforms"
	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/flotilla/flotilla/flotctl/stack"
	"github.com/flotilla/flotilla/integration/imagekit"
)

// otlpReceiver is an OTLP/gRPC trace collector in the test process: it
// keeps the service and name of every span it is sent, by trace id.
type otlpReceiver struct {
	collectortrace.UnimplementedTraceServiceServer
	addr string

	mu      sync.Mutex
	spans   map[string][]receivedSpan // by hex trace id
	arrived chan struct{}             // signalled on every export
}

type receivedSpan struct{ service, name string }

func startOTLPReceiver(t *testing.T) *otlpReceiver {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &otlpReceiver{addr: "http://" + l.Addr().String(), spans: map[string][]receivedSpan{}, arrived: make(chan struct{}, 1)}
	srv := grpc.NewServer()
	collectortrace.RegisterTraceServiceServer(srv, r)
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	return r
}

func (r *otlpReceiver) Export(_ context.Context, req *collectortrace.ExportTraceServiceRequest) (*collectortrace.ExportTraceServiceResponse, error) {
	r.mu.Lock()
	for _, rs := range req.GetResourceSpans() {
		service := ""
		for _, a := range rs.GetResource().GetAttributes() {
			if a.GetKey() == "service.name" {
				service = a.GetValue().GetStringValue()
			}
		}
		for _, ss := range rs.GetScopeSpans() {
			for _, sp := range ss.GetSpans() {
				id := hex.EncodeToString(sp.GetTraceId())
				r.spans[id] = append(r.spans[id], receivedSpan{service: service, name: sp.GetName()})
			}
		}
	}
	r.mu.Unlock()
	select {
	case r.arrived <- struct{}{}:
	default:
	}
	return &collectortrace.ExportTraceServiceResponse{}, nil
}

// services returns, for trace id, each service that sent spans and their names.
func (r *otlpReceiver) services(id string) map[string][]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string][]string{}
	for _, sp := range r.spans[id] {
		out[sp.service] = append(out[sp.service], sp.name)
	}
	return out
}

// waitFor waits until trace id holds spans of every service in want;
// "service:name" wants a span of that name from the service.
func (r *otlpReceiver) waitFor(t *testing.T, id string, want []string, within time.Duration) map[string][]string {
	t.Helper()
	deadline := time.After(within)
	for {
		got := r.services(id)
		missing := slices.DeleteFunc(slices.Clone(want), func(s string) bool {
			service, span, named := strings.Cut(s, ":")
			return len(got[service]) > 0 && (!named || slices.Contains(got[service], span))
		})
		if len(missing) == 0 {
			return got
		}
		select {
		case <-r.arrived:
		case <-deadline:
			var have []string
			for s := range got {
				have = append(have, s)
			}
			sort.Strings(have)
			t.Fatalf("trace %s has no spans from %v within %v; it has spans from %v: %v", id, missing, within, have, got)
		}
	}
}

// TestPullAndRunAreTracedEndToEnd pulls an image through Transfer (gateway,
// contentd, snapshotd and its overlayfs plugin unpack it) and runs a
// container from it (taskd and its shim), all in one trace the client
// started, and checks that an OTLP collector receives that trace's spans
// from every one of those processes, and from eventd, which received the
// events through Redis.
func TestPullAndRunAreTracedEndToEnd(t *testing.T) {
	requireRootForMounts(t)
	receiver := startOTLPReceiver(t)
	// Spans leave each process in batches: flush them often.
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
	reg := imagekit.StartRegistry(t)
	redis := startRedis(t)
	s := startStackWith(t, func(l *stack.Layout) {
		l.RedisURL = redis.URL()
		if l.ExtraArgs == nil {
			l.ExtraArgs = map[string][]string{}
		}
		for _, name := range stack.Order {
			l.ExtraArgs[name] = append(l.ExtraArgs[name], "--otlp-endpoint", receiver.addr)
		}
	})
	stopPluginsOnCleanup(t, s)
	p := pushImage(t, reg, "traced", func() (*imagekit.Image, error) { return imagekit.BuildBusybox() })

	client, err := containerd.New(s.Socket, containerd.WithDefaultNamespace("traced"))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()

	// The client's own span: every call below carries it as the parent.
	traceID, spanID := make([]byte, 16), make([]byte, 8)
	rand.Read(traceID)
	rand.Read(spanID)
	id := hex.EncodeToString(traceID)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "traceparent", "00-"+id+"-"+hex.EncodeToString(spanID)+"-01")

	src, err := registry.NewOCIRegistry(ctx, p.ref, registry.WithDefaultScheme("http"))
	if err != nil {
		t.Fatal(err)
	}
	dst := image.NewStore(p.ref, image.WithPlatforms(platforms.DefaultSpec()), image.WithUnpack(platforms.DefaultSpec(), "overlayfs"))
	if err := client.Transfer(ctx, src, dst); err != nil {
		t.Fatalf("transfer pull: %v", err)
	}
	img, err := client.GetImage(ctx, p.ref)
	if err != nil {
		t.Fatal(err)
	}
	container, err := client.NewContainer(ctx, "traced", containerd.WithSnapshotter("overlayfs"),
		containerd.WithNewSnapshot("traced-rootfs", img), containerd.WithNewSpec(oci.WithImageConfig(img), oci.WithProcessArgs("true")))
	if err != nil {
		t.Fatalf("new container: %v", err)
	}
	task, err := container.NewTask(ctx, cio.NullIO)
	if err != nil {
		t.Fatalf("new task: %v", err)
	}
	exited, err := task.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Start(ctx); err != nil {
		t.Fatalf("start: %v", err)
	}
	if st := <-exited; st.ExitCode() != 0 {
		t.Fatalf("container exited %d: %v", st.ExitCode(), st.Error())
	}
	if _, err := task.Delete(ctx); err != nil {
		t.Fatalf("delete task: %v", err)
	}
	if err := container.Delete(ctx, containerd.WithSnapshotCleanup); err != nil {
		t.Fatalf("delete container: %v", err)
	}

	got := receiver.waitFor(t, id, []string{"gateway", "contentd", "snapshotd", "snapshotter-overlayfs", "taskd", "taskd-shim",
		// eventd received taskd's event, and the shim's (through taskd's
		// ttrpc Forward), through Redis within the trace.
		"eventd:events.deliver /containers/create", "eventd:events.deliver /tasks/start"}, 30*time.Second)
	for service, names := range got {
		sort.Strings(names)
		t.Logf("%s: %s", service, strings.Join(slices.Compact(names), " "))
	}
	t.Run("contentd served the pull", func(t *testing.T) {
		if !slices.ContainsFunc(got["contentd"], func(n string) bool { return strings.Contains(n, "containerd.services.transfer.v1.Transfer/Transfer") }) {
			t.Errorf("contentd spans %v lack the Transfer", got["contentd"])
		}
	})
	t.Run("the shim's span is the task service's", func(t *testing.T) {
		if !slices.ContainsFunc(got["taskd-shim"], func(n string) bool { return strings.Contains(n, "containerd.task.v2.Task/Create") }) {
			t.Errorf("shim spans %v lack the task's Create", got["taskd-shim"])
		}
	})
	t.Run("the plugin's spans are the snapshots service's", func(t *testing.T) {
		if !slices.ContainsFunc(got["snapshotter-overlayfs"], func(n string) bool { return strings.Contains(n, "containerd.services.snapshots.v1.Snapshots/") }) {
			t.Errorf("plugin spans %v lack snapshot calls", got["snapshotter-overlayfs"])
		}
	})
}
