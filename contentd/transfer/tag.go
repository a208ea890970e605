package transfer

import (
	"context"
	"fmt"

	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	transfertypes "github.com/containerd/containerd/api/types/transfer"
	"github.com/containerd/errdefs"
)

// tag records the image src names under dst's names, as containerd's
// transfer service tags: ImageStore to ImageStore.
func (s *Service) tag(ctx context.Context, src, dst *transfertypes.ImageStore) error {
	img, err := s.sourceImage(ctx, src)
	if err != nil {
		return err
	}
	_, err = s.storeImages(ctx, dst, descFromProto(img.GetTarget()))
	return err
}

// sourceImage is the image an ImageStore source names.
func (s *Service) sourceImage(ctx context.Context, src *transfertypes.ImageStore) (*imagesapi.Image, error) {
	if src.GetName() == "" {
		return nil, fmt.Errorf("source image name is required: %w", errdefs.ErrInvalidArgument)
	}
	resp, err := s.images.Get(ctx, &imagesapi.GetImageRequest{Name: src.GetName()})
	if err != nil {
		return nil, fmt.Errorf("image %q: %w", src.GetName(), err)
	}
	return resp.GetImage(), nil
}
