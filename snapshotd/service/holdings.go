package service

import (
	"context"
	"fmt"
	"strings"

	"github.com/flotilla/flotilla/snapshotd/snapshotter"
)

// Backends is what Holdings needs of snapshotd's backends: their names and
// each by name.
type Backends interface {
	Resolver
	Names() []string
}

// Holdings lists, for Flotilla's Holdings API (services/holdings), every
// namespace in which any backend holds a snapshot: in containerd a
// snapshot's namespace is a namespace, so contentd lists these too. It
// reads every backend's snapshots; a backend that cannot be read fails the
// call, naming it.
func Holdings(backends Backends) func(context.Context) (map[string][]string, error) {
	return func(ctx context.Context) (map[string][]string, error) {
		held := map[string][]string{}
		for _, name := range backends.Names() {
			sn, err := backends.Get(name)
			if err != nil {
				return nil, err
			}
			err = sn.Walk(ctx, func(_ context.Context, info snapshotter.Info) error {
				// Keys are "<namespace>/<key>" (see Snapshots).
				if ns, _, ok := strings.Cut(info.Name, "/"); ok {
					held[ns] = []string{"snapshots"}
				}
				return nil
			})
			if err != nil {
				return nil, fmt.Errorf("snapshotter %q: walk snapshots: %w", name, err)
			}
		}
		return held, nil
	}
}
