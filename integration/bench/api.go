package bench

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	eventtypes "github.com/containerd/containerd/api/events"
	contentapi "github.com/containerd/containerd/api/services/content/v1"
	eventsapi "github.com/containerd/containerd/api/services/events/v1"
	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	leasesapi "github.com/containerd/containerd/api/services/leases/v1"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	digest "github.com/opencontainers/go-digest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/anypb"
)

// Snapshotter is the snapshotter every system unpacks into and the snapshot
// workload uses: overlayfs, the default of all three.
const Snapshotter = "overlayfs"

// The message limit containerd's clients use.
const maxMsg = 16 << 20

func dial(socket string) (*grpc.ClientConn, error) {
	conn, err := grpc.NewClient("unix://"+socket,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMsg), grpc.MaxCallSendMsgSize(maxMsg)))
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", socket, err)
	}
	return conn, nil
}

// withNamespace puts the bench's namespace, and a lease when not empty, on
// ctx as containerd's clients send them.
func withNamespace(ctx context.Context, lease string) context.Context {
	ctx = metadata.AppendToOutgoingContext(ctx, "containerd-namespace", Namespace)
	if lease != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "containerd-lease", lease)
	}
	return ctx
}

func fromGRPC(err error) error { return errgrpc.ToNative(err) }

// withLease runs fn under a fresh lease that is removed (synchronously, so
// what it held is collected) afterwards: containerd's garbage collector
// could otherwise take unreferenced content or snapshots mid-workload.
func withLease(ctx context.Context, conn *grpc.ClientConn, id string, fn func(ctx context.Context) error) error {
	leases := leasesapi.NewLeasesClient(conn)
	nctx := withNamespace(ctx, "")
	if _, err := leases.Create(nctx, &leasesapi.CreateRequest{ID: id}); err != nil {
		return fmt.Errorf("create lease %s: %w", id, fromGRPC(err))
	}
	ferr := fn(withNamespace(ctx, id))
	_, err := leases.Delete(nctx, &leasesapi.DeleteRequest{ID: id, Sync: true})
	if err != nil {
		err = fmt.Errorf("delete lease %s: %w", id, fromGRPC(err))
	}
	return errors.Join(ferr, err)
}

// emptyStores removes every image, lease, snapshot and blob of the bench's
// namespace, so that the next pull is cold.
func emptyStores(ctx context.Context, conn *grpc.ClientConn) error {
	ctx = withNamespace(ctx, "")
	images := imagesapi.NewImagesClient(conn)
	list, err := images.List(ctx, &imagesapi.ListImagesRequest{})
	if err != nil {
		return fmt.Errorf("list images: %w", fromGRPC(err))
	}
	for _, img := range list.Images {
		if _, err := images.Delete(ctx, &imagesapi.DeleteImageRequest{Name: img.Name, Sync: true}); err != nil && !errdefs.IsNotFound(fromGRPC(err)) {
			return fmt.Errorf("delete image %s: %w", img.Name, fromGRPC(err))
		}
	}
	leases := leasesapi.NewLeasesClient(conn)
	ll, err := leases.List(ctx, &leasesapi.ListRequest{})
	if err != nil {
		return fmt.Errorf("list leases: %w", fromGRPC(err))
	}
	for _, l := range ll.Leases {
		if _, err := leases.Delete(ctx, &leasesapi.DeleteRequest{ID: l.ID, Sync: true}); err != nil && !errdefs.IsNotFound(fromGRPC(err)) {
			return fmt.Errorf("delete lease %s: %w", l.ID, fromGRPC(err))
		}
	}
	if err := removeSnapshots(ctx, conn); err != nil {
		return err
	}
	content := contentapi.NewContentClient(conn)
	stream, err := content.List(ctx, &contentapi.ListContentRequest{})
	if err != nil {
		return fmt.Errorf("list content: %w", fromGRPC(err))
	}
	var blobs []string
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("list content: %w", fromGRPC(err))
		}
		for _, info := range resp.Info {
			blobs = append(blobs, info.Digest)
		}
	}
	for _, d := range blobs {
		if _, err := content.Delete(ctx, &contentapi.DeleteContentRequest{Digest: d}); err != nil && !errdefs.IsNotFound(fromGRPC(err)) {
			return fmt.Errorf("delete blob %s: %w", d, fromGRPC(err))
		}
	}
	return nil
}

// removeSnapshots removes every snapshot of the bench's namespace, children
// before their parents.
func removeSnapshots(ctx context.Context, conn *grpc.ClientConn) error {
	snaps := snapshotsapi.NewSnapshotsClient(conn)
	for round := 0; ; round++ {
		stream, err := snaps.List(ctx, &snapshotsapi.ListSnapshotsRequest{Snapshotter: Snapshotter})
		if err != nil {
			return fmt.Errorf("list snapshots: %w", fromGRPC(err))
		}
		parents := map[string]bool{}
		var names []string
		for {
			resp, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return fmt.Errorf("list snapshots: %w", fromGRPC(err))
			}
			for _, info := range resp.Info {
				names = append(names, info.Name)
				parents[info.Parent] = true
			}
		}
		if len(names) == 0 {
			return nil
		}
		if round > 1000 {
			return fmt.Errorf("snapshots left after %d rounds: %v", round, names)
		}
		for _, n := range names {
			if parents[n] {
				continue
			}
			if _, err := snaps.Remove(ctx, &snapshotsapi.RemoveSnapshotRequest{Snapshotter: Snapshotter, Key: n}); err != nil && !errdefs.IsNotFound(fromGRPC(err)) {
				return fmt.Errorf("remove snapshot %s: %w", n, fromGRPC(err))
			}
		}
	}
}

// ingestChunk is the size of each Write message, as containerd's client
// copies (1 MiB).
const ingestChunk = 1 << 20

// ingest streams the file at path into the content store as containerd's
// remote writer does (a status, then one Write per chunk, each answered,
// then a Commit with the expected size and digest).
func ingest(ctx context.Context, conn *grpc.ClientConn, path string, size int64, dgst digest.Digest, ref string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	stream, err := contentapi.NewContentClient(conn).Write(ctx)
	if err != nil {
		return fmt.Errorf("write %s: %w", ref, fromGRPC(err))
	}
	exchange := func(req *contentapi.WriteContentRequest) error {
		if err := stream.Send(req); err != nil {
			_, rerr := stream.Recv()
			return fmt.Errorf("write %s: %w", ref, fromGRPC(errors.Join(err, rerr)))
		}
		if _, err := stream.Recv(); err != nil {
			return fmt.Errorf("write %s: %w", ref, fromGRPC(err))
		}
		return nil
	}
	if err := exchange(&contentapi.WriteContentRequest{Action: contentapi.WriteAction_STAT, Ref: ref}); err != nil {
		return err
	}
	buf := make([]byte, ingestChunk)
	var off int64
	for {
		n, rerr := io.ReadFull(f, buf)
		if n > 0 {
			if err := exchange(&contentapi.WriteContentRequest{Action: contentapi.WriteAction_WRITE, Ref: ref,
				Offset: off, Total: size, Expected: dgst.String(), Data: buf[:n]}); err != nil {
				return err
			}
			off += int64(n)
		}
		if errors.Is(rerr, io.EOF) || errors.Is(rerr, io.ErrUnexpectedEOF) {
			break
		}
		if rerr != nil {
			return rerr
		}
	}
	if err := exchange(&contentapi.WriteContentRequest{Action: contentapi.WriteAction_COMMIT, Ref: ref,
		Offset: off, Total: size, Expected: dgst.String()}); err != nil {
		return err
	}
	return stream.CloseSend()
}

// readBlob reads blob dgst to its end and checks its size and digest.
func readBlob(ctx context.Context, conn *grpc.ClientConn, dgst digest.Digest, size int64) error {
	stream, err := contentapi.NewContentClient(conn).Read(ctx, &contentapi.ReadContentRequest{Digest: dgst.String()})
	if err != nil {
		return fmt.Errorf("read %s: %w", dgst, fromGRPC(err))
	}
	h := sha256.New()
	var n int64
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", dgst, fromGRPC(err))
		}
		h.Write(resp.Data)
		n += int64(len(resp.Data))
	}
	if n != size || digest.NewDigest(digest.SHA256, h) != dgst {
		return fmt.Errorf("read %s: got %d bytes of digest %x, want %d", dgst, n, h.Sum(nil), size)
	}
	return nil
}

func deleteBlob(ctx context.Context, conn *grpc.ClientConn, dgst digest.Digest) error {
	_, err := contentapi.NewContentClient(conn).Delete(ctx, &contentapi.DeleteContentRequest{Digest: dgst.String()})
	if err != nil && !errdefs.IsNotFound(fromGRPC(err)) {
		return fmt.Errorf("delete %s: %w", dgst, fromGRPC(err))
	}
	return nil
}

// snapshotCycle prepares an active snapshot, commits it and removes the
// committed one: three calls, as an unpack of one layer does them.
func snapshotCycle(ctx context.Context, snaps snapshotsapi.SnapshotsClient, key string) error {
	if _, err := snaps.Prepare(ctx, &snapshotsapi.PrepareSnapshotRequest{Snapshotter: Snapshotter, Key: key + "-active"}); err != nil {
		return fmt.Errorf("prepare %s: %w", key, fromGRPC(err))
	}
	if _, err := snaps.Commit(ctx, &snapshotsapi.CommitSnapshotRequest{Snapshotter: Snapshotter, Name: key, Key: key + "-active"}); err != nil {
		return fmt.Errorf("commit %s: %w", key, fromGRPC(err))
	}
	if _, err := snaps.Remove(ctx, &snapshotsapi.RemoveSnapshotRequest{Snapshotter: Snapshotter, Key: key}); err != nil {
		return fmt.Errorf("remove %s: %w", key, fromGRPC(err))
	}
	return nil
}

// eventTopic is the topic the event workload publishes on.
const eventTopic = "/bench/latency"

// eventProbe publishes events on one events service and receives them on
// another (or the same), one at a time.
type eventProbe struct {
	pub      eventsapi.EventsClient
	received chan string
	cancel   context.CancelFunc
	conns    []*grpc.ClientConn
}

// newEventProbe subscribes on subscribeSocket to the bench's topic and
// returns once the subscription is in place: a probe event published until
// one comes through.
func newEventProbe(ctx context.Context, publishSocket, subscribeSocket string) (*eventProbe, error) {
	pubConn, err := dial(publishSocket)
	if err != nil {
		return nil, err
	}
	subConn, err := dial(subscribeSocket)
	if err != nil {
		pubConn.Close()
		return nil, err
	}
	sctx, cancel := context.WithCancel(withNamespace(ctx, ""))
	p := &eventProbe{pub: eventsapi.NewEventsClient(pubConn), received: make(chan string, 16), cancel: cancel,
		conns: []*grpc.ClientConn{pubConn, subConn}}
	stream, err := eventsapi.NewEventsClient(subConn).Subscribe(sctx, &eventsapi.SubscribeRequest{
		Filters: []string{fmt.Sprintf("topic==%q", eventTopic)}})
	if err != nil {
		p.close()
		return nil, fmt.Errorf("subscribe on %s: %w", subscribeSocket, fromGRPC(err))
	}
	go func() {
		defer close(p.received)
		for {
			env, err := stream.Recv()
			if err != nil {
				return
			}
			var ev eventtypes.ContainerCreate
			if env.Event != nil && env.Event.UnmarshalTo(&ev) == nil {
				p.received <- ev.ID
			}
		}
	}()
	// The subscription is live once a published event arrives.
	deadline := time.Now().Add(30 * time.Second)
	for i := 0; ; i++ {
		id := fmt.Sprintf("warmup-%d", i)
		if _, err := p.roundTrip(ctx, id, 200*time.Millisecond); err == nil {
			return p, nil
		} else if time.Now().After(deadline) || ctx.Err() != nil {
			p.close()
			return nil, fmt.Errorf("events from %s never reached %s: %w", publishSocket, subscribeSocket, err)
		}
	}
}

// roundTrip publishes one event and waits up to timeout for it to arrive,
// returning the time between the Publish call and its arrival.
func (p *eventProbe) roundTrip(ctx context.Context, id string, timeout time.Duration) (time.Duration, error) {
	ev, err := anypb.New(&eventtypes.ContainerCreate{ID: id})
	if err != nil {
		return 0, err
	}
	// containerd's type URLs carry no type.googleapis.com/ prefix.
	ev.TypeUrl = "containerd.events.ContainerCreate"
	start := time.Now()
	if _, err := p.pub.Publish(withNamespace(ctx, ""), &eventsapi.PublishRequest{Topic: eventTopic, Event: ev}); err != nil {
		return 0, fmt.Errorf("publish: %w", fromGRPC(err))
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		select {
		case got, ok := <-p.received:
			if !ok {
				return 0, errors.New("subscription ended")
			}
			if got == id {
				return time.Since(start), nil
			}
		case <-timer.C:
			return 0, fmt.Errorf("event %s not received within %s", id, timeout)
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

func (p *eventProbe) close() {
	p.cancel()
	for _, c := range p.conns {
		c.Close()
	}
}
