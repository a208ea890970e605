//go:build !linux

package store

import (
	"errors"
	"os"
)

// startWriteback does nothing where sync_file_range does not exist: the
// fsync at commit writes everything.
func startWriteback(*os.File, int64, int64) {}

// prepareRange is not supported here: writes allocate for themselves.
func prepareRange(*os.File, int64, int64) error { return errors.ErrUnsupported }
