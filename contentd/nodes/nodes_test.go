package nodes

import (
	"context"
	"testing"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc/metadata"

	"github.com/flotilla/flotilla/services/dial"
	"github.com/flotilla/flotilla/services/node"
)

func from(name string) context.Context {
	if name == "" {
		return context.Background()
	}
	return metadata.NewIncomingContext(context.Background(), metadata.Pairs(node.MetadataKey, name))
}

func TestNodeFollowsTheCallersNode(t *testing.T) {
	n := NewStatic(&dial.Dialer{}, map[string]string{"node-a": "/run/a/snapshotd.sock", "node-b": "/run/b/snapshotd.sock"}, "/run/default.sock")
	defer n.Close()
	for _, tc := range []struct{ caller, want string }{
		{"node-a", "node-a"},
		{"node-b", "node-b"},
		{"", "default"},
		{"node-c", "node-c"}, // not in the table: the default snapshotd serves it
	} {
		got, err := n.Node(from(tc.caller))
		if err != nil {
			t.Fatalf("caller %q: %v", tc.caller, err)
		}
		if got.Name != tc.want || got.Snapshots == nil || got.Diff == nil {
			t.Errorf("caller %q: node %q, want %q with clients", tc.caller, got.Name, tc.want)
		}
	}
	if len(n.conns) != 3 {
		t.Errorf("%d connections for 3 distinct snapshotd addresses", len(n.conns))
	}
}

func TestNodeWithoutSnapshotd(t *testing.T) {
	n := NewStatic(&dial.Dialer{}, map[string]string{"node-a": "/run/a.sock"}, "")
	defer n.Close()
	if _, err := n.Node(from("node-x")); !errdefs.IsNotFound(err) {
		t.Errorf("unknown node without a default: %v, want NotFound", err)
	}
	if _, err := n.Node(from("")); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("no node and no default: %v, want FailedPrecondition", err)
	}
}
