package snapshotter

import (
	"fmt"
	"strings"
	"time"

	"github.com/containerd/errdefs"

	"github.com/flotilla/flotilla/services/filters"
)

// Fields exposes info to containerd's filter syntax: kind, name, parent and
// labels.KEY (a key with dots may be quoted or written as further components).
func Fields(info Info) filters.AdapterFunc {
	return func(path []string) (string, bool) {
		if len(path) == 0 {
			return "", false
		}
		switch path[0] {
		case "kind":
			return info.Kind.String(), true
		case "name":
			return info.Name, true
		case "parent":
			return info.Parent, info.Parent != ""
		case "labels":
			if len(path) < 2 {
				return "", len(info.Labels) > 0
			}
			v, ok := info.Labels[strings.Join(path[1:], ".")]
			return v, ok
		}
		return "", false
	}
}

// ApplyUpdate changes current's labels the way Update's contract says, from
// the labels of update and fieldpaths, and sets Updated to now. It returns
// InvalidArgument for a fieldpath other than labels or labels.KEY.
func ApplyUpdate(current, update Info, now time.Time, fieldpaths ...string) (Info, error) {
	out := current
	out.Labels = make(map[string]string, len(current.Labels))
	for k, v := range current.Labels {
		out.Labels[k] = v
	}
	if len(fieldpaths) == 0 {
		fieldpaths = []string{"labels"}
	}
	for _, fp := range fieldpaths {
		if fp == "labels" {
			out.Labels = make(map[string]string, len(update.Labels))
			for k, v := range update.Labels {
				out.Labels[k] = v
			}
			continue
		}
		key, ok := strings.CutPrefix(fp, "labels.")
		if !ok || key == "" {
			return Info{}, fmt.Errorf("update %s: cannot update field %q of a snapshot (only labels and labels.KEY): %w",
				current.Name, fp, errdefs.ErrInvalidArgument)
		}
		if v, ok := update.Labels[key]; ok {
			out.Labels[key] = v
		} else {
			delete(out.Labels, key)
		}
	}
	if len(out.Labels) == 0 {
		out.Labels = nil
	}
	out.Updated = now
	return out, nil
}
