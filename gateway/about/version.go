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

// Version implements containerd's Version service with Flotilla's release
// and git revision.
type Version struct {
	api.UnimplementedVersionServer
}

// Version answers the build's version and revision.
func (Version) Version(context.Context, *emptypb.Empty) (*api.VersionResponse, error) {
	return &api.VersionResponse{Version: version.Version, Revision: version.Revision}, nil
}
