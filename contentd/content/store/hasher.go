package store

import (
	"hash"
	"sync"
)

// hasher hashes the chunks it is given on a goroutine of its own, so that
// hashing one chunk of a Write stream overlaps with receiving the next: an
// ingest then runs at the speed of the slower of the two, not of their sum.
// The data itself is written to the ingest file before the write is
// acknowledged; only the hash lags, and it can always be recomputed from
// the file.
type hasher struct {
	h      hash.Hash
	chunks chan []byte
	busy   sync.WaitGroup
}

// hashQueue is how many chunks may wait to be hashed; a Write stream's
// chunks are up to a few MiB, so this bounds what is held.
const hashQueue = 4

func newHasher(h hash.Hash) *hasher {
	hs := &hasher{h: h, chunks: make(chan []byte, hashQueue)}
	go func() {
		for p := range hs.chunks {
			hs.h.Write(p)
			hs.busy.Done()
		}
	}()
	return hs
}

// Write queues p to be hashed. The caller must not change p afterwards.
func (hs *hasher) Write(p []byte) {
	if len(p) == 0 {
		return
	}
	hs.busy.Add(1)
	hs.chunks <- p
}

// Sync waits until everything queued is hashed and returns the hash, for
// reading its sum or state or resetting it.
func (hs *hasher) Sync() hash.Hash {
	hs.busy.Wait()
	return hs.h
}

// Stop ends the hashing goroutine once the queue is drained.
func (hs *hasher) Stop() {
	hs.busy.Wait()
	close(hs.chunks)
}
