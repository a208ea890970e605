package exchange

import (
	"sync"

	"github.com/containerd/containerd/api/types"
	"github.com/containerd/typeurl/v2"

	"github.com/flotilla/flotilla/services/filters"

	// The event types, so that event.<field> filters can decode them.
	_ "github.com/containerd/containerd/api/events"
)

// Fields exposes an envelope to containerd's filters as containerd does:
// "topic", "namespace", and "event.<field>", read from the decoded event
// when its type has fields (as containerd's event messages do), decoded at
// most once and only when a filter asks.
func Fields(env *types.Envelope) filters.Adaptor {
	var (
		once  sync.Once
		event interface {
			Field([]string) (string, bool)
		}
	)
	return filters.AdapterFunc(func(path []string) (string, bool) {
		if len(path) == 0 {
			return "", false
		}
		switch path[0] {
		case "topic":
			return env.GetTopic(), env.GetTopic() != ""
		case "namespace":
			return env.GetNamespace(), env.GetNamespace() != ""
		case "event":
			if env.GetEvent() == nil || len(path) < 2 {
				return "", false
			}
			once.Do(func() {
				v, err := typeurl.UnmarshalAny(env.GetEvent())
				if err != nil {
					return
				}
				event, _ = v.(interface {
					Field([]string) (string, bool)
				})
			})
			if event == nil {
				return "", false
			}
			return event.Field(path[1:])
		}
		return "", false
	})
}
