package integration

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla/flotilla/integration/imagekit"
)

// flotctlOnA runs flotctl in host A's network namespace against contentd's
// TCP address, as an operator there would, and returns its output.
func (c *mhCluster) flotctlOnA(args ...string) (string, error) {
	a := c.hosts["a"]
	all := append([]string{"--net=/run/netns/" + a.ns, "--", filepath.Join(binDir, "flotctl"),
		"--address", "tcp://" + a.addr(mhContentd),
		"--tls-ca", c.ca(), "--tls-cert", c.cert("operator"), "--tls-key", c.key("operator")}, args...)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "nsenter", all...).CombinedOutput()
	return string(out), err
}

// stopNodeStores kills host h's snapshotd and taskd, as a crash of the
// node would (their registrations expire on their own).
func (c *mhCluster) stopNodeStores(h string) {
	for _, name := range []string{"taskd", "snapshotd"} {
		cmd := c.procs[h+"/"+name]
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
	}
}

// startNodeStores starts host h's snapshotd and taskd again, as
// startCluster started them.
func (c *mhCluster) startNodeStores(t *testing.T, h string) {
	host := c.hosts[h]
	eventd := filepath.Join(host.dir, "eventd.sock")
	c.daemon(h, "snapshotd", "--address", "tcp://"+host.addr(mhSnapshotd), "--eventd", eventd, "--contentd", "discover://contentd")
	c.daemon(h, "taskd", "--address", "tcp://"+host.addr(mhTaskd), "--eventd", eventd, "--contentd", "discover://contentd",
		"--snapshotd", "discover://snapshotd?node="+h)
	c.waitCtr(t, h, []string{"containers", "ls"}, []string{"snapshots", "ls"})
}

// TestMultiHostGC shows garbage collection across nodes: a collection run
// by contentd on A marks every node's snapshotd and taskd, and stops
// before sweeping anything while a node it knows cannot be asked.
func TestMultiHostGC(t *testing.T) {
	c := startCluster(t)
	b, cc := c.stack("b"), c.stack("c")

	reg, err := imagekit.RunRegistry(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Stop() })
	img, err := imagekit.BuildBusybox()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { img.Close() })
	ref := reg.Addr + "/multihost/gc:1"
	pctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := img.Push(pctx, ref); err != nil {
		t.Fatal(err)
	}
	const ns = "mhgc"
	lines := func(s string) []string { return strings.Split(strings.TrimSpace(s), "\n") }

	cc.MustCtr(ns, "images", "pull", "--plain-http", ref)
	cc.MustCtr(ns, "containers", "create", ref, "kept-on-c")
	// A snapshot nothing references, on C only (ctr makes it a gc root;
	// the label goes).
	cc.MustCtr(ns, "snapshots", "prepare", "stray-on-c")
	cc.MustCtr(ns, "snapshots", "label", "stray-on-c", "containerd.io/gc.root=")
	blobs := cc.MustCtr(ns, "content", "ls", "-q")
	snapshots := cc.MustCtr(ns, "snapshots", "ls")

	t.Run("a collection on A keeps what C's image and container use and sweeps C's garbage", func(t *testing.T) {
		out, err := c.flotctlOnA("gc")
		if err != nil {
			t.Fatalf("flotctl gc on A: %v\n%s", err, out)
		}
		if !strings.Contains(out, "snapshotd@c") || !strings.Contains(out, "stray-on-c") {
			t.Errorf("flotctl gc on A did not remove C's stray snapshot:\n%s", out)
		}
		if got := cc.MustCtr(ns, "content", "ls", "-q"); got != blobs {
			t.Errorf("blobs after the collection:\n%s\nwant\n%s", got, blobs)
		}
		got := cc.MustCtr(ns, "snapshots", "ls")
		if strings.Contains(got, "stray-on-c") {
			t.Errorf("C still has the stray snapshot:\n%s", got)
		}
		if want := len(lines(snapshots)) - 1; len(lines(got)) != want {
			t.Errorf("C's snapshots after the collection:\n%s\nwant those of\n%s\nbut the stray one", got, snapshots)
		}
	})

	t.Run("a node that is down stops the sweep of what it might hold", func(t *testing.T) {
		c.stopNodeStores("c")
		// The image goes while C is down: its blobs must wait for C.
		b.MustCtr(ns, "images", "rm", ref)
		out, err := c.flotctlOnA("gc")
		if err == nil || !strings.Contains(out, "node c") {
			t.Fatalf("flotctl gc on A with C down = %v, want a failure naming node c\n%s", err, out)
		}
		if got := b.MustCtr(ns, "content", "ls", "-q"); got != blobs {
			t.Errorf("blobs swept while node C was down:\n%s\nwant\n%s", got, blobs)
		}
		if log := readFile(c.logs["a/contentd"]); !strings.Contains(log, "garbage collection stopped before sweeping anything") {
			t.Errorf("contentd's log does not say why the collection stopped")
		}

		c.startNodeStores(t, "c")
		if out, err := c.flotctlOnA("gc"); err != nil {
			t.Fatalf("flotctl gc on A with C back: %v\n%s", err, out)
		}
		if got := strings.TrimSpace(b.MustCtr(ns, "content", "ls", "-q")); got != "" {
			t.Errorf("blobs of the removed image outlived a collection with every node up:\n%s", got)
		}
		if got := cc.MustCtr(ns, "snapshots", "ls"); len(lines(got)) != len(lines(snapshots))-1 {
			t.Errorf("C's container lost snapshots when its image went:\n%s", got)
		}
		cc.MustCtr(ns, "containers", "rm", "kept-on-c")
		if out, err := c.flotctlOnA("gc"); err != nil {
			t.Fatalf("flotctl gc on A: %v\n%s", err, out)
		}
		if got := lines(cc.MustCtr(ns, "snapshots", "ls")); len(got) != 1 {
			t.Errorf("C's snapshots outlived its container: %q", got)
		}
	})

	t.Run("a node gone for good is forgotten by an operator", func(t *testing.T) {
		c.stopNodeStores("c")
		if out, err := c.flotctlOnA("gc"); err == nil {
			t.Fatalf("flotctl gc on A with C down succeeded:\n%s", out)
		}
		// Refused while C's registrations live on (up to three discovery
		// intervals after the crash).
		var out string
		var err error
		until(t, 30*time.Second, "flotctl gc --forget-node c accepted once C's registrations lapse", func() (bool, string) {
			out, err = c.flotctlOnA("gc", "--forget-node", "c")
			return err == nil || !strings.Contains(out, "registered"), out
		})
		if err != nil {
			t.Fatalf("flotctl gc --forget-node c: %v\n%s", err, out)
		}
		if out, err := c.flotctlOnA("gc"); err != nil {
			t.Fatalf("flotctl gc on A after forgetting C: %v\n%s", err, out)
		}
	})
}
