// Package node carries the name of the node a call came in through. The
// gateway of each node adds it to every call it relays, as gRPC metadata
// under MetadataKey (replacing anything a caller sent there); a service
// that acts on a node's behalf — contentd unpacking a pulled image with that
// node's snapshotd — reads it back with FromIncoming. A call that did not
// come through a gateway names no node.
package node

import (
	"context"

	"google.golang.org/grpc/metadata"
)

// MetadataKey is the gRPC metadata key naming the caller's node.
const MetadataKey = "flotilla-node"

// FromIncoming returns the node named by an incoming call's metadata, and
// whether it names one.
func FromIncoming(ctx context.Context) (string, bool) {
	md, ok := metadata.FromIncomingContext(ctx)
	if !ok {
		return "", false
	}
	v := md.Get(MetadataKey)
	if len(v) == 0 || v[0] == "" {
		return "", false
	}
	return v[0], true
}
