package reaper

import (
	"bytes"
	"os/exec"
	"testing"
	"time"
)

// One reaper per process: it makes the test binary a subreaper.
func TestReaper(t *testing.T) {
	r, err := Start()
	if err != nil {
		t.Fatal(err)
	}

	t.Run("Run reports the exit status of a command it started", func(t *testing.T) {
		cases := []struct {
			script string
			want   int
		}{
			{"exit 0", 0},
			{"exit 7", 7},
			{"kill -9 $$", 137},
		}
		for _, c := range cases {
			cmd := exec.Command("sh", "-c", c.script)
			got, err := r.Run(cmd)
			if err != nil || got != c.want {
				t.Fatalf("%q: status %d, err %v; want %d", c.script, got, err, c.want)
			}
		}
	})

	t.Run("Run still collects the command's output", func(t *testing.T) {
		cmd := exec.Command("echo", "out")
		var buf bytes.Buffer
		cmd.Stdout = &buf
		if _, err := r.Run(cmd); err != nil {
			t.Fatal(err)
		}
		if buf.String() != "out\n" {
			t.Fatalf("output %q", buf.String())
		}
	})

	t.Run("an orphaned grandchild is reaped and reported on Exits", func(t *testing.T) {
		// sh starts a background child and exits; the child is re-parented
		// to the test process, the subreaper.
		if _, err := r.Run(exec.Command("sh", "-c", "sh -c 'sleep 0.1; exit 5' &")); err != nil {
			t.Fatal(err)
		}
		deadline := time.After(10 * time.Second)
		for {
			select {
			case e := <-r.Exits():
				if e.Status == 5 {
					return
				}
			case <-deadline:
				t.Fatal("no exit with status 5 reported")
			}
		}
	})
}
