package integration

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	introspectionapi "github.com/containerd/containerd/api/services/introspection/v1"

	"github.com/flotilla/flotilla/flotctl/stack"
)

// TestRestartMonitorKeepsLabelledContainersInTheirStatus drives taskd's
// restart monitor with containerd's labels, through ctr: a container
// labelled containerd.io/restart.status=running whose task exits runs again;
// one labelled stopped is left stopped. Clients find the monitor in
// introspection as containerd's restart plugin.
func TestRestartMonitorKeepsLabelledContainersInTheirStatus(t *testing.T) {
	s := startRunStack(t, "restartmon", func(l *stack.Layout) {
		if l.ExtraArgs == nil {
			l.ExtraArgs = map[string][]string{}
		}
		l.ExtraArgs["taskd"] = append(l.ExtraArgs["taskd"], "--restart-interval", "200ms")
	})

	t.Run("introspection lists containerd's restart plugin", func(t *testing.T) {
		resp, err := introspectionapi.NewIntrospectionClient(s.Conn()).Plugins(context.Background(),
			&introspectionapi.PluginsRequest{Filters: []string{"id==restart"}})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Plugins) != 1 || resp.Plugins[0].Type != "io.containerd.internal.v1" {
			t.Fatalf("plugins with id restart: %v", resp.Plugins)
		}
		for _, p := range []string{"always", "on-failure", "unless-stopped", "no"} {
			if !slices.Contains(resp.Plugins[0].Capabilities, p) {
				t.Errorf("restart plugin capabilities %v lack %q", resp.Plugins[0].Capabilities, p)
			}
		}
	})

	top := t // what outlives the subtests is cleaned up with the test
	events := subscribe(top, s.Stack)
	type seen struct{ topic, id string }
	next := func(t *testing.T, timeout time.Duration) (seen, bool) {
		t.Helper()
		deadline := time.After(timeout)
		for {
			select {
			case ev, ok := <-events:
				if !ok {
					t.Fatal("event stream ended")
				}
				if ev.Namespace != s.ns {
					continue
				}
				var body struct {
					ContainerID string `json:"container_id"`
				}
				_ = json.Unmarshal([]byte(ev.Event), &body)
				return seen{ev.Topic, body.ContainerID}, true
			case <-deadline:
				return seen{}, false
			}
		}
	}
	// waitFor reads events until want; it returns the events before it.
	waitFor := func(t *testing.T, want seen) []seen {
		t.Helper()
		var before []seen
		for {
			ev, ok := next(t, 30*time.Second)
			if !ok {
				t.Fatalf("no %v; saw %v", want, before)
			}
			if ev == want {
				return before
			}
			before = append(before, ev)
		}
	}

	const status = "containerd.io/restart.status"
	t.Run("a container labelled running whose task exits runs again", func(t *testing.T) {
		s.MustCtr(s.ns, "run", "-d", "--label", status+"=running", s.ref, "keep", "sleep", "1000")
		first := s.waitStatus(t, "keep", "RUNNING")
		s.MustCtr(s.ns, "tasks", "kill", "-s", "SIGKILL", "keep")
		waitFor(t, seen{"/tasks/exit", "keep"})
		waitFor(t, seen{"/tasks/start", "keep"})
		again := s.waitStatus(t, "keep", "RUNNING")
		if again.Pid == first.Pid {
			t.Fatalf("the task runs with its old pid %d", first.Pid)
		}
		if info := s.MustCtr(s.ns, "containers", "info", "keep"); !strings.Contains(info, `"containerd.io/restart.count": "1"`) {
			t.Errorf("restart count not recorded:\n%s", info)
		}
	})

	t.Run("a container labelled stopped is not restarted", func(t *testing.T) {
		// flappy exits every moment and is restarted each time: its starts
		// show the monitor went over every container again.
		s.MustCtr(s.ns, "run", "-d", "--label", status+"=running", s.ref, "flappy", "sh", "-c", "sleep 0.3; exit 3")
		// Labelled only once its task has exited: a monitor pass that saw it
		// created or running would rightly kill and delete it (containerd's
		// does the same), which is not what this case is about.
		s.MustCtr(s.ns, "run", "-d", s.ref, "gone", "sh", "-c", "exit 5")
		waitFor(t, seen{"/tasks/exit", "gone"})
		s.MustCtr(s.ns, "containers", "label", "gone", status+"=stopped")
		var between []seen
		for range 3 {
			between = append(between, waitFor(t, seen{"/tasks/start", "flappy"})...)
		}
		for _, ev := range between {
			if ev.id == "gone" && ev.topic != "/tasks/exit" {
				t.Errorf("gone, labelled stopped: %s after its exit", ev.topic)
			}
		}
		if got := s.tasks(t)["gone"]; got.Status != "STOPPED" {
			t.Errorf("gone's task: %+v, want it left STOPPED", got)
		}
	})

	t.Run("a container labelled explicitly stopped is not restarted, even with the policy always", func(t *testing.T) {
		// As containerd's monitor (its TestContainerRestartPolicyAlways):
		// flappy, still restarted each time it exits, shows the passes.
		s.MustCtr(s.ns, "run", "-d", "--label", status+"=running", "--label", "containerd.io/restart.policy=always",
			"--label", "containerd.io/restart.explicitly-stopped=true", s.ref, "held", "sleep", "1000")
		s.waitStatus(t, "held", "RUNNING")
		s.MustCtr(s.ns, "tasks", "kill", "-s", "SIGKILL", "held")
		waitFor(t, seen{"/tasks/exit", "held"})
		var between []seen
		for range 3 {
			between = append(between, waitFor(t, seen{"/tasks/start", "flappy"})...)
		}
		for _, ev := range between {
			if ev.id == "held" && ev.topic != "/tasks/exit" {
				t.Errorf("held, explicitly stopped: %s after its exit", ev.topic)
			}
		}
		if got := s.tasks(t)["held"]; got.Status != "STOPPED" {
			t.Errorf("held's task: %+v, want it left STOPPED", got)
		}
	})

	t.Run("taskd restarting clears explicitly stopped of a container with the policy always, which runs again", func(t *testing.T) {
		// containerd's monitor does this once as it starts: a container
		// stopped by hand stays down until the daemon restarts.
		if got := s.tasks(t)["held"]; got.Status != "STOPPED" {
			t.Fatalf("held's task: %+v, want STOPPED before the restart", got)
		}
		s.Kill9("taskd")
		s.Up()
		s.waitStatus(t, "held", "RUNNING")
		if info := s.MustCtr(s.ns, "containers", "info", "held"); !strings.Contains(info, `"containerd.io/restart.explicitly-stopped": "false"`) {
			t.Errorf("explicitly-stopped not cleared:\n%s", info)
		}
		events = subscribe(top, s.Stack) // in one process, the restart ended the stream
	})

	t.Run("a running task of a container labelled stopped is stopped", func(t *testing.T) {
		s.MustCtr(s.ns, "run", "-d", s.ref, "halt", "sleep", "1000")
		s.waitStatus(t, "halt", "RUNNING")
		s.MustCtr(s.ns, "containers", "label", "halt", status+"=stopped")
		waitFor(t, seen{"/tasks/exit", "halt"})
		waitFor(t, seen{"/tasks/delete", "halt"})
	})
}
