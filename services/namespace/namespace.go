// Package namespace carries the containerd namespace and lease of a call in
// its context. Servers read them from gRPC metadata once, in an interceptor;
// clients put them back into outgoing metadata, so a call made on behalf of
// another keeps its namespace and lease.
package namespace

import (
	"context"
	"fmt"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc/metadata"

	"github.com/flotilla/flotilla/services/identifiers"
)

const (
	// MetadataKey is the gRPC metadata key containerd clients send the namespace in.
	MetadataKey = "containerd-namespace"
	// LeaseMetadataKey is the gRPC metadata key containerd clients send the lease in.
	LeaseMetadataKey = "containerd-lease"
)

type namespaceKey struct{}
type leaseKey struct{}

// WithNamespace returns a context that carries namespace ns.
func WithNamespace(ctx context.Context, ns string) context.Context {
	return context.WithValue(ctx, namespaceKey{}, ns)
}

// FromContext returns the namespace carried by ctx, if any.
func FromContext(ctx context.Context) (string, bool) {
	ns, ok := ctx.Value(namespaceKey{}).(string)
	return ns, ok && ns != ""
}

// Required returns the namespace carried by ctx, or a FailedPrecondition
// error when the call did not name one, as containerd's
// namespaces.NamespaceRequired answers.
func Required(ctx context.Context) (string, error) {
	ns, ok := FromContext(ctx)
	if !ok || ns == "" {
		return "", fmt.Errorf("namespace is required (gRPC metadata %q): %w", MetadataKey, errdefs.ErrFailedPrecondition)
	}
	return ns, nil
}

// WithLease returns a context that carries lease id.
func WithLease(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, leaseKey{}, id)
}

// LeaseFromContext returns the lease carried by ctx, if any.
func LeaseFromContext(ctx context.Context) (string, bool) {
	id, ok := ctx.Value(leaseKey{}).(string)
	return id, ok && id != ""
}

// FromIncoming reads the namespace and lease of an incoming call into ctx.
// A namespace that breaks containerd's identifier rules is an InvalidArgument
// error; a missing one is left for the handler to require or not.
func FromIncoming(ctx context.Context) (context.Context, error) {
	md, ok := metadata.FromIncomingContext(ctx)
	if !ok {
		return ctx, nil
	}
	if v := md.Get(MetadataKey); len(v) > 0 {
		if err := identifiers.Validate(v[0]); err != nil {
			return ctx, fmt.Errorf("namespace: %w", err)
		}
		ctx = WithNamespace(ctx, v[0])
	}
	if v := md.Get(LeaseMetadataKey); len(v) > 0 && v[0] != "" {
		ctx = WithLease(ctx, v[0])
	}
	return ctx, nil
}

// ToOutgoing copies the namespace and lease carried by ctx into its outgoing
// gRPC metadata, replacing any already there.
func ToOutgoing(ctx context.Context) context.Context {
	md, _ := metadata.FromOutgoingContext(ctx)
	md = md.Copy()
	changed := false
	if ns, ok := FromContext(ctx); ok {
		md.Set(MetadataKey, ns)
		changed = true
	}
	if id, ok := LeaseFromContext(ctx); ok {
		md.Set(LeaseMetadataKey, id)
		changed = true
	}
	if !changed {
		return ctx
	}
	return metadata.NewOutgoingContext(ctx, md)
}
