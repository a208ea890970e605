package service

import (
	"errors"
	"fmt"
	"io"

	api "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/flotilla/flotilla/contentd/content"
	"github.com/flotilla/flotilla/services/server"
)

// Write implements api.ContentServer with containerd's protocol:
//
//   - The first message names the ref (and may carry total and expected);
//     it opens the ingest and holds its lock for the whole stream, so a
//     second stream on the ref gets Unavailable. When expected is already
//     in the namespace the stream ends with AlreadyExists, which clients
//     take as success.
//   - Every message is answered with the ingest's offset. STAT also answers
//     the total, the digest so far and the start and update times, so a
//     client resumes from the offset it is told.
//   - WRITE appends its data. Its offset must be the current one, or 0,
//     which discards what was written first; any other offset is
//     OutOfRange. The answer carries the new offset but no digest (clients
//     take it as optional): the store hashes behind the writes, so that
//     hashing one message overlaps with receiving the next.
//   - COMMIT writes its data like WRITE, then commits against the latest
//     total and expected seen on the stream, with the message's labels: a
//     size or digest mismatch is FailedPrecondition and leaves no blob.
//
// A stream that ends without COMMIT leaves the ingest to be resumed.
func (s *Service) Write(stream api.Content_WriteServer) error {
	ctx := stream.Context()
	req, err := recvWrite(stream)
	defer func() { req.Release() }() // the request in hand when the stream ends
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil
		}
		return err
	}
	ref := req.GetRef()
	if ref == "" {
		return fmt.Errorf("first message must have a reference: %w", errdefs.ErrInvalidArgument)
	}
	total := req.GetTotal()
	var expected digest.Digest
	if req.GetExpected() != "" {
		if expected, err = parseDigest(req.GetExpected()); err != nil {
			return err
		}
	}
	w, err := s.store.Writer(ctx, ref, total, expected)
	if err != nil {
		return err
	}
	defer w.Close()

	for {
		st := w.Status()
		resp := &api.WriteContentResponse{Action: req.GetAction(), Offset: st.Offset}

		if req.GetExpected() != "" {
			if expected, err = parseDigest(req.GetExpected()); err != nil {
				return err
			}
			// Committed meanwhile (by another ref): nothing left to write.
			if _, err := s.store.Info(ctx, expected); err == nil {
				w.Close()
				if err := s.store.Abort(ctx, ref); err != nil && !errdefs.IsNotFound(err) {
					return fmt.Errorf("abort %q: %w", ref, err)
				}
				return fmt.Errorf("blob with expected digest %s exists: %w", expected, errdefs.ErrAlreadyExists)
			}
		}
		if req.GetTotal() > 0 {
			total = req.GetTotal()
		}

		switch req.GetAction() {
		case api.WriteAction_STAT:
			resp.Digest = w.Digest().String()
			resp.StartedAt = timestamppb.New(st.StartedAt)
			resp.UpdatedAt = timestamppb.New(st.UpdatedAt)
			resp.Total = total
			if total <= 0 {
				resp.Total = st.Total
			}
		case api.WriteAction_WRITE, api.WriteAction_COMMIT:
			switch off := req.GetOffset(); {
			case off < 0:
				return fmt.Errorf("write %q at %d: negative offset: %w", ref, off, errdefs.ErrInvalidArgument)
			case off > 0 && off != st.Offset:
				return fmt.Errorf("write %q @%d must occur at current offset %d: %w", ref, off, st.Offset, errdefs.ErrOutOfRange)
			case off == 0 && st.Offset > 0:
				if err := w.Truncate(0); err != nil {
					return err
				}
				resp.Offset = 0
			}
			if data := req.GetData(); len(data) > 0 {
				n, err := writeOwned(w, data, req.take())
				if err != nil {
					return err
				}
				resp.Offset += int64(n)
			}
			if req.GetAction() == api.WriteAction_COMMIT {
				resp.Digest = w.Digest().String()
				if err := w.Commit(ctx, total, expected, req.GetLabels()); err != nil {
					return err
				}
			}
		default:
			return fmt.Errorf("write %q: unknown action %v: %w", ref, req.GetAction(), errdefs.ErrInvalidArgument)
		}

		if err := stream.Send(resp); err != nil {
			return err
		}
		req.Release()
		if req, err = recvWrite(stream); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}

// writeRequest is a WriteContentRequest whose data, received through the
// kit's codec, stays in the buffer gRPC gathered the message in instead of
// being copied out of it: at 1 MiB a message, that copy and the garbage it
// makes cost an ingest more than anything but the write itself. The buffer
// goes back once the store has hashed the data (writeOwned), or with
// Release.
type writeRequest struct {
	api.WriteContentRequest
	release func()
}

// recvWrite receives the next request of a Write stream. The request is
// never nil, so that Release can always be called.
func recvWrite(stream api.Content_WriteServer) (*writeRequest, error) {
	req := new(writeRequest)
	return req, stream.RecvMsg(req)
}

// UnmarshalOwned implements server.OwnedUnmarshaler: the data field refers
// to buf; the other fields, small, are decoded as usual.
func (r *writeRequest) UnmarshalOwned(buf []byte, release func()) error {
	r.release = release
	data, err := server.UnmarshalReferring(buf, &r.WriteContentRequest, dataField)
	if err != nil {
		return fmt.Errorf("write request: %w", err)
	}
	r.Data = data
	return nil
}

// dataField is WriteContentRequest's data field number.
const dataField = 6

// take hands over the release of the request's buffer to the caller.
func (r *writeRequest) take() func() {
	release := r.release
	r.release = nil
	return release
}

// Release gives the request's buffer back, unless take handed it over.
func (r *writeRequest) Release() {
	if r != nil && r.release != nil {
		r.take()()
	}
}

// ownedWriter is a content.Writer that can keep the caller's buffer until
// it is done with it.
type ownedWriter interface {
	WriteOwned(p []byte, release func()) (int, error)
}

// writeOwned writes p to w, which releases it when done with it.
func writeOwned(w content.Writer, p []byte, release func()) (int, error) {
	if ow, ok := w.(ownedWriter); ok {
		return ow.WriteOwned(p, release)
	}
	n, err := w.Write(p)
	if release != nil {
		release()
	}
	return n, err
}
