package gc

import (
	"context"
	"errors"
	"io"
	"time"

	"google.golang.org/grpc"

	gcv1 "github.com/flotilla/flotilla/proto/gc/v1"
)

// markBatch bounds the objects and edges of one Mark message.
const markBatch = 2000

// Server serves a Store as flotilla.gc.v1.Store.
type Server struct {
	gcv1.UnimplementedStoreServer
	store Store
}

// NewServer returns the gRPC service over store.
func NewServer(store Store) *Server { return &Server{store: store} }

// Register registers the service on srv.
func (s *Server) Register(srv *grpc.Server) { gcv1.RegisterStoreServer(srv, s) }

func (s *Server) Begin(ctx context.Context, req *gcv1.BeginRequest) (*gcv1.BeginResponse, error) {
	if err := s.store.Begin(ctx, req.GetEpoch(), time.Duration(req.GetTimeoutMs())*time.Millisecond); err != nil {
		return nil, err
	}
	return &gcv1.BeginResponse{Store: s.store.Name()}, nil
}

func (s *Server) Mark(req *gcv1.MarkRequest, stream grpc.ServerStreamingServer[gcv1.MarkResponse]) error {
	return s.store.Mark(stream.Context(), req.GetEpoch(), func(g Graph) error {
		// Split what the source batched into messages of markBatch.
		for len(g.Objects) > 0 || len(g.Edges) > 0 {
			resp := &gcv1.MarkResponse{}
			n := min(len(g.Objects), markBatch)
			for _, o := range g.Objects[:n] {
				po := &gcv1.Object{Ref: refToProto(o.Ref), Root: o.Root, Flat: o.Flat, Size: o.Size}
				if !o.UsedAt.IsZero() {
					po.UsedAtUnixNano = o.UsedAt.UnixNano()
				}
				resp.Objects = append(resp.Objects, po)
			}
			g.Objects = g.Objects[n:]
			m := min(len(g.Edges), markBatch-n)
			for _, e := range g.Edges[:m] {
				resp.Edges = append(resp.Edges, &gcv1.Edge{From: refToProto(e.From), To: refToProto(e.To), Essential: e.Essential, Condition: e.Condition})
			}
			g.Edges = g.Edges[m:]
			if err := stream.Send(resp); err != nil {
				return err
			}
		}
		return nil
	})
}

func (s *Server) Hold(ctx context.Context, req *gcv1.HoldRequest) (*gcv1.HoldResponse, error) {
	touched, err := s.store.Hold(ctx, req.GetEpoch(), time.Duration(req.GetTimeoutMs())*time.Millisecond)
	if err != nil {
		return nil, err
	}
	return &gcv1.HoldResponse{Touched: refsToProto(touched)}, nil
}

func (s *Server) Sweep(ctx context.Context, req *gcv1.SweepRequest) (*gcv1.SweepResponse, error) {
	removed, err := s.store.Sweep(ctx, req.GetEpoch(), refsFromProto(req.GetRemove()))
	resp := &gcv1.SweepResponse{}
	for _, r := range removed {
		resp.Removed = append(resp.Removed, &gcv1.Removed{Kind: r.Kind, Count: r.Count, Bytes: r.Bytes, Refs: refsToProto(r.Refs)})
	}
	if err != nil {
		// What was removed before the failure is lost to the caller's
		// report, not to the store; the error says which object failed.
		return nil, err
	}
	return resp, nil
}

func (s *Server) End(ctx context.Context, req *gcv1.EndRequest) (*gcv1.EndResponse, error) {
	if err := s.store.End(ctx, req.GetEpoch()); err != nil {
		return nil, err
	}
	return &gcv1.EndResponse{}, nil
}

// Remote is a Store served by another daemon.
type Remote struct {
	name   string
	client gcv1.StoreClient
}

var _ Store = (*Remote)(nil)

// NewRemote returns the Store of the daemon called name at conn.
func NewRemote(name string, conn grpc.ClientConnInterface) *Remote {
	return &Remote{name: name, client: gcv1.NewStoreClient(conn)}
}

func (r *Remote) Name() string { return r.name }

// beginWait is how long Begin waits for a store's connection to be ready:
// a store that has just restarted is found again (a fail-fast call would
// fail on the connection's last error while it backs off), one that stays
// away fails the collection, which then sweeps nothing.
const beginWait = 5 * time.Second

func (r *Remote) Begin(ctx context.Context, epoch string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, beginWait)
	defer cancel()
	_, err := r.client.Begin(ctx, &gcv1.BeginRequest{Epoch: epoch, TimeoutMs: timeout.Milliseconds()}, grpc.WaitForReady(true))
	return err
}

func (r *Remote) Mark(ctx context.Context, epoch string, fn func(Graph) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := r.client.Mark(ctx, &gcv1.MarkRequest{Epoch: epoch})
	if err != nil {
		return err
	}
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		g := Graph{Objects: make([]Object, 0, len(resp.GetObjects())), Edges: make([]Edge, 0, len(resp.GetEdges()))}
		for _, o := range resp.GetObjects() {
			obj := Object{Ref: refFromProto(o.GetRef()), Root: o.GetRoot(), Flat: o.GetFlat(), Size: o.GetSize()}
			if ns := o.GetUsedAtUnixNano(); ns != 0 {
				obj.UsedAt = time.Unix(0, ns)
			}
			g.Objects = append(g.Objects, obj)
		}
		for _, e := range resp.GetEdges() {
			g.Edges = append(g.Edges, Edge{From: refFromProto(e.GetFrom()), To: refFromProto(e.GetTo()), Essential: e.GetEssential(), Condition: e.GetCondition()})
		}
		if err := fn(g); err != nil {
			return err
		}
	}
}

func (r *Remote) Hold(ctx context.Context, epoch string, timeout time.Duration) ([]Ref, error) {
	resp, err := r.client.Hold(ctx, &gcv1.HoldRequest{Epoch: epoch, TimeoutMs: timeout.Milliseconds()})
	if err != nil {
		return nil, err
	}
	return refsFromProto(resp.GetTouched()), nil
}

func (r *Remote) Sweep(ctx context.Context, epoch string, remove []Ref) ([]Removed, error) {
	resp, err := r.client.Sweep(ctx, &gcv1.SweepRequest{Epoch: epoch, Remove: refsToProto(remove)})
	if err != nil {
		return nil, err
	}
	var out []Removed
	for _, rm := range resp.GetRemoved() {
		out = append(out, Removed{Kind: rm.GetKind(), Count: rm.GetCount(), Bytes: rm.GetBytes(), Refs: refsFromProto(rm.GetRefs())})
	}
	return out, nil
}

func (r *Remote) End(ctx context.Context, epoch string) error {
	_, err := r.client.End(ctx, &gcv1.EndRequest{Epoch: epoch})
	return err
}

func refToProto(r Ref) *gcv1.Ref {
	return &gcv1.Ref{Kind: r.Kind, Namespace: r.Namespace, Snapshotter: r.Snapshotter, Id: r.ID}
}

func refFromProto(r *gcv1.Ref) Ref {
	return Ref{Kind: r.GetKind(), Namespace: r.GetNamespace(), Snapshotter: r.GetSnapshotter(), ID: r.GetId()}
}

func refsToProto(refs []Ref) []*gcv1.Ref {
	out := make([]*gcv1.Ref, 0, len(refs))
	for _, r := range refs {
		out = append(out, refToProto(r))
	}
	return out
}

func refsFromProto(refs []*gcv1.Ref) []Ref {
	out := make([]Ref, 0, len(refs))
	for _, r := range refs {
		out = append(out, refFromProto(r))
	}
	return out
}
