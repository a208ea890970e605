package mount

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/containerd/api/types"

	lt "github.com/flotilla/flotilla/snapshotd/diff/internal/layertest"
)

func TestReadOnly(t *testing.T) {
	for _, c := range []struct {
		name string
		in   *types.Mount
		want []string
	}{
		{"a writable overlay's upper directory becomes its top lower one",
			&types.Mount{Type: "overlay", Source: "overlay", Options: []string{"index=off", "workdir=/w", "upperdir=/u", "lowerdir=/l2:/l1", "rw"}},
			[]string{"index=off", "lowerdir=/u:/l2:/l1", "ro"}},
		{"a bind mount gets ro instead of rw",
			&types.Mount{Type: "bind", Source: "/s", Options: []string{"rbind", "rw"}},
			[]string{"rbind", "ro"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := ReadOnly([]*types.Mount{c.in})[0]
			if !slices.Equal(got.Options, c.want) || got.Type != c.in.Type || got.Source != c.in.Source {
				t.Fatalf("got %v %v %v, want options %v", got.Type, got.Source, got.Options, c.want)
			}
		})
	}
}

func TestWithTempMount(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: mounts")
	}
	t.Run("an overlay whose options exceed a page is mounted one lower directory at a time", func(t *testing.T) {
		base := lt.TempDir(t, "lm-")
		var lowers []string
		for i := range 80 {
			d := filepath.Join(base, fmt.Sprintf("a-rather-long-directory-name-for-layer-%03d", i), "fs")
			if err := os.MkdirAll(d, 0o755); err != nil {
				t.Fatal(err)
			}
			os.WriteFile(filepath.Join(d, fmt.Sprintf("f%03d", i)), []byte("x"), 0o644)
			lowers = append([]string{d}, lowers...)
		}
		opt := "lowerdir=" + strings.Join(lowers, ":")
		if len(opt) < os.Getpagesize() {
			t.Fatalf("options only %d bytes", len(opt))
		}
		ms := []*types.Mount{{Type: "overlay", Source: "overlay", Options: []string{opt}}}
		var root string
		err := WithTempMount(context.Background(), ReadOnly(ms), func(r string) error {
			root = r
			names, err := os.ReadDir(r)
			if err != nil {
				return err
			}
			if len(names) != 80 {
				return fmt.Errorf("merged tree has %d entries, want 80", len(names))
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(root); !os.IsNotExist(err) {
			t.Errorf("temporary mount point %s left behind (%v)", root, err)
		}
	})
	t.Run("a failing mount leaves nothing mounted", func(t *testing.T) {
		base := lt.TempDir(t, "fm-")
		ms := []*types.Mount{
			{Type: "bind", Source: base, Options: []string{"rbind"}},
			{Type: "bind", Source: filepath.Join(base, "missing"), Target: "x", Options: []string{"rbind"}},
		}
		err := WithTempMount(context.Background(), ms, func(string) error { return nil })
		if err == nil {
			t.Fatal("WithTempMount succeeded")
		}
		if m := lt.MountsUnder(os.TempDir()); slices.ContainsFunc(m, func(p string) bool { return strings.Contains(p, "flotilla-diff-") }) {
			t.Errorf("mounts left: %v", m)
		}
	})
}
