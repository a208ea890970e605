// Package handoff serves contentd's blob handoff: a reader on contentd's
// host (snapshotd applying a layer) is handed the open file a blob's bytes
// are in, over a unix SOCK_SEQPACKET socket (SCM_RIGHTS), and reads them
// from it directly, rather than through a Content.Read stream that copies
// every byte through gRPC on both sides. The messages are
// flotilla.contentd.v1's HandoffRequest and HandoffUpdate; the client is
// services/contentclient's Handoff.
package handoff

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"syscall"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/flotilla/flotilla/contentd/content"
	contentdv1 "github.com/flotilla/flotilla/proto/contentd/v1"
	"github.com/flotilla/flotilla/services/identifiers"
	"github.com/flotilla/flotilla/services/namespace"
)

// MaxRequest bounds a HandoffRequest packet.
const MaxRequest = 4096

// Tailer follows blobs still being fetched (contentd's transfer service):
// see transfer.Service.Tail.
type Tailer interface {
	Tail(ctx context.Context, dgst digest.Digest, fn func(src io.ReaderAt, limit int64, whole bool) error) error
}

// Server hands over the files of a store's blobs.
type Server struct {
	store  content.Provider
	tailer Tailer // nil: no following
	log    *slog.Logger
	reads  *prometheus.CounterVec

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// NewServer returns a server of store's blobs, following blobs tailer's
// transfers fetch (tailer may be nil).
func NewServer(store content.Provider, tailer Tailer, log *slog.Logger) *Server {
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{store: store, tailer: tailer, log: log, ctx: ctx, cancel: cancel,
		reads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flotilla_content_handoff_reads_total",
			Help: "Blob reads served by handing the reader the blob's file, by whether the blob was followed while it downloaded and by outcome (the gRPC code: OK, NotFound…).",
		}, []string{"followed", "result"})}
}

// Collectors are the server's metrics, for a Prometheus registry.
func (s *Server) Collectors() []prometheus.Collector { return []prometheus.Collector{s.reads} }

// Serve accepts readers on l until l is closed; each reads one blob.
func (s *Server) Serve(l *net.UnixListener) error {
	for {
		c, err := l.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.handle(c)
		}()
	}
}

// Stop ends every read in progress and waits for them; the listener is the
// caller's to close.
func (s *Server) Stop() {
	s.cancel()
	s.wg.Wait()
}

func (s *Server) handle(c *net.UnixConn) {
	defer c.Close()
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()

	buf := make([]byte, MaxRequest)
	n, err := c.Read(buf)
	if err != nil {
		return
	}
	var req contentdv1.HandoffRequest
	if err := proto.Unmarshal(buf[:n], &req); err != nil {
		s.fail(c, fmt.Errorf("handoff request: %v: %w", err, errdefs.ErrInvalidArgument))
		return
	}
	// The reader closing its end (or sending anything more) ends the read.
	go func() {
		var b [1]byte
		c.Read(b[:])
		cancel()
	}()
	followed, err := s.serve(ctx, c, &req)
	result := codes.OK.String()
	if err != nil {
		result = status.Code(errgrpc.ToGRPC(err)).String()
		if ctx.Err() != nil {
			result = "Canceled" // the reader went away
		} else {
			s.fail(c, err)
		}
	}
	s.reads.WithLabelValues(strconv.FormatBool(followed), result).Inc()
}

// serve answers req on c; followed says whether the blob was followed
// while it downloaded.
func (s *Server) serve(ctx context.Context, c *net.UnixConn, req *contentdv1.HandoffRequest) (followed bool, _ error) {
	if req.GetNamespace() == "" {
		return false, fmt.Errorf("handoff: a namespace is required: %w", errdefs.ErrFailedPrecondition)
	}
	if err := identifiers.Validate(req.GetNamespace()); err != nil {
		return false, fmt.Errorf("namespace: %w", err)
	}
	dgst, err := digest.Parse(req.GetDigest())
	if err != nil {
		return false, fmt.Errorf("digest %q: %v: %w", req.GetDigest(), err, errdefs.ErrInvalidArgument)
	}
	ctx = namespace.WithNamespace(ctx, req.GetNamespace())
	ra, err := s.store.ReaderAt(ctx, dgst)
	if err == nil {
		defer ra.Close()
		return false, send(c, ra, ra.Size(), true)
	}
	if !errdefs.IsNotFound(err) || !req.GetFollow() || s.tailer == nil {
		return false, err
	}
	var last io.ReaderAt
	return true, s.tailer.Tail(ctx, dgst, func(src io.ReaderAt, limit int64, whole bool) error {
		var file io.ReaderAt
		if src != last {
			file, last = src, src
		}
		return send(c, file, limit, whole)
	})
}

// fail tells the reader why its read ended.
func (s *Server) fail(c *net.UnixConn, err error) {
	st := status.Convert(errgrpc.ToGRPC(err))
	b, merr := proto.Marshal(&contentdv1.HandoffUpdate{Code: int32(st.Code()), Message: st.Message()})
	if merr == nil {
		_, merr = c.Write(b)
	}
	if merr != nil && s.log != nil {
		s.log.Debug("handoff: could not tell the reader its read failed", "error", err, "send_error", merr)
	}
}

// send sends an update, with file's descriptor attached when file is set.
func send(c *net.UnixConn, file io.ReaderAt, readable int64, whole bool) error {
	b, err := proto.Marshal(&contentdv1.HandoffUpdate{File: file != nil, Readable: readable, Whole: whole})
	if err != nil {
		return err
	}
	if file == nil {
		_, err := c.Write(b)
		return err
	}
	sc, ok := file.(syscall.Conn)
	if !ok {
		return fmt.Errorf("handoff: the store's reader %T has no file: %w", file, errdefs.ErrNotImplemented)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	var werr error
	// The descriptor is sent while Control holds it open.
	if err := raw.Control(func(fd uintptr) {
		_, _, werr = c.WriteMsgUnix(b, unix.UnixRights(int(fd)), nil)
	}); err != nil {
		return err
	}
	return werr
}
