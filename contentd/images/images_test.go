package images

import (
	"context"
	"errors"
	"maps"
	"path/filepath"
	"strings"
	"testing"
	"time"

	eventsapi "github.com/containerd/containerd/api/events"
	api "github.com/containerd/containerd/api/services/images/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
	digest "github.com/opencontainers/go-digest"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/flotilla/flotilla/contentd/internal/testserver"
	"github.com/flotilla/flotilla/contentd/metadata"
	"github.com/flotilla/flotilla/services/namespace"
)

const (
	mediaIndex    = "application/vnd.oci.image.index.v1+json"
	mediaManifest = "application/vnd.oci.image.manifest.v1+json"
)

var (
	digestA = digest.FromString("a")
	digestB = digest.FromString("b")
	epoch1  = time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	epoch2  = time.Date(2021, 1, 1, 0, 0, 0, 0, time.UTC)
)

func newClient(t *testing.T) (api.ImagesClient, *testserver.Recorder) {
	t.Helper()
	db := testserver.OpenDB(t, filepath.Join(t.TempDir(), "meta.db"))
	rec := &testserver.Recorder{}
	conn := testserver.Serve(t, func(s *grpc.Server) {
		api.RegisterImagesServer(s, NewService(NewStore(db), rec, nil))
	})
	return api.NewImagesClient(conn), rec
}

func nsContext(ns string) context.Context {
	return namespace.WithNamespace(context.Background(), ns)
}

func image(name string, dgst digest.Digest, labels map[string]string) *api.Image {
	return &api.Image{
		Name:   name,
		Labels: labels,
		Target: &types.Descriptor{MediaType: mediaManifest, Digest: dgst.String(), Size: 42},
	}
}

func mustCreate(t *testing.T, c api.ImagesClient, ctx context.Context, img *api.Image) *api.Image {
	t.Helper()
	resp, err := c.Create(ctx, &api.CreateImageRequest{Image: img, SourceDateEpoch: timestamppb.New(epoch1)})
	if err != nil {
		t.Fatalf("create %s: %v", img.GetName(), err)
	}
	return resp.GetImage()
}

func TestCreateGetDelete(t *testing.T) {
	c, rec := newClient(t)
	ctx := nsContext("ns1")

	before := time.Now()
	resp, err := c.Create(ctx, &api.CreateImageRequest{Image: image("docker.io/library/busybox:latest", digestA, map[string]string{"k": "v"})})
	if err != nil {
		t.Fatal(err)
	}
	created := resp.GetImage()
	if ct := created.GetCreatedAt().AsTime(); ct.Before(before) || !ct.Equal(created.GetUpdatedAt().AsTime()) {
		t.Errorf("created %v updated %v, want both now", ct, created.GetUpdatedAt().AsTime())
	}
	got, err := c.Get(ctx, &api.GetImageRequest{Name: "docker.io/library/busybox:latest"})
	if err != nil {
		t.Fatal(err)
	}
	img := got.GetImage()
	if img.GetTarget().GetDigest() != digestA.String() || img.GetTarget().GetSize() != 42 ||
		img.GetTarget().GetMediaType() != mediaManifest || img.GetLabels()["k"] != "v" ||
		!img.GetCreatedAt().AsTime().Equal(created.GetCreatedAt().AsTime()) {
		t.Errorf("get = %v, want what was created: %v", img, created)
	}

	if _, err := c.Get(nsContext("ns2"), &api.GetImageRequest{Name: "docker.io/library/busybox:latest"}); !errdefs.IsNotFound(err) {
		t.Errorf("get from another namespace: %v, want NotFound", err)
	}
	if _, err := c.Delete(ctx, &api.DeleteImageRequest{Name: "docker.io/library/busybox:latest", Sync: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(ctx, &api.GetImageRequest{Name: "docker.io/library/busybox:latest"}); !errdefs.IsNotFound(err) {
		t.Errorf("get after delete: %v, want NotFound", err)
	}

	evs := rec.Take()
	if len(evs) != 2 || evs[0].Topic != TopicCreate || evs[1].Topic != TopicDelete {
		t.Fatalf("published %v, want create and delete", evs)
	}
	for _, ev := range evs {
		if ev.Namespace != "ns1" {
			t.Errorf("event %s in namespace %q, want ns1", ev.Topic, ev.Namespace)
		}
	}
	if ev, ok := evs[0].Event.(*eventsapi.ImageCreate); !ok || ev.Name != "docker.io/library/busybox:latest" || ev.Labels["k"] != "v" {
		t.Errorf("create event = %#v", evs[0].Event)
	}
	if ev, ok := evs[1].Event.(*eventsapi.ImageDelete); !ok || ev.Name != "docker.io/library/busybox:latest" {
		t.Errorf("delete event = %#v", evs[1].Event)
	}
}

func TestSourceDateEpochSetsTimes(t *testing.T) {
	c, _ := newClient(t)
	ctx := nsContext("ns")
	img := mustCreate(t, c, ctx, image("x", digestA, nil))
	if !img.GetCreatedAt().AsTime().Equal(epoch1) || !img.GetUpdatedAt().AsTime().Equal(epoch1) {
		t.Errorf("times = %v/%v, want %v", img.GetCreatedAt().AsTime(), img.GetUpdatedAt().AsTime(), epoch1)
	}
}

func TestErrors(t *testing.T) {
	c, rec := newClient(t)
	ctx := nsContext("ns")
	mustCreate(t, c, ctx, image("taken", digestA, nil))
	rec.Take()

	for _, tc := range []struct {
		name    string
		call    func() error
		is      func(error) bool
		message string
	}{
		{"create of an existing name is AlreadyExists", func() error {
			_, err := c.Create(ctx, &api.CreateImageRequest{Image: image("taken", digestB, nil)})
			return err
		}, errdefs.IsAlreadyExists, `"taken"`},
		{"create without a name is InvalidArgument", func() error {
			_, err := c.Create(ctx, &api.CreateImageRequest{Image: image("", digestA, nil)})
			return err
		}, errdefs.IsInvalidArgument, "name"},
		{"create without an image is InvalidArgument", func() error {
			_, err := c.Create(ctx, &api.CreateImageRequest{})
			return err
		}, errdefs.IsInvalidArgument, "required"},
		{"create without a target is InvalidArgument", func() error {
			_, err := c.Create(ctx, &api.CreateImageRequest{Image: &api.Image{Name: "x"}})
			return err
		}, errdefs.IsInvalidArgument, "media type"},
		{"create with a malformed target digest is InvalidArgument", func() error {
			_, err := c.Create(ctx, &api.CreateImageRequest{Image: image("x", "sha256:nothex", nil)})
			return err
		}, errdefs.IsInvalidArgument, "digest"},
		{"create with an empty target digest is InvalidArgument", func() error {
			_, err := c.Create(ctx, &api.CreateImageRequest{Image: image("x", "", nil)})
			return err
		}, errdefs.IsInvalidArgument, "digest"},
		{"create with an oversized label is InvalidArgument", func() error {
			_, err := c.Create(ctx, &api.CreateImageRequest{Image: image("x", digestA,
				map[string]string{"k": strings.Repeat("v", metadata.MaxLabelSize)})})
			return err
		}, errdefs.IsInvalidArgument, "label"},
		{"create without a namespace is FailedPrecondition", func() error {
			_, err := c.Create(context.Background(), &api.CreateImageRequest{Image: image("x", digestA, nil)})
			return err
		}, errdefs.IsFailedPrecondition, "namespace"},
		{"get of a missing image is NotFound", func() error {
			_, err := c.Get(ctx, &api.GetImageRequest{Name: "nothere"})
			return err
		}, errdefs.IsNotFound, "nothere"},
		{"get in a namespace that does not exist is NotFound", func() error {
			_, err := c.Get(nsContext("empty"), &api.GetImageRequest{Name: "taken"})
			return err
		}, errdefs.IsNotFound, "taken"},
		{"update of a missing image is NotFound", func() error {
			_, err := c.Update(ctx, &api.UpdateImageRequest{Image: image("nothere", digestA, nil)})
			return err
		}, errdefs.IsNotFound, "nothere"},
		{"update without a name is InvalidArgument", func() error {
			_, err := c.Update(ctx, &api.UpdateImageRequest{Image: image("", digestA, nil)})
			return err
		}, errdefs.IsInvalidArgument, "name"},
		{"update that leaves an invalid target is InvalidArgument", func() error {
			_, err := c.Update(ctx, &api.UpdateImageRequest{Image: &api.Image{Name: "taken"},
				UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"target"}}})
			return err
		}, errdefs.IsInvalidArgument, "taken"},
		{"delete of a missing image is NotFound", func() error {
			_, err := c.Delete(ctx, &api.DeleteImageRequest{Name: "nothere"})
			return err
		}, errdefs.IsNotFound, "nothere"},
		{"delete naming another target is NotFound", func() error {
			_, err := c.Delete(ctx, &api.DeleteImageRequest{Name: "taken", Target: &types.Descriptor{Digest: digestB.String()}})
			return err
		}, errdefs.IsNotFound, digestB.String()},
		{"list with a malformed filter is InvalidArgument", func() error {
			_, err := c.List(ctx, &api.ListImagesRequest{Filters: []string{"name~=/[/"}})
			return err
		}, errdefs.IsInvalidArgument, "filter"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			if !tc.is(err) {
				t.Fatalf("got %v", err)
			}
			if !strings.Contains(err.Error(), tc.message) {
				t.Errorf("error %q does not say %q", err, tc.message)
			}
		})
	}
	if evs := rec.Take(); len(evs) != 0 {
		t.Errorf("failed calls published %v", evs)
	}
	got, err := c.Get(ctx, &api.GetImageRequest{Name: "taken"})
	if err != nil || got.GetImage().GetTarget().GetDigest() != digestA.String() {
		t.Errorf("failed calls changed the image: %v, %v", got, err)
	}
}

func TestDeleteWithMatchingTarget(t *testing.T) {
	c, _ := newClient(t)
	ctx := nsContext("ns")
	mustCreate(t, c, ctx, image("x", digestA, nil))
	if _, err := c.Delete(ctx, &api.DeleteImageRequest{Name: "x", Target: &types.Descriptor{Digest: digestA.String()}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(ctx, &api.GetImageRequest{Name: "x"}); !errdefs.IsNotFound(err) {
		t.Errorf("get after delete: %v", err)
	}
}

func TestUpdate(t *testing.T) {
	initial := &api.Image{
		Name:   "img",
		Labels: map[string]string{"a": "1", "b": "2"},
		Target: &types.Descriptor{MediaType: mediaManifest, Digest: digestA.String(), Size: 10,
			Annotations: map[string]string{"x": "1", "y": "2"}},
	}
	update := &api.Image{
		Name:   "img",
		Labels: map[string]string{"a": "9", "c": "3"},
		Target: &types.Descriptor{MediaType: mediaIndex, Digest: digestB.String(), Size: 20,
			Annotations: map[string]string{"x": "9", "z": "3"}},
	}
	type want struct {
		labels, annotations map[string]string
		digest              digest.Digest
	}
	for _, tc := range []struct {
		name  string
		paths []string
		want  want
		err   func(error) bool
	}{
		{"no paths replace labels and target", nil,
			want{map[string]string{"a": "9", "c": "3"}, map[string]string{"x": "9", "z": "3"}, digestB}, nil},
		{"labels replaces every label only", []string{"labels"},
			want{map[string]string{"a": "9", "c": "3"}, map[string]string{"x": "1", "y": "2"}, digestA}, nil},
		{"labels.KEY sets one label", []string{"labels.a"},
			want{map[string]string{"a": "9", "b": "2"}, map[string]string{"x": "1", "y": "2"}, digestA}, nil},
		{"labels.KEY absent from the update deletes the label", []string{"labels.b"},
			want{map[string]string{"a": "1"}, map[string]string{"x": "1", "y": "2"}, digestA}, nil},
		{"target replaces the whole target with its annotations", []string{"target"},
			want{map[string]string{"a": "1", "b": "2"}, map[string]string{"x": "9", "z": "3"}, digestB}, nil},
		{"annotations replaces the target's annotations only", []string{"annotations"},
			want{map[string]string{"a": "1", "b": "2"}, map[string]string{"x": "9", "z": "3"}, digestA}, nil},
		{"annotations.KEY sets one annotation", []string{"annotations.z"},
			want{map[string]string{"a": "1", "b": "2"}, map[string]string{"x": "1", "y": "2", "z": "3"}, digestA}, nil},
		{"annotations.KEY absent from the update deletes it", []string{"annotations.y"},
			want{map[string]string{"a": "1", "b": "2"}, map[string]string{"x": "1"}, digestA}, nil},
		{"several paths combine", []string{"labels.c", "target"},
			want{map[string]string{"a": "1", "b": "2", "c": "3"}, map[string]string{"x": "9", "z": "3"}, digestB}, nil},
		{"an unknown path is InvalidArgument and changes nothing", []string{"labels.a", "name"},
			want{initial.Labels, initial.Target.Annotations, digestA}, errdefs.IsInvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, rec := newClient(t)
			ctx := nsContext("ns")
			mustCreate(t, c, ctx, initial)
			rec.Take()
			req := &api.UpdateImageRequest{Image: update, SourceDateEpoch: timestamppb.New(epoch2)}
			if tc.paths != nil {
				req.UpdateMask = &fieldmaskpb.FieldMask{Paths: tc.paths}
			}
			_, err := c.Update(ctx, req)
			if tc.err != nil && !tc.err(err) || tc.err == nil && err != nil {
				t.Fatalf("update: %v", err)
			}
			resp, err := c.Get(ctx, &api.GetImageRequest{Name: "img"})
			if err != nil {
				t.Fatal(err)
			}
			img := resp.GetImage()
			if !maps.Equal(img.GetLabels(), tc.want.labels) {
				t.Errorf("labels = %v, want %v", img.GetLabels(), tc.want.labels)
			}
			if !maps.Equal(img.GetTarget().GetAnnotations(), tc.want.annotations) {
				t.Errorf("annotations = %v, want %v", img.GetTarget().GetAnnotations(), tc.want.annotations)
			}
			if img.GetTarget().GetDigest() != tc.want.digest.String() {
				t.Errorf("target = %s, want %s", img.GetTarget().GetDigest(), tc.want.digest)
			}
			if !img.GetCreatedAt().AsTime().Equal(epoch1) {
				t.Errorf("created = %v, want it kept at %v", img.GetCreatedAt().AsTime(), epoch1)
			}
			wantUpdated := epoch2
			if tc.err != nil {
				wantUpdated = epoch1
			}
			if !img.GetUpdatedAt().AsTime().Equal(wantUpdated) {
				t.Errorf("updated = %v, want %v", img.GetUpdatedAt().AsTime(), wantUpdated)
			}
			evs := rec.Take()
			if tc.err != nil {
				if len(evs) != 0 {
					t.Errorf("failed update published %v", evs)
				}
				return
			}
			if len(evs) != 1 || evs[0].Topic != TopicUpdate {
				t.Fatalf("published %v, want one %s", evs, TopicUpdate)
			}
			if ev, ok := evs[0].Event.(*eventsapi.ImageUpdate); !ok || ev.Name != "img" || !maps.Equal(ev.Labels, tc.want.labels) {
				t.Errorf("update event = %#v", evs[0].Event)
			}
		})
	}
}

func TestListFilters(t *testing.T) {
	c, _ := newClient(t)
	ctx := nsContext("ns")
	mustCreate(t, c, ctx, image("docker.io/library/busybox:latest", digestA, map[string]string{"tier": "base"}))
	mustCreate(t, c, ctx, image("docker.io/library/alpine:3", digestB, map[string]string{"tier": "base", "com.example/owner": "me"}))
	idx := image("example.com/app:v1", digestA, nil)
	idx.Target.MediaType = mediaIndex
	mustCreate(t, c, ctx, idx)
	mustCreate(t, c, nsContext("other"), image("docker.io/library/other:1", digestA, nil))

	for _, tc := range []struct {
		name    string
		filters []string
		want    string
	}{
		{"no filter lists the namespace's images sorted by name", nil,
			"docker.io/library/alpine:3,docker.io/library/busybox:latest,example.com/app:v1"},
		{"name equality", []string{"name==example.com/app:v1"}, "example.com/app:v1"},
		{"name regexp", []string{"name~=^docker.io/"}, "docker.io/library/alpine:3,docker.io/library/busybox:latest"},
		{"target digest", []string{"target.digest==" + digestB.String()}, "docker.io/library/alpine:3"},
		{"target media type", []string{"target.mediatype==" + mediaIndex}, "example.com/app:v1"},
		{"label equality", []string{"labels.tier==base"}, "docker.io/library/alpine:3,docker.io/library/busybox:latest"},
		{"label key with dots and slash, quoted", []string{`labels."com.example/owner"==me`}, "docker.io/library/alpine:3"},
		{"label presence", []string{"labels.tier"}, "docker.io/library/alpine:3,docker.io/library/busybox:latest"},
		{"label inequality includes images without it", []string{"labels.tier!=base"}, "example.com/app:v1"},
		{"comma means and", []string{"labels.tier==base,target.digest==" + digestA.String()}, "docker.io/library/busybox:latest"},
		{"several filters mean or", []string{"name==example.com/app:v1", "target.digest==" + digestB.String()},
			"docker.io/library/alpine:3,example.com/app:v1"},
		{"unknown field matches nothing", []string{"nosuch==x"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := c.List(ctx, &api.ListImagesRequest{Filters: tc.filters})
			if err != nil {
				t.Fatal(err)
			}
			names := make([]string, 0, len(resp.GetImages()))
			for _, img := range resp.GetImages() {
				names = append(names, img.GetName())
			}
			if got := strings.Join(names, ","); got != tc.want {
				t.Errorf("got %s, want %s", got, tc.want)
			}
		})
	}
}

func TestEmptyLabelValuesAreNotKept(t *testing.T) {
	c, _ := newClient(t)
	ctx := nsContext("ns")
	img := mustCreate(t, c, ctx, image("x", digestA, map[string]string{"keep": "v", "drop": ""}))
	if !maps.Equal(img.GetLabels(), map[string]string{"keep": "v"}) {
		t.Errorf("labels = %v, want only keep", img.GetLabels())
	}
}

func TestStoreSurvivesReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "meta.db")
	db, err := metadata.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx := nsContext("ns")
	s := NewStore(db)
	want := Image{Name: "kept", Labels: map[string]string{"a": "b"},
		Target: Descriptor{MediaType: mediaManifest, Digest: digestA, Size: 7, Annotations: map[string]string{"x": "y"}}}
	if _, err := s.Create(ctx, want, WithTime(epoch1)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Create(ctx, Image{Name: "gone", Target: want.Target}); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	s = NewStore(testserver.OpenDB(t, path))
	got, err := s.Get(ctx, "kept")
	if err != nil {
		t.Fatal(err)
	}
	if got.Name != want.Name || !maps.Equal(got.Labels, want.Labels) || got.Target.Digest != want.Target.Digest ||
		got.Target.Size != 7 || !maps.Equal(got.Target.Annotations, want.Target.Annotations) || !got.CreatedAt.Equal(epoch1) {
		t.Errorf("after reopen got %+v, want %+v", got, want)
	}
	if _, err := s.Get(ctx, "gone"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("deleted image after reopen: %v", err)
	}
}
