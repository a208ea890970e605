package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	eventsapi "github.com/containerd/containerd/api/services/events/v1"
	ttrpcevents "github.com/containerd/containerd/api/services/ttrpc/events/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/v2/pkg/ttrpcutil"
	"github.com/containerd/ttrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/flotilla/flotilla/services/namespace"
)

// TestTTRPCEndpointForwardsEvents connects, as containerd's
// TestClientTTRPC_* do, with containerd's ttrpcutil client to the ttrpc
// socket beside the API socket (<address>.ttrpc), on Flotilla and
// containerd 1.6: an event forwarded there (the Events service's one call,
// which shims use) reaches a subscriber of the gRPC API, also after the
// client reconnects, and a closed client answers ErrClosed.
func TestTTRPCEndpointForwardsEvents(t *testing.T) {
	for _, kind := range clientBackends {
		t.Run(kind.name, func(t *testing.T) {
			b := kind.start(t)
			conn, err := grpc.NewClient("unix://"+b.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			ns := fmt.Sprintf("ttrpc-%d", time.Now().UnixNano())
			ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), namespace.MetadataKey, ns), time.Minute)
			defer cancel()
			sub, err := eventsapi.NewEventsClient(conn).Subscribe(ctx, &eventsapi.SubscribeRequest{
				Filters: []string{fmt.Sprintf(`namespace==%q`, ns)},
			})
			if err != nil {
				t.Fatal(err)
			}
			received := make(chan *types.Envelope)
			go func() {
				defer close(received)
				for {
					env, err := sub.Recv()
					if err != nil {
						return
					}
					received <- env
				}
			}()

			client, err := ttrpcutil.NewClient(b.Socket + ".ttrpc")
			if err != nil {
				t.Fatalf("ttrpc client: %v", err)
			}
			forward := func(topic string) error {
				service, err := client.EventsService()
				if err != nil {
					return err
				}
				_, err = service.Forward(context.Background(), &ttrpcevents.ForwardRequest{Envelope: &types.Envelope{
					Timestamp: timestamppb.Now(), Namespace: ns, Topic: topic,
					Event: &anypb.Any{TypeUrl: "flotilla.test/event", Value: []byte(topic)},
				}})
				return err
			}
			// Until the subscription is live an event may be missed: forward
			// until one arrives.
			done := map[string]bool{}
			waitFor := func(topic string) {
				t.Helper()
				defer func() { done[topic] = true }()
				for {
					if err := forward(topic); err != nil {
						t.Fatalf("Forward %s: %v", topic, err)
					}
					select {
					case env, ok := <-received:
						if !ok {
							t.Fatal("subscription ended")
						}
						if done[env.Topic] {
							continue // a repeat of an earlier wait's
						}
						if env.Topic != topic || env.Namespace != ns || string(env.Event.GetValue()) != topic {
							t.Fatalf("received %s in %s (%q), want %s", env.Topic, env.Namespace, env.Event.GetValue(), topic)
						}
						return
					case <-time.After(200 * time.Millisecond):
					case <-ctx.Done():
						t.Fatalf("%s forwarded over ttrpc never reached the subscriber", topic)
					}
				}
			}
			waitFor("/test/forwarded")
			if err := client.Reconnect(); err != nil {
				t.Fatalf("Reconnect: %v", err)
			}
			waitFor("/test/reconnected")
			if err := client.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			if err := forward("/test/closed"); err != ttrpc.ErrClosed {
				t.Fatalf("Forward on a closed client: %v, want ttrpc.ErrClosed", err)
			}
		})
	}
}
