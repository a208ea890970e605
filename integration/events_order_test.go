package integration

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	eventsapi "github.com/containerd/containerd/api/services/events/v1"
	"github.com/containerd/containerd/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/flotilla/flotilla/flotctl/stack"
	"github.com/flotilla/flotilla/integration/imagekit"
)

// TestEventsKeepTheirOrderAcrossARedisOutage runs a container's whole life
// (snapshotd and taskd both publish) while Redis is down, brings Redis back,
// and checks that a subscriber gets the container's events in the order
// they happened, as containerd's single process delivers them: the services'
// backlogs must not arrive one service after the other.
func TestEventsKeepTheirOrderAcrossARedisOutage(t *testing.T) {
	redis := startRedis(t)
	s := startStackWith(t, func(l *stack.Layout) { l.RedisURL = redis.URL() })

	img, err := imagekit.BuildBusybox()
	if err != nil {
		t.Fatal(err)
	}
	const ns, ref = "order", "flotilla.local/order/busybox:1"
	archive := filepath.Join(t.TempDir(), "busybox.tar")
	f, err := os.Create(archive)
	if err != nil {
		t.Fatal(err)
	}
	if err := img.WriteArchive(f, ref); err != nil {
		t.Fatal(err)
	}
	f.Close()
	s.MustCtr(ns, "images", "import", archive)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := eventsapi.NewEventsClient(s.Conn()).Subscribe(ctx, &eventsapi.SubscribeRequest{Filters: []string{`namespace==order`}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Header(); err != nil {
		t.Fatalf("subscribe: %v", err)
	}
	envs := make(chan *types.Envelope, 1000)
	go func() {
		defer close(envs)
		for {
			env, err := stream.Recv()
			if err != nil {
				return
			}
			envs <- env
		}
	}()

	redis.kill()
	waitEventdHealth(t, s, healthpb.HealthCheckResponse_NOT_SERVING)
	if out := s.MustCtr(ns, "run", "--rm", ref, "c1", "echo", "hello"); strings.TrimSpace(out) != "hello" {
		t.Fatalf("ctr run printed %q", out)
	}
	redis.start()

	var got []*types.Envelope
	var topics []string
	deadline := time.After(30 * time.Second)
collect:
	for {
		select {
		case env, ok := <-envs:
			if !ok {
				t.Fatalf("subscription ended; saw %v", topics)
			}
			got = append(got, env)
			topics = append(topics, env.Topic)
			if env.Topic == "/containers/delete" {
				break collect
			}
		case <-deadline:
			t.Fatalf("no /containers/delete within 30s of redis coming back; saw %v", topics)
		}
	}
	t.Logf("events after the outage: %v", topics)

	// ctr run --rm: the snapshot is prepared before the container is
	// created and removed before the container is deleted.
	want := []string{"/snapshot/prepare", "/containers/create", "/tasks/create", "/tasks/start",
		"/tasks/exit", "/tasks/delete", "/snapshot/remove", "/containers/delete"}
	var seen []string
	for _, topic := range topics {
		for _, w := range want {
			if topic == w {
				seen = append(seen, topic)
			}
		}
	}
	if strings.Join(seen, " ") != strings.Join(want, " ") {
		t.Fatalf("the container's events arrived as %v, want %v", seen, want)
	}
	for i := 1; i < len(got); i++ {
		if got[i].Timestamp.AsTime().Before(got[i-1].Timestamp.AsTime()) {
			t.Fatalf("%s (at %v) arrived after %s (at %v), which happened later",
				got[i].Topic, got[i].Timestamp.AsTime(), got[i-1].Topic, got[i-1].Timestamp.AsTime())
		}
	}
}

// waitEventdHealth waits until eventd's Events service reports want.
func waitEventdHealth(t *testing.T, s *Stack, want healthpb.HealthCheckResponse_ServingStatus) {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+s.Service("eventd").Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var last healthpb.HealthCheckResponse_ServingStatus
	for {
		resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: "containerd.services.events.v1.Events"})
		if err == nil {
			last = resp.Status
			if last == want {
				return
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("eventd's health is %v, not %v", last, want)
		case <-time.After(20 * time.Millisecond):
		}
	}
}
