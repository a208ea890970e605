package gc

import (
	"slices"
	"strings"
	"testing"
	"time"
)

func sortedRefs(refs []Ref) []string {
	var out []string
	for _, r := range refs {
		out = append(out, r.String())
	}
	slices.Sort(out)
	return out
}

// The labels are read as containerd 2.4's core/metadata/gc.go reads them.
func TestLabels(t *testing.T) {
	labels := map[string]string{
		"containerd.io/gc.ref.content":             "sha256:a",
		"containerd.io/gc.ref.content.l0":          "sha256:b",
		"containerd.io/gc.ref.content/m":           "sha256:c",
		"containerd.io/gc.ref.contentx":            "sha256:not-a-ref",
		"containerd.io/gc.ref.snapshot.overlayfs":  "chain",
		"containerd.io/gc.ref.snapshot.native/x":   "other",
		"containerd.io/gc.ref.image":               "docker.io/library/busybox:1",
		"containerd.io/gc.bref.content":            "sha256:p",
		"containerd.io/gc.bref.content.x":          "sha256:q",
		"containerd.io/gc.bref.contentx":           "sha256:not-a-bref",
		"containerd.io/gc.bref.image/y":            "img",
		"containerd.io/gc.bref.container":          "ctr",
		"containerd.io/gc.bref.snapshot.overlayfs": "s1",
		"containerd.io/gc.bref.snapshot.btrfs/n":   "s2",
		"unrelated":                                "sha256:z",
	}
	if got, want := sortedRefs(LabelRefs("ns", labels)), []string{
		"content:ns/sha256:a", "content:ns/sha256:b", "content:ns/sha256:c",
		"image:ns/docker.io/library/busybox:1",
		"snapshot:ns/native/other", "snapshot:ns/overlayfs/chain",
	}; !slices.Equal(got, want) {
		t.Errorf("LabelRefs = %q, want %q", got, want)
	}
	if got, want := sortedRefs(LabelBackRefs("ns", labels)), []string{
		"container:ns/ctr", "content:ns/sha256:p", "content:ns/sha256:q", "image:ns/img",
		"snapshot:ns/btrfs/s2", "snapshot:ns/overlayfs/s1",
	}; !slices.Equal(got, want) {
		t.Errorf("LabelBackRefs = %q, want %q", got, want)
	}

	for _, tc := range []struct {
		name   string
		labels map[string]string
		root   bool
	}{
		{"gc.root is a root", map[string]string{"containerd.io/gc.root": "x"}, true},
		{"a key gc.root begins is a root, as containerd seeks it", map[string]string{"containerd.io/gc.rootless": ""}, true},
		{"gc.expire not passed is no root on content and snapshots", map[string]string{LabelExpire: time.Now().Add(time.Hour).Format(time.RFC3339)}, false},
		{"no label, no root", nil, false},
	} {
		if got := IsRoot(tc.labels); got != tc.root {
			t.Errorf("%s: IsRoot = %v", tc.name, got)
		}
	}
}

func TestConditionalRefs(t *testing.T) {
	from := Content("ns", "sha256:a")
	edges := LabelConditionalRefs(from, map[string]string{
		"containerd.io/gc.cond.snapshot.overlayfs":     "usedat<5m|recent",
		"containerd.io/gc.cond.snapshot/overlayfs/old": "usedat>1h,usedat<=1m,size<3|stale",
		"containerd.io/gc.cond.snapshot.native":        "usedat=5m|never", // no usedat operator
		"containerd.io/gc.cond.snapshot.native/nokey":  "usedat<5m",       // no key
	})
	var got []string
	for _, e := range edges {
		got = append(got, e.To.String()+" if "+e.Condition)
	}
	slices.Sort(got)
	if want := []string{"snapshot:ns/overlayfs/recent if usedat<5m", "snapshot:ns/overlayfs/stale if usedat>1h"}; !slices.Equal(got, want) {
		t.Errorf("conditional refs = %q, want %q", got, want)
	}

	now := time.Now()
	for _, tc := range []struct {
		cond   string
		usedAt time.Time
		want   bool
	}{
		{"usedat<5m", now.Add(-time.Minute), true},
		{"usedat<5m", now.Add(-time.Hour), false},
		{"usedat>1h", now.Add(-2 * time.Hour), true},
		{"usedat>1h,usedat<1m", now.Add(-30 * time.Second), true},
		{"usedat<5m", time.Time{}, false},
	} {
		if got := Satisfied(tc.cond, tc.usedAt, now); got != tc.want {
			t.Errorf("Satisfied(%q, used %s ago) = %v, want %v", tc.cond, now.Sub(tc.usedAt), got, tc.want)
		}
	}
	if !strings.Contains(UsedAt(map[string]string{LabelUsedAt: "2026-01-02T03:04:05Z"}).String(), "2026-01-02 03:04:05") {
		t.Errorf("UsedAt did not read the label")
	}
}
