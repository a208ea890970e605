// Package transfer serves containerd's Transfer API from contentd: pull
// (an OCI registry into the image store, unpacked on the caller's node),
// push, tag, and import and export of archives through the Streaming API.
// Blobs go straight into contentd's own content store; progress goes back
// to the client on its progress stream in containerd's event format.
package transfer

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	transferapi "github.com/containerd/containerd/api/services/transfer/v1"
	transfertypes "github.com/containerd/containerd/api/types/transfer"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/flotilla/flotilla/contentd/content"
	"github.com/flotilla/flotilla/contentd/streaming"
)

// Images is the part of the Images API transfers record images through,
// so records made by a transfer publish the same events as any other.
type Images interface {
	Get(context.Context, *imagesapi.GetImageRequest) (*imagesapi.GetImageResponse, error)
	Create(context.Context, *imagesapi.CreateImageRequest) (*imagesapi.CreateImageResponse, error)
	Update(context.Context, *imagesapi.UpdateImageRequest) (*imagesapi.UpdateImageResponse, error)
}

// Config tunes transfers.
type Config struct {
	// HostsDir is the certs.d directory of hosts.toml files used when the
	// client names none.
	HostsDir string
	// StallTimeout fails a registry request that receives nothing for
	// this long, however long the whole transfer takes (0: 30s).
	StallTimeout time.Duration
	// MaxConcurrentDownloads bounds the blobs one pull fetches at once (0: 4).
	MaxConcurrentDownloads int
	// DefaultSnapshotter unpacks when the client names no snapshotter.
	DefaultSnapshotter string
}

// Service serves containerd.services.transfer.v1.Transfer.
type Service struct {
	transferapi.UnimplementedTransferServer
	cfg     Config
	content content.Store
	images  Images
	streams streaming.Getter
	nodes   Nodes
	fetch   *fetcher
	log     *slog.Logger
}

// New returns the Transfer service writing into store, recording images
// through images, finding client streams through streams and unpacking
// through the snapshotd of the caller's node found by nodes (nil: no
// unpack; asking for one is FailedPrecondition).
func New(cfg Config, store content.Store, images Images, streams streaming.Getter, nodes Nodes, log *slog.Logger) *Service {
	if cfg.StallTimeout <= 0 {
		cfg.StallTimeout = 30 * time.Second
	}
	if cfg.MaxConcurrentDownloads <= 0 {
		cfg.MaxConcurrentDownloads = 4
	}
	if cfg.DefaultSnapshotter == "" {
		cfg.DefaultSnapshotter = "overlayfs"
	}
	return &Service{cfg: cfg, content: store, images: images, streams: streams, nodes: nodes,
		fetch: &fetcher{store: store}, log: log}
}

// Transfer implements the Transfer API: it decodes the source and the
// destination and runs the transfer between their kinds.
func (s *Service) Transfer(ctx context.Context, req *transferapi.TransferRequest) (*emptypb.Empty, error) {
	src, err := decode(req.GetSource(), "source")
	if err != nil {
		return nil, err
	}
	dst, err := decode(req.GetDestination(), "destination")
	if err != nil {
		return nil, err
	}
	send := func(*transfertypes.Progress) {}
	if id := req.GetOptions().GetProgressStream(); id != "" {
		ps, err := s.streams.Get(ctx, id)
		if err != nil {
			return nil, fmt.Errorf("progress stream: %w", err)
		}
		defer ps.Close()
		send = func(p *transfertypes.Progress) {
			a, err := streaming.ToAny(p)
			if err == nil {
				err = ps.Send(a)
			}
			if err != nil {
				s.log.Debug("progress not sent", "event", p.Event, "name", p.Name, "error", err)
			}
		}
	}
	switch src := src.(type) {
	case *transfertypes.OCIRegistry:
		if dst, ok := dst.(*transfertypes.ImageStore); ok {
			return &emptypb.Empty{}, s.pull(ctx, src, dst, send)
		}
	case *transfertypes.ImageStore:
		switch dst := dst.(type) {
		case *transfertypes.OCIRegistry:
			return &emptypb.Empty{}, s.push(ctx, src, dst, send)
		case *transfertypes.ImageStore:
			return &emptypb.Empty{}, s.tag(ctx, src, dst)
		case *transfertypes.ImageExportStream:
			return &emptypb.Empty{}, s.export(ctx, src, dst, send)
		}
	case *transfertypes.ImageImportStream:
		if dst, ok := dst.(*transfertypes.ImageStore); ok {
			return &emptypb.Empty{}, s.importArchive(ctx, src, dst, send)
		}
	}
	return nil, fmt.Errorf("transfer from %s to %s: %w", req.GetSource().GetTypeUrl(), req.GetDestination().GetTypeUrl(), errdefs.ErrNotImplemented)
}

func decode(a *anypb.Any, what string) (any, error) {
	if a == nil {
		return nil, fmt.Errorf("%s is required: %w", what, errdefs.ErrInvalidArgument)
	}
	v, err := typeurl.UnmarshalAny(a)
	if err != nil {
		return nil, fmt.Errorf("%s of type %s: %v: %w", what, a.GetTypeUrl(), err, errdefs.ErrNotImplemented)
	}
	return v, nil
}
