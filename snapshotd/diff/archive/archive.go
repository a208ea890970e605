// Package archive moves layers between tar streams and directories: Apply
// extracts a layer's tar beneath a root without ever writing outside it,
// with OCI whiteouts either as removals or as overlay whiteouts on an
// overlay upper directory; WriteDiff and WriteOverlayUpper write the
// changes between two trees as a layer's tar.
package archive

import (
	"context"
	"errors"

	"github.com/containerd/errdefs"
)

const (
	// WhiteoutPrefix marks a tar entry that deletes the name after it.
	WhiteoutPrefix = ".wh."
	// OpaqueWhiteout in a directory hides everything lower layers had there.
	OpaqueWhiteout = ".wh..wh..opq"

	// overlayOpaqueXattr marks an overlay upper directory as opaque.
	overlayOpaqueXattr = "trusted.overlay.opaque"
	// overlayXattrPrefix is overlayfs's own xattr namespace, which a layer
	// must never set: it steers how overlayfs merges directories.
	overlayXattrPrefix = "trusted.overlay."
	// paxXattr prefixes the PAX records that carry extended attributes.
	paxXattr = "SCHILY.xattr."
)

// DefaultMaxFileSize is the largest regular file Apply accepts unless told
// otherwise: 1 TiB. A header claiming more is taken for an attack.
const DefaultMaxFileSize = 1 << 40

// Classify keeps the kind of err when it has one (a remote read failed, the
// call was cancelled) and otherwise calls it what a malformed layer is: an
// InvalidArgument error.
func Classify(err error) error {
	if err == nil || hasKind(err) {
		return err
	}
	return errors.Join(err, errdefs.ErrInvalidArgument)
}

func hasKind(err error) bool {
	for _, is := range []func(error) bool{
		errdefs.IsNotFound, errdefs.IsAlreadyExists, errdefs.IsInvalidArgument,
		errdefs.IsFailedPrecondition, errdefs.IsUnavailable, errdefs.IsNotImplemented,
		errdefs.IsDataLoss, errdefs.IsCanceled, errdefs.IsDeadlineExceeded,
		errdefs.IsPermissionDenied, errdefs.IsResourceExhausted, errdefs.IsInternal,
		errdefs.IsAborted, errdefs.IsOutOfRange, errdefs.IsUnauthorized, errdefs.IsUnknown,
	} {
		if is(err) {
			return true
		}
	}
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}
