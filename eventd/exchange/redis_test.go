package exchange_test

import (
	"context"
	"io"
	"log/slog"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	apievents "github.com/containerd/containerd/api/events"
	api "github.com/containerd/containerd/api/services/events/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/flotilla/flotilla/eventd/bus"
	"github.com/flotilla/flotilla/services/events"
	"github.com/flotilla/flotilla/services/namespace"
)

func anyOf(t testing.TB, v any) *types.Envelope {
	a, err := typeurl.MarshalAnyToProto(v)
	if err != nil {
		t.Fatal(err)
	}
	return &types.Envelope{Event: a}
}

// seq reads the sequence number a test put in a NamespaceCreate's name.
func seq(t *testing.T, env *types.Envelope) int {
	t.Helper()
	var ev apievents.NamespaceCreate
	if err := env.GetEvent().UnmarshalTo(&ev); err != nil {
		t.Fatalf("%s: %v", env.GetTopic(), err)
	}
	n, err := strconv.Atoi(ev.Name)
	if err != nil {
		t.Fatalf("%s: name %q", env.GetTopic(), ev.Name)
	}
	return n
}

func TestSubscriberOnOneEventdReceivesInOrderWhatAnotherPublishes(t *testing.T) {
	redis := startRedis(t)
	first := startEventd(t, "eventd-1", redis.URL())
	second := startEventd(t, "eventd-2", redis.URL())

	all := subscribe(t, first)
	exits := subscribe(t, first, `topic=="/tasks/exit",namespace==a`, `event.name==7`)

	type sent struct {
		ns, topic string
		n         int
	}
	var published []sent
	for i := range 60 {
		s := sent{ns: []string{"a", "b"}[i%2], topic: []string{"/tasks/exit", "/images/create", "/namespaces/create"}[i%3], n: i}
		env := anyOf(t, &apievents.NamespaceCreate{Name: strconv.Itoa(i)})
		if _, err := second.Events().Publish(withNamespace(s.ns), &api.PublishRequest{Topic: s.topic, Event: env.Event}); err != nil {
			t.Fatalf("publish %d through the second eventd: %v", i, err)
		}
		published = append(published, s)
	}

	t.Run("a subscriber without filters gets every event in order", func(t *testing.T) {
		for _, want := range published {
			env := next(t, all, 5*time.Second)
			if got := seq(t, env); got != want.n || env.Namespace != want.ns || env.Topic != want.topic {
				t.Fatalf("got %d %s %s, want %d %s %s", got, env.Namespace, env.Topic, want.n, want.ns, want.topic)
			}
			if env.Timestamp == nil || time.Since(env.Timestamp.AsTime()) > time.Minute {
				t.Fatalf("event %d has timestamp %v", want.n, env.Timestamp)
			}
		}
	})
	t.Run("a filtered subscriber gets only the matching events, in order", func(t *testing.T) {
		for _, want := range published {
			if !(want.topic == "/tasks/exit" && want.ns == "a") && want.n != 7 {
				continue
			}
			if got := seq(t, next(t, exits, 5*time.Second)); got != want.n {
				t.Fatalf("filtered subscriber got %d, want %d", got, want.n)
			}
		}
		select {
		case env := <-exits:
			t.Fatalf("filtered subscriber got an extra event %d %s %s", seq(t, env), env.Namespace, env.Topic)
		case <-time.After(200 * time.Millisecond):
		}
	})
	t.Run("the kit's publisher delivers through the second eventd", func(t *testing.T) {
		pub, err := events.NewRemote(second.addr, events.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
		if err != nil {
			t.Fatal(err)
		}
		ctx := namespace.WithNamespace(context.Background(), "kit")
		for i := 100; i < 110; i++ {
			if err := pub.Publish(ctx, "/namespaces/create", &apievents.NamespaceCreate{Name: strconv.Itoa(i)}); err != nil {
				t.Fatal(err)
			}
		}
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := pub.Close(cctx); err != nil {
			t.Fatal(err)
		}
		for i := 100; i < 110; i++ {
			env := next(t, all, 5*time.Second)
			if got := seq(t, env); got != i || env.Namespace != "kit" {
				t.Fatalf("got %d in %s, want %d in kit", got, env.Namespace, i)
			}
		}
	})
	t.Run("metrics count published and delivered events and subscribers", func(t *testing.T) {
		if v := metric(t, second.Registry(), "eventd_events_published_total", "topic", "/tasks/exit"); v != 20 {
			t.Errorf("published /tasks/exit on the second eventd = %v, want 20", v)
		}
		if v := metric(t, first.Registry(), "eventd_subscribers"); v != 2 {
			t.Errorf("subscribers on the first eventd = %v, want 2", v)
		}
		if v := metric(t, first.Registry(), "eventd_events_delivered_total"); v < 60+11 {
			t.Errorf("delivered on the first eventd = %v, want at least 71", v)
		}
		if v := metric(t, first.Registry(), "eventd_redis_connected"); v != 1 {
			t.Errorf("redis connected gauge = %v, want 1", v)
		}
	})
}

func TestInProcessBusServesOneNode(t *testing.T) {
	e := startEventd(t, "eventd", "")
	sub := subscribe(t, e, `namespace==x`)
	for i := range 20 {
		env := anyOf(t, &apievents.NamespaceCreate{Name: strconv.Itoa(i)})
		if _, err := e.Events().Publish(withNamespace([]string{"x", "y"}[i%2]), &api.PublishRequest{Topic: "/namespaces/create", Event: env.Event}); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 20; i += 2 {
		if got := seq(t, next(t, sub, 5*time.Second)); got != i {
			t.Fatalf("got %d, want %d", got, i)
		}
	}
}

func TestBadInputIsInvalidArgument(t *testing.T) {
	redis := startRedis(t)
	e := startEventd(t, "eventd", redis.URL())
	ev := anyOf(t, &apievents.TaskExit{ContainerID: "c"}).Event
	now := timestamppb.Now()
	for _, tc := range []struct {
		name string
		call func() error
	}{
		{"publish with an invalid topic", func() error {
			_, err := e.Events().Publish(withNamespace("default"), &api.PublishRequest{Topic: "tasks exit", Event: ev})
			return err
		}},
		{"forward with a zero timestamp", func() error {
			_, err := e.Events().Forward(context.Background(), &api.ForwardRequest{Envelope: &types.Envelope{
				Timestamp: &timestamppb.Timestamp{}, Namespace: "default", Topic: "/tasks/exit", Event: ev}})
			return err
		}},
		{"forward of an envelope without a namespace", func() error {
			_, err := e.Events().Forward(context.Background(), &api.ForwardRequest{Envelope: &types.Envelope{
				Timestamp: now, Topic: "/tasks/exit", Event: ev}})
			return err
		}},
		{"forward with an invalid topic", func() error {
			_, err := e.Events().Forward(context.Background(), &api.ForwardRequest{Envelope: &types.Envelope{
				Timestamp: now, Namespace: "default", Topic: "/tasks//exit", Event: ev}})
			return err
		}},
		{"subscribe with an unparsable filter", func() error {
			stream, err := e.Events().Subscribe(context.Background(), &api.SubscribeRequest{Filters: []string{`topic==`}})
			if err != nil {
				return err
			}
			_, err = stream.Recv()
			return err
		}},
	} {
		t.Run(tc.name+" is InvalidArgument", func(t *testing.T) {
			err := tc.call()
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("got %v, want InvalidArgument", err)
			}
			if msg := status.Convert(err).Message(); msg == "" {
				t.Fatal("error has no message")
			}
		})
	}
	t.Run("publish without a namespace is FailedPrecondition, as containerd answers", func(t *testing.T) {
		_, err := e.Events().Publish(context.Background(), &api.PublishRequest{Topic: "/tasks/exit", Event: ev})
		if status.Code(err) != codes.FailedPrecondition {
			t.Fatalf("got %v, want FailedPrecondition", err)
		}
	})
}

// TestRedisOutage kills Redis for five seconds in the middle of a stream of
// events published through the kit's publisher into the second eventd. The
// publisher queues and retries what eventd cannot take, so the only events
// that do not arrive are those its bounded queue dropped, and the drop
// counter names them exactly.
func TestRedisOutage(t *testing.T) {
	redis := startRedis(t)
	grace := bus.WithRecoveryGrace(time.Minute)
	// eventd holds up to 100 events itself through the outage; the rest
	// wait in the publisher's queue, which fills.
	first := startEventd(t, "eventd-1", redis.URL(), grace)
	second := startEventd(t, "eventd-2", redis.URL(), grace, bus.WithOutbox(100))
	// Let each eventd note how many eventd share the channel (sampled every second).
	time.Sleep(2500 * time.Millisecond)
	for _, e := range []*eventd{first, second} {
		if strings.Contains(e.log.String(), "unreachable") {
			t.Fatalf("%s lost redis while idle:\n%s", e.addr, e.log.String())
		}
	}

	sub := subscribe(t, first)
	filtered := subscribe(t, first, `topic=="/namespaces/create"`)

	const total, queue = 900, 150
	pub, err := events.NewRemote(second.addr, events.WithQueueSize(queue),
		events.WithRetryBackoff(20*time.Millisecond, 200*time.Millisecond),
		events.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheusRegistry(t, pub)

	var outage sync.WaitGroup
	var sawDown, sawUp bool
	ctx := namespace.WithNamespace(context.Background(), "default")
	accepted := make([]int, 0, total)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for i := range total {
		<-tick.C
		if i == 150 {
			outage.Add(1)
			go func() {
				defer outage.Done()
				redis.kill()
				hctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
				sawDown = waitStatus(hctx, first, healthpb.HealthCheckResponse_NOT_SERVING)
				cancel()
				time.Sleep(5 * time.Second)
				redis.start()
				hctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
				sawUp = waitStatus(hctx, first, healthpb.HealthCheckResponse_SERVING)
				cancel()
			}()
		}
		topic := []string{"/namespaces/create", "/images/create"}[i%2]
		err := pub.Publish(ctx, topic, &apievents.NamespaceCreate{Name: strconv.Itoa(i)})
		switch {
		case err == nil:
			accepted = append(accepted, i)
		case errdefs.IsResourceExhausted(err):
		default:
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	outage.Wait()
	cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := pub.Close(cctx); err != nil {
		t.Fatalf("publisher did not flush its queue: %v", err)
	}

	dropped := metric(t, reg, "events_publisher_dropped_total", "reason", events.DropQueueFull)
	t.Logf("published %d, queued and delivered %d, dropped for a full queue %v", total, len(accepted), dropped)
	if len(accepted) == total {
		t.Fatal("the outage did not fill the publisher's queue; the test proves nothing about drops")
	}
	if int(dropped) != total-len(accepted) {
		t.Fatalf("drop counter %v, but %d events were refused", dropped, total-len(accepted))
	}
	t.Run("subscribers resume and receive every queued event in order", func(t *testing.T) {
		for _, want := range accepted {
			if got := seq(t, next(t, sub, 10*time.Second)); got != want {
				t.Fatalf("got event %d, want %d", got, want)
			}
		}
		for _, want := range accepted {
			if want%2 != 0 {
				continue
			}
			if got := seq(t, next(t, filtered, 10*time.Second)); got != want {
				t.Fatalf("filtered subscriber got event %d, want %d", got, want)
			}
		}
		select {
		case env := <-sub:
			t.Fatalf("extra event %d", seq(t, env))
		case <-time.After(300 * time.Millisecond):
		}
	})
	t.Run("health followed the outage", func(t *testing.T) {
		if !sawDown || !sawUp {
			t.Fatalf("health of the first eventd: not serving during the outage %v, serving after %v", sawDown, sawUp)
		}
		if v := metric(t, first.Registry(), "eventd_redis_connected"); v != 1 {
			t.Fatalf("redis connected gauge = %v after the outage", v)
		}
	})
	t.Run("the outage is in the logs", func(t *testing.T) {
		for _, e := range []*eventd{first, second} {
			logs := e.log.String()
			down := strings.Index(logs, "redis unreachable; reconnecting")
			up := strings.LastIndex(logs, "subscribed to redis")
			if down < 0 || up < down {
				t.Fatalf("%s logs do not show the loss and the return of redis:\n%s", e.addr, logs)
			}
		}
	})
}

func waitStatus(ctx context.Context, e *eventd, want healthpb.HealthCheckResponse_ServingStatus) bool {
	for {
		if e.health(ctx) == want {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func TestCtrEventsDecodesWhatEventdStreams(t *testing.T) {
	ctr, err := exec.LookPath("ctr")
	if err != nil {
		t.Skip("ctr not installed")
	}
	e := startEventd(t, "eventd", "")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := exec.CommandContext(ctx, ctr, "--address", e.addr, "events")
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cancel()
		cmd.Wait()
	}()
	want := []struct {
		topic string
		event any
		text  string
	}{
		{"/namespaces/create", &apievents.NamespaceCreate{Name: "demo"}, `"name":"demo"`},
		{"/images/create", &apievents.ImageCreate{Name: "docker.io/library/busybox:latest"}, `"name":"docker.io/library/busybox:latest"`},
		{"/containers/create", &apievents.ContainerCreate{ID: "web", Image: "busybox"}, `"id":"web"`},
		{"/tasks/exit", &apievents.TaskExit{ContainerID: "web", ExitStatus: 3}, `"exit_status":3`},
	}
	// ctr subscribes at some point after it starts; publish until it shows.
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(out.String(), "/namespaces/create") {
		if time.Now().After(deadline) {
			t.Fatalf("ctr events printed nothing:\n%s", out.String())
		}
		env := anyOf(t, want[0].event)
		if _, err := e.Events().Publish(withNamespace("demo"), &api.PublishRequest{Topic: want[0].topic, Event: env.Event}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, w := range want[1:] {
		env := anyOf(t, w.event)
		if _, err := e.Events().Publish(withNamespace("demo"), &api.PublishRequest{Topic: w.topic, Event: env.Event}); err != nil {
			t.Fatal(err)
		}
	}
	for _, w := range want {
		deadline := time.Now().Add(10 * time.Second)
		for {
			line := lineWith(out.String(), w.topic)
			if line != "" && strings.Contains(line, "demo") && strings.Contains(line, w.text) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("ctr events did not print %s with %s:\n%s", w.topic, w.text, out.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	t.Logf("ctr events printed:\n%s", out.String())
}

func lineWith(s, sub string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			return l
		}
	}
	return ""
}
