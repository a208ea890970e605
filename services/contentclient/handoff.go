package contentclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	contentdv1 "github.com/flotilla/flotilla/proto/contentd/v1"
	"github.com/flotilla/flotilla/services/namespace"
)

// HandoffSuffix names contentd's handoff socket after its gRPC socket
// (contentd/content/handoff serves it).
const HandoffSuffix = ".handoff"

// Handoff reads blobs from the files contentd hands over on its handoff
// socket, for a reader on contentd's host: the bytes come from the page
// cache through the reader's own pread instead of through a Content.Read
// stream (see flotilla.contentd.v1.HandoffRequest).
type Handoff struct {
	path string
}

// NewHandoff returns a reader of blobs through the handoff socket at path.
func NewHandoff(path string) *Handoff { return &Handoff{path: path} }

// ErrNoHandoff is returned by Open when nothing serves the handoff socket
// (another host's contentd, or one without it): read through Content.Read.
var ErrNoHandoff = errors.New("no content handoff socket")

// Open returns a reader of blob dgst of ctx's namespace from its first byte
// to its last; with WithFollow, a blob a transfer of the namespace is
// fetching is read as it arrives. Errors are Content.Read's (NotFound…),
// at once or at a Read; ErrNoHandoff when the socket is not served. The
// caller checks the length and digest of what it reads, and closes the
// reader.
func (h *Handoff) Open(ctx context.Context, dgst digest.Digest) (io.ReadCloser, error) {
	ns, err := namespace.Required(ctx)
	if err != nil {
		return nil, err
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unixpacket", h.path)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EPROTOTYPE) {
			return nil, fmt.Errorf("%s: %w", h.path, ErrNoHandoff)
		}
		return nil, fmt.Errorf("content handoff %s: %v: %w", h.path, err, errdefs.ErrUnavailable)
	}
	c := conn.(*net.UnixConn)
	req, err := proto.Marshal(&contentdv1.HandoffRequest{Namespace: ns, Digest: dgst.String(), Follow: followMarked(ctx)})
	if err == nil {
		_, err = c.Write(req)
	}
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("content handoff %s: %v: %w", dgst, err, errdefs.ErrUnavailable)
	}
	r := &handoffReader{c: c, ctx: ctx, dgst: dgst}
	r.stop = context.AfterFunc(ctx, func() { c.Close() })
	// The first update tells a missing blob at once, as Content.Read does.
	if err := r.recv(); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

// followMarked reports whether ctx's outgoing calls ask to follow (WithFollow).
func followMarked(ctx context.Context) bool {
	md, _ := metadata.FromOutgoingContext(ctx)
	return len(md.Get(FollowKey)) > 0
}

type handoffReader struct {
	c    *net.UnixConn
	ctx  context.Context
	stop func() bool
	dgst digest.Digest

	f        *os.File // where the blob's bytes are now
	off      int64
	readable int64
	whole    bool
	err      error

	// buf and oob receive updates, which come by the hundred a layer.
	buf, oob []byte
}

func (r *handoffReader) Read(p []byte) (int, error) {
	for r.off >= r.readable {
		if r.whole {
			return 0, io.EOF
		}
		if r.err != nil {
			return 0, r.err
		}
		if err := r.recv(); err != nil {
			r.err = err
		}
	}
	n, err := r.f.ReadAt(p[:min(int64(len(p)), r.readable-r.off)], r.off)
	r.off += int64(n)
	if n > 0 {
		return n, nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = fmt.Errorf("content handoff %s: file ends before byte %d it holds: %w", r.dgst, r.off, errdefs.ErrDataLoss)
	}
	r.err = err
	return 0, err
}

// recv reads one update into r.
func (r *handoffReader) recv() error {
	if r.buf == nil {
		r.buf, r.oob = make([]byte, 1024), make([]byte, unix.CmsgSpace(4))
	}
	buf, oob := r.buf, r.oob
	n, oobn, flags, _, err := r.c.ReadMsgUnix(buf, oob)
	if err != nil || n == 0 {
		if cerr := context.Cause(r.ctx); cerr != nil {
			return cerr
		}
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("content handoff %s: contentd ended the read: %v: %w", r.dgst, err, errdefs.ErrUnavailable)
	}
	file, ferr := receivedFile(oob[:oobn], flags)
	var upd contentdv1.HandoffUpdate
	if err := proto.Unmarshal(buf[:n], &upd); err != nil || ferr != nil || (file != nil) != upd.GetFile() {
		if file != nil {
			file.Close()
		}
		return fmt.Errorf("content handoff %s: bad update (%v, %v): %w", r.dgst, err, ferr, errdefs.ErrDataLoss)
	}
	if upd.GetCode() != int32(codes.OK) {
		return errgrpc.ToNative(status.Error(codes.Code(upd.GetCode()), upd.GetMessage()))
	}
	if file != nil {
		if r.f != nil {
			r.f.Close()
		}
		r.f = file
	}
	if r.f == nil || upd.GetReadable() < r.readable {
		return fmt.Errorf("content handoff %s: update of %d bytes without a file or going back from %d: %w",
			r.dgst, upd.GetReadable(), r.readable, errdefs.ErrDataLoss)
	}
	r.readable, r.whole = upd.GetReadable(), upd.GetWhole()
	return nil
}

// receivedFile is the descriptor an update's packet carried, if any.
func receivedFile(oob []byte, flags int) (*os.File, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, err
	}
	var fds []int
	for _, m := range msgs {
		got, err := unix.ParseUnixRights(&m)
		if err != nil {
			return nil, err
		}
		fds = append(fds, got...)
	}
	if flags&unix.MSG_CTRUNC != 0 || len(fds) != 1 {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return nil, fmt.Errorf("%d descriptors (truncated: %v), want 1", len(fds), flags&unix.MSG_CTRUNC != 0)
	}
	return os.NewFile(uintptr(fds[0]), "content-handoff"), nil
}

func (r *handoffReader) Close() error {
	r.stop()
	err := r.c.Close()
	if r.f != nil {
		r.f.Close()
		r.f = nil
	}
	return err
}
