package integration

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/content/testsuite"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
)

// TestContainerdContentSuite runs containerd's own content store suite
// (core/content/testsuite, as its TestContentClient does) through the 2.x
// Go client's content store, on Flotilla and containerd 1.6: every case,
// each in a namespace of its own under a lease.
func TestContainerdContentSuite(t *testing.T) {
	for _, kind := range clientBackends {
		t.Run(kind.name, func(t *testing.T) {
			b := kind.start(t)
			client, err := containerd.New(b.Socket)
			if err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			testsuite.ContentSuite(t, "ContentClient", func(ctx context.Context, root string) (context.Context, content.Store, func() error, error) {
				var count atomic.Uint64
				cs := client.ContentStore()
				name := testsuite.Name(ctx)
				ctx = testsuite.SetContextWrapper(ctx, func(ctx context.Context, _ bool) (context.Context, func(context.Context) error, error) {
					ctx = namespaces.WithNamespace(ctx, fmt.Sprintf("%s-n%d", name, count.Add(1)))
					return client.WithLease(ctx)
				})
				cleanup := func() error {
					for i := uint64(1); i <= count.Load(); i++ {
						ctx := namespaces.WithNamespace(ctx, fmt.Sprintf("%s-n%d", name, i))
						statuses, err := cs.ListStatuses(ctx)
						if err != nil {
							return err
						}
						for _, st := range statuses {
							err := cs.Abort(ctx, st.Ref)
							if err != nil && !errdefs.IsNotFound(err) {
								// containerd 1.6's collection, run when the
								// case's lease went, may be removing the
								// ingest at the same moment (unlinkat:
								// directory not empty): what counts is
								// that it ends up gone.
								if _, serr := cs.Status(ctx, st.Ref); errdefs.IsNotFound(serr) {
									continue
								}
								if err = cs.Abort(ctx, st.Ref); err != nil && !errdefs.IsNotFound(err) {
									return fmt.Errorf("abort %s: %w", st.Ref, err)
								}
							}
						}
					}
					return nil
				}
				return ctx, cs, cleanup, nil
			})
		})
	}
}
