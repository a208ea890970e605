// Package goclient runs containerd's Go client 2.x against a containerd API
// socket given with -address. It is its own module, outside the workspace,
// because the containerd 1.7 and 2.x clients need different versions of
// containerd's API module; integration.TestGoClient builds it with
// GOWORK=off and runs it against Flotilla and a reference containerd.
//
// This file is also the 1.7 client's (goclient/v1/client_test.go is made
// from it by goclient/generate-v1.sh); cases for one client only go in
// files of their own.
package goclient

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	eventsapi "github.com/containerd/containerd/api/events"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/images/archive"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/platforms"
	"github.com/containerd/typeurl/v2"
)

var (
	address = flag.String("address", "", "the containerd API socket to test (required)")
	ns      = flag.String("namespace", "goclient", "namespace to work in; need not exist")
	ref     = flag.String("ref", "", "image to pull over plain HTTP, a busybox (required)")
)

const snapshotter = "overlayfs"

func newClient(t *testing.T) (*containerd.Client, context.Context) {
	t.Helper()
	if *address == "" || *ref == "" {
		t.Skip("run by integration.TestGoClient with -address and -ref")
	}
	client, err := containerd.New(*address, containerd.WithDefaultNamespace(*ns), containerd.WithTimeout(30*time.Second))
	if err != nil {
		t.Fatalf("New with default namespace %s: %v", *ns, err)
	}
	t.Cleanup(func() { client.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return client, ctx
}

func resolver() containerd.RemoteOpt {
	return containerd.WithResolver(docker.NewResolver(docker.ResolverOptions{
		Hosts: docker.ConfigureDefaultRegistries(docker.WithPlainHTTP(docker.MatchAllHosts)),
	}))
}

func pull(t *testing.T, client *containerd.Client, ctx context.Context) containerd.Image {
	t.Helper()
	image, err := client.Pull(ctx, *ref, containerd.WithPullUnpack, containerd.WithPullSnapshotter(snapshotter), resolver())
	if err != nil {
		t.Fatalf("Pull %s: %v", *ref, err)
	}
	return image
}

// run runs args in a new container of image with the task's IO from
// creator, waits for it and returns its exit code. The container and its
// snapshot are removed.
func run(t *testing.T, client *containerd.Client, ctx context.Context, image containerd.Image, id string, creator cio.Creator, args ...string) uint32 {
	t.Helper()
	container, err := client.NewContainer(ctx, id,
		containerd.WithSnapshotter(snapshotter),
		containerd.WithNewSnapshot(id+"-snapshot", image),
		containerd.WithNewSpec(oci.WithImageConfig(image), oci.WithProcessArgs(args...)))
	if err != nil {
		t.Fatalf("NewContainer: %v", err)
	}
	defer container.Delete(context.WithoutCancel(ctx), containerd.WithSnapshotCleanup)
	task, err := container.NewTask(ctx, creator)
	if err != nil {
		t.Fatalf("NewTask: %v", err)
	}
	defer task.Delete(context.WithoutCancel(ctx), containerd.WithProcessKill)
	exited, err := task.Wait(ctx)
	if err != nil {
		t.Fatalf("Wait: %v", err)
	}
	if err := task.Start(ctx); err != nil {
		t.Fatalf("Start: %v", err)
	}
	select {
	case status := <-exited:
		code, _, err := status.Result()
		if err != nil {
			t.Fatalf("exit status: %v", err)
		}
		return code
	case <-ctx.Done():
		t.Fatalf("task %s did not exit: %v", id, ctx.Err())
	}
	return 0
}

func lines(n int) string {
	var b strings.Builder
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&b, "line %d\n", i)
	}
	return b.String()
}

const printLines = "for i in $(seq 1 50); do echo line $i; done"

func TestClient(t *testing.T) {
	t.Run("New with a default namespace answers Version", func(t *testing.T) {
		client, ctx := newClient(t)
		if _, err := client.Version(ctx); err != nil {
			t.Fatalf("Version: %v", err)
		}
	})
	t.Run("Pull with unpack", func(t *testing.T) {
		client, ctx := newClient(t)
		image := pull(t, client, ctx)
		unpacked, err := image.IsUnpacked(ctx, snapshotter)
		if err != nil || !unpacked {
			t.Fatalf("IsUnpacked: %v, %v", unpacked, err)
		}
	})
	t.Run("Pull again prepares no snapshot", func(t *testing.T) {
		// The unpacker prepares each layer with the containerd.io/snapshot.ref
		// label; a daemon that has the layer's snapshot answers AlreadyExists
		// and the layer is skipped.
		client, ctx := newClient(t)
		pull(t, client, ctx)
		subCtx, cancel := context.WithCancel(ctx)
		defer cancel()
		envelopes, errs := client.Subscribe(subCtx, fmt.Sprintf(`namespace==%q,topic=="/snapshot/prepare"`, *ns))
		sn := client.SnapshotService(snapshotter)
		// A sentinel snapshot (a GC root, so no collection takes it away)
		// whose prepare event marks a point in the event stream.
		sentinel := func(key string) {
			t.Helper()
			root := snapshots.WithLabels(map[string]string{"containerd.io/gc.root": time.Now().UTC().Format(time.RFC3339)})
			if _, err := sn.Prepare(ctx, key, "", root); err != nil {
				t.Fatalf("Prepare %s: %v", key, err)
			}
			if err := sn.Remove(ctx, key); err != nil {
				t.Fatalf("Remove %s: %v", key, err)
			}
		}
		// prepared counts the prepare events up to the sentinel key's.
		prepared := func(key string, wait time.Duration) (int, bool) {
			t.Helper()
			n := 0
			for {
				select {
				case env := <-envelopes:
					ev, err := typeurl.UnmarshalAny(env.Event)
					if err != nil {
						t.Fatal(err)
					}
					if p, ok := ev.(*eventsapi.SnapshotPrepare); ok && p.Key == key {
						return n, true
					}
					n++
				case err := <-errs:
					t.Fatalf("Subscribe: %v", err)
				case <-time.After(wait):
					return n, false
				}
			}
		}
		// The subscription is live once a sentinel's event comes through.
		for i := 0; ; i++ {
			key := fmt.Sprintf("sentinel-start-%d", i)
			sentinel(key)
			if _, ok := prepared(key, 200*time.Millisecond); ok {
				break
			}
			if ctx.Err() != nil {
				t.Fatal("no /snapshot/prepare event for a sentinel")
			}
		}
		pull(t, client, ctx)
		sentinel("sentinel-end")
		if n, ok := prepared("sentinel-end", time.Minute); !ok {
			t.Fatal("no /snapshot/prepare event for the last sentinel")
		} else if n != 0 {
			t.Errorf("the second pull prepared %d snapshots, want none", n)
		}
	})
	t.Run("a task with cio.NullIO: Wait gives the exit status", func(t *testing.T) {
		client, ctx := newClient(t)
		image := pull(t, client, ctx)
		if code := run(t, client, ctx, image, "exit-7", cio.NullIO, "sh", "-c", "exit 7"); code != 7 {
			t.Errorf("exit code %d, want 7", code)
		}
	})
	t.Run("a task with cio.LogFile: every line in the file", func(t *testing.T) {
		client, ctx := newClient(t)
		image := pull(t, client, ctx)
		path := filepath.Join(t.TempDir(), "out.log")
		if code := run(t, client, ctx, image, "logfile", cio.LogFile(path), "sh", "-c", printLines); code != 0 {
			t.Errorf("exit code %d", code)
		}
		if b, _ := os.ReadFile(path); string(b) != lines(50) {
			t.Errorf("log file holds %q", b)
		}
	})
	t.Run("a task with cio.BinaryIO: every line reaches the logger", func(t *testing.T) {
		client, ctx := newClient(t)
		image := pull(t, client, ctx)
		dir := t.TempDir()
		out := filepath.Join(dir, "out.log")
		// containerd's logging protocol: stdout on fd 3, stderr on fd 4, and
		// fd 5 closed once the logger is ready.
		logger := filepath.Join(dir, "logger")
		script := "#!/bin/sh\ncat <&3 >\"$2\" 5>&- &\ncat <&4 >\"$2.err\" 5>&- &\nexec 5>&-\nwait\n"
		if err := os.WriteFile(logger, []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
		if code := run(t, client, ctx, image, "binaryio", cio.BinaryIO(logger, map[string]string{"out": out}), "sh", "-c", printLines+"; echo to-stderr >&2"); code != 0 {
			t.Errorf("exit code %d", code)
		}
		// The shim waits for the logger to exit before it reports the task gone.
		if b, _ := os.ReadFile(out); string(b) != lines(50) {
			t.Errorf("logger's stdout file holds %q", b)
		}
		if b, _ := os.ReadFile(out + ".err"); string(b) != "to-stderr\n" {
			t.Errorf("logger's stderr file holds %q", b)
		}
	})
	t.Run("Subscribe delivers the task's exit", func(t *testing.T) {
		client, ctx := newClient(t)
		image := pull(t, client, ctx)
		subCtx, cancel := context.WithCancel(ctx)
		defer cancel()
		envelopes, errs := client.Subscribe(subCtx, `topic=="/tasks/exit"`, `topic=="/namespaces/update"`)
		// The subscription is live once it delivers a label update of ours.
		for n, live := 0, false; !live; n++ {
			if err := client.NamespaceService().SetLabel(ctx, *ns, "goclient", fmt.Sprint(n)); err != nil {
				t.Fatalf("SetLabel: %v", err)
			}
			select {
			case env := <-envelopes:
				live = env.Topic == "/namespaces/update"
			case err := <-errs:
				t.Fatalf("Subscribe: %v", err)
			case <-time.After(200 * time.Millisecond):
			case <-ctx.Done():
				t.Fatal("no /namespaces/update event for a label update")
			}
		}
		if code := run(t, client, ctx, image, "evented", cio.NullIO, "sh", "-c", "exit 3"); code != 3 {
			t.Errorf("exit code %d", code)
		}
		for {
			select {
			case env := <-envelopes:
				ev, err := typeurl.UnmarshalAny(env.Event)
				if err != nil {
					t.Fatal(err)
				}
				if exit, ok := ev.(*eventsapi.TaskExit); ok && exit.ContainerID == "evented" {
					if exit.ExitStatus != 3 || env.Namespace != *ns {
						t.Errorf("TaskExit %+v in namespace %s", exit, env.Namespace)
					}
					return
				}
			case err := <-errs:
				t.Fatalf("Subscribe: %v", err)
			case <-ctx.Done():
				t.Fatal("no /tasks/exit event for the container")
			}
		}
	})
	t.Run("leases create, list and delete", func(t *testing.T) {
		client, ctx := newClient(t)
		ls := client.LeasesService()
		lease, err := ls.Create(ctx, leases.WithID("goclient-lease"), leases.WithExpiration(time.Hour), leases.WithLabels(map[string]string{"k": "v"}))
		if err != nil {
			t.Fatalf("Create: %v", err)
		}
		got, err := ls.List(ctx, `id=="goclient-lease"`)
		if err != nil || len(got) != 1 || got[0].Labels["k"] != "v" {
			t.Fatalf("List: %+v, %v", got, err)
		}
		if err := ls.Delete(ctx, lease, leases.SynchronousDelete); err != nil {
			t.Fatalf("Delete: %v", err)
		}
		if got, err := ls.List(ctx, `id=="goclient-lease"`); err != nil || len(got) != 0 {
			t.Fatalf("List after Delete: %+v, %v", got, err)
		}
	})
	t.Run("Export then Import client-side gives a runnable image", func(t *testing.T) {
		client, ctx := newClient(t)
		pull(t, client, ctx)
		var buf bytes.Buffer
		if err := client.Export(ctx, &buf, archive.WithImage(client.ImageService(), *ref), archive.WithPlatform(platforms.DefaultStrict())); err != nil {
			t.Fatalf("Export: %v", err)
		}
		name := *ref + "-imported"
		imgs, err := client.Import(ctx, &buf, containerd.WithIndexName(name), containerd.WithImportPlatform(platforms.DefaultStrict()))
		if err != nil {
			t.Fatalf("Import: %v", err)
		}
		defer client.ImageService().Delete(context.WithoutCancel(ctx), name, images.SynchronousDelete())
		var found bool
		for _, img := range imgs {
			found = found || img.Name == name
		}
		if !found {
			t.Fatalf("Import named %+v, want %s among them", imgs, name)
		}
		image, err := client.GetImage(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if err := image.Unpack(ctx, snapshotter); err != nil {
			t.Fatalf("Unpack: %v", err)
		}
		if code := run(t, client, ctx, image, "imported", cio.NullIO, "true"); code != 0 {
			t.Errorf("exit code %d", code)
		}
	})
}
