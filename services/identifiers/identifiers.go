// Package identifiers validates the names that clients choose for namespaces,
// containers, snapshots and the like, with containerd's rules so that a name
// accepted by containerd is accepted here and the reverse.
package identifiers

import (
	"fmt"
	"regexp"

	"github.com/containerd/errdefs"
)

// MaxLength is the longest identifier accepted, as in containerd.
const MaxLength = 76

// An identifier is alphanumeric components joined by single '.', '_' or '-'.
var identifierRe = regexp.MustCompile(`^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$`)

// Validate returns an errdefs.ErrInvalidArgument error saying what is wrong
// with s, or nil when s is a valid identifier.
func Validate(s string) error {
	switch {
	case s == "":
		return fmt.Errorf("identifier must not be empty: %w", errdefs.ErrInvalidArgument)
	case len(s) > MaxLength:
		return fmt.Errorf("identifier %q is %d characters, longer than the %d allowed: %w", s, len(s), MaxLength, errdefs.ErrInvalidArgument)
	case !identifierRe.MatchString(s):
		return fmt.Errorf("identifier %q must be letters and digits joined by single '.', '_' or '-': %w", s, errdefs.ErrInvalidArgument)
	}
	return nil
}
