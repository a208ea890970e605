// Package transfer is a client of containerd's Transfer API: pull, push,
// import and export are one Transfer call naming a source and a
// destination, with progress, archive data and registry credentials
// carried on Streaming API streams the call names by id.
package transfer

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	leasesapi "github.com/containerd/containerd/api/services/leases/v1"
	streamingapi "github.com/containerd/containerd/api/services/streaming/v1"
	transferapi "github.com/containerd/containerd/api/services/transfer/v1"
	"github.com/containerd/containerd/api/types"
	transfertypes "github.com/containerd/containerd/api/types/transfer"
	"github.com/containerd/typeurl/v2"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/flotilla/flotilla/flotctl/client"
)

// Progress is one progress report of a transfer, as the server sends it:
// Name is what it is about (a reference or a blob, empty for the transfer's
// overall status), Event what happened ("resolving", "downloading",
// "complete", "exists", "unpacking", …), Progress and Total bytes.
type Progress struct {
	Event    string
	Name     string
	Parents  []string
	Progress int64
	Total    int64
	Desc     *types.Descriptor
}

// Client starts transfers on one containerd API endpoint.
type Client struct {
	Transfer  transferapi.TransferClient
	Streaming streamingapi.StreamingClient
	// Leases, when set, holds each transfer under a lease of its own, as
	// the containerd client's Transfer does: the streams it names and what
	// it writes are then safe from a collection that runs meanwhile (a
	// server may collect an unleased stream before the Transfer call that
	// names it arrives).
	Leases leasesapi.LeasesClient
}

// leased returns ctx under a new lease when c.Leases is set, and its
// release.
func (c *Client) leased(ctx context.Context) (context.Context, func(), error) {
	if c.Leases == nil {
		return ctx, func() {}, nil
	}
	return client.WithLease(ctx, c.Leases)
}

// Registry is a source or destination in a registry.
type Registry struct {
	// Reference is the image's full reference, e.g. "localhost:5000/busybox:1".
	Reference string
	// PlainHTTP talks HTTP to the registry instead of HTTPS.
	PlainHTTP bool
	// HostDir is a directory of hosts.toml files (containerd's certs.d).
	HostDir string
}

// Store is a source or destination in the image store.
type Store struct {
	// Name is the image's name; empty with ExtraReferences naming them.
	Name   string
	Labels map[string]string
	// Platforms limits what is fetched or exported; empty means all.
	Platforms []ocispec.Platform
	// Unpack names the snapshotter to unpack into for each of Platforms
	// (empty: no unpack).
	Unpack string
	// AllMetadata fetches the manifests and configs of every platform.
	AllMetadata bool
	// ExtraReferences name the images an import creates or an export
	// includes.
	ExtraReferences []*transfertypes.ImageReference
}

func (r Registry) marshal() (*anypb.Any, error) {
	res := &transfertypes.RegistryResolver{HostDir: r.HostDir}
	if r.PlainHTTP {
		res.DefaultScheme = "http"
	}
	return typeurl.MarshalAnyToProto(&transfertypes.OCIRegistry{Reference: r.Reference, Resolver: res})
}

func (s Store) marshal() (*anypb.Any, error) {
	is := &transfertypes.ImageStore{
		Name: s.Name, Labels: s.Labels, AllMetadata: s.AllMetadata, ExtraReferences: s.ExtraReferences,
	}
	for _, p := range s.Platforms {
		tp := &types.Platform{OS: p.OS, Architecture: p.Architecture, Variant: p.Variant, OSVersion: p.OSVersion}
		is.Platforms = append(is.Platforms, tp)
		if s.Unpack != "" {
			is.Unpacks = append(is.Unpacks, &transfertypes.UnpackConfiguration{Platform: tp, Snapshotter: s.Unpack})
		}
	}
	return typeurl.MarshalAnyToProto(is)
}

// Pull fetches from into the image store, reporting to progress (may be nil).
func (c *Client) Pull(ctx context.Context, from Registry, to Store, progress func(Progress)) error {
	ctx, release, err := c.leased(ctx)
	if err != nil {
		return err
	}
	defer release()
	src, err := from.marshal()
	if err != nil {
		return err
	}
	dst, err := to.marshal()
	if err != nil {
		return err
	}
	return c.do(ctx, src, dst, progress)
}

// Push sends an image from the store to a registry.
func (c *Client) Push(ctx context.Context, from Store, to Registry, progress func(Progress)) error {
	ctx, release, err := c.leased(ctx)
	if err != nil {
		return err
	}
	defer release()
	src, err := from.marshal()
	if err != nil {
		return err
	}
	dst, err := to.marshal()
	if err != nil {
		return err
	}
	return c.do(ctx, src, dst, progress)
}

// Tag names an image of the store anew, through the server.
func (c *Client) Tag(ctx context.Context, from, to string) error {
	ctx, release, err := c.leased(ctx)
	if err != nil {
		return err
	}
	defer release()
	src, err := Store{Name: from}.marshal()
	if err != nil {
		return err
	}
	dst, err := Store{Name: to}.marshal()
	if err != nil {
		return err
	}
	return c.do(ctx, src, dst, nil)
}

// Import reads an OCI or Docker archive from r into the image store.
func (c *Client) Import(ctx context.Context, r io.Reader, to Store, progress func(Progress)) error {
	ctx, release, err := c.leased(ctx)
	if err != nil {
		return err
	}
	defer release()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	id := newStreamID("import")
	s, err := openStream(ctx, c.Streaming, id)
	if err != nil {
		return err
	}
	sent := make(chan error, 1)
	go func() { sent <- sendReader(ctx, s, r) }()
	src, err := typeurl.MarshalAnyToProto(&transfertypes.ImageImportStream{Stream: id})
	if err != nil {
		return err
	}
	dst, err := to.marshal()
	if err != nil {
		return err
	}
	if err := c.do(ctx, src, dst, progress); err != nil {
		return err
	}
	cancel()
	if err := <-sent; err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("import stream: %w", err)
	}
	return nil
}

// Export writes the images from (its Name or ExtraReferences) as an OCI
// archive to w; platforms limits it (empty: every platform).
//
// containerd's server does not end the export stream after the archive,
// and its data and the Transfer answer travel on different streams, so the
// end is found in the data itself: the tar's end-of-archive marker.
func (c *Client) Export(ctx context.Context, from Store, w io.Writer, platforms []ocispec.Platform, progress func(Progress)) error {
	ctx, release, err := c.leased(ctx)
	if err != nil {
		return err
	}
	defer release()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	id := newStreamID("export")
	s, err := openStream(ctx, c.Streaming, id)
	if err != nil {
		return err
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(receiveWriter(ctx, s, pw)) }()
	archived := make(chan error, 1)
	go func() {
		err := copyTar(w, pr)
		// Drain what may follow the marker so the receiver never blocks.
		go io.Copy(io.Discard, pr)
		archived <- err
	}()
	ies := &transfertypes.ImageExportStream{Stream: id, AllPlatforms: len(platforms) == 0}
	for _, p := range platforms {
		ies.Platforms = append(ies.Platforms, &types.Platform{OS: p.OS, Architecture: p.Architecture, Variant: p.Variant, OSVersion: p.OSVersion})
	}
	src, err := from.marshal()
	if err != nil {
		return err
	}
	dst, err := typeurl.MarshalAnyToProto(ies)
	if err != nil {
		return err
	}
	if err := c.do(ctx, src, dst, progress); err != nil {
		return err
	}
	select {
	case err := <-archived:
		if err != nil {
			return fmt.Errorf("export stream: %w", err)
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// copyTar copies one tar archive from r to w, up to and including its
// end-of-archive marker (two zero blocks, which tar.Reader reads both of
// before it answers io.EOF), and returns there.
func copyTar(w io.Writer, r io.Reader) error {
	tr := tar.NewReader(io.TeeReader(r, w))
	for {
		_, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if _, err := io.Copy(io.Discard, tr); err != nil {
			return err
		}
	}
}

// do makes the Transfer call, with a progress stream when progress is set.
// It returns once the call has ended and every progress report has been
// delivered.
func (c *Client) do(ctx context.Context, src, dst *anypb.Any, progress func(Progress)) error {
	req := &transferapi.TransferRequest{Source: src, Destination: dst, Options: &transferapi.TransferOptions{}}
	progressDone := make(chan struct{})
	if progress != nil {
		pctx, cancel := context.WithCancel(ctx)
		defer cancel()
		id := newStreamID("progress")
		s, err := openStream(pctx, c.Streaming, id)
		if err != nil {
			return err
		}
		req.Options.ProgressStream = id
		go func() {
			defer close(progressDone)
			for {
				a, err := s.recv()
				if err != nil {
					return
				}
				if p, ok := decode(a).(*transfertypes.Progress); ok {
					progress(Progress{Event: p.Event, Name: p.Name, Parents: p.Parents, Progress: p.Progress, Total: p.Total, Desc: p.Desc})
				}
			}
		}()
		defer func() {
			// The server ends the progress stream once the transfer is done,
			// after its last report; do not wait long for one that does not.
			select {
			case <-progressDone:
			case <-time.After(2 * time.Second):
			}
			cancel()
			<-progressDone
		}()
	} else {
		close(progressDone)
	}
	if _, err := c.Transfer.Transfer(ctx, req); err != nil {
		return err
	}
	return nil
}
