package service

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"testing"

	eventsapi "github.com/containerd/containerd/api/events"
	api "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/flotilla/flotilla/services/namespace"
)

// put commits data in the namespace of ctx through a Write stream.
func put(t *testing.T, ctx context.Context, client api.ContentClient, data []byte, labels map[string]string) digest.Digest {
	t.Helper()
	dgst := digest.FromBytes(data)
	runSteps(t, ctx, client, []step{{
		req: &api.WriteContentRequest{Action: commit, Ref: "put-" + dgst.Encoded(), Total: int64(len(data)),
			Expected: dgst.String(), Data: data, Labels: labels},
		want: &api.WriteContentResponse{Action: commit, Offset: int64(len(data)), Digest: dgst.String()},
	}})
	return dgst
}

func readRange(ctx context.Context, client api.ContentClient, dgst digest.Digest, offset, size int64) ([]byte, error) {
	stream, err := client.Read(ctx, &api.ReadContentRequest{Digest: dgst.String(), Offset: offset, Size: size})
	if err != nil {
		return nil, err
	}
	var out []byte
	next := max(offset, 0)
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		if resp.Offset != next || len(resp.Data) > readChunk {
			return nil, errors.New("response out of order or oversized")
		}
		next += int64(len(resp.Data))
		out = append(out, resp.Data...)
	}
}

func TestRead(t *testing.T) {
	ts := serveInProcess(t)
	client := api.NewContentClient(ts.conn)
	ctx := namespace.WithNamespace(context.Background(), "read")
	data := make([]byte, 2*readChunk+12345)
	rand.NewChaCha8([32]byte{1}).Read(data)
	dgst := put(t, ctx, client, data, nil)
	n := int64(len(data))

	tests := []struct {
		name         string
		offset, size int64
		want         []byte
		err          error
	}{
		{name: "whole blob, in chunks of at most 1 MiB", want: data},
		{name: "from an offset to the end", offset: 1000, want: data[1000:]},
		{name: "a range", offset: readChunk - 10, size: 20, want: data[readChunk-10 : readChunk+10]},
		{name: "a size past the end stops at the end", offset: n - 5, size: 100, want: data[n-5:]},
		{name: "a negative offset reads from the start", offset: -4, size: 4, want: data[:4]},
		{name: "offset at the end reads nothing", offset: n, want: nil},
		{name: "offset past the end is OutOfRange", offset: n + 1, err: errdefs.ErrOutOfRange},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := readRange(ctx, client, dgst, tt.offset, tt.size)
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("error %v, want kind %v", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tt.want) {
				t.Fatalf("read %d bytes, want %d (or contents differ)", len(got), len(tt.want))
			}
		})
	}
	t.Run("a blob of another namespace is NotFound", func(t *testing.T) {
		_, err := readRange(namespace.WithNamespace(ctx, "other"), client, dgst, 0, 0)
		if !errdefs.IsNotFound(err) {
			t.Fatalf("error %v, want NotFound", err)
		}
	})
}

func TestManage(t *testing.T) {
	ts := serveInProcess(t)
	client := api.NewContentClient(ts.conn)
	ctx := namespace.WithNamespace(context.Background(), "manage")
	a := put(t, ctx, client, []byte("alpha"), map[string]string{"kind": "layer"})
	b := put(t, ctx, client, []byte("beta"), nil)

	t.Run("Info of a digest that is not a digest is InvalidArgument", func(t *testing.T) {
		if _, err := client.Info(ctx, &api.InfoRequest{Digest: "nope"}); !errdefs.IsInvalidArgument(err) {
			t.Fatalf("error %v", err)
		}
	})
	t.Run("a call without a namespace is FailedPrecondition, as containerd answers it", func(t *testing.T) {
		if _, err := client.Info(context.Background(), &api.InfoRequest{Digest: a.String()}); !errdefs.IsFailedPrecondition(err) {
			t.Fatalf("error %v", err)
		}
	})
	t.Run("Update sets the labels the mask names", func(t *testing.T) {
		resp, err := client.Update(ctx, &api.UpdateRequest{
			Info:       &api.Info{Digest: b.String(), Labels: map[string]string{"kind": "config", "ignored": "x"}},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"labels.kind"}},
		})
		if err != nil || len(resp.Info.Labels) != 1 || resp.Info.Labels["kind"] != "config" || resp.Info.Size != 4 {
			t.Fatalf("Update = %v, %v", resp, err)
		}
	})
	t.Run("List filters by label", func(t *testing.T) {
		stream, err := client.List(ctx, &api.ListContentRequest{Filters: []string{"labels.kind==layer"}})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for {
			resp, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, info := range resp.Info {
				got = append(got, info.Digest)
			}
		}
		if len(got) != 1 || got[0] != a.String() {
			t.Fatalf("listed %v", got)
		}
	})
	t.Run("Delete removes the blob and publishes /content/delete", func(t *testing.T) {
		ts.pub.Take()
		if _, err := client.Delete(ctx, &api.DeleteContentRequest{Digest: a.String()}); err != nil {
			t.Fatal(err)
		}
		if _, err := client.Info(ctx, &api.InfoRequest{Digest: a.String()}); !errdefs.IsNotFound(err) {
			t.Fatalf("Info after Delete: %v", err)
		}
		evs := ts.pub.Take()
		if len(evs) != 1 || evs[0].Topic != "/content/delete" || evs[0].Event.(*eventsapi.ContentDelete).Digest != a.String() {
			t.Fatalf("events %v", evs)
		}
		if _, err := client.Delete(ctx, &api.DeleteContentRequest{Digest: a.String()}); !errdefs.IsNotFound(err) {
			t.Fatalf("second Delete: %v", err)
		}
		if evs := ts.pub.Take(); len(evs) != 0 {
			t.Fatalf("a failed delete published %v", evs)
		}
	})
	t.Run("Status, ListStatuses and Abort see ingests", func(t *testing.T) {
		runSteps(t, ctx, client, []step{
			{req: &api.WriteContentRequest{Action: write, Ref: "pending", Total: 10, Data: []byte("1234")},
				want: &api.WriteContentResponse{Action: write, Offset: 4}},
		})
		st, err := client.Status(ctx, &api.StatusRequest{Ref: "pending"})
		if err != nil || st.Status.Offset != 4 || st.Status.Total != 10 || st.Status.StartedAt == nil {
			t.Fatalf("Status = %v, %v", st, err)
		}
		list, err := client.ListStatuses(ctx, &api.ListStatusesRequest{Filters: []string{"ref~=pend"}})
		if err != nil || len(list.Statuses) != 1 {
			t.Fatalf("ListStatuses = %v, %v", list, err)
		}
		if _, err := client.Abort(ctx, &api.AbortRequest{Ref: "pending"}); err != nil {
			t.Fatal(err)
		}
		if _, err := client.Status(ctx, &api.StatusRequest{Ref: "pending"}); !errdefs.IsNotFound(err) {
			t.Fatalf("Status after Abort: %v", err)
		}
		if _, err := client.Abort(ctx, &api.AbortRequest{Ref: "pending"}); !errdefs.IsNotFound(err) {
			t.Fatalf("second Abort: %v", err)
		}
	})
}
