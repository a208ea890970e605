package events

import (
	"fmt"
	"strings"

	"github.com/containerd/errdefs"

	"github.com/flotilla/flotilla/services/identifiers"
)

// ValidateTopic checks topic against containerd's rules for event topics: it
// starts with '/', has at least one component, and every '/'-separated
// component is a valid identifier (so no empty components, no trailing
// slash). "/tasks/exit" and "/snapshot/commit" are valid; "tasks/exit",
// "/", "/tasks//exit" and "/tasks/exit/" are not. A violation is returned
// as an error wrapping errdefs.ErrInvalidArgument that names the topic.
func ValidateTopic(topic string) error {
	switch {
	case topic == "":
		return fmt.Errorf("event topic must not be empty: %w", errdefs.ErrInvalidArgument)
	case topic[0] != '/':
		return fmt.Errorf("event topic %q must start with '/': %w", topic, errdefs.ErrInvalidArgument)
	case len(topic) == 1:
		return fmt.Errorf("event topic %q must have at least one component: %w", topic, errdefs.ErrInvalidArgument)
	}
	for _, component := range strings.Split(topic[1:], "/") {
		if err := identifiers.Validate(component); err != nil {
			return fmt.Errorf("event topic %q: component %q: %w", topic, component, err)
		}
	}
	return nil
}
