package client

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"time"

	leasesapi "github.com/containerd/containerd/api/services/leases/v1"

	"github.com/flotilla/flotilla/services/namespace"
)

// WithLease creates a lease on leases that expires by itself after an hour
// (should flotctl die before deleting it) and returns ctx carrying it, and
// a release that deletes it. What a call makes under it (a container's
// snapshot, a transfer's stream and blobs) is safe from a collection until
// the caller has referenced it, as with the containerd client's WithLease.
func WithLease(ctx context.Context, leases leasesapi.LeasesClient) (context.Context, func(), error) {
	b := make([]byte, 6)
	rand.Read(b)
	id := "flotctl-" + hex.EncodeToString(b)
	_, err := leases.Create(ctx, &leasesapi.CreateRequest{ID: id, Labels: map[string]string{
		"containerd.io/gc.expire": time.Now().Add(time.Hour).UTC().Format(time.RFC3339),
	}})
	if err != nil {
		return nil, nil, fmt.Errorf("create lease: %w", err)
	}
	release := func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		leases.Delete(cctx, &leasesapi.DeleteRequest{ID: id})
	}
	return namespace.WithLease(ctx, id), release, nil
}
