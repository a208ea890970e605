package transfer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"

	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	"github.com/containerd/containerd/api/types"
	transfertypes "github.com/containerd/containerd/api/types/transfer"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	orasregistry "oras.land/oras-go/v2/registry"

	"github.com/flotilla/flotilla/contentd/content"
	"github.com/flotilla/flotilla/contentd/registry"
)

// maxMetadata bounds the manifests, indexes and configs read into memory.
const maxMetadata = 8 << 20

// pull fetches src's image into the content store, unpacks it on the
// caller's node as the image store asks and records it under dst's names.
// On failure it leaves no image record and removes the blobs it wrote
// (an interrupted download stays as an ingest, to be resumed).
func (s *Service) pull(ctx context.Context, src *transfertypes.OCIRegistry, dst *transfertypes.ImageStore, send func(*transfertypes.Progress)) error {
	if err := s.mayUnpack(ctx, dst); err != nil {
		return err
	}
	ref, err := orasregistry.ParseReference(src.GetReference())
	if err != nil {
		return fmt.Errorf("image reference %q: %v: %w", src.GetReference(), err, errdefs.ErrInvalidArgument)
	}
	if ref.Reference == "" {
		ref.Reference = "latest"
	}
	opts, err := s.registryOptions(ctx, src)
	if err != nil {
		return err
	}
	name := src.GetReference()
	rep := newReporter(send, name)
	rep.status("Resolving from " + name)
	repos, err := registry.Repositories(ref, registry.CapResolve, opts)
	if err != nil {
		return err
	}
	defer func() {
		for _, r := range repos {
			r.Close()
		}
	}()
	var (
		repo *registry.Repository
		root ocispec.Descriptor
		errs []error
	)
	for _, r := range repos {
		root, err = r.Resolve(ctx, ref.Reference)
		if err == nil {
			repo = r
			break
		}
		errs = append(errs, fmt.Errorf("%s: %w", r.Endpoint.Host, classify(err)))
	}
	if repo == nil {
		return fmt.Errorf("resolve %s: %w", name, errors.Join(errs...))
	}
	if root.MediaType == mediaTypeDockerSchema1 {
		return fmt.Errorf("schema 1 image manifests are no longer supported: %w", errdefs.ErrInvalidArgument)
	}
	rep.status("Pulling from " + name)
	rep.named(eventFetching, name, &root)

	ctx, endLease, err := s.withLease(ctx)
	if err != nil {
		return fmt.Errorf("pull %s: %w", name, err)
	}
	defer endLease()
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	p, err := s.newPuller(ctx, cancel, dst, rep, repo)
	if err != nil {
		return err
	}
	p.distSource, p.repoPath = labelDistributionSrc+ref.Registry, ref.Repository
	// What a failed pull committed stays under its lease, for a
	// collection to take once the lease goes (as in containerd): removing
	// it here would take blobs that a concurrent pull of another image
	// has meanwhile come to use.
	err = p.pull(ctx, root)
	if err != nil {
		cancel(err)
		return err
	}
	imgs, err := s.storeImages(ctx, dst, root)
	if err != nil {
		return err
	}
	for _, img := range imgs {
		rep.named(eventSaved, img.GetName(), &root)
	}
	rep.status("Completed pull from " + name)
	return nil
}

// mayUnpack refuses, before any work is done, a transfer asking to unpack
// on a node its caller may not name (a client or another node's service
// calling contentd directly); whether that node can be reached is found
// when the unpack starts.
func (s *Service) mayUnpack(ctx context.Context, dst *transfertypes.ImageStore) error {
	if len(dst.GetUnpacks()) == 0 || s.nodes == nil {
		return nil
	}
	if _, err := s.nodes.Node(ctx); errdefs.IsPermissionDenied(err) {
		return err
	}
	return nil
}

// newPuller returns a puller of the platforms dst asks for, unpacking as
// it asks on the caller's node, whose work ends early through cancel (the
// cancel of ctx). repo is the registry to fetch from; nil walks blobs
// already in the store (an import). Asking to unpack when contentd knows
// no snapshotd is FailedPrecondition.
func (s *Service) newPuller(ctx context.Context, cancel context.CancelCauseFunc, dst *transfertypes.ImageStore, rep *reporter, repo *registry.Repository) (*puller, error) {
	p := &puller{s: s, repo: repo, local: repo == nil, rep: rep, allMetadata: dst.GetAllMetadata(),
		filter: platforms.All, cancel: cancel}
	if ps := dst.GetPlatforms(); len(ps) > 0 {
		var list []ocispec.Platform
		for _, pl := range ps {
			list = append(list, platformFromProto(pl))
		}
		p.filter = platforms.Ordered(list...)
	}
	for _, u := range dst.GetUnpacks() {
		sn := u.GetSnapshotter()
		if sn == "" {
			sn = s.cfg.DefaultSnapshotter
		}
		pl := platforms.DefaultSpec()
		if u.GetPlatform() != nil {
			pl = platformFromProto(u.GetPlatform())
		}
		p.unpacks = append(p.unpacks, unpackTarget{platform: pl, matcher: platforms.Only(pl), snapshotter: sn})
	}
	if len(p.unpacks) > 0 {
		if s.nodes == nil {
			return nil, fmt.Errorf("unpack asked, but contentd knows no snapshotd: %w", errdefs.ErrFailedPrecondition)
		}
		var err error
		if p.node, err = s.nodes.Node(ctx); err != nil {
			return nil, err
		}
	}
	// Every layer waits for a request slot at once; the slots go to the
	// layers in the order unpack needs them.
	p.layers, _ = errgroup.WithContext(ctx)
	p.slots = newSlots(s.cfg.MaxConcurrentDownloads)
	return p, nil
}

type unpackTarget struct {
	platform    ocispec.Platform
	matcher     platforms.MatchComparer
	snapshotter string
}

// puller walks one image, fetching blobs and unpacking manifests.
type puller struct {
	s           *Service
	repo        *registry.Repository
	rep         *reporter
	filter      platforms.MatchComparer
	allMetadata bool
	unpacks     []unpackTarget
	node        Node
	distSource  string
	repoPath    string
	layers      *errgroup.Group
	slots       *slots // the registry requests the pull may have open
	cancel      context.CancelCauseFunc
	// local walks blobs already in the store (an import) instead of
	// fetching them.
	local bool

	mu        sync.Mutex
	unpackers []*unpacker
	releases  []func() // end the wants of the unpackers' layers
}

func (p *puller) pull(ctx context.Context, root ocispec.Descriptor) error {
	return p.run(ctx, func(ctx context.Context) error { return p.walk(ctx, root, nil) })
}

// run runs walk, then waits for the layers it started and the unpacks.
func (p *puller) run(ctx context.Context, walk func(context.Context) error) error {
	walkErr := walk(ctx)
	layersErr := p.layers.Wait()
	if walkErr != nil {
		p.cancel(walkErr)
	} else if layersErr != nil {
		p.cancel(layersErr)
	}
	var unpackErr error
	for _, u := range p.unpackers {
		if err := <-u.done; err != nil && unpackErr == nil {
			unpackErr = err
		}
	}
	for _, release := range p.releases {
		release()
	}
	switch {
	case walkErr != nil:
		return walkErr
	case layersErr != nil:
		return layersErr
	}
	return unpackErr
}

// walk fetches desc and what it refers to. targets are the unpacks desc
// was chosen for by its index (nil for the image's root).
func (p *puller) walk(ctx context.Context, desc ocispec.Descriptor, targets []unpackTarget) error {
	switch {
	case isIndex(desc.MediaType):
		data, err := p.fetchMetadata(ctx, desc, nil)
		if err != nil {
			return err
		}
		var idx ocispec.Index
		if err := json.Unmarshal(data, &idx); err != nil {
			return fmt.Errorf("index %s: %v: %w", desc.Digest, err, errdefs.ErrInvalidArgument)
		}
		var children []ocispec.Descriptor
		for _, m := range idx.Manifests {
			if p.allMetadata || m.Platform == nil || p.filter.Match(*m.Platform) {
				children = append(children, m)
			}
		}
		// Each unpack takes the best manifest for its platform.
		chosen := map[digest.Digest][]unpackTarget{}
		for _, t := range p.unpacks {
			best := -1
			for i, m := range children {
				if m.Platform == nil || !isManifest(m.MediaType) || !t.matcher.Match(*m.Platform) || !p.filter.Match(*m.Platform) {
					continue
				}
				if best < 0 || t.matcher.Less(*m.Platform, *children[best].Platform) {
					best = i
				}
			}
			if best >= 0 {
				chosen[children[best].Digest] = append(chosen[children[best].Digest], t)
			}
		}
		labels := map[string]string{}
		for i, c := range children {
			labels[labelGCContentManifest+strconv.Itoa(i)] = c.Digest.String()
		}
		if err := p.s.fetch.addLabels(ctx, desc, labels); err != nil {
			return err
		}
		p.rep.children(desc, children)
		for _, c := range children {
			if err := p.walk(ctx, c, chosen[c.Digest]); err != nil {
				return err
			}
		}
		return nil
	case isManifest(desc.MediaType):
		return p.manifest(ctx, desc, targets)
	default:
		return fmt.Errorf("cannot pull %s of media type %q: %w", desc.Digest, desc.MediaType, errdefs.ErrNotImplemented)
	}
}

func (p *puller) manifest(ctx context.Context, desc ocispec.Descriptor, targets []unpackTarget) error {
	data, err := p.fetchMetadata(ctx, desc, nil)
	if err != nil {
		return err
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return fmt.Errorf("manifest %s: %v: %w", desc.Digest, err, errdefs.ErrInvalidArgument)
	}
	p.rep.children(desc, append([]ocispec.Descriptor{m.Config}, m.Layers...))
	cfgData, err := p.fetchMetadata(ctx, m.Config, desc.Platform)
	if err != nil {
		return err
	}
	// Layers only of manifests for the platforms asked for.
	wantLayers := desc.Platform == nil || p.filter.Match(*desc.Platform)
	var img ocispec.Image
	if isConfig(m.Config.MediaType) {
		if err := json.Unmarshal(cfgData, &img); err != nil {
			return fmt.Errorf("image config %s: %v: %w", m.Config.Digest, err, errdefs.ErrInvalidArgument)
		}
	}
	if desc.Platform == nil && targets == nil && img.OS != "" {
		// A single manifest: unpack for the targets its config matches.
		pl := ocispec.Platform{OS: img.OS, Architecture: img.Architecture, Variant: img.Variant, OSVersion: img.OSVersion}
		wantLayers = p.filter.Match(pl) || len(p.unpacks) > 0
		for _, t := range p.unpacks {
			if t.matcher.Match(pl) {
				targets = append(targets, t)
			}
		}
	}
	labels := map[string]string{labelGCContentConfig: m.Config.Digest.String()}
	if wantLayers {
		for i, l := range m.Layers {
			labels[labelGCContentLayer+strconv.Itoa(i)] = l.Digest.String()
		}
	}
	if err := p.s.fetch.addLabels(ctx, desc, labels); err != nil {
		return err
	}
	if !wantLayers {
		return nil
	}
	var unpackers []*unpacker
	if len(targets) > 0 && !p.local {
		// The unpackers follow the layers as they download.
		dgsts := make([]digest.Digest, len(m.Layers))
		for i, l := range m.Layers {
			dgsts[i] = l.Digest
		}
		release := p.s.fetch.want(ctx, dgsts...)
		p.mu.Lock()
		p.releases = append(p.releases, release)
		p.mu.Unlock()
	}
	for _, t := range targets {
		u, err := newUnpacker(p.node, t.snapshotter, p.s.content, m.Config, img, m.Layers, p.rep)
		if err != nil {
			return err
		}
		unpackers = append(unpackers, u)
		p.mu.Lock()
		p.unpackers = append(p.unpackers, u)
		p.mu.Unlock()
		go u.run(ctx)
	}
	for _, l := range m.Layers {
		p.rep.blob(eventWaiting, l, 0)
	}
	for i, l := range m.Layers {
		p.layers.Go(func() error {
			// Rank 0 is the manifests' and configs'.
			if err := p.fetchBlob(ctx, l, i+1); err != nil {
				return err
			}
			for _, u := range unpackers {
				u.layerReady(i)
			}
			return nil
		})
	}
	return nil
}

// fetchBlob fetches one blob, reporting its progress; blobs of a lower
// rank get the registry first.
func (p *puller) fetchBlob(ctx context.Context, desc ocispec.Descriptor, rank int) error {
	if err := context.Cause(ctx); err != nil {
		return err
	}
	if p.local {
		if _, err := p.s.content.Info(ctx, desc.Digest); err != nil {
			return fmt.Errorf("archive lacks %s: %w", desc.Digest, err)
		}
		return nil
	}
	how, err := p.s.fetch.fetch(ctx, p.repo, desc, map[string]string{p.distSource: p.repoPath}, order{p.slots, rank}, func(n int64) {
		p.rep.blob(eventDownloading, desc, n)
	})
	if err != nil {
		return err
	}
	switch how {
	case fetchedNew:
		p.rep.blob(eventComplete, desc, desc.Size)
	case fetchedExists:
		p.rep.blob(eventExists, desc, desc.Size)
	}
	return nil
}

// fetchMetadata fetches a manifest, index or config and returns its bytes.
func (p *puller) fetchMetadata(ctx context.Context, desc ocispec.Descriptor, _ *ocispec.Platform) ([]byte, error) {
	if desc.Size > maxMetadata {
		return nil, fmt.Errorf("%s is %d bytes, more than the %d a manifest or config may have: %w", desc.Digest, desc.Size, maxMetadata, errdefs.ErrInvalidArgument)
	}
	p.rep.blob(eventWaiting, desc, 0)
	if err := p.fetchBlob(ctx, desc, 0); err != nil {
		return nil, err
	}
	return readBlob(ctx, p.s.content, desc)
}

func readBlob(ctx context.Context, store content.Provider, desc ocispec.Descriptor) ([]byte, error) {
	ra, err := store.ReaderAt(ctx, desc.Digest)
	if err != nil {
		return nil, err
	}
	defer ra.Close()
	if ra.Size() > maxMetadata {
		return nil, fmt.Errorf("%s is too large to read as metadata: %w", desc.Digest, errdefs.ErrInvalidArgument)
	}
	data := make([]byte, ra.Size())
	if _, err := ra.ReadAt(data, 0); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return data, nil
}

// storeImages records root under the image store's names, as containerd's
// image store does: create, or update an existing record.
func (s *Service) storeImages(ctx context.Context, is *transfertypes.ImageStore, root ocispec.Descriptor) ([]*imagesapi.Image, error) {
	names := []string{}
	if is.GetName() != "" {
		names = append(names, is.GetName())
	}
	for _, r := range is.GetExtraReferences() {
		if r.GetIsPrefix() && !r.GetAddDigest() {
			continue
		}
		n := r.GetName()
		if r.GetAddDigest() {
			n = n + "@" + root.Digest.String()
		}
		names = append(names, n)
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("no image name to store %s under: %w", root.Digest, errdefs.ErrInvalidArgument)
	}
	var out []*imagesapi.Image
	for _, n := range names {
		img, err := s.putImage(ctx, &imagesapi.Image{Name: n, Labels: is.GetLabels(), Target: descToProto(root)})
		if err != nil {
			return nil, err
		}
		out = append(out, img)
	}
	return out, nil
}

// putImage creates img or, if its name is taken, points it at img's target
// with img's labels.
func (s *Service) putImage(ctx context.Context, img *imagesapi.Image) (*imagesapi.Image, error) {
	for {
		created, err := s.images.Create(ctx, &imagesapi.CreateImageRequest{Image: img})
		if err == nil {
			return created.GetImage(), nil
		}
		if !errdefs.IsAlreadyExists(err) {
			return nil, err
		}
		updated, err := s.images.Update(ctx, &imagesapi.UpdateImageRequest{Image: img,
			UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"labels", "target"}}})
		if err == nil {
			return updated.GetImage(), nil
		}
		if !errdefs.IsNotFound(err) {
			return nil, err
		}
		// Deleted meanwhile: create it again.
	}
}

func platformFromProto(p *types.Platform) ocispec.Platform {
	return ocispec.Platform{OS: p.GetOS(), Architecture: p.GetArchitecture(), Variant: p.GetVariant(), OSVersion: p.GetOsVersion()}
}

// registryOptions turns the client's resolver settings into registry
// options, asking the client's auth stream for credentials.
func (s *Service) registryOptions(ctx context.Context, r *transfertypes.OCIRegistry) (registry.Options, error) {
	o := registry.Options{HostsDir: s.cfg.HostsDir, Stall: s.cfg.StallTimeout}
	res := r.GetResolver()
	if res == nil {
		return o, nil
	}
	if res.GetHostDir() != "" {
		o.HostsDir = res.GetHostDir()
	}
	o.DefaultScheme = res.GetDefaultScheme()
	if len(res.GetHeaders()) > 0 {
		o.Header = http.Header{}
		for k, v := range res.GetHeaders() {
			o.Header.Set(k, v)
		}
	}
	if id := res.GetAuthStream(); id != "" {
		st, err := s.streams.Get(ctx, id)
		if err != nil {
			return o, fmt.Errorf("auth stream: %w", err)
		}
		o.Credentials = askClient(st, r.GetReference())
	}
	return o, nil
}
