// Package transfer serves containerd's Transfer API from contentd: pull
// (an OCI registry into the image store, unpacked on the caller's node),
// push, tag, and import and export of archives through the Streaming API.
// Blobs go straight into contentd's own content store; progress goes back
// to the client on its progress stream in containerd's event format.
package transfer

import (
	"context"
	"fmt"
	"github.com/flotilla/flotilla/services/logging"
	"github.com/flotilla/flotilla/services/namespace"
	"io"
	"log/slog"
	"time"

	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	transferapi "github.com/containerd/containerd/api/services/transfer/v1"
	transfertypes "github.com/containerd/containerd/api/types/transfer"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	"github.com/opencontainers/go-digest"
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
	// MaxConcurrentDownloads bounds the registry requests one pull has
	// open at once, whole blobs and ranged parts alike (0: 4).
	MaxConcurrentDownloads int
	// FetchPartSize is the size of the ranged parts a blob larger than it
	// is fetched in, several at once, where the registry does ranges
	// (0: DefaultPartSize; negative: one request per blob).
	FetchPartSize int64
	// FetchParallelAfter is how long the first part of a larger blob may
	// take before the rest is fetched in parallel parts: a registry that
	// sends it faster is not the bottleneck, and gets the rest in one
	// more request (0: always in parallel parts).
	FetchParallelAfter time.Duration
	// DefaultSnapshotter unpacks when the client names no snapshotter.
	DefaultSnapshotter string
	// Leases, when set, holds what a pull or import writes while it runs
	// if its caller sent no lease (see Leases).
	Leases Leases
}

// Leases makes the lease a pull or import runs under when its caller gave
// none, as containerd's transfer service does: without one, a collection
// could take a blob or snapshot it wrote before the image that references
// it is recorded. The lease expires in a day and is deleted when the
// transfer ends, which lets a collection take what a failed one left.
type Leases interface {
	Create(ctx context.Context, expire time.Duration) (id string, err error)
	Delete(ctx context.Context, id string) error
}

// ownLeaseExpiry is how long a transfer's own lease lives if it is never
// deleted (contentd stopped midway), containerd's figure.
const ownLeaseExpiry = 24 * time.Hour

// withLease returns ctx under the caller's lease or, when it sent none,
// under a lease of the transfer's own, which end deletes. Pulls and imports
// write blobs and snapshots that nothing references until their image is
// recorded; the lease keeps a collection from taking them meanwhile.
func (s *Service) withLease(ctx context.Context) (_ context.Context, end func(), _ error) {
	if _, ok := namespace.LeaseFromContext(ctx); ok || s.cfg.Leases == nil {
		return ctx, func() {}, nil
	}
	id, err := s.cfg.Leases.Create(ctx, ownLeaseExpiry)
	if err != nil {
		return ctx, nil, fmt.Errorf("lease: %w", err)
	}
	return namespace.WithLease(ctx, id), func() {
		if err := s.cfg.Leases.Delete(context.WithoutCancel(ctx), id); err != nil && !errdefs.IsNotFound(err) {
			logging.Or(ctx, s.log).Warn("delete a transfer's own lease", "lease", id, "error", err)
		}
	}, nil
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
	if cfg.FetchPartSize == 0 {
		cfg.FetchPartSize = DefaultPartSize
	}
	if cfg.DefaultSnapshotter == "" {
		cfg.DefaultSnapshotter = "overlayfs"
	}
	return &Service{cfg: cfg, content: store, images: images, streams: streams, nodes: nodes,
		fetch: newFetcher(store, max(cfg.FetchPartSize, 0), cfg.FetchParallelAfter), log: log}
}

// Follow reads a blob a transfer of the context's namespace is fetching,
// as it arrives (see fetcher.Follow); the content service serves reads
// that ask to follow with it.
func (s *Service) Follow(ctx context.Context, dgst digest.Digest, offset int64) (io.ReadCloser, error) {
	return s.fetch.Follow(ctx, dgst, offset)
}

// Tail hands over where the bytes of a blob a transfer of the context's
// namespace is fetching are, as they arrive (see fetcher.Tail); the
// handoff server serves it to readers on this host.
func (s *Service) Tail(ctx context.Context, dgst digest.Digest, fn func(src io.ReaderAt, limit int64, whole bool) error) error {
	return s.fetch.Tail(ctx, dgst, fn)
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
		switch dst := dst.(type) {
		case *transfertypes.ImageStore:
			return &emptypb.Empty{}, s.importArchive(ctx, src, dst, send)
		case *transfertypes.ImageExportStream:
			return &emptypb.Empty{}, s.echo(ctx, src, dst)
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

// echo copies an import stream to an export stream as it is, as
// containerd's transfer service does for that pair (its TestTransferEcho):
// nothing is stored.
func (s *Service) echo(ctx context.Context, src *transfertypes.ImageImportStream, dst *transfertypes.ImageExportStream) error {
	in, err := s.streams.Get(ctx, src.GetStream())
	if err != nil {
		return fmt.Errorf("import stream: %w", err)
	}
	r := streaming.NewReader(in)
	defer r.Close()
	out, err := s.streams.Get(ctx, dst.GetStream())
	if err != nil {
		return fmt.Errorf("export stream: %w", err)
	}
	w := streaming.NewWriter(ctx, out)
	if _, err := io.Copy(w, r); err != nil {
		w.Close()
		return fmt.Errorf("echo: %w", err)
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("echo: %w", err)
	}
	return nil
}
