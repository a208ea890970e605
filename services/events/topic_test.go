package events

import (
	"testing"

	"github.com/containerd/errdefs"
)

func TestValidateTopic(t *testing.T) {
	for _, tc := range []struct {
		name  string
		topic string
		ok    bool
	}{
		{"containerd's task exit topic is valid", "/tasks/exit", true},
		{"one component is enough", "/events", true},
		{"components may hold dots, dashes and underscores", "/snapshot.v1/commit-done_now", true},
		{"empty topic is rejected", "", false},
		{"topic without leading slash is rejected", "tasks/exit", false},
		{"a lone slash has no component", "/", false},
		{"empty component in the middle is rejected", "/tasks//exit", false},
		{"trailing slash makes an empty component", "/tasks/exit/", false},
		{"spaces are not identifier characters", "/tasks/ exit", false},
		{"a component may not start with a dash", "/tasks/-exit", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := ValidateTopic(tc.topic)
			if tc.ok && err != nil {
				t.Fatalf("ValidateTopic(%q) = %v, want nil", tc.topic, err)
			}
			if !tc.ok && !errdefs.IsInvalidArgument(err) {
				t.Fatalf("ValidateTopic(%q) = %v, want InvalidArgument", tc.topic, err)
			}
		})
	}
}
