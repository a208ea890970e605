package imagekit

import (
	"context"
	"fmt"

	"github.com/containerd/errdefs"
	"oras.land/oras-go/v2/registry"
	"oras.land/oras-go/v2/registry/remote"
)

// Push uploads the image to ref ("127.0.0.1:5000/busybox:1") over plain HTTP, with no
// authentication — it is meant for the test registries [StartRegistry] runs. Blobs the
// repository already has are skipped; child manifests go by digest, and the root manifest or
// index is pushed last under the reference's tag. Layers are streamed from where they are kept.
func (img *Image) Push(ctx context.Context, ref string) error {
	parsed, err := registry.ParseReference(ref)
	if err != nil {
		return fmt.Errorf("push %s: %v: %w", ref, err, errdefs.ErrInvalidArgument)
	}
	tag := parsed.Reference
	if tag == "" {
		return fmt.Errorf("push %s: reference has no tag: %w", ref, errdefs.ErrInvalidArgument)
	}
	repo, err := remote.NewRepository(parsed.Registry + "/" + parsed.Repository)
	if err != nil {
		return fmt.Errorf("push %s: %w", ref, err)
	}
	repo.PlainHTTP = true
	for _, b := range img.Blobs {
		if b.Descriptor.Digest == img.Target.Digest {
			continue
		}
		if err := pushBlob(ctx, repo, b); err != nil {
			return fmt.Errorf("push %s: %w", ref, err)
		}
	}
	root, ok := img.Blob(img.Target.Digest)
	if !ok {
		return fmt.Errorf("push %s: image has no blob for its target %s: %w", ref, img.Target.Digest, errdefs.ErrNotFound)
	}
	r, err := root.Open()
	if err != nil {
		return fmt.Errorf("push %s: %w", ref, err)
	}
	defer r.Close()
	if err := repo.PushReference(ctx, img.Target, r, tag); err != nil {
		return fmt.Errorf("push %s: manifest %s: %w", ref, img.Target.Digest, err)
	}
	return nil
}

func pushBlob(ctx context.Context, repo *remote.Repository, b Blob) error {
	exists, err := repo.Exists(ctx, b.Descriptor)
	if err != nil {
		return fmt.Errorf("check %s: %w", b.Descriptor.Digest, err)
	}
	if exists {
		return nil
	}
	r, err := b.Open()
	if err != nil {
		return err
	}
	defer r.Close()
	if err := repo.Push(ctx, b.Descriptor, r); err != nil {
		return fmt.Errorf("upload %s (%s): %w", b.Descriptor.Digest, b.Descriptor.MediaType, err)
	}
	return nil
}
