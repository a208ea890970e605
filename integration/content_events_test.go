package integration

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla/flotilla/integration/imagekit"
)

// eventLine is one line `ctr events` prints: TIME NAMESPACE TOPIC EVENT.
type eventLine struct {
	Namespace, Topic, Event string
}

// subscribe starts `ctr events` through the gateway and returns its lines.
// It returns once the subscription is live: it creates probe namespaces
// until the subscriber reports one.
func subscribe(t *testing.T, s *Stack) <-chan eventLine {
	t.Helper()
	requireTool(t, "ctr")
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, "ctr", "--address", s.Socket, "events")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); cmd.Wait() })
	lines := make(chan eventLine, 100)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			// "2024-01-01 00:00:00.000 +0000 UTC ns /topic {json}"
			f := strings.SplitN(sc.Text(), " ", 7)
			if len(f) == 7 {
				lines <- eventLine{Namespace: f[4], Topic: f[5], Event: f[6]}
			}
		}
	}()
	for i := 0; ; i++ {
		if i == 100 {
			t.Fatal("ctr events never reported a probe namespace")
		}
		// Unique per subscription: a test may subscribe again.
		probe := fmt.Sprintf("probe-%d-%d", time.Now().UnixNano(), i)
		s.MustCtr(probe, "namespaces", "create", probe)
		deadline := time.After(100 * time.Millisecond)
	wait:
		for {
			select {
			case ev, ok := <-lines:
				if !ok {
					t.Fatal("ctr events exited")
				}
				if ev.Topic == "/namespaces/create" && strings.Contains(ev.Event, probe) {
					return lines
				}
			case <-deadline:
				break wait
			}
		}
	}
}

// expectEvent waits for an event of topic whose body contains want,
// skipping others.
func expectEvent(t *testing.T, lines <-chan eventLine, ns, topic, want string) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	var seen []eventLine
	for {
		select {
		case ev, ok := <-lines:
			if !ok {
				t.Fatalf("ctr events exited before %s %s", topic, want)
			}
			if ev.Namespace == ns && ev.Topic == topic && strings.Contains(ev.Event, want) {
				return
			}
			seen = append(seen, ev)
		case <-timeout:
			t.Fatalf("no %s event with %s in namespace %s within 10s; saw %v", topic, want, ns, seen)
		}
	}
}

func TestContentAndImagesEventsReachCtrEvents(t *testing.T) {
	s := startStack(t)
	img, err := imagekit.BuildBusybox()
	if err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(t.TempDir(), "busybox.tar")
	f, err := os.Create(archive)
	if err != nil {
		t.Fatal(err)
	}
	if err := img.WriteArchive(f, "example.com/events/busybox:1"); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	lines := subscribe(t, s)
	const ns = "events"

	t.Run("import publishes /images/create", func(t *testing.T) {
		s.MustCtr(ns, "images", "import", "--no-unpack", archive)
		expectEvent(t, lines, ns, "/images/create", `"name":"example.com/events/busybox:1"`)
	})
	t.Run("label publishes /images/update", func(t *testing.T) {
		s.MustCtr(ns, "images", "label", "example.com/events/busybox:1", "a=b")
		expectEvent(t, lines, ns, "/images/update", `"name":"example.com/events/busybox:1"`)
	})
	t.Run("rm publishes /images/delete", func(t *testing.T) {
		s.MustCtr(ns, "images", "rm", "example.com/events/busybox:1")
		expectEvent(t, lines, ns, "/images/delete", `"name":"example.com/events/busybox:1"`)
	})
	t.Run("content rm publishes /content/delete", func(t *testing.T) {
		dgst := img.Config.Digest.String()
		s.MustCtr(ns, "content", "rm", dgst)
		expectEvent(t, lines, ns, "/content/delete", `"digest":"`+dgst+`"`)
	})
}
