// Package restart keeps containers in the status their labels ask for, as
// containerd's restart monitor (its io.containerd.internal.v1 "restart"
// plugin) does: a container labelled containerd.io/restart.status=running
// whose task is gone or stopped gets a new task, started, if its restart
// policy allows; one labelled stopped has its task killed and deleted.
//
// The labels are containerd's, so clients that set them for containerd
// (nerdctl run --restart, the Go client's restart package) work unchanged.
package restart

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
)

// Container labels, as containerd names them.
const (
	// StatusLabel is the status to keep the container's task in:
	// "running" or "stopped".
	StatusLabel = "containerd.io/restart.status"
	// PolicyLabel is the restart policy (see ParsePolicy); none means always.
	PolicyLabel = "containerd.io/restart.policy"
	// CountLabel counts the restarts the monitor made.
	CountLabel = "containerd.io/restart.count"
	// LogURILabel is where a restarted task's output goes (binary://,
	// file://, fifo://).
	LogURILabel = "containerd.io/restart.loguri"
	// LogPathLabel is a file for a restarted task's output; containerd
	// 1.x's older form of LogURILabel.
	LogPathLabel = "containerd.io/restart.logpath"
	// ExplicitlyStoppedLabel, "true", keeps an unless-stopped container
	// stopped.
	ExplicitlyStoppedLabel = "containerd.io/restart.explicitly-stopped"
)

// Statuses of StatusLabel (containerd's ProcessStatus values).
const (
	Running = "running"
	Stopped = "stopped"
)

// Capabilities are the policies the monitor knows, as it reports them in
// introspection (nerdctl checks a policy against them).
var Capabilities = []string{"no", "always", "on-failure", "unless-stopped"}

// Policy is a restart policy: no, always, on-failure[:max-retries] or
// unless-stopped.
type Policy struct {
	Name       string
	MaxRetries int // on-failure only; 0 is no limit
}

// ParsePolicy parses PolicyLabel's value; the empty policy is always. An
// unknown policy, or a retry count on any policy but on-failure, is
// InvalidArgument.
func ParsePolicy(s string) (Policy, error) {
	name, count, hasCount := strings.Cut(s, ":")
	switch name {
	case "":
		name = "always"
		fallthrough
	case "no", "always", "unless-stopped":
		if hasCount {
			return Policy{}, fmt.Errorf("restart policy %q takes no retry count: %w", name, errdefs.ErrInvalidArgument)
		}
		return Policy{Name: name}, nil
	case "on-failure":
		p := Policy{Name: name}
		if hasCount {
			n, err := strconv.Atoi(count)
			if err != nil || n < 0 {
				return Policy{}, fmt.Errorf("restart policy %q: bad retry count: %w", s, errdefs.ErrInvalidArgument)
			}
			p.MaxRetries = n
		}
		return p, nil
	}
	return Policy{}, fmt.Errorf("restart policy %q is not supported: %w", s, errdefs.ErrInvalidArgument)
}

// ShouldRestart reports whether a container with labels whose task ended
// with exitStatus (0 when there is no task) is to be restarted. As in
// containerd, a container labelled explicitly stopped is not, whatever its
// policy (the monitor clears that label of "always" containers when it
// starts, so they come back after a restart of the daemon).
func ShouldRestart(labels map[string]string, exitStatus uint32) (bool, error) {
	if stopped, _ := strconv.ParseBool(labels[ExplicitlyStoppedLabel]); stopped {
		return false, nil
	}
	p, err := ParsePolicy(labels[PolicyLabel])
	if err != nil {
		return false, err
	}
	switch p.Name {
	case "always":
		return true, nil
	case "on-failure":
		count := 0
		if v := labels[CountLabel]; v != "" {
			if count, err = strconv.Atoi(v); err != nil {
				return false, fmt.Errorf("label %s=%q: %w", CountLabel, v, errdefs.ErrInvalidArgument)
			}
		}
		return exitStatus != 0 && (p.MaxRetries == 0 || count < p.MaxRetries), nil
	case "unless-stopped":
		return true, nil
	}
	return false, nil // no
}
