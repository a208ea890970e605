package store

import (
	"os"

	"golang.org/x/sys/unix"
)

// startWriteback asks the kernel to start writing the range to disk without
// waiting for it; errors are left for the fsync at commit to report.
func startWriteback(f *os.File, off, n int64) {
	unix.SyncFileRange(int(f.Fd()), off, n, unix.SYNC_FILE_RANGE_WRITE)
}

// prepareRange allocates the range of f (growing f when it ends before the
// range; data already there is kept) and reads it into the page cache: an
// allocated range that was never written reads as zeros without any disk
// I/O.
func prepareRange(f *os.File, off, n int64) error {
	fd := int(f.Fd())
	if err := unix.Fallocate(fd, 0, off, n); err != nil {
		return err
	}
	return unix.Fadvise(fd, off, n, unix.FADV_WILLNEED)
}
