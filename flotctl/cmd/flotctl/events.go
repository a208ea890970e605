package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/signal"
	"time"

	_ "github.com/containerd/containerd/api/events" // registers the event types typeurl decodes
	eventsapi "github.com/containerd/containerd/api/services/events/v1"
	"github.com/containerd/typeurl/v2"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/flotilla/flotilla/flotctl/client"
	"github.com/flotilla/flotilla/flotctl/output"
)

// eventLine is one event as `flotctl events --format json` prints it, one
// JSON object per line.
type eventLine struct {
	Timestamp time.Time       `json:"timestamp"`
	Namespace string          `json:"namespace"`
	Topic     string          `json:"topic"`
	Type      string          `json:"type,omitempty"`
	Event     json.RawMessage `json:"event,omitempty"`
}

func newEventsCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "events [FILTER...]",
		Short: "Print events as they happen, in every namespace (containerd filters, e.g. 'topic~=/tasks/', 'namespace==default')",
		Long: "Events streams the events every service publishes until interrupted. Filters are containerd's:\n" +
			"fields topic, namespace and event.<field>, operators ==, !=, ~= (regexp); several filters are ORed,\n" +
			"comma-separated conditions in one filter are ANDed.",
	}
	format := addFormatFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		f, err := output.ParseFormat(*format)
		if err != nil {
			return err
		}
		return g.withClient(func(c *client.Client) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), unix.SIGINT, unix.SIGTERM)
			defer stop()
			stream, err := c.Events.Subscribe(ctx, &eventsapi.SubscribeRequest{Filters: args})
			if err != nil {
				return fmt.Errorf("subscribe to events: %w", err)
			}
			out := cmd.OutOrStdout()
			for {
				env, err := stream.Recv()
				if err != nil {
					if ctx.Err() != nil || errors.Is(err, io.EOF) {
						return nil
					}
					return fmt.Errorf("events: %w", err)
				}
				line := eventLine{Timestamp: env.Timestamp.AsTime(), Namespace: env.Namespace, Topic: env.Topic}
				if env.Event != nil {
					line.Type = env.Event.TypeUrl
					line.Event = decodeEvent(env.Event.TypeUrl, env.Event.Value)
				}
				if err := printEvent(out, f, line); err != nil {
					return err
				}
			}
		})
	}
	return cmd
}

// decodeEvent renders an event's payload as JSON, or null when its type is
// not one flotctl knows.
func decodeEvent(typeURL string, value []byte) json.RawMessage {
	v, err := typeurl.UnmarshalByTypeURL(typeURL, value)
	if err != nil {
		return json.RawMessage("null")
	}
	m, ok := v.(proto.Message)
	if !ok {
		return json.RawMessage("null")
	}
	b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
	if err != nil {
		return json.RawMessage("null")
	}
	return b
}

func printEvent(w io.Writer, f output.Format, e eventLine) error {
	if f == output.JSON {
		b, err := json.Marshal(e)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	}
	_, err := fmt.Fprintf(w, "%s %s %s %s\n", e.Timestamp.Format(time.RFC3339Nano), e.Namespace, e.Topic, e.Event)
	return err
}
