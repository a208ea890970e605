package transfer

import (
	"context"
	"fmt"

	transfertypes "github.com/containerd/containerd/api/types/transfer"
	"github.com/containerd/errdefs"
)

func (s *Service) push(ctx context.Context, src *transfertypes.ImageStore, dst *transfertypes.OCIRegistry, send func(*transfertypes.Progress)) error {
	return fmt.Errorf("push: %w", errdefs.ErrNotImplemented)
}

func (s *Service) export(ctx context.Context, src *transfertypes.ImageStore, dst *transfertypes.ImageExportStream, send func(*transfertypes.Progress)) error {
	return fmt.Errorf("export: %w", errdefs.ErrNotImplemented)
}

func (s *Service) importArchive(ctx context.Context, src *transfertypes.ImageImportStream, dst *transfertypes.ImageStore, send func(*transfertypes.Progress)) error {
	return fmt.Errorf("import: %w", errdefs.ErrNotImplemented)
}
