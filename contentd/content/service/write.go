package service

import (
	"errors"
	"fmt"
	"io"

	api "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"google.golang.org/protobuf/types/known/timestamppb"
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
	req, err := stream.Recv()
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
				n, err := w.Write(data)
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
		if req, err = stream.Recv(); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}
