package store

import (
	"hash"
	"os"
	"sync"
)

// behind does, on a goroutine of its own and in order, the work an ingest
// need not finish before it acknowledges a write: hashing the chunk,
// starting the disk writeback of what is written so that the fsync at
// commit has little left to do, and preparing the file for the chunks to
// come (prepare). Clients wait for each write's answer, so taking this work
// off that path is what lets an ingest approach the speed of its slowest
// step rather than the sum of them. The data itself reaches the ingest file
// before the write is acknowledged, so nothing acknowledged is lost when
// contentd dies; the hash can always be recomputed from the file.
type behind struct {
	h    hash.Hash
	f    *os.File
	work chan chunk
	busy sync.WaitGroup

	// total is the size the ingest expects, 0 if unknown.
	total int64
	// prepared is the offset up to which the file is allocated and cached;
	// noPrepare is set once the file system refuses to allocate ahead.
	prepared  int64
	noPrepare bool
}

type chunk struct {
	p []byte
	// end is the offset of the data's end once p is written.
	end int64
	// flushTo, when past flushFrom, starts writeback of the file from
	// flushFrom up to there once p is hashed.
	flushFrom, flushTo int64
	// release, when set, gives p back once it is hashed.
	release func()
}

// behindQueue is how many chunks may wait; a Write stream's chunks are up
// to a few MiB, so this bounds what is held.
const behindQueue = 4

// writebackEvery is how much is written between two writeback starts.
const writebackEvery = 8 << 20

// An ingest that has written prepareAfter bytes has its file prepared up to
// prepareAhead bytes past its end, prepareStep bytes at a time, and never
// past the total it expects. Small blobs (manifests, configs) stay below
// prepareAfter and cost no more than before.
const (
	prepareAfter = 4 << 20
	prepareAhead = 32 << 20
	prepareStep  = 8 << 20
)

func newBehind(h hash.Hash, f *os.File, total int64) *behind {
	b := &behind{h: h, f: f, total: total, work: make(chan chunk, behindQueue)}
	go func() {
		for c := range b.work {
			b.h.Write(c.p)
			if c.release != nil {
				c.release()
			}
			if c.flushTo > c.flushFrom {
				startWriteback(b.f, c.flushFrom, c.flushTo-c.flushFrom)
			}
			b.prepare(c.end)
			b.busy.Done()
		}
	}()
	return b
}

// prepare allocates the file's blocks ahead of the data's end and brings
// their pages, zeroed, into the page cache, so that the next writes copy
// into pages that exist. Allocating a page is most of a write's cost when
// it is not done ahead, and far more on a virtual machine whose free memory
// goes back to the host: doing it here moves it off the acknowledgement
// path. The space past the data is given back when the writer closes.
func (b *behind) prepare(end int64) {
	b.prepared = max(b.prepared, end)
	if b.noPrepare || end < prepareAfter {
		return
	}
	limit := end + prepareAhead
	if b.total > 0 {
		limit = min(limit, b.total)
	}
	for b.prepared < limit {
		n := min(prepareStep, limit-b.prepared)
		if err := prepareRange(b.f, b.prepared, n); err != nil {
			b.noPrepare = true // a write allocates for itself, as it would anyway
			return
		}
		b.prepared += n
	}
}

// add queues c. The caller must not change c.p afterwards.
func (b *behind) add(c chunk) {
	b.busy.Add(1)
	b.work <- c
}

// Hash waits until everything queued is done and returns the hash, for
// reading its sum or state or resetting it.
func (b *behind) Hash() hash.Hash {
	b.busy.Wait()
	return b.h
}

// Stop ends the goroutine once the queue is drained.
func (b *behind) Stop() {
	b.busy.Wait()
	close(b.work)
}
