package identifiers

import (
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name  string
		id    string
		valid bool
	}{
		{"plain word", "default", true},
		{"joined by separators", "k8s.io_a-b", true},
		{"digits only", "123", true},
		{"76 characters", strings.Repeat("a", 76), true},
		{"empty", "", false},
		{"77 characters", strings.Repeat("a", 77), false},
		{"leading dash", "-bad", false},
		{"trailing dot", "bad.", false},
		{"double separator", "a..b", false},
		{"slash", "a/b", false},
		{"space", "a b", false},
		{"unicode", "naïve", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := Validate(tc.id)
			if tc.valid && err != nil {
				t.Fatalf("Validate(%q) = %v, want nil", tc.id, err)
			}
			if !tc.valid && !errdefs.IsInvalidArgument(err) {
				t.Fatalf("Validate(%q) = %v, want an InvalidArgument error", tc.id, err)
			}
		})
	}
}
