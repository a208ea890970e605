// Package service serves containerd's snapshots API from snapshotd's
// backends: it picks the backend a request names, scopes keys by the
// call's namespace, and publishes containerd's snapshot events.
package service

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	eventstypes "github.com/containerd/containerd/api/events"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/errdefs"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/flotilla/flotilla/services/events"
	"github.com/flotilla/flotilla/services/filters"
	"github.com/flotilla/flotilla/services/gc"
	"github.com/flotilla/flotilla/services/labels"
	"github.com/flotilla/flotilla/services/namespace"
	"github.com/flotilla/flotilla/snapshotd/sdk"
	"github.com/flotilla/flotilla/snapshotd/snapshotter"
)

// DefaultSnapshotter serves requests that name none, as in containerd.
const DefaultSnapshotter = "overlayfs"

// Event topics, containerd's.
const (
	TopicPrepare = "/snapshot/prepare"
	TopicCommit  = "/snapshot/commit"
	TopicRemove  = "/snapshot/remove"
)

// LabelSnapshotRef names, on a Prepare or View, the committed snapshot the
// caller is about to build (an unpacker puts the layer's chain ID there).
// When a snapshot of that name already exists the call answers
// AlreadyExists and creates nothing, as containerd's metadata layer does,
// so that unpack skips a layer it already has.
const LabelSnapshotRef = "containerd.io/snapshot.ref"

// listBatch is how many snapshots one List answer carries.
const listBatch = 100

// Resolver finds a backend by name. An unknown name is InvalidArgument
// ("snapshotter not loaded"), as containerd answers.
type Resolver interface {
	Get(name string) (snapshotter.Snapshotter, error)
}

// Snapshots is containerd's snapshots service over snapshotd's backends.
//
// Backends know nothing of namespaces: a snapshot with key K in namespace N
// is the backend's snapshot "N/K" (namespaces cannot hold a slash), as
// containerd's metadata layer scopes them. A snapshot is seen only from its
// namespace, committed names are per namespace, and a parent must be in the
// caller's namespace.
type Snapshots struct {
	snapshotsapi.UnimplementedSnapshotsServer
	backends  Resolver
	publisher events.Publisher
	tracker   *gc.Tracker // nil outside garbage collection
	holds     *LeaseHolds // nil: leases hold no snapshots
}

// New returns the snapshots service.
func New(backends Resolver, publisher events.Publisher) *Snapshots {
	if publisher == nil {
		publisher = events.Discard{}
	}
	return &Snapshots{backends: backends, publisher: publisher}
}

// Register registers the service on srv.
func (s *Snapshots) Register(srv *grpc.Server) { snapshotsapi.RegisterSnapshotsServer(srv, s) }

// call holds what every request needs: its backend and namespace.
type call struct {
	sn   snapshotter.Snapshotter
	name string
	ns   string
}

func (s *Snapshots) begin(ctx context.Context, name string) (call, error) {
	ns, err := namespace.Required(ctx)
	if err != nil {
		return call{}, err
	}
	if name == "" {
		name = DefaultSnapshotter
	}
	sn, err := s.backends.Get(name)
	if err != nil {
		return call{}, err
	}
	return call{sn: sn, name: name, ns: ns}, nil
}

// key scopes a client's key (or parent) to the namespace; "" stays "".
func (c call) key(k string) string {
	if k == "" {
		return ""
	}
	return c.ns + "/" + k
}

// unscope turns a backend's info into the client's.
func (c call) unscope(in snapshotter.Info) snapshotter.Info {
	in.Name = strings.TrimPrefix(in.Name, c.ns+"/")
	in.Parent = strings.TrimPrefix(in.Parent, c.ns+"/")
	return in
}

// scopedError is a backend's error with the namespace taken out of the keys
// it quotes; it keeps the backend's error (and so its kind) underneath.
type scopedError struct {
	msg string
	err error
}

func (e *scopedError) Error() string { return e.msg }
func (e *scopedError) Unwrap() error { return e.err }

// err rewrites err's message to quote the client's keys.
func (c call) err(err error) error {
	if err == nil {
		return nil
	}
	return &scopedError{msg: strings.ReplaceAll(err.Error(), `"`+c.ns+"/", `"`), err: err}
}

func requireKey(what, k string) error {
	if k == "" {
		return fmt.Errorf("%s must not be empty: %w", what, errdefs.ErrInvalidArgument)
	}
	return nil
}

// MaxKeySize bounds a snapshot key or name, namespace included: backends
// keep their records in bbolt, whose keys are at most 32 KiB.
const MaxKeySize = 32 << 10

// checkKeys refuses keys too long to store, with InvalidArgument and only
// the start of the key quoted, instead of the store's "key too large"
// (Unknown, the whole key in the message and the log).
func (c call) checkKeys(keys ...string) error {
	for _, k := range keys {
		if n := len(c.key(k)); n > MaxKeySize {
			return fmt.Errorf("snapshot key %s is too long: %d bytes with its namespace, more than the %d allowed: %w",
				labels.Excerpt(k), n, MaxKeySize, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}

// checkRequest checks a request's keys and labels.
func (c call) checkRequest(l map[string]string, keys ...string) error {
	if err := c.checkKeys(keys...); err != nil {
		return err
	}
	return labels.ValidateAll(l)
}

// checkTarget answers AlreadyExists when the snapshot that labels name
// under LabelSnapshotRef exists in the caller's namespace.
func (c call) checkTarget(ctx context.Context, l map[string]string) error {
	target := l[LabelSnapshotRef]
	if target == "" {
		return nil
	}
	if err := c.checkKeys(target); err != nil {
		return err
	}
	_, err := c.sn.Stat(ctx, c.key(target))
	switch {
	case err == nil:
		return fmt.Errorf("target snapshot %q: %w", target, errdefs.ErrAlreadyExists)
	case errdefs.IsNotFound(err):
		return nil
	default:
		return c.err(fmt.Errorf("target snapshot %q: %w", target, err))
	}
}

func withLabels(l map[string]string) []snapshotter.Opt {
	if len(l) == 0 {
		return nil
	}
	return []snapshotter.Opt{snapshotter.WithLabels(l)}
}

func (s *Snapshots) publish(ctx context.Context, topic string, event any) {
	// Publish never blocks and accounts for what it drops itself.
	_ = s.publisher.Publish(ctx, topic, event)
}

// Prepare implements containerd's Snapshots.Prepare.
func (s *Snapshots) Prepare(ctx context.Context, req *snapshotsapi.PrepareSnapshotRequest) (*snapshotsapi.PrepareSnapshotResponse, error) {
	c, err := s.begin(ctx, req.Snapshotter)
	if err != nil {
		return nil, err
	}
	if err := requireKey("key", req.Key); err != nil {
		return nil, err
	}
	if err := c.checkRequest(req.Labels, req.Key, req.Parent); err != nil {
		return nil, err
	}
	done, err := s.write(ctx, c, req.Labels, true, req.Key, req.Parent)
	if err != nil {
		return nil, err
	}
	defer done()
	if err := c.checkTarget(ctx, req.Labels); err != nil {
		return nil, s.heldTarget(ctx, c, req.Labels, err)
	}
	ms, err := c.sn.Prepare(ctx, c.key(req.Key), c.key(req.Parent), withLabels(req.Labels)...)
	if err != nil {
		return nil, c.err(err)
	}
	s.publish(ctx, TopicPrepare, &eventstypes.SnapshotPrepare{Key: req.Key, Parent: req.Parent, Snapshotter: c.name})
	return &snapshotsapi.PrepareSnapshotResponse{Mounts: sdk.MountsToProto(ms)}, nil
}

// View implements containerd's Snapshots.View.
func (s *Snapshots) View(ctx context.Context, req *snapshotsapi.ViewSnapshotRequest) (*snapshotsapi.ViewSnapshotResponse, error) {
	c, err := s.begin(ctx, req.Snapshotter)
	if err != nil {
		return nil, err
	}
	if err := requireKey("key", req.Key); err != nil {
		return nil, err
	}
	if err := c.checkRequest(req.Labels, req.Key, req.Parent); err != nil {
		return nil, err
	}
	done, err := s.write(ctx, c, req.Labels, true, req.Key, req.Parent)
	if err != nil {
		return nil, err
	}
	defer done()
	if err := c.checkTarget(ctx, req.Labels); err != nil {
		return nil, s.heldTarget(ctx, c, req.Labels, err)
	}
	ms, err := c.sn.View(ctx, c.key(req.Key), c.key(req.Parent), withLabels(req.Labels)...)
	if err != nil {
		return nil, c.err(err)
	}
	return &snapshotsapi.ViewSnapshotResponse{Mounts: sdk.MountsToProto(ms)}, nil
}

// Mounts implements containerd's Snapshots.Mounts.
func (s *Snapshots) Mounts(ctx context.Context, req *snapshotsapi.MountsRequest) (*snapshotsapi.MountsResponse, error) {
	c, err := s.begin(ctx, req.Snapshotter)
	if err != nil {
		return nil, err
	}
	if err := c.checkKeys(req.Key); err != nil {
		return nil, err
	}
	s.touch(c, req.Key)
	ms, err := c.sn.Mounts(ctx, c.key(req.Key))
	if err != nil {
		return nil, c.err(err)
	}
	return &snapshotsapi.MountsResponse{Mounts: sdk.MountsToProto(ms)}, nil
}

// Commit implements containerd's Snapshots.Commit.
func (s *Snapshots) Commit(ctx context.Context, req *snapshotsapi.CommitSnapshotRequest) (*emptypb.Empty, error) {
	c, err := s.begin(ctx, req.Snapshotter)
	if err != nil {
		return nil, err
	}
	if err := requireKey("name", req.Name); err != nil {
		return nil, err
	}
	if err := c.checkRequest(req.Labels, req.Name, req.Key); err != nil {
		return nil, err
	}
	done, err := s.write(ctx, c, req.Labels, true, req.Name, req.Key)
	if err != nil {
		return nil, err
	}
	defer done()
	if err := c.sn.Commit(ctx, c.key(req.Name), c.key(req.Key), withLabels(req.Labels)...); err != nil {
		return nil, c.err(err)
	}
	s.publish(ctx, TopicCommit, &eventstypes.SnapshotCommit{Key: req.Key, Name: req.Name, Snapshotter: c.name})
	return &emptypb.Empty{}, nil
}

// Remove implements containerd's Snapshots.Remove.
func (s *Snapshots) Remove(ctx context.Context, req *snapshotsapi.RemoveSnapshotRequest) (*emptypb.Empty, error) {
	c, err := s.begin(ctx, req.Snapshotter)
	if err != nil {
		return nil, err
	}
	if err := c.checkKeys(req.Key); err != nil {
		return nil, err
	}
	if err := c.sn.Remove(ctx, c.key(req.Key)); err != nil {
		return nil, c.err(err)
	}
	s.publish(ctx, TopicRemove, &eventstypes.SnapshotRemove{Key: req.Key, Snapshotter: c.name})
	return &emptypb.Empty{}, nil
}

// Stat implements containerd's Snapshots.Stat.
func (s *Snapshots) Stat(ctx context.Context, req *snapshotsapi.StatSnapshotRequest) (*snapshotsapi.StatSnapshotResponse, error) {
	c, err := s.begin(ctx, req.Snapshotter)
	if err != nil {
		return nil, err
	}
	if err := c.checkKeys(req.Key); err != nil {
		return nil, err
	}
	s.touch(c, req.Key)
	in, err := c.sn.Stat(ctx, c.key(req.Key))
	if err != nil {
		return nil, c.err(err)
	}
	return &snapshotsapi.StatSnapshotResponse{Info: sdk.InfoToProto(c.unscope(in))}, nil
}

// Update implements containerd's Snapshots.Update: labels only.
func (s *Snapshots) Update(ctx context.Context, req *snapshotsapi.UpdateSnapshotRequest) (*snapshotsapi.UpdateSnapshotResponse, error) {
	c, err := s.begin(ctx, req.Snapshotter)
	if err != nil {
		return nil, err
	}
	if req.Info == nil || req.Info.Name == "" {
		return nil, fmt.Errorf("update: snapshot name must not be empty: %w", errdefs.ErrInvalidArgument)
	}
	if err := c.checkRequest(req.Info.Labels, req.Info.Name); err != nil {
		return nil, err
	}
	done, err := s.write(ctx, c, req.Info.Labels, false, req.Info.Name)
	if err != nil {
		return nil, err
	}
	defer done()
	in := sdk.InfoFromProto(req.Info)
	in.Name = c.key(in.Name)
	out, err := c.sn.Update(ctx, in, req.GetUpdateMask().GetPaths()...)
	if err != nil {
		return nil, c.err(err)
	}
	return &snapshotsapi.UpdateSnapshotResponse{Info: sdk.InfoToProto(c.unscope(out))}, nil
}

// List implements containerd's Snapshots.List. The backend is asked for
// the namespace's snapshots only; the client's filters are matched here,
// on the names the client knows.
func (s *Snapshots) List(req *snapshotsapi.ListSnapshotsRequest, stream snapshotsapi.Snapshots_ListServer) error {
	ctx := stream.Context()
	c, err := s.begin(ctx, req.Snapshotter)
	if err != nil {
		return err
	}
	f, err := filters.ParseAll(req.Filters...)
	if err != nil {
		return err
	}
	inNamespace := "name~=" + strconv.Quote("^"+regexp.QuoteMeta(c.ns+"/"))
	var batch []*snapshotsapi.Info
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		err := stream.Send(&snapshotsapi.ListSnapshotsResponse{Info: batch})
		batch = nil
		return err
	}
	err = c.sn.Walk(ctx, func(_ context.Context, in snapshotter.Info) error {
		in = c.unscope(in)
		if !f.Match(snapshotter.Fields(in)) {
			return nil
		}
		batch = append(batch, sdk.InfoToProto(in))
		if len(batch) >= listBatch {
			return flush()
		}
		return nil
	}, inNamespace)
	if err != nil {
		return c.err(err)
	}
	return flush()
}

// Usage implements containerd's Snapshots.Usage.
func (s *Snapshots) Usage(ctx context.Context, req *snapshotsapi.UsageRequest) (*snapshotsapi.UsageResponse, error) {
	c, err := s.begin(ctx, req.Snapshotter)
	if err != nil {
		return nil, err
	}
	if err := c.checkKeys(req.Key); err != nil {
		return nil, err
	}
	u, err := c.sn.Usage(ctx, c.key(req.Key))
	if err != nil {
		return nil, c.err(err)
	}
	return &snapshotsapi.UsageResponse{Size: u.Size, Inodes: u.Inodes}, nil
}

// Cleanup implements containerd's Snapshots.Cleanup. Backends remove a
// snapshot's data with it, so there is nothing left to clean.
func (s *Snapshots) Cleanup(ctx context.Context, req *snapshotsapi.CleanupRequest) (*emptypb.Empty, error) {
	if _, err := s.begin(ctx, req.Snapshotter); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}
