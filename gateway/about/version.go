// Package about holds the services through which the gateway describes the
// stack it fronts, answered by the gateway itself rather than routed:
// containerd's Version and Introspection, and Flotilla's Stack status.
package about

import (
	"context"

	api "github.com/containerd/containerd/api/services/version/v1"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/flotilla/flotilla/services/version"
)

// Version implements containerd's Version service: the containerd API level
// Flotilla serves as a semver, Flotilla's release and revision in its build
// metadata (version.Containerd), and Flotilla's git revision.
type Version struct {
	api.UnimplementedVersionServer
}

// Version answers version.Containerd() and the build's revision.
func (Version) Version(context.Context, *emptypb.Empty) (*api.VersionResponse, error) {
	return &api.VersionResponse{Version: version.Containerd(), Revision: version.Revision}, nil
}
