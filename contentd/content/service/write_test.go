package service

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"testing"

	api "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"github.com/flotilla/flotilla/services/namespace"
)

var (
	stat   = api.WriteAction_STAT
	write  = api.WriteAction_WRITE
	commit = api.WriteAction_COMMIT
)

// step sends req and expects either the response fields set in want
// (Action, Offset and, when set, Digest and Total) or an error of kind err.
type step struct {
	req  *api.WriteContentRequest
	want *api.WriteContentResponse
	err  error
}

func dg(s string) string { return digest.FromString(s).String() }

func TestWriteProtocol(t *testing.T) {
	ts := serveInProcess(t)
	client := api.NewContentClient(ts.conn)

	tests := []struct {
		name  string
		steps []step
		// after checks the namespace once the stream has ended.
		after func(t *testing.T, ctx context.Context)
	}{
		{
			name: "stat then writes at the current offset, then commit",
			steps: []step{
				{req: &api.WriteContentRequest{Action: stat, Ref: "r", Total: 11, Expected: dg("hello world")},
					want: &api.WriteContentResponse{Action: stat, Offset: 0, Total: 11, Digest: dg("")}},
				{req: &api.WriteContentRequest{Action: write, Offset: 0, Data: []byte("hello ")},
					want: &api.WriteContentResponse{Action: write, Offset: 6}},
				{req: &api.WriteContentRequest{Action: write, Offset: 6, Data: []byte("world")},
					want: &api.WriteContentResponse{Action: write, Offset: 11}},
				{req: &api.WriteContentRequest{Action: stat},
					want: &api.WriteContentResponse{Action: stat, Offset: 11, Total: 11, Digest: dg("hello world")}},
				{req: &api.WriteContentRequest{Action: commit, Offset: 11, Total: 11, Expected: dg("hello world"),
					Labels: map[string]string{"k": "v"}},
					want: &api.WriteContentResponse{Action: commit, Offset: 11, Digest: dg("hello world")}},
			},
			after: func(t *testing.T, ctx context.Context) {
				resp, err := client.Info(ctx, &api.InfoRequest{Digest: dg("hello world")})
				if err != nil || resp.Info.Size != 11 || resp.Info.Labels["k"] != "v" {
					t.Errorf("Info = %v, %v", resp, err)
				}
			},
		},
		{
			name: "one commit message may carry all the data",
			steps: []step{
				{req: &api.WriteContentRequest{Action: commit, Ref: "r", Total: 3, Expected: dg("abc"), Data: []byte("abc")},
					want: &api.WriteContentResponse{Action: commit, Offset: 3, Digest: dg("abc")}},
			},
		},
		{
			name: "write past the current offset is OutOfRange",
			steps: []step{
				{req: &api.WriteContentRequest{Action: write, Ref: "r", Data: []byte("abc")},
					want: &api.WriteContentResponse{Action: write, Offset: 3}},
				{req: &api.WriteContentRequest{Action: write, Offset: 5, Data: []byte("x")}, err: errdefs.ErrOutOfRange},
			},
		},
		{
			name: "write behind the current offset is OutOfRange",
			steps: []step{
				{req: &api.WriteContentRequest{Action: write, Ref: "r", Data: []byte("abc")},
					want: &api.WriteContentResponse{Action: write, Offset: 3}},
				{req: &api.WriteContentRequest{Action: write, Offset: 2, Data: []byte("x")}, err: errdefs.ErrOutOfRange},
			},
		},
		{
			name: "write at offset 0 discards what was written",
			steps: []step{
				{req: &api.WriteContentRequest{Action: write, Ref: "r", Data: []byte("garbage")},
					want: &api.WriteContentResponse{Action: write, Offset: 7}},
				{req: &api.WriteContentRequest{Action: write, Offset: 0, Data: []byte("good")},
					want: &api.WriteContentResponse{Action: write, Offset: 4}},
				{req: &api.WriteContentRequest{Action: commit, Offset: 4, Total: 4, Expected: dg("good")},
					want: &api.WriteContentResponse{Action: commit, Offset: 4, Digest: dg("good")}},
			},
		},
		{
			name: "commit with the wrong expected digest is FailedPrecondition and leaves no blob",
			steps: []step{
				{req: &api.WriteContentRequest{Action: write, Ref: "r", Data: []byte("actual")},
					want: &api.WriteContentResponse{Action: write, Offset: 6}},
				{req: &api.WriteContentRequest{Action: commit, Offset: 6, Expected: dg("other")}, err: errdefs.ErrFailedPrecondition},
			},
			after: func(t *testing.T, ctx context.Context) {
				for _, d := range []string{dg("actual"), dg("other")} {
					if _, err := client.Info(ctx, &api.InfoRequest{Digest: d}); !errdefs.IsNotFound(err) {
						t.Errorf("Info(%s) = %v, want NotFound", d, err)
					}
				}
			},
		},
		{
			name: "short write is FailedPrecondition",
			steps: []step{
				{req: &api.WriteContentRequest{Action: stat, Ref: "r", Total: 10}, want: &api.WriteContentResponse{Action: stat, Total: 10}},
				{req: &api.WriteContentRequest{Action: write, Data: []byte("short")}, want: &api.WriteContentResponse{Action: write, Offset: 5}},
				{req: &api.WriteContentRequest{Action: commit, Offset: 5}, err: errdefs.ErrFailedPrecondition},
			},
		},
		{
			name:  "first message without a ref is InvalidArgument",
			steps: []step{{req: &api.WriteContentRequest{Action: stat}, err: errdefs.ErrInvalidArgument}},
		},
		{
			name: "a second stream on a held ref is Unavailable",
			steps: []step{
				{req: &api.WriteContentRequest{Action: stat, Ref: "r"}, want: &api.WriteContentResponse{Action: stat}},
			},
			after: func(t *testing.T, ctx context.Context) {
				// The first stream is closed by now; hold the ref with a new one.
				first, _ := client.Write(ctx)
				first.Send(&api.WriteContentRequest{Action: stat, Ref: "held"})
				if _, err := first.Recv(); err != nil {
					t.Fatal(err)
				}
				second, _ := client.Write(ctx)
				second.Send(&api.WriteContentRequest{Action: stat, Ref: "held"})
				if _, err := second.Recv(); !errdefs.IsUnavailable(err) {
					t.Errorf("second stream: %v, want Unavailable", err)
				}
				first.CloseSend()
				first.Recv()
			},
		},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := namespace.WithNamespace(context.Background(), fmt.Sprintf("t%d", i))
			runSteps(t, ctx, client, tt.steps)
			if tt.after != nil {
				tt.after(t, ctx)
			}
		})
	}
}

func runSteps(t *testing.T, ctx context.Context, client api.ContentClient, steps []step) {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := client.Write(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range steps {
		if err := stream.Send(s.req); err != nil && !errors.Is(err, io.EOF) {
			t.Fatalf("step %d: send: %v", i, err)
		}
		resp, err := stream.Recv()
		if s.err != nil {
			if !errors.Is(err, s.err) {
				t.Fatalf("step %d: error %v, want kind %v", i, err, s.err)
			}
			return
		}
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		w := s.want
		if resp.Action != w.Action || resp.Offset != w.Offset ||
			(w.Digest != "" && resp.Digest != w.Digest) || (w.Total != 0 && resp.Total != w.Total) {
			t.Fatalf("step %d: response %v, want %v", i, resp, w)
		}
		// WRITE answers carry no digest: the store hashes behind the writes.
		if w.Action == write && resp.Digest != "" {
			t.Fatalf("step %d: WRITE answered with digest %s", i, resp.Digest)
		}
		if w.Action == stat && (resp.StartedAt == nil || resp.UpdatedAt == nil) {
			t.Fatalf("step %d: stat without times: %v", i, resp)
		}
	}
	stream.CloseSend()
	if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("stream ended with %v", err)
	}
}

func TestWriteResumesFromStatOffset(t *testing.T) {
	ts := serveInProcess(t)
	client := api.NewContentClient(ts.conn)
	ctx := namespace.WithNamespace(context.Background(), "resume")
	data := bytes.Repeat([]byte("resumable "), 100_000) // ~1 MB
	want := digest.FromBytes(data).String()

	// The first client sends half and goes away.
	runSteps(t, ctx, client, []step{
		{req: &api.WriteContentRequest{Action: stat, Ref: "r", Total: int64(len(data)), Expected: want},
			want: &api.WriteContentResponse{Action: stat}},
		{req: &api.WriteContentRequest{Action: write, Data: data[:300_000]},
			want: &api.WriteContentResponse{Action: write, Offset: 300_000}},
	})
	st, err := client.ListStatuses(ctx, &api.ListStatusesRequest{Filters: []string{"ref==r"}})
	if err != nil || len(st.Statuses) != 1 || st.Statuses[0].Offset != 300_000 || st.Statuses[0].Expected != want {
		t.Fatalf("ListStatuses = %v, %v", st, err)
	}
	// The next one asks where to resume and finishes.
	runSteps(t, ctx, client, []step{
		{req: &api.WriteContentRequest{Action: stat, Ref: "r", Total: int64(len(data)), Expected: want},
			want: &api.WriteContentResponse{Action: stat, Offset: 300_000, Digest: digest.FromBytes(data[:300_000]).String()}},
		{req: &api.WriteContentRequest{Action: write, Offset: 300_000, Data: data[300_000:]},
			want: &api.WriteContentResponse{Action: write, Offset: int64(len(data))}},
		{req: &api.WriteContentRequest{Action: commit, Offset: int64(len(data)), Total: int64(len(data)), Expected: want},
			want: &api.WriteContentResponse{Action: commit, Offset: int64(len(data)), Digest: want}},
	})
	// Once there, expecting it again ends the first exchange with AlreadyExists.
	runSteps(t, ctx, client, []step{
		{req: &api.WriteContentRequest{Action: stat, Ref: "again", Expected: want}, err: errdefs.ErrAlreadyExists},
	})
	if _, err := client.Status(ctx, &api.StatusRequest{Ref: "again"}); !errdefs.IsNotFound(err) {
		t.Errorf("Status(again) = %v, want NotFound", err)
	}
}
