package integration

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	eventsapi "github.com/containerd/containerd/api/services/events/v1"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/flotilla/flotilla/integration/imagekit"
	"github.com/flotilla/flotilla/services/namespace"
)

// puller pulls ref with unpack into namespace ns of the containerd API at socket.
type puller struct {
	name string
	pull func(t testing.TB, socket, ns, ref string)
	// transfer marks a server-side pull (the Transfer service), which
	// containerd 1.6 lacks.
	transfer bool
}

// ctrPuller pulls with a ctr binary and the arguments before the reference.
func ctrPuller(name, bin string, transfer bool, args ...string) puller {
	return puller{name: name, transfer: transfer, pull: func(t testing.TB, socket, ns, ref string) {
		ctrClient{bin: bin, address: socket, ns: ns}.must(t, append(args, ref)...)
	}}
}

// goClient2Puller pulls with the 2.x Go client's Pull(WithPullUnpack),
// whose unpacker (core/unpack, as the 1.7 client's, dockerd's and
// nerdctl's) relies on Prepare's containerd.io/snapshot.ref label to skip
// layers it has; ctr's Unpack asks Stat first.
var goClient2Puller = puller{name: "goclient2", pull: func(t testing.TB, socket, ns, ref string) {
	t.Helper()
	client, err := containerd.New(socket, containerd.WithDefaultNamespace(ns))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	resolver := docker.NewResolver(docker.ResolverOptions{
		Hosts: docker.ConfigureDefaultRegistries(docker.WithPlainHTTP(docker.MatchAllHosts)),
	})
	if _, err := client.Pull(ctx, ref, containerd.WithPullUnpack, containerd.WithPullSnapshotter("overlayfs"), containerd.WithResolver(resolver)); err != nil {
		t.Fatalf("Pull %s: %v", ref, err)
	}
}}

// TestRepullAppliesNoLayer pulls an image with unpack, then pulls it again
// into the same namespace, with ctr 1.6, ctr 2.x (client-side unpack with
// --local, and through the Transfer service) and the 2.x Go client, on
// Flotilla and containerd 1.6. The second pull finds every layer's snapshot
// (the Go client's unpacker through Prepare's containerd.io/snapshot.ref
// label answering AlreadyExists), so it leaves no /snapshot/prepare event
// and, on Flotilla, snapshotd applies no layer (its Diff.Apply call counter
// does not move). On Flotilla the first pull's layers reach snapshotd as
// files contentd hands over (its handoff counter grows by one read a
// layer), and a Transfer pull makes no Content.Read at all: no layer byte
// crosses gRPC between contentd and snapshotd.
func TestRepullAppliesNoLayer(t *testing.T) {
	requireRootForMounts(t)
	ctr2 := ctr2Bin(t)
	clients := []puller{
		ctrPuller("ctr1.6", requireTool(t, "ctr"), false, "images", "pull", "--plain-http"),
		ctrPuller("ctr2-local", ctr2, false, "images", "pull", "--local", "--plain-http"),
		ctrPuller("ctr2-transfer", ctr2, true, "images", "pull", "--plain-http"),
		goClient2Puller,
	}
	reg := imagekit.StartRegistry(t)
	img, err := imagekit.BuildLayers()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { img.Close() })
	ref := reg + "/layers:repull"
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := img.Push(ctx, ref); err != nil {
		t.Fatal(err)
	}
	layers := len(img.Layers)

	for _, kind := range clientBackends {
		t.Run(kind.name, func(t *testing.T) {
			var (
				socket  string
				applied func() int // Diff.Apply calls so far; nil when not known
				// On Flotilla: layer reads contentd handed over as files, and
				// Content.Read calls contentd answered, so far.
				handedOver, contentReads func() int
			)
			if kind.name == "flotilla" {
				s := startStack(t)
				socket = s.Socket
				addr := s.Service("snapshotd").MetricsAddress
				applied = func() int { return handledCalls(t, addr, "containerd.services.diff.v1.Diff", "Apply") }
				caddr := s.Service("contentd").MetricsAddress
				handedOver = func() int {
					n := 0
					for _, followed := range []string{"true", "false"} {
						n += max(0, int(scrape(t, caddr, "flotilla_content_handoff_reads_total", `followed="`+followed+`"`, `result="OK"`)))
					}
					return n
				}
				contentReads = func() int { return handledCalls(t, caddr, "containerd.services.content.v1.Content", "Read") }
			} else {
				socket = kind.start(t).Socket
			}
			conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { conn.Close() })
			for _, pc := range clients {
				if pc.transfer && kind.name != "flotilla" {
					continue
				}
				t.Run(pc.name, func(t *testing.T) {
					ns := "repull-" + pc.name
					pull := func() { pc.pull(t, socket, ns, ref) }
					before, handedBefore, readsBefore := 0, 0, 0
					if applied != nil {
						before, handedBefore, readsBefore = applied(), handedOver(), contentReads()
					}
					pull()
					if applied != nil {
						if n := applied() - before; n != layers {
							t.Fatalf("the first pull applied %d layers, want %d", n, layers)
						}
						if n := handedOver() - handedBefore; n != layers {
							t.Errorf("contentd handed %d layer files over to snapshotd, want %d (one a layer)", n, layers)
						}
						if n := contentReads() - readsBefore; pc.transfer && n != 0 {
							t.Errorf("a Transfer pull made %d Content.Read calls, want none", n)
						}
						before = applied()
					}
					prepares := watchPrepares(t, conn, ns)
					pull()
					if n := prepares(); n != 0 {
						t.Errorf("the re-pull prepared %d snapshots, want none", n)
					}
					if applied != nil {
						if n := applied() - before; n != 0 {
							t.Errorf("the re-pull applied %d layers, want none", n)
						}
					}
				})
			}
		})
	}
}

// watchPrepares subscribes to namespace ns's /snapshot/prepare events; the
// function it returns counts those published since, up to a sentinel
// snapshot it prepares itself (events reach a subscriber in order, so when
// the sentinel's arrives every earlier one has). A subscription is live
// only some time after Subscribe returns: until a first sentinel's event
// comes through, sentinels are prepared again. No wait is unbounded.
func watchPrepares(t *testing.T, conn *grpc.ClientConn, ns string) func() int {
	t.Helper()
	ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), namespace.MetadataKey, ns), 2*time.Minute)
	t.Cleanup(cancel)
	stream, err := eventsapi.NewEventsClient(conn).Subscribe(ctx, &eventsapi.SubscribeRequest{
		Filters: []string{fmt.Sprintf(`namespace==%q,topic=="/snapshot/prepare"`, ns)},
	})
	if err != nil {
		t.Fatal(err)
	}
	events := make(chan string, 64)
	go func() {
		defer close(events)
		for {
			env, err := stream.Recv()
			if err != nil {
				return
			}
			events <- string(env.GetEvent().GetValue())
		}
	}()
	sentinel := func(key string) {
		t.Helper()
		sn := snapshotsapi.NewSnapshotsClient(conn)
		// A GC root: containerd's garbage collector may run at any time and
		// removes snapshots nothing refers to.
		root := map[string]string{"containerd.io/gc.root": time.Now().UTC().Format(time.RFC3339)}
		if _, err := sn.Prepare(ctx, &snapshotsapi.PrepareSnapshotRequest{Snapshotter: "overlayfs", Key: key, Labels: root}); err != nil {
			t.Fatalf("prepare %s: %v", key, err)
		}
		if _, err := sn.Remove(ctx, &snapshotsapi.RemoveSnapshotRequest{Snapshotter: "overlayfs", Key: key}); err != nil {
			t.Fatalf("remove %s: %v", key, err)
		}
	}
	// countUntil counts the events other than sentinels' before key's, or
	// reports false when key's has not come within wait.
	countUntil := func(key string, wait time.Duration) (int, bool) {
		t.Helper()
		timeout := time.After(wait)
		n := 0
		for {
			select {
			case v, ok := <-events:
				if !ok {
					t.Fatalf("events of %s: the subscription ended: %v", ns, context.Cause(ctx))
				}
				if strings.Contains(v, key) {
					return n, true
				}
				if !strings.Contains(v, "sentinel-") {
					n++
				}
			case <-timeout:
				return n, false
			}
		}
	}
	for i := 0; ; i++ {
		key := fmt.Sprintf("sentinel-start-%02d", i) // fixed width: no key is a prefix of another
		sentinel(key)
		n, ok := countUntil(key, time.Second)
		if n != 0 {
			t.Fatalf("%d prepare events before the watch began", n)
		}
		if ok {
			break
		}
		if i == 30 {
			t.Fatalf("no sentinel's /snapshot/prepare event reached a subscriber of %s in 30 s", ns)
		}
	}
	return func() int {
		sentinel("sentinel-end")
		n, ok := countUntil("sentinel-end", time.Minute)
		if !ok {
			t.Fatalf("the sentinel's /snapshot/prepare event did not reach the live subscriber of %s within a minute", ns)
		}
		return n
	}
}

// handledCalls reads, from a daemon's Prometheus metrics at addr, how many
// calls of method it has answered (any code).
func handledCalls(t testing.TB, addr, service, method string) int {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	total := 0
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "grpc_server_handled_total{") ||
			!strings.Contains(line, `grpc_method="`+method+`"`) || !strings.Contains(line, `grpc_service="`+service+`"`) {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		total += int(v)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return total
}

// BenchmarkRepull measures pulling again, with the 2.x Go client's
// Pull(WithPullUnpack), an image already pulled and unpacked into the same
// namespace — 4 layers of 20 MiB (gzip, incompressible) from a local
// docker-registry — on Flotilla, containerd 2.4.2 and Debian's containerd
// 1.6, alternating within each iteration; each reports its own seconds per
// re-pull (flotilla-s, containerd2.4-s, containerd1.6-s). No layer is
// fetched or applied: the time is the manifest walk and one Prepare per
// layer answered AlreadyExists.
func BenchmarkRepull(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("unpacking needs root")
	}
	dir2 := filepath.Dir(ctr2Bin(b))
	reg := imagekit.StartRegistry(b)
	s := startStack(b)
	stopPluginsOnCleanup(b, s)
	systems := []struct{ name, socket string }{
		{"flotilla", s.Socket},
		{"containerd2.4", startContainerd(b, filepath.Join(dir2, "containerd"), dir2)},
		{"containerd1.6", startContainerd(b, requireTool(b, "containerd"), "")},
	}
	img := buildMultiLayer(b, 4, 20<<20)
	ref := reg + "/bench/repull:1"
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := img.Push(ctx, ref); err != nil {
		b.Fatal(err)
	}
	const ns = "bench-repull"
	for _, sys := range systems {
		goClient2Puller.pull(b, sys.socket, ns, ref)
	}
	spent := make([]time.Duration, len(systems))
	n := 0
	for b.Loop() {
		n++
		for i := range systems {
			// Alternate which system goes first.
			k := (i + n) % len(systems)
			start := time.Now()
			goClient2Puller.pull(b, systems[k].socket, ns, ref)
			spent[k] += time.Since(start)
		}
	}
	var parts []string
	for i, sys := range systems {
		sec := spent[i].Seconds() / float64(n)
		b.ReportMetric(sec, sys.name+"-s")
		parts = append(parts, fmt.Sprintf("%s %.3fs", sys.name, sec))
	}
	b.Logf("re-pull of 4 x 20 MiB, mean of %d: %s", n, strings.Join(parts, ", "))
}
