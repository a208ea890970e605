package namespace

import (
	"context"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc/metadata"
)

func TestFromIncoming(t *testing.T) {
	t.Run("valid namespace and lease are read into the context", func(t *testing.T) {
		ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs(MetadataKey, "team-a", LeaseMetadataKey, "l1"))
		ctx, err := FromIncoming(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if ns, _ := FromContext(ctx); ns != "team-a" {
			t.Fatalf("namespace = %q, want team-a", ns)
		}
		if id, _ := LeaseFromContext(ctx); id != "l1" {
			t.Fatalf("lease = %q, want l1", id)
		}
	})
	t.Run("invalid namespace is InvalidArgument", func(t *testing.T) {
		for _, ns := range []string{"-bad", strings.Repeat("x", 77), "a/b"} {
			ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs(MetadataKey, ns))
			if _, err := FromIncoming(ctx); !errdefs.IsInvalidArgument(err) {
				t.Fatalf("FromIncoming(%q) = %v, want InvalidArgument", ns, err)
			}
		}
	})
	t.Run("missing namespace is required only when asked for", func(t *testing.T) {
		ctx, err := FromIncoming(metadata.NewIncomingContext(context.Background(), metadata.MD{}))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Required(ctx); !errdefs.IsFailedPrecondition(err) {
			t.Fatalf("Required = %v, want FailedPrecondition (as containerd's NamespaceRequired)", err)
		}
	})
}

func TestToOutgoing(t *testing.T) {
	ctx := WithLease(WithNamespace(context.Background(), "ns1"), "lease1")
	md, _ := metadata.FromOutgoingContext(ToOutgoing(ctx))
	if got := md.Get(MetadataKey); len(got) != 1 || got[0] != "ns1" {
		t.Fatalf("outgoing namespace = %v", got)
	}
	if got := md.Get(LeaseMetadataKey); len(got) != 1 || got[0] != "lease1" {
		t.Fatalf("outgoing lease = %v", got)
	}
}
