// Package mount reads and mounts the containerd mount lists (types.Mount)
// that the diff service is handed, for as long as one operation needs them.
// The mounting itself is the kit's (services/mount).
package mount

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/containerd/containerd/api/types"

	"github.com/flotilla/flotilla/services/mount"
)

// Overlay reads an overlay mount's directories: its upper directory ("" for
// a read-only overlay) and its lower ones, topmost first. ok is false for
// any other mount.
func Overlay(m *types.Mount) (upper string, lowers []string, ok bool) {
	if m == nil || m.GetType() != "overlay" {
		return "", nil, false
	}
	for _, o := range m.GetOptions() {
		switch k, v, _ := strings.Cut(o, "="); k {
		case "upperdir":
			upper = v
		case "lowerdir":
			lowers = strings.Split(v, ":")
		}
	}
	return upper, lowers, true
}

// Bind tells whether m is a bind mount, and whether it is read-only.
func Bind(m *types.Mount) (bind, readonly bool) {
	if m == nil {
		return false, false
	}
	bind = m.GetType() == "bind" || m.GetType() == "rbind"
	for _, o := range m.GetOptions() {
		switch o {
		case "bind", "rbind":
			bind = true
		case "ro":
			readonly = true
		}
	}
	return bind, readonly
}

// ReadOnly returns ms changed to mount read-only: "ro" on every mount, and
// an overlay's upper directory turned into its topmost lower one (without
// a work directory), so a mount in use elsewhere can be looked at while it
// stays mounted.
func ReadOnly(ms []*types.Mount) []*types.Mount {
	out := make([]*types.Mount, 0, len(ms))
	for _, m := range ms {
		var opts []string
		if upper, lowers, ok := Overlay(m); ok {
			if upper != "" {
				lowers = append([]string{upper}, lowers...)
			}
			for _, o := range m.GetOptions() {
				k, _, _ := strings.Cut(o, "=")
				if k != "upperdir" && k != "workdir" && k != "lowerdir" && o != "rw" {
					opts = append(opts, o)
				}
			}
			opts = append(opts, "lowerdir="+strings.Join(lowers, ":"))
		} else {
			for _, o := range m.GetOptions() {
				if o != "rw" {
					opts = append(opts, o)
				}
			}
		}
		if !slices.Contains(opts, "ro") {
			opts = append(opts, "ro")
		}
		out = append(out, &types.Mount{Type: m.GetType(), Source: m.GetSource(), Target: m.GetTarget(), Options: opts})
	}
	return out
}

// WithTempMount mounts ms, in order, on a new private directory, calls fn
// with it, and unmounts and removes the directory whatever fn returns.
func WithTempMount(ctx context.Context, ms []*types.Mount, fn func(root string) error) (err error) {
	dir, err := os.MkdirTemp("", "flotilla-diff-")
	if err != nil {
		return fmt.Errorf("temporary mount point: %w", err)
	}
	if err := mount.All(ms, dir); err != nil {
		os.Remove(dir) // All unmounted what it mounted
		return err
	}
	defer func() {
		if uerr := mount.UnmountAll(ms, dir); uerr != nil {
			err = errors.Join(err, uerr)
			return // never remove a directory something may still be mounted on
		}
		os.Remove(dir)
	}()
	return fn(dir)
}
