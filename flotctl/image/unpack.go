package image

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	diffapi "github.com/containerd/containerd/api/services/diff/v1"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
)

// Labels containerd's unpacker sets, which its GC and other clients read.
const (
	labelSnapshotRef    = "containerd.io/snapshot.ref"
	labelUncompressed   = "containerd.io/uncompressed"
	labelGCRefSnapshot  = "containerd.io/gc.ref.snapshot."
	unpackKeyFmt        = "extract-%s %s"
	snapshotExistsProbe = 3
)

// Services are the clients Unpack uses.
type Services struct {
	Content   contentapi.ContentClient
	Snapshots snapshotsapi.SnapshotsClient
	Diff      diffapi.DiffClient
}

// Unpack makes sure every layer of r is committed in snapshotter under its
// chain ID, applying the missing ones through the Diff service, and labels
// the config blob so that containerd's GC keeps the snapshots. It returns
// how many layers it applied. ctx should carry a lease: the snapshots are
// unreferenced until the label is set.
func Unpack(ctx context.Context, s Services, r *Resolved, snapshotter string) (applied int, err error) {
	// Find the highest layer already there; everything below it is too.
	start := len(r.ChainIDs)
	for ; start > 0; start-- {
		_, err := s.Snapshots.Stat(ctx, &snapshotsapi.StatSnapshotRequest{Snapshotter: snapshotter, Key: r.ChainIDs[start-1].String()})
		if err == nil {
			break
		}
		if !errdefs.IsNotFound(err) {
			return 0, fmt.Errorf("stat snapshot %s: %w", r.ChainIDs[start-1], err)
		}
	}
	for i := start; i < len(r.ChainIDs); i++ {
		if err := applyLayer(ctx, s, r, snapshotter, i); err != nil {
			return applied, err
		}
		applied++
	}
	if len(r.ChainIDs) == 0 {
		return 0, nil
	}
	key := labelGCRefSnapshot + snapshotter
	_, err = s.Content.Update(ctx, &contentapi.UpdateRequest{
		Info: &contentapi.Info{
			Digest: r.Manifest.Config.Digest.String(),
			Labels: map[string]string{key: r.ChainIDs[len(r.ChainIDs)-1].String()},
		},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"labels." + key}},
	})
	if err != nil {
		return applied, fmt.Errorf("label config %s: %w", r.Manifest.Config.Digest, err)
	}
	return applied, nil
}

// applyLayer prepares an active snapshot on layer i's parent, applies the
// layer's blob into it, checks the result against the config's diff ID and
// commits it under the layer's chain ID. Another client committing the same
// chain at the same time is not an error.
func applyLayer(ctx context.Context, s Services, r *Resolved, snapshotter string, i int) error {
	chainID := r.ChainIDs[i].String()
	parent := ""
	if i > 0 {
		parent = r.ChainIDs[i-1].String()
	}
	layer := r.Manifest.Layers[i]
	labels := map[string]string{labelSnapshotRef: chainID}

	var key string
	var prep *snapshotsapi.PrepareSnapshotResponse
	for try := 0; ; try++ {
		key = fmt.Sprintf(unpackKeyFmt, uniquePart(), chainID)
		var err error
		prep, err = s.Snapshots.Prepare(ctx, &snapshotsapi.PrepareSnapshotRequest{Snapshotter: snapshotter, Key: key, Parent: parent, Labels: labels})
		if err == nil {
			break
		}
		if !errdefs.IsAlreadyExists(err) || try == snapshotExistsProbe {
			return fmt.Errorf("prepare snapshot for layer %s: %w", layer.Digest, err)
		}
		if _, err := s.Snapshots.Stat(ctx, &snapshotsapi.StatSnapshotRequest{Snapshotter: snapshotter, Key: chainID}); err == nil {
			return nil
		}
	}
	abort := func() {
		// The caller's context may be cancelled; the cleanup must still run.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		s.Snapshots.Remove(cctx, &snapshotsapi.RemoveSnapshotRequest{Snapshotter: snapshotter, Key: key})
	}
	resp, err := s.Diff.Apply(ctx, &diffapi.ApplyRequest{Diff: DescriptorToProto(layer), Mounts: prep.Mounts})
	if err != nil {
		abort()
		return fmt.Errorf("apply layer %s: %w", layer.Digest, err)
	}
	if got, want := resp.GetApplied().GetDigest(), r.Config.RootFS.DiffIDs[i].String(); got != want {
		abort()
		return fmt.Errorf("layer %s unpacked to %s, but the config says %s: %w", layer.Digest, got, want, errdefs.ErrDataLoss)
	}
	if _, err := s.Snapshots.Commit(ctx, &snapshotsapi.CommitSnapshotRequest{Snapshotter: snapshotter, Name: chainID, Key: key, Labels: labels}); err != nil {
		abort()
		if errdefs.IsAlreadyExists(err) {
			return nil
		}
		return fmt.Errorf("commit layer %s: %w", layer.Digest, err)
	}
	// Record the uncompressed digest, as containerd's unpacker does.
	s.Content.Update(ctx, &contentapi.UpdateRequest{
		Info:       &contentapi.Info{Digest: layer.Digest.String(), Labels: map[string]string{labelUncompressed: r.Config.RootFS.DiffIDs[i].String()}},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"labels." + labelUncompressed}},
	})
	return nil
}

func uniquePart() string {
	b := make([]byte, 9)
	rand.Read(b)
	return fmt.Sprintf("%d-%s", time.Now().Nanosecond(), base64.URLEncoding.EncodeToString(b))
}
