package store

import (
	"hash"
	"os"
	"sync"
)

// behind does, on a goroutine of its own and in order, the work an ingest
// need not finish before it acknowledges a write: hashing the chunk and
// starting the disk writeback of what is written so that the fsync at
// commit has little left to do. Clients wait for each write's answer, so taking this work
// off that path is what lets an ingest approach the speed of its slowest
// step rather than the sum of them. The data itself reaches the ingest file
// before the write is acknowledged, so nothing acknowledged is lost when
// contentd dies; the hash can always be recomputed from the file.
type behind struct {
	h    hash.Hash
	f    *os.File
	work chan chunk
	busy sync.WaitGroup
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

func newBehind(h hash.Hash, f *os.File) *behind {
	b := &behind{h: h, f: f, work: make(chan chunk, behindQueue)}
	go func() {
		for c := range b.work {
			b.h.Write(c.p)
			if c.release != nil {
				c.release()
			}
			if c.flushTo > c.flushFrom {
				startWriteback(b.f, c.flushFrom, c.flushTo-c.flushFrom)
			}
			b.busy.Done()
		}
	}()
	return b
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
