package restart

import (
	"testing"

	"github.com/containerd/errdefs"
)

func TestParsePolicy(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Policy
		bad  bool
	}{
		{in: "", want: Policy{Name: "always"}},
		{in: "always", want: Policy{Name: "always"}},
		{in: "no", want: Policy{Name: "no"}},
		{in: "unless-stopped", want: Policy{Name: "unless-stopped"}},
		{in: "on-failure", want: Policy{Name: "on-failure"}},
		{in: "on-failure:3", want: Policy{Name: "on-failure", MaxRetries: 3}},
		{in: "on-failure:x", bad: true},
		{in: "on-failure:-1", bad: true},
		{in: "always:3", bad: true},
		{in: "sometimes", bad: true},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParsePolicy(tc.in)
			if tc.bad {
				if !errdefs.IsInvalidArgument(err) {
					t.Fatalf("ParsePolicy(%q) = %v, %v; want InvalidArgument", tc.in, got, err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ParsePolicy(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
			}
		})
	}
}

func TestShouldRestart(t *testing.T) {
	for _, tc := range []struct {
		name   string
		labels map[string]string
		exit   uint32
		want   bool
	}{
		{"no policy is always, after success", map[string]string{}, 0, true},
		{"always after a failure", map[string]string{PolicyLabel: "always"}, 1, true},
		{"no never restarts", map[string]string{PolicyLabel: "no"}, 1, false},
		{"on-failure after a failure", map[string]string{PolicyLabel: "on-failure"}, 3, true},
		{"on-failure not after success", map[string]string{PolicyLabel: "on-failure"}, 0, false},
		{"on-failure:2 below the limit", map[string]string{PolicyLabel: "on-failure:2", CountLabel: "1"}, 3, true},
		{"on-failure:2 at the limit", map[string]string{PolicyLabel: "on-failure:2", CountLabel: "2"}, 3, false},
		{"on-failure with a bad count", map[string]string{PolicyLabel: "on-failure", CountLabel: "x"}, 3, false},
		{"unless-stopped", map[string]string{PolicyLabel: "unless-stopped"}, 0, true},
		{"unless-stopped, explicitly stopped", map[string]string{PolicyLabel: "unless-stopped", ExplicitlyStoppedLabel: "true"}, 0, false},
		{"always, explicitly stopped", map[string]string{PolicyLabel: "always", ExplicitlyStoppedLabel: "true"}, 0, false},
		{"on-failure, explicitly stopped", map[string]string{PolicyLabel: "on-failure", ExplicitlyStoppedLabel: "true"}, 1, false},
		{"always, explicitly stopped false", map[string]string{PolicyLabel: "always", ExplicitlyStoppedLabel: "false"}, 0, true},
		{"an unknown policy does not restart", map[string]string{PolicyLabel: "sometimes"}, 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, _ := ShouldRestart(tc.labels, tc.exit)
			if got != tc.want {
				t.Fatalf("ShouldRestart(%v, %d) = %v, want %v", tc.labels, tc.exit, got, tc.want)
			}
		})
	}
}
