package main

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	eventsapi "github.com/containerd/containerd/api/services/events/v1"
	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	introspection "github.com/containerd/containerd/api/services/introspection/v1"
	namespacesapi "github.com/containerd/containerd/api/services/namespaces/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/emptypb"

	contentd "github.com/flotilla/flotilla/contentd/daemon"
	"github.com/flotilla/flotilla/contentd/internal/testserver"
	"github.com/flotilla/flotilla/services/daemon"
	"github.com/flotilla/flotilla/services/namespace"
)

// start runs contentd with args and returns its socket and a function that
// stops it and waits until it has.
func start(t *testing.T, dir string, args ...string) (string, func()) {
	t.Helper()
	sock := filepath.Join(dir, "contentd.sock")
	args = append([]string{"--address", sock, "--root", filepath.Join(dir, "root"),
		"--state", filepath.Join(dir, "state"), "--log-level", "error"}, args...)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- daemon.Run(ctx, contentd.Spec(new(contentd.Config)), args) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("contentd: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	waitSocket(t, sock, done)
	return sock, stop
}

func waitSocket(t *testing.T, sock string, done <-chan error) {
	t.Helper()
	for range 500 {
		select {
		case err := <-done:
			t.Fatalf("contentd stopped: %v", err)
		default:
		}
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("nothing serves on %s", sock)
}

func TestServesItsServicesAndKeepsDataAcrossRestarts(t *testing.T) {
	dir := testserver.ShortDir(t)
	sock, stop := start(t, dir)
	conn := testserver.Dial(t, sock)
	ctx := context.Background()

	plugins, err := introspection.NewIntrospectionClient(conn).Plugins(ctx, &introspection.PluginsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, p := range plugins.GetPlugins() {
		ids = append(ids, p.GetID())
	}
	for _, want := range []string{"content", "images", "leases", "namespaces"} {
		if !slices.Contains(ids, want) {
			t.Errorf("introspection lists %v, missing %s", ids, want)
		}
	}

	ns := namespacesapi.NewNamespacesClient(conn)
	if _, err := ns.Create(ctx, &namespacesapi.CreateNamespaceRequest{
		Namespace: &namespacesapi.Namespace{Name: "kept", Labels: map[string]string{"a": "b"}},
	}); err != nil {
		t.Fatal(err)
	}
	stop()
	if _, err := os.Stat(filepath.Join(dir, "root", "meta.db")); err != nil {
		t.Errorf("database not at <root>/meta.db: %v", err)
	}

	// A second run opens the same database, which the first closed on stop.
	sock, _ = start(t, dir)
	got, err := namespacesapi.NewNamespacesClient(testserver.Dial(t, sock)).Get(ctx, &namespacesapi.GetNamespaceRequest{Name: "kept"})
	if err != nil || got.GetNamespace().GetLabels()["a"] != "b" {
		t.Fatalf("after restart: %v, %v", got, err)
	}
}

// fakeEventd records what is forwarded to it.
type fakeEventd struct {
	eventsapi.UnimplementedEventsServer
	mu  sync.Mutex
	got []*types.Envelope
}

func (f *fakeEventd) Forward(_ context.Context, req *eventsapi.ForwardRequest) (*emptypb.Empty, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.got = append(f.got, req.GetEnvelope())
	return &emptypb.Empty{}, nil
}

func (f *fakeEventd) envelopes() []*types.Envelope {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.got)
}

func TestPublishesEventsToEventd(t *testing.T) {
	dir := testserver.ShortDir(t)
	evSock := filepath.Join(dir, "eventd.sock")
	l, err := net.Listen("unix", evSock)
	if err != nil {
		t.Fatal(err)
	}
	fake := &fakeEventd{}
	gs := grpc.NewServer()
	eventsapi.RegisterEventsServer(gs, fake)
	go gs.Serve(l)
	t.Cleanup(gs.Stop)

	sock, stop := start(t, dir, "--eventd", evSock)
	ns := namespacesapi.NewNamespacesClient(testserver.Dial(t, sock))
	if _, err := ns.Create(context.Background(), &namespacesapi.CreateNamespaceRequest{
		Namespace: &namespacesapi.Namespace{Name: "evns"},
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := ns.Delete(context.Background(), &namespacesapi.DeleteNamespaceRequest{Name: "evns"}); err != nil {
		t.Fatal(err)
	}
	stop() // flushes the publisher's queue

	envs := fake.envelopes()
	if len(envs) != 2 {
		t.Fatalf("eventd got %d events, want 2: %v", len(envs), envs)
	}
	for i, want := range []struct{ topic, typeURL string }{
		{"/namespaces/create", "containerd.events.NamespaceCreate"},
		{"/namespaces/delete", "containerd.events.NamespaceDelete"},
	} {
		env := envs[i]
		if env.GetTopic() != want.topic || env.GetNamespace() != "evns" || !strings.HasSuffix(env.GetEvent().GetTypeUrl(), want.typeURL) {
			t.Errorf("event %d: topic %s namespace %s type %s; want %s in evns of type %s",
				i, env.GetTopic(), env.GetNamespace(), env.GetEvent().GetTypeUrl(), want.topic, want.typeURL)
		}
	}
}

// ctrStep is one run of ctr and what it must answer.
type ctrStep struct {
	name    string
	args    []string
	fails   bool
	output  string // must appear in the output
	missing string // must not appear in the output
}

// runCtr runs steps in order with containerd's own client against sock.
func runCtr(t *testing.T, sock string, steps []ctrStep) {
	t.Helper()
	ctrPath, err := exec.LookPath("ctr")
	if err != nil {
		t.Skip("ctr is not installed")
	}
	for _, step := range steps {
		t.Run(step.name, func(t *testing.T) {
			out, err := exec.Command(ctrPath, append([]string{"--address", sock}, step.args...)...).CombinedOutput()
			if step.fails != (err != nil) {
				t.Fatalf("ctr %v: err %v, output:\n%s", step.args, err, out)
			}
			if step.output != "" && !strings.Contains(string(out), step.output) {
				t.Errorf("ctr %v output lacks %q:\n%s", step.args, step.output, out)
			}
			if step.missing != "" && strings.Contains(string(out), step.missing) {
				t.Errorf("ctr %v output has %q:\n%s", step.args, step.missing, out)
			}
		})
	}
}

// TestCtr drives contentd's namespaces and leases with ctr, as a user would.
func TestCtr(t *testing.T) {
	sock, _ := start(t, testserver.ShortDir(t))
	runCtr(t, sock, []ctrStep{
		{"namespaces create makes a namespace", []string{"namespaces", "create", "foo"}, false, "", ""},
		{"namespaces create of an existing one fails", []string{"namespaces", "create", "foo"}, true, "already exists", ""},
		{"namespaces label sets a label", []string{"namespaces", "label", "foo", "a=b"}, false, "", ""},
		{"namespaces ls shows the label", []string{"namespaces", "ls"}, false, "a=b", ""},
		{"namespaces label with no value removes it", []string{"namespaces", "label", "foo", "a="}, false, "", ""},
		{"namespaces ls no longer shows it", []string{"namespaces", "ls"}, false, "foo", "a=b"},
		{"namespaces create -bad is InvalidArgument", []string{"namespaces", "create", "--", "-bad"}, true, errdefs.ErrInvalidArgument.Error(), ""},
		{"namespaces create with 77 characters is InvalidArgument", []string{"namespaces", "create", strings.Repeat("n", 77)}, true, errdefs.ErrInvalidArgument.Error(), ""},
		{"images ls is empty", []string{"images", "ls", "-q"}, false, "", "sha256"},
		{"leases create with an expiry", []string{"-n", "foo", "leases", "create", "--id", "l1", "--expires", "1h", "x=y"}, false, "l1", ""},
		{"leases ls filters by label", []string{"-n", "foo", "leases", "ls", "labels.x==y"}, false, "containerd.io/gc.expire=", ""},
		{"namespaces rm refuses a namespace holding a lease", []string{"namespaces", "rm", "foo"}, true, "must be empty, but it still has leases", ""},
		{"leases rm removes it", []string{"-n", "foo", "leases", "rm", "l1"}, false, "", ""},
		{"leases rm of a missing lease fails", []string{"-n", "foo", "leases", "rm", "l1"}, true, "not found", ""},
		{"namespaces rm removes the empty namespace", []string{"namespaces", "rm", "foo"}, false, "foo", ""},
		{"namespaces ls no longer lists it", []string{"namespaces", "ls", "-q"}, false, "", "foo"},
	})
}

// TestCtrImages drives the images service with ctr on an image record made
// through the API (pulling needs the content service).
func TestCtrImages(t *testing.T) {
	sock, _ := start(t, testserver.ShortDir(t))
	ctx := namespace.WithNamespace(context.Background(), "imgs")
	target := &types.Descriptor{MediaType: "application/vnd.oci.image.manifest.v1+json",
		Digest: "sha256:" + strings.Repeat("ab", 32), Size: 123}
	if _, err := imagesapi.NewImagesClient(testserver.Dial(t, sock)).Create(ctx, &imagesapi.CreateImageRequest{
		Image: &imagesapi.Image{Name: "example.com/app:1", Target: target},
	}); err != nil {
		t.Fatal(err)
	}
	runCtr(t, sock, []ctrStep{
		{"images ls lists the image", []string{"-n", "imgs", "images", "ls", "-q"}, false, "example.com/app:1", ""},
		{"images tag makes a second name", []string{"-n", "imgs", "images", "tag", "example.com/app:1", "example.com/app:2"}, false, "example.com/app:2", ""},
		{"images tag onto an existing name fails", []string{"-n", "imgs", "images", "tag", "example.com/app:1", "example.com/app:2"}, true, "already exists", ""},
		{"images label sets a label", []string{"-n", "imgs", "images", "label", "example.com/app:2", "k=v"}, false, "", ""},
		{"images ls filters by label", []string{"-n", "imgs", "images", "ls", "-q", "labels.k==v"}, false, "example.com/app:2", "example.com/app:1"},
		{"images rm removes a name", []string{"-n", "imgs", "images", "rm", "example.com/app:2"}, false, "", ""},
		{"images ls no longer lists it", []string{"-n", "imgs", "images", "ls", "-q"}, false, "example.com/app:1", "example.com/app:2"},
		{"images ls in another namespace is empty", []string{"-n", "other", "images", "ls", "-q"}, false, "", "example.com"},
	})
}
