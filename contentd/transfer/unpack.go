package transfer

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"time"

	diffapi "github.com/containerd/containerd/api/services/diff/v1"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/flotilla/flotilla/contentd/content"
	"github.com/flotilla/flotilla/services/contentclient"
	"github.com/flotilla/flotilla/services/namespace"
)

// Labels containerd's unpacker sets, which GC and clients read.
const (
	labelUncompressed      = "containerd.io/uncompressed"
	labelSnapshotRef       = "containerd.io/snapshot.ref"
	labelSnapshotDiffID    = "containerd.io/snapshot/diff-id"
	labelSnapshotParent    = "containerd.io/snapshot/parent-chain-id"
	labelGCSnapshotPrefix  = "containerd.io/gc.ref.snapshot."
	labelDistributionSrc   = "containerd.io/distribution.source."
	labelGCContentConfig   = "containerd.io/gc.ref.content.config"
	labelGCContentLayer    = "containerd.io/gc.ref.content.l."
	labelGCContentManifest = "containerd.io/gc.ref.content.m."
)

// Node is the snapshotd of one node, which unpacks images for calls that
// came through that node's gateway.
type Node struct {
	Name      string
	Snapshots snapshotsapi.SnapshotsClient
	Diff      diffapi.DiffClient
}

// Nodes finds the node a call came through.
type Nodes interface {
	// Node returns the node the call in ctx came through (its gateway
	// names it in the call's metadata), or the default node when the call
	// names none. An unknown node is NotFound; no snapshotd configured at
	// all is FailedPrecondition.
	Node(ctx context.Context) (Node, error)
}

// unpacker applies the layers of one manifest onto snapshots of a node, in
// order, each as soon as its blob is in the content store, so unpacking
// overlaps the download of the layers above it.
type unpacker struct {
	node        Node
	snapshotter string
	store       content.Manager
	config      ocispec.Descriptor
	layers      []ocispec.Descriptor
	diffIDs     []digest.Digest
	ready       []chan struct{} // closed once layer i's blob is committed
	rep         *reporter
	done        chan error
}

func newUnpacker(node Node, snapshotter string, store content.Manager, config ocispec.Descriptor, img ocispec.Image, layers []ocispec.Descriptor, rep *reporter) (*unpacker, error) {
	if len(img.RootFS.DiffIDs) != len(layers) {
		return nil, fmt.Errorf("image config %s lists %d diff IDs for %d layers: %w",
			config.Digest, len(img.RootFS.DiffIDs), len(layers), errdefs.ErrInvalidArgument)
	}
	u := &unpacker{node: node, snapshotter: snapshotter, store: store, config: config, layers: layers,
		diffIDs: img.RootFS.DiffIDs, rep: rep, done: make(chan error, 1)}
	for range layers {
		u.ready = append(u.ready, make(chan struct{}))
	}
	return u, nil
}

// layerReady tells the unpacker that layer i's blob is committed. Its
// snapshot is applied meanwhile, from the bytes as they arrive, but
// committed only after.
func (u *unpacker) layerReady(i int) { close(u.ready[i]) }

// run unpacks, reporting the outcome on u.done.
func (u *unpacker) run(ctx context.Context) {
	u.done <- u.unpack(ctx)
}

func (u *unpacker) unpack(ctx context.Context) error {
	ctx = namespace.ToOutgoing(ctx)
	chainIDs := identity.ChainIDs(append([]digest.Digest(nil), u.diffIDs...))
	// Skip the chain already unpacked: the highest existing chain ID.
	start := 0
	for i := len(chainIDs) - 1; i >= 0; i-- {
		_, err := u.node.Snapshots.Stat(ctx, &snapshotsapi.StatSnapshotRequest{Snapshotter: u.snapshotter, Key: chainIDs[i].String()})
		if err == nil {
			start = i + 1
			break
		}
		if !errdefs.IsNotFound(err) {
			return fmt.Errorf("unpack on node %s: stat %s: %w", u.node.Name, chainIDs[i], err)
		}
	}
	for i := start; i < len(u.layers); i++ {
		if err := u.apply(ctx, i, chainIDs); err != nil {
			return fmt.Errorf("unpack layer %s on node %s (%s): %w", u.layers[i].Digest, u.node.Name, u.snapshotter, err)
		}
	}
	top := ""
	if len(chainIDs) > 0 {
		top = chainIDs[len(chainIDs)-1].String()
	}
	key := labelGCSnapshotPrefix + u.snapshotter
	_, err := u.store.Update(ctx, content.Info{Digest: u.config.Digest, Labels: map[string]string{key: top}}, "labels."+key)
	return err
}

func (u *unpacker) apply(ctx context.Context, i int, chainIDs []digest.Digest) error {
	layer, chainID := u.layers[i], chainIDs[i].String()
	labels := map[string]string{
		labelSnapshotRef:    chainID,
		labelSnapshotDiffID: u.diffIDs[i].String(),
	}
	parent := ""
	if i > 0 {
		parent = chainIDs[i-1].String()
		labels[labelSnapshotParent] = parent
	}
	key := fmt.Sprintf("extract-%s %s", uniquePart(), chainID)
	prep, err := u.node.Snapshots.Prepare(ctx, &snapshotsapi.PrepareSnapshotRequest{
		Snapshotter: u.snapshotter, Key: key, Parent: parent, Labels: labels,
	})
	if err != nil {
		if errdefs.IsAlreadyExists(err) {
			if _, serr := u.node.Snapshots.Stat(ctx, &snapshotsapi.StatSnapshotRequest{Snapshotter: u.snapshotter, Key: chainID}); serr == nil {
				return nil // unpacked meanwhile by another pull
			}
		}
		return fmt.Errorf("prepare: %w", err)
	}
	remove := func() {
		// Best effort, on a context that outlives a cancelled transfer.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		u.node.Snapshots.Remove(rctx, &snapshotsapi.RemoveSnapshotRequest{Snapshotter: u.snapshotter, Key: key})
	}
	u.rep.blob(eventExtracting, layer, 0)
	// snapshotd reads the layer as it downloads; the snapshot is committed
	// only once the blob is, verified, too.
	applied, err := u.node.Diff.Apply(contentclient.WithFollow(ctx), &diffapi.ApplyRequest{Diff: descToProto(layer), Mounts: prep.GetMounts()})
	if err != nil {
		remove()
		return fmt.Errorf("apply: %w", err)
	}
	if got := applied.GetApplied().GetDigest(); got != u.diffIDs[i].String() {
		remove()
		return fmt.Errorf("applied layer has digest %s, the image config says %s: %w", got, u.diffIDs[i], errdefs.ErrDataLoss)
	}
	select {
	case <-ctx.Done():
		remove()
		return context.Cause(ctx)
	case <-u.ready[i]:
	}
	if _, err := u.node.Snapshots.Commit(ctx, &snapshotsapi.CommitSnapshotRequest{
		Snapshotter: u.snapshotter, Name: chainID, Key: key, Labels: labels,
	}); err != nil {
		remove()
		if !errdefs.IsAlreadyExists(err) {
			return fmt.Errorf("commit: %w", err)
		}
	}
	u.rep.blob(eventExtracted, layer, layer.Size)
	_, err = u.store.Update(ctx, content.Info{Digest: layer.Digest, Labels: map[string]string{labelUncompressed: u.diffIDs[i].String()}},
		"labels."+labelUncompressed)
	return err
}

func uniquePart() string {
	var b [3]byte
	rand.Read(b[:])
	return fmt.Sprintf("%d-%s", time.Now().Nanosecond(), base64.URLEncoding.EncodeToString(b[:]))
}
