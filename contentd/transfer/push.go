package transfer

import (
	"context"
	"fmt"
	"io"

	transfertypes "github.com/containerd/containerd/api/types/transfer"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	orasregistry "oras.land/oras-go/v2/registry"

	"github.com/flotilla/flotilla/contentd/registry"
)

// push uploads the image src names, and everything it refers to that
// matches src's platforms, to the registry dst names, blobs before the
// manifests that refer to them and the root last, under dst's tag.
func (s *Service) push(ctx context.Context, src *transfertypes.ImageStore, dst *transfertypes.OCIRegistry, send func(*transfertypes.Progress)) error {
	img, err := s.sourceImage(ctx, src)
	if err != nil {
		return err
	}
	root := descFromProto(img.GetTarget())
	ref, err := orasregistry.ParseReference(dst.GetReference())
	if err != nil {
		return fmt.Errorf("image reference %q: %v: %w", dst.GetReference(), err, errdefs.ErrInvalidArgument)
	}
	opts, err := s.registryOptions(ctx, dst)
	if err != nil {
		return err
	}
	repos, err := registry.Repositories(ref, registry.CapPush, opts)
	if err != nil {
		return err
	}
	defer func() {
		for _, r := range repos {
			r.Close()
		}
	}()
	repo := repos[0]
	var match platforms.Matcher
	if ps := src.GetPlatforms(); len(ps) > 0 {
		var list []ocispec.Platform
		for _, p := range ps {
			list = append(list, platformFromProto(p))
		}
		match = platforms.Any(list...)
	}
	rep := newReporter(send, img.GetName())
	rep.status("Pushing to " + dst.GetReference())
	rep.named(eventPushing, img.GetName(), &root)
	seen := map[string]bool{}
	err = walkStored(ctx, s.content, root, match, seen, func(d ocispec.Descriptor) error {
		if d.Digest == root.Digest {
			return nil
		}
		return s.pushBlob(ctx, repo, d, "", rep)
	})
	if err != nil {
		return err
	}
	tag := ref.Reference
	if _, derr := ref.Digest(); derr == nil {
		tag = ""
	}
	if err := s.pushBlob(ctx, repo, root, tag, rep); err != nil {
		return err
	}
	rep.named(eventPushed, img.GetName(), &root)
	rep.status("Completed push to " + dst.GetReference())
	return nil
}

// pushBlob uploads one blob unless the registry has it; with tag, the
// manifest is pushed (again) under that tag.
func (s *Service) pushBlob(ctx context.Context, repo *registry.Repository, d ocispec.Descriptor, tag string, rep *reporter) error {
	if tag == "" {
		exists, err := repo.Exists(ctx, d)
		if err != nil {
			return fmt.Errorf("push %s to %s: %w", d.Digest, repo.Endpoint.Host, classify(err))
		}
		if exists {
			rep.blob(eventExists, d, d.Size)
			return nil
		}
	}
	ra, err := s.content.ReaderAt(ctx, d.Digest)
	if err != nil {
		return fmt.Errorf("push %s: %w", d.Digest, err)
	}
	defer ra.Close()
	r := &countingReader{r: io.NewSectionReader(ra, 0, ra.Size()), fn: func(n int64) { rep.blob(eventUploading, d, n) }}
	if tag != "" {
		err = repo.PushReference(ctx, d, r, tag)
	} else {
		err = repo.Push(ctx, d, r)
	}
	if err != nil {
		return fmt.Errorf("push %s to %s: %w", d.Digest, repo.Endpoint.Host, classify(err))
	}
	rep.blob(eventComplete, d, d.Size)
	return nil
}

type countingReader struct {
	r  io.Reader
	n  int64
	fn func(int64)
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	if n > 0 {
		c.fn(c.n)
	}
	return n, err
}
