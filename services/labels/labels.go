// Package labels checks labels the way containerd does (its labels
// package): a label's key is at most MaxSize bytes, its key and value
// together too, and a key is never empty. Errors are InvalidArgument and
// quote only the start of an offending key, never a whole oversized one.
package labels

import (
	"fmt"

	"github.com/containerd/errdefs"
)

// MaxSize bounds a label's key, and its key and value together, in bytes.
const MaxSize = 4096

// quoted is how much of an offending key an error quotes.
const quoted = 32

// Validate checks one label.
func Validate(k, v string) error {
	switch {
	case k == "":
		return fmt.Errorf("label key must not be empty: %w", errdefs.ErrInvalidArgument)
	case len(k) > MaxSize:
		return fmt.Errorf("label key %s is %d bytes, more than the %d allowed: %w", Excerpt(k), len(k), MaxSize, errdefs.ErrInvalidArgument)
	case len(k)+len(v) > MaxSize:
		return fmt.Errorf("label %s: key and value are %d bytes, more than the %d allowed: %w", Excerpt(k), len(k)+len(v), MaxSize, errdefs.ErrInvalidArgument)
	}
	return nil
}

// ValidateAll checks every label of m.
func ValidateAll(m map[string]string) error {
	for k, v := range m {
		if err := Validate(k, v); err != nil {
			return err
		}
	}
	return nil
}

// Excerpt quotes s, cut to its first few bytes when it is long, for error
// messages about oversized input.
func Excerpt(s string) string {
	if len(s) <= quoted {
		return fmt.Sprintf("%q", s)
	}
	return fmt.Sprintf("%q… (%d bytes)", s[:quoted], len(s))
}
