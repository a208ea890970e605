package containers

import (
	"context"
	"slices"
	"sync"
	"testing"

	api "github.com/containerd/containerd/api/services/containers/v1"
	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/flotilla/flotilla/services/namespace"
)

type recorder struct {
	mu     sync.Mutex
	topics []string
}

func (r *recorder) Publish(_ context.Context, topic string, _ any) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.topics = append(r.topics, topic)
	return nil
}

type fakeTasks map[string]bool

func (f fakeTasks) HasTask(_ context.Context, id string) bool { return f[id] }

func TestServicePublishesOneEventPerChange(t *testing.T) {
	rec := &recorder{}
	svc := NewService(newTestStore(t), fakeTasks{"busy": true}, rec, nil)
	ctx := namespace.WithNamespace(context.Background(), "ns")
	for _, id := range []string{"c", "busy"} {
		if _, err := svc.Create(ctx, &api.CreateContainerRequest{Container: container(id)}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := svc.Update(ctx, &api.UpdateContainerRequest{Container: container("c", func(c *api.Container) { c.Image = "i" }),
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"image"}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Delete(ctx, &api.DeleteContainerRequest{ID: "busy"}); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("delete a container with a task: %v", err)
	}
	if _, err := svc.Delete(ctx, &api.DeleteContainerRequest{ID: "c"}); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Create(ctx, &api.CreateContainerRequest{Container: container("c", func(c *api.Container) { c.Spec = nil })}); err == nil {
		t.Fatal("invalid create succeeded")
	}
	want := []string{TopicCreate, TopicCreate, TopicUpdate, TopicDelete}
	if !slices.Equal(rec.topics, want) {
		t.Fatalf("events %v, want %v", rec.topics, want)
	}
}
