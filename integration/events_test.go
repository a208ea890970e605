package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla/flotilla/integration/imagekit"
)

// TestCtrEventsFollowAContainersLife subscribes with `ctr events` through
// the gateway and checks that a namespace create, an image import with
// unpack, and a container run publish containerd's topics, in order,
// decoded by ctr.
func TestCtrEventsFollowAContainersLife(t *testing.T) {
	s := startStack(t)
	img, err := imagekit.BuildBusybox()
	if err != nil {
		t.Fatal(err)
	}
	const ref = "flotilla.local/events/busybox:1"
	archive := filepath.Join(t.TempDir(), "busybox.tar")
	f, err := os.Create(archive)
	if err != nil {
		t.Fatal(err)
	}
	if err := img.WriteArchive(f, ref); err != nil {
		t.Fatal(err)
	}
	f.Close()

	lines := subscribe(t, s)
	const ns = "lifecycle"
	s.MustCtr(ns, "namespaces", "create", ns)
	s.MustCtr(ns, "images", "import", archive)
	if out := s.MustCtr(ns, "run", "--rm", ref, "c1", "echo", "hello"); strings.TrimSpace(out) != "hello" {
		t.Fatalf("ctr run printed %q", out)
	}

	// Collect the namespace's events until the container is deleted.
	var topics []string
	deadline := time.After(15 * time.Second)
collect:
	for {
		select {
		case ev, ok := <-lines:
			if !ok {
				t.Fatal("ctr events exited")
			}
			if ev.Namespace != ns {
				continue
			}
			if strings.TrimSpace(ev.Event) == "" {
				// ctr prints the decoded event as JSON; one it cannot decode is empty.
				t.Errorf("%s event was not decoded by ctr: %q", ev.Topic, ev.Event)
			}
			topics = append(topics, ev.Topic)
			if ev.Topic == "/containers/delete" {
				break collect
			}
		case <-deadline:
			t.Fatalf("no /containers/delete within 15s; saw %v", topics)
		}
	}
	t.Logf("events in %s: %v", ns, topics)
	want := []string{
		"/namespaces/create",
		"/images/create",
		"/snapshot/prepare",
		"/snapshot/commit",
		"/containers/create",
		"/tasks/create",
		"/tasks/start",
		"/tasks/exit",
		"/tasks/delete",
		"/containers/delete",
	}
	// Each wanted topic appears, in this order (others may come between).
	i := 0
	for _, topic := range topics {
		if i < len(want) && topic == want[i] {
			i++
		}
	}
	if i < len(want) {
		t.Fatalf("events out of order or missing: got %v, want the subsequence %v (missing from %s)", topics, want, want[i])
	}
	for _, once := range []string{"/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete", "/containers/create"} {
		n := 0
		for _, topic := range topics {
			if topic == once {
				n++
			}
		}
		if n != 1 {
			t.Errorf("%s published %d times, want once", once, n)
		}
	}
}
