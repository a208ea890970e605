// Package snapshottest is the conformance suite every snapshotter backend
// passes: Run exercises the snapshotter.Snapshotter contract against a
// backend, in-process or through its plugin process. Cases that mount
// snapshots need root and are skipped otherwise.
package snapshottest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/flotilla/flotilla/services/mount"
	"github.com/flotilla/flotilla/snapshotd/sdk"
	"github.com/flotilla/flotilla/snapshotd/snapshotter"
)

// NewFunc opens the backend under test with its data under root. It fails
// t if it cannot, and arranges (t.Cleanup) for the backend to be closed
// unless the case closes it. Opening the same root again after Close must
// find the snapshots that were there.
type NewFunc func(t testing.TB, root string) snapshotter.Snapshotter

// InProcess is the NewFunc of a backend that open opens in the test's
// process; it fails t if open does and closes the backend when t ends.
func InProcess[S snapshotter.Snapshotter](open func(root string) (S, error)) NewFunc {
	return func(t testing.TB, root string) snapshotter.Snapshotter {
		s, err := open(root)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
}

type testCase struct {
	name string
	root bool // mounts, so needs root
	run  func(t *testing.T, ctx context.Context, s snapshotter.Snapshotter, open func() snapshotter.Snapshotter)
}

// Run runs every case against a fresh backend from newFn.
func Run(t *testing.T, newFn NewFunc) {
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.root && os.Geteuid() != 0 {
				t.Skip("mounts need root")
			}
			root := tempDir(t)
			s := newFn(t, root)
			tc.run(t, context.Background(), s, func() snapshotter.Snapshotter { return newFn(t, root) })
		})
	}
}

var cases = []testCase{
	{name: "prepare of an existing key is AlreadyExists", run: testPrepareExisting},
	{name: "prepare on an unknown parent is NotFound", run: testUnknownParent},
	{name: "prepare on a parent that is not committed is InvalidArgument", run: testParentNotCommitted},
	{name: "stat of an unknown key is NotFound", run: testStatUnknown},
	{name: "stat reports kind, parent and labels", run: testStatKinds},
	{name: "commit turns an active snapshot into a committed one", run: testCommit},
	{name: "a committed snapshot is created and updated when it is committed", run: testCommitTimes},
	{name: "commit of a view or a committed snapshot is FailedPrecondition", run: testCommitNotActive},
	{name: "commit of an unknown key is NotFound", run: testCommitUnknown},
	{name: "commit onto a taken name is AlreadyExists and keeps the active", run: testCommitTaken},
	{name: "remove of a parent is FailedPrecondition until its children are gone", run: testRemoveParent},
	{name: "remove of an unknown key is NotFound and a removed key is reusable", run: testRemove},
	{name: "labels given at prepare and commit are kept", run: testLabelsKept},
	{name: "update sets, removes and replaces labels by fieldpath", run: testUpdate},
	{name: "walk visits every snapshot and filters by kind, name, parent and labels", run: testWalk},
	{name: "walk stops at the first error of its function", run: testWalkStops},
	{name: "mounts of an active or view equal those prepared; committed is FailedPrecondition", run: testMounts},
	{name: "usage of an active grows with its content and a committed one's stays", root: true, run: testUsage},
	{name: "concurrent prepares of distinct keys all succeed, of one key exactly one", run: testConcurrentPrepare},
	{name: "mounted active is writable, its committed content seen through a read-only view", root: true, run: testMountWriteRead},
	{name: "child sees its parent's files and its changes do not reach the parent", root: true, run: testCopyOnWrite},
	{name: "a file deleted in a layer is gone from the layers above", root: true, run: testDeletion},
	{name: "parent chain of 128 layers mounts with every layer's file", root: true, run: testDeepChain},
	{name: "snapshots survive closing and reopening the backend", run: testReopen},
}

// tempDir is a directory for the backend's root whose path, unlike
// t.TempDir's, holds no commas or colons, which overlay options cannot carry.
func tempDir(t *testing.T) string {
	dir, err := os.MkdirTemp("", "snapshottest-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove %s: %v", dir, err)
		}
	})
	return dir
}

func mustKind(t *testing.T, err error, is func(error) bool, kind string) {
	t.Helper()
	if !is(err) {
		t.Fatalf("err = %v, want %s", err, kind)
	}
}

func prepare(t *testing.T, ctx context.Context, s snapshotter.Snapshotter, key, parent string, opts ...snapshotter.Opt) []snapshotter.Mount {
	t.Helper()
	ms, err := s.Prepare(ctx, key, parent, opts...)
	if err != nil {
		t.Fatalf("prepare %q on %q: %v", key, parent, err)
	}
	return ms
}

func commit(t *testing.T, ctx context.Context, s snapshotter.Snapshotter, name, key string, opts ...snapshotter.Opt) {
	t.Helper()
	if err := s.Commit(ctx, name, key, opts...); err != nil {
		t.Fatalf("commit %q as %q: %v", key, name, err)
	}
}

// layer prepares key on parent, lets write change the mounted tree, and
// commits it as name.
func layer(t *testing.T, ctx context.Context, s snapshotter.Snapshotter, name, parent string, write func(dir string)) {
	t.Helper()
	key := name + "-active"
	ms := prepare(t, ctx, s, key, parent)
	withMounted(t, ms, write)
	commit(t, ctx, s, name, key)
}

// withMounted mounts ms on a temporary directory, calls fn with it and
// unmounts, even if fn fails the test.
func withMounted(t *testing.T, ms []snapshotter.Mount, fn func(dir string)) {
	t.Helper()
	dir := t.TempDir()
	if err := mount.All(sdk.MountsToProto(ms), dir); err != nil {
		t.Fatalf("mount %+v: %v", ms, err)
	}
	defer func() {
		if err := mount.Unmount(dir); err != nil {
			t.Errorf("unmount: %v", err)
		}
	}()
	fn(dir)
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func testPrepareExisting(t *testing.T, ctx context.Context, s snapshotter.Snapshotter, _ func() snapshotter.Snapshotter) {
	prepare(t, ctx, s, "a", "")
	_, err := s.Prepare(ctx, "a", "")
	mustKind(t, err, errdefs.IsAlreadyExists, "AlreadyExists")
	_, err = s.View(ctx, "a", "")
	mustKind(t, err, errdefs.IsAlreadyExists, "AlreadyExists for a view with an active's key")
	commit(t, ctx, s, "base", "a")
	_, err = s.Prepare(ctx, "base", "")
	mustKind(t, err, errdefs.IsAlreadyExists, "AlreadyExists for a committed name")
}

func testUnknownParent(t *testing.T, ctx context.Context, s snapshotter.Snapshotter, _ func() snapshotter.Snapshotter) {
	_, err := s.Prepare(ctx, "a", "no-such-parent")
	mustKind(t, err, errdefs.IsNotFound, "NotFound")
	_, err = s.View(ctx, "v", "no-such-parent")
	mustKind(t, err, errdefs.IsNotFound, "NotFound for a view")
	if _, err := s.Stat(ctx, "a"); !errdefs.IsNotFound(err) {
		t.Fatalf("failed prepare left a snapshot: stat = %v", err)
	}
}

func testParentNotCommitted(t *testing.T, ctx context.Context, s snapshotter.Snapshotter, _ func() snapshotter.Snapshotter) {
	prepare(t, ctx, s, "active", "")
	_, err := s.Prepare(ctx, "child", "active")
	mustKind(t, err, errdefs.IsInvalidArgument, "InvalidArgument")
}

func testStatUnknown(t *testing.T, ctx context.Context, s snapshotter.Snapshotter, _ func() snapshotter.Snapshotter) {
	_, err := s.Stat(ctx, "nothing")
	mustKind(t, err, errdefs.IsNotFound, "NotFound")
	_, err = s.Usage(ctx, "nothing")
	mustKind(t, err, errdefs.IsNotFound, "NotFound from Usage")
}

func testStatKinds(t *testing.T, ctx context.Context, s snapshotter.Snapshotter, _ func() snapshotter.Snapshotter) {
	prepare(t, ctx, s, "a", "", snapshotter.WithLabels(map[string]string{"l": "1"}))
	commit(t, ctx, s, "base", "a")
	prepare(t, ctx, s, "active", "base")
	if _, err := s.View(ctx, "view", "base"); err != nil {
		t.Fatal(err)
	}
	for _, want := range []snapshotter.Info{
		{Name: "base", Kind: snapshotter.KindCommitted, Labels: map[string]string{"l": "1"}},
		{Name: "active", Kind: snapshotter.KindActive, Parent: "base"},
		{Name: "view", Kind: snapshotter.KindView, Parent: "base"},
	} {
		got, err := s.Stat(ctx, want.Name)
		if err != nil {
			t.Fatal(err)
		}
		if got.Name != want.Name || got.Kind != want.Kind || got.Parent != want.Parent || fmt.Sprint(got.Labels) != fmt.Sprint(want.Labels) {
			t.Errorf("stat %s = %+v, want %+v", want.Name, got, want)
		}
		if got.Created.IsZero() || got.Updated.IsZero() {
			t.Errorf("stat %s: times not set: %+v", want.Name, got)
		}
	}
}

func testCommit(t *testing.T, ctx context.Context, s snapshotter.Snapshotter, _ func() snapshotter.Snapshotter) {
	prepare(t, ctx, s, "a", "")
	commit(t, ctx, s, "base", "a")
	prepare(t, ctx, s, "b", "base")
	commit(t, ctx, s, "top", "b")
	if _, err := s.Stat(ctx, "b"); !errdefs.IsNotFound(err) {
		t.Fatalf("active key still there after commit: %v", err)
	}
	info, err := s.Stat(ctx, "top")
	if err != nil {
		t.Fatal(err)
	}
	if info.Kind != snapshotter.KindCommitted || info.Parent != "base" {
		t.Fatalf("committed = %+v, want committed with parent base", info)
	}
}

func testCommitTimes(t *testing.T, ctx context.Context, s snapshotter.Snapshotter, _ func() snapshotter.Snapshotter) {
	prepare(t, ctx, s, "a", "")
	before := time.Now()
	commit(t, ctx, s, "base", "a")
	after := time.Now()
	info, err := s.Stat(ctx, "base")
	if err != nil {
		t.Fatal(err)
	}
	if info.Created.Before(before) || info.Created.After(after) {
		t.Errorf("created %s, want the commit's time, between %s and %s", info.Created, before, after)
	}
	if !info.Updated.Equal(info.Created) {
		t.Errorf("updated %s, want the created time %s", info.Updated, info.Created)
	}
}

func testCommitNotActive(t *testing.T, ctx context.Context, s snapshotter.Snapshotter, _ func() snapshotter.Snapshotter) {
	prepare(t, ctx, s, "a", "")
	commit(t, ctx, s, "base", "a")
	if _, err := s.View(ctx, "view", "base"); err != nil {
		t.Fatal(err)
	}
	mustKind(t, s.Commit(ctx, "x", "view"), errdefs.IsFailedPrecondition, "FailedPrecondition for a view")
	mustKind(t, s.Commit(ctx, "y", "base"), errdefs.IsFailedPrecondition, "FailedPrecondition for a committed snapshot")
}

func testCommitUnknown(t *testing.T, ctx context.Context, s snapshotter.Snapshotter, _ func() snapshotter.Snapshotter) {
	mustKind(t, s.Commit(ctx, "x", "nothing"), errdefs.IsNotFound, "NotFound")
}

func testCommitTaken(t *testing.T, ctx context.Context, s snapshotter.Snapshotter, _ func() snapshotter.Snapshotter) {
	prepare(t, ctx, s, "a", "")
	commit(t, ctx, s, "base", "a")
	prepare(t, ctx, s, "b", "")
	mustKind(t, s.Commit(ctx, "base", "b"), errdefs.IsAlreadyExists, "AlreadyExists")
	if info, err := s.Stat(ctx, "b"); err != nil || info.Kind != snapshotter.KindActive {
		t.Fatalf("active after failed commit: %+v, %v", info, err)
	}
}

func testRemoveParent(t *testing.T, ctx context.Context, s snapshotter.Snapshotter, _ func() snapshotter.Snapshotter) {
	prepare(t, ctx, s, "a", "")
	commit(t, ctx, s, "base", "a")
	prepare(t, ctx, s, "child", "base")
	if _, err := s.View(ctx, "view", "base"); err != nil {
		t.Fatal(err)
	}
	mustKind(t, s.Remove(ctx, "base"), errdefs.IsFailedPrecondition, "FailedPrecondition")
	if err := s.Remove(ctx, "child"); err != nil {
		t.Fatal(err)
	}
	mustKind(t, s.Remove(ctx, "base"), errdefs.IsFailedPrecondition, "FailedPrecondition while a view remains")
	if err := s.Remove(ctx, "view"); err != nil {
		t.Fatal(err)
	}
	if err := s.Remove(ctx, "base"); err != nil {
		t.Fatalf("remove of a parent without children: %v", err)
	}
}

func testRemove(t *testing.T, ctx context.Context, s snapshotter.Snapshotter, _ func() snapshotter.Snapshotter) {
	mustKind(t, s.Remove(ctx, "nothing"), errdefs.IsNotFound, "NotFound")
	prepare(t, ctx, s, "a", "")
	if err := s.Remove(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Stat(ctx, "a"); !errdefs.IsNotFound(err) {
		t.Fatalf("stat after remove = %v, want NotFound", err)
	}
	prepare(t, ctx, s, "a", "")
}

func testLabelsKept(t *testing.T, ctx context.Context, s snapshotter.Snapshotter, _ func() snapshotter.Snapshotter) {
	prepare(t, ctx, s, "a", "", snapshotter.WithLabels(map[string]string{"from": "prepare", "keep": "yes"}))
	commit(t, ctx, s, "base", "a", snapshotter.WithLabels(map[string]string{"from": "commit"}))
	info, err := s.Stat(ctx, "base")
	if err != nil {
		t.Fatal(err)
	}
	if info.Labels["from"] != "commit" || info.Labels["keep"] != "yes" {
		t.Fatalf("labels = %v, want from=commit keep=yes", info.Labels)
	}
}

func testUpdate(t *testing.T, ctx context.Context, s snapshotter.Snapshotter, _ func() snapshotter.Snapshotter) {
	prepare(t, ctx, s, "a", "", snapshotter.WithLabels(map[string]string{"x": "1", "y": "2"}))
	before, _ := s.Stat(ctx, "a")
	steps := []struct {
		name   string
		labels map[string]string
		paths  []string
		want   string
	}{
		{"labels.KEY sets one label", map[string]string{"z": "3", "x": "ignored"}, []string{"labels.z"}, "map[x:1 y:2 z:3]"},
		{"labels.KEY absent from the update removes it", nil, []string{"labels.x"}, "map[y:2 z:3]"},
		{"labels replaces them all", map[string]string{"only": "this"}, []string{"labels"}, "map[only:this]"},
		{"no fieldpath replaces them all", map[string]string{"n": "1"}, nil, "map[n:1]"},
	}
	for _, st := range steps {
		got, err := s.Update(ctx, snapshotter.Info{Name: "a", Labels: st.labels}, st.paths...)
		if err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if fmt.Sprint(got.Labels) != st.want {
			t.Fatalf("%s: labels = %v, want %s", st.name, got.Labels, st.want)
		}
		stat, _ := s.Stat(ctx, "a")
		if fmt.Sprint(stat.Labels) != st.want {
			t.Fatalf("%s: stat labels = %v, want %s", st.name, stat.Labels, st.want)
		}
	}
	after, _ := s.Stat(ctx, "a")
	if !after.Updated.After(before.Updated) {
		t.Errorf("updated time %v not after %v", after.Updated, before.Updated)
	}
	_, err := s.Update(ctx, snapshotter.Info{Name: "a", Parent: "p"}, "parent")
	mustKind(t, err, errdefs.IsInvalidArgument, "InvalidArgument for fieldpath parent")
	_, err = s.Update(ctx, snapshotter.Info{Name: "nothing"}, "labels")
	mustKind(t, err, errdefs.IsNotFound, "NotFound")
}

func walkNames(t *testing.T, ctx context.Context, s snapshotter.Snapshotter, filters ...string) []string {
	t.Helper()
	var names []string
	err := s.Walk(ctx, func(_ context.Context, info snapshotter.Info) error {
		names = append(names, info.Name)
		return nil
	}, filters...)
	if err != nil {
		t.Fatalf("walk %q: %v", filters, err)
	}
	sort.Strings(names)
	return names
}

func testWalk(t *testing.T, ctx context.Context, s snapshotter.Snapshotter, _ func() snapshotter.Snapshotter) {
	prepare(t, ctx, s, "a", "", snapshotter.WithLabels(map[string]string{"tier": "base"}))
	commit(t, ctx, s, "base", "a")
	prepare(t, ctx, s, "work", "base", snapshotter.WithLabels(map[string]string{"tier": "app", "com.example.owner": "me"}))
	if _, err := s.View(ctx, "look", "base"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		filters []string
		want    string
	}{
		{nil, "[base look work]"},
		{[]string{"kind==committed"}, "[base]"},
		{[]string{"kind==active"}, "[work]"},
		{[]string{"kind==view"}, "[look]"},
		{[]string{"name==work"}, "[work]"},
		{[]string{"parent==base"}, "[look work]"},
		{[]string{"labels.tier==app"}, "[work]"},
		{[]string{`labels."com.example.owner"==me`}, "[work]"},
		{[]string{"labels.tier"}, "[base work]"},
		{[]string{"name~=^b"}, "[base]"},
		{[]string{"kind==view", "labels.tier==base"}, "[base look]"},
		{[]string{"kind==active,labels.tier==base"}, "[]"},
	} {
		if got := fmt.Sprint(walkNames(t, ctx, s, tc.filters...)); got != tc.want {
			t.Errorf("walk %q = %s, want %s", tc.filters, got, tc.want)
		}
	}
	err := s.Walk(ctx, func(context.Context, snapshotter.Info) error { return nil }, "name==")
	mustKind(t, err, errdefs.IsInvalidArgument, "InvalidArgument for a bad filter")
}

func testWalkStops(t *testing.T, ctx context.Context, s snapshotter.Snapshotter, _ func() snapshotter.Snapshotter) {
	for i := range 3 {
		prepare(t, ctx, s, fmt.Sprintf("a%d", i), "")
	}
	stop := errors.New("enough")
	calls := 0
	err := s.Walk(ctx, func(context.Context, snapshotter.Info) error {
		calls++
		return stop
	})
	if !errors.Is(err, stop) || calls != 1 {
		t.Fatalf("walk = %v after %d calls, want the function's error after 1", err, calls)
	}
}

func testMounts(t *testing.T, ctx context.Context, s snapshotter.Snapshotter, _ func() snapshotter.Snapshotter) {
	ms := prepare(t, ctx, s, "a", "")
	got, err := s.Mounts(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(ms) || len(ms) == 0 {
		t.Fatalf("mounts = %v, prepare gave %v", got, ms)
	}
	commit(t, ctx, s, "base", "a")
	_, err = s.Mounts(ctx, "base")
	mustKind(t, err, errdefs.IsFailedPrecondition, "FailedPrecondition for a committed snapshot")
	_, err = s.Mounts(ctx, "nothing")
	mustKind(t, err, errdefs.IsNotFound, "NotFound")
	vms, err := s.View(ctx, "v", "base")
	if err != nil {
		t.Fatal(err)
	}
	got, err = s.Mounts(ctx, "v")
	if err != nil || fmt.Sprint(got) != fmt.Sprint(vms) {
		t.Fatalf("view mounts = %v, %v; view gave %v", got, err, vms)
	}
	readOnly := false
	for _, m := range vms {
		for _, o := range m.Options {
			readOnly = readOnly || o == "ro"
		}
		readOnly = readOnly || (m.Type == "overlay" && !hasPrefixOption(m.Options, "upperdir="))
	}
	if !readOnly {
		t.Errorf("view mounts %v are not read-only", vms)
	}
}

func hasPrefixOption(options []string, prefix string) bool {
	for _, o := range options {
		if len(o) >= len(prefix) && o[:len(prefix)] == prefix {
			return true
		}
	}
	return false
}

func testUsage(t *testing.T, ctx context.Context, s snapshotter.Snapshotter, _ func() snapshotter.Snapshotter) {
	ms := prepare(t, ctx, s, "a", "")
	empty, err := s.Usage(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	withMounted(t, ms, func(dir string) {
		writeFile(t, filepath.Join(dir, "big"), string(make([]byte, 1<<20)))
		writeFile(t, filepath.Join(dir, "d", "small"), "x")
	})
	full, err := s.Usage(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	if full.Size < empty.Size+1<<20 || full.Inodes < empty.Inodes+3 {
		t.Fatalf("usage after writing 1 MiB and 3 inodes = %+v, before %+v", full, empty)
	}
	commit(t, ctx, s, "base", "a")
	committed, err := s.Usage(ctx, "base")
	if err != nil {
		t.Fatal(err)
	}
	if committed.Size < 1<<20 {
		t.Fatalf("committed usage = %+v, want at least 1 MiB", committed)
	}
}

func testConcurrentPrepare(t *testing.T, ctx context.Context, s snapshotter.Snapshotter, _ func() snapshotter.Snapshotter) {
	prepare(t, ctx, s, "a", "")
	commit(t, ctx, s, "base", "a")
	const n = 32
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() { _, errs[i] = s.Prepare(ctx, fmt.Sprintf("k%d", i), "base") })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("prepare k%d: %v", i, err)
		}
	}
	if got := len(walkNames(t, ctx, s, "parent==base")); got != n {
		t.Fatalf("%d children of base, want %d", got, n)
	}
	for i := range n {
		wg.Go(func() { _, errs[i] = s.Prepare(ctx, "same", "base") })
	}
	wg.Wait()
	won := 0
	for _, err := range errs {
		switch {
		case err == nil:
			won++
		case !errdefs.IsAlreadyExists(err):
			t.Fatalf("racing prepare: %v, want AlreadyExists", err)
		}
	}
	if won != 1 {
		t.Fatalf("%d racing prepares of one key succeeded, want 1", won)
	}
}

func testMountWriteRead(t *testing.T, ctx context.Context, s snapshotter.Snapshotter, _ func() snapshotter.Snapshotter) {
	layer(t, ctx, s, "base", "", func(dir string) { writeFile(t, filepath.Join(dir, "etc", "hello"), "world") })
	vms, err := s.View(ctx, "view", "base")
	if err != nil {
		t.Fatal(err)
	}
	withMounted(t, vms, func(dir string) {
		if got := readFile(t, filepath.Join(dir, "etc", "hello")); got != "world" {
			t.Fatalf("view reads %q", got)
		}
		err := os.WriteFile(filepath.Join(dir, "new"), nil, 0o644)
		if !errors.Is(err, unix.EROFS) {
			t.Fatalf("write into a view: %v, want EROFS", err)
		}
	})
}

func testCopyOnWrite(t *testing.T, ctx context.Context, s snapshotter.Snapshotter, _ func() snapshotter.Snapshotter) {
	layer(t, ctx, s, "base", "", func(dir string) { writeFile(t, filepath.Join(dir, "f"), "parent") })
	ms := prepare(t, ctx, s, "child", "base")
	withMounted(t, ms, func(dir string) {
		if got := readFile(t, filepath.Join(dir, "f")); got != "parent" {
			t.Fatalf("child reads %q, want the parent's file", got)
		}
		writeFile(t, filepath.Join(dir, "f"), "child")
	})
	vms, err := s.View(ctx, "look", "base")
	if err != nil {
		t.Fatal(err)
	}
	withMounted(t, vms, func(dir string) {
		if got := readFile(t, filepath.Join(dir, "f")); got != "parent" {
			t.Fatalf("parent reads %q after the child wrote", got)
		}
	})
}

func testDeletion(t *testing.T, ctx context.Context, s snapshotter.Snapshotter, _ func() snapshotter.Snapshotter) {
	layer(t, ctx, s, "l1", "", func(dir string) {
		writeFile(t, filepath.Join(dir, "gone"), "x")
		writeFile(t, filepath.Join(dir, "stays"), "y")
	})
	layer(t, ctx, s, "l2", "l1", func(dir string) {
		if err := os.Remove(filepath.Join(dir, "gone")); err != nil {
			t.Fatal(err)
		}
	})
	ms := prepare(t, ctx, s, "top", "l2")
	withMounted(t, ms, func(dir string) {
		if _, err := os.Stat(filepath.Join(dir, "gone")); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("deleted file: stat = %v, want not exist", err)
		}
		if got := readFile(t, filepath.Join(dir, "stays")); got != "y" {
			t.Fatalf("kept file reads %q", got)
		}
	})
}

func testDeepChain(t *testing.T, ctx context.Context, s snapshotter.Snapshotter, _ func() snapshotter.Snapshotter) {
	const depth = 128
	parent := ""
	for i := range depth {
		name := fmt.Sprintf("layer-%03d", i)
		layer(t, ctx, s, name, parent, func(dir string) {
			writeFile(t, filepath.Join(dir, "layers", name), name)
			writeFile(t, filepath.Join(dir, "top"), name)
		})
		parent = name
	}
	info, err := s.Stat(ctx, parent)
	if err != nil || info.Parent != fmt.Sprintf("layer-%03d", depth-2) {
		t.Fatalf("stat top = %+v, %v", info, err)
	}
	vms, err := s.View(ctx, "deep-view", parent)
	if err != nil {
		t.Fatal(err)
	}
	withMounted(t, vms, func(dir string) {
		entries, err := os.ReadDir(filepath.Join(dir, "layers"))
		if err != nil {
			t.Fatal(err)
		}
		if len(entries) != depth {
			t.Fatalf("%d layer files visible, want %d", len(entries), depth)
		}
		if got := readFile(t, filepath.Join(dir, "top")); got != parent {
			t.Fatalf("top reads %q, want the last layer's %q", got, parent)
		}
	})
	// Removing from the top down works; from the bottom it is refused.
	mustKind(t, s.Remove(ctx, "layer-000"), errdefs.IsFailedPrecondition, "FailedPrecondition")
}

func testReopen(t *testing.T, ctx context.Context, s snapshotter.Snapshotter, open func() snapshotter.Snapshotter) {
	prepare(t, ctx, s, "a", "", snapshotter.WithLabels(map[string]string{"k": "v"}))
	commit(t, ctx, s, "base", "a")
	prepare(t, ctx, s, "active", "base")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open()
	if got := fmt.Sprint(walkNames(t, ctx, s)); got != "[active base]" {
		t.Fatalf("after reopen: %s", got)
	}
	info, err := s.Stat(ctx, "base")
	if err != nil || info.Labels["k"] != "v" {
		t.Fatalf("base after reopen = %+v, %v", info, err)
	}
	prepare(t, ctx, s, "b", "base")
}
