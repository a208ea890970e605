package transfer

import (
	"container/heap"
	"context"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/flotilla/flotilla/contentd/content"
	"github.com/flotilla/flotilla/contentd/registry"
)

// A large blob is fetched in ranged parts of partSize bytes, several at
// once, where the registry does ranges and one connection is slow. The
// parts arrive out of order but go into the ingest in order, so the store
// hashes the blob front to back as it would a single GET, followers read
// it as it grows, and an interrupted fetch leaves a prefix to resume from.
// Bytes a part fetched ahead of the ingest wait in memory: a pull holds at
// most one part buffer per request slot.

// DefaultPartSize is the size of the ranged parts of a large blob.
const DefaultPartSize = 8 << 20

// DefaultParallelAfter is how long the first part may take before the
// rest of the blob is fetched in parallel parts: 8 MiB in 250 ms is 32
// MiB/s. Faster registries (a local one, a mirror in the rack) are not the
// bottleneck: parallel parts would only cost CPU there (each ranged GET
// is copied through user space by a registry that would have sent a
// whole blob with sendfile).
const DefaultParallelAfter = 250 * time.Millisecond

// progressStep is how many bytes a part takes before it wakes the writer:
// small enough that followers see a layer flow, large enough that the
// ingest is written in large pieces.
const progressStep = 1 << 20

// slots bounds the registry requests of one pull. A free slot goes to the
// waiter of the lowest rank (the layer unpack needs first), then the
// lowest part, then the earliest: the bottom layer gets the bandwidth
// first, so applying it while it downloads ends soonest. A nil *slots
// bounds nothing.
type slots struct {
	mu      sync.Mutex
	free    int
	seq     uint64
	waiting slotQueue
}

func newSlots(n int) *slots { return &slots{free: n} }

type slotWaiter struct {
	rank, part int
	seq        uint64
	ready      chan struct{}
	granted    bool
	index      int
}

// acquire waits for a slot for part of the blob of rank.
func (s *slots) acquire(ctx context.Context, rank, part int) error {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	if s.free > 0 && len(s.waiting) == 0 {
		s.free--
		s.mu.Unlock()
		return nil
	}
	s.seq++
	w := &slotWaiter{rank: rank, part: part, seq: s.seq, ready: make(chan struct{})}
	heap.Push(&s.waiting, w)
	s.mu.Unlock()
	select {
	case <-w.ready:
		return nil
	case <-ctx.Done():
		s.mu.Lock()
		granted := w.granted
		if !granted {
			heap.Remove(&s.waiting, w.index)
		}
		s.mu.Unlock()
		if granted {
			s.release() // handed over meanwhile: pass it on
		}
		return context.Cause(ctx)
	}
}

// release gives a slot back, to the first waiter if there is one.
func (s *slots) release() {
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.waiting) == 0 {
		s.free++
		return
	}
	w := heap.Pop(&s.waiting).(*slotWaiter)
	w.granted = true
	close(w.ready)
}

type slotQueue []*slotWaiter

func (q slotQueue) Len() int { return len(q) }
func (q slotQueue) Less(i, j int) bool {
	a, b := q[i], q[j]
	if a.rank != b.rank {
		return a.rank < b.rank
	}
	if a.part != b.part {
		return a.part < b.part
	}
	return a.seq < b.seq
}
func (q slotQueue) Swap(i, j int) {
	q[i], q[j] = q[j], q[i]
	q[i].index, q[j].index = i, j
}
func (q *slotQueue) Push(x any) {
	w := x.(*slotWaiter)
	w.index = len(*q)
	*q = append(*q, w)
}
func (q *slotQueue) Pop() any {
	old := *q
	w := old[len(old)-1]
	old[len(old)-1] = nil
	*q = old[:len(old)-1]
	return w
}

// order is where a blob stands in its pull: the request slots it takes
// and its rank among the blobs waiting for them.
type order struct {
	slots *slots
	rank  int
}

// part is one ranged request of a blob, read into memory by its own
// goroutine while the writer empties it into the ingest in order.
type part struct {
	start, end int64 // the blob's bytes [start, end)
	buf        []byte
	wake       chan struct{} // poked (never blocking) when n or err changes
	released   bool          // its slot was given back (writer only)

	mu   sync.Mutex
	n    int   // bytes of buf filled
	err  error // why the request failed
	done bool  // n is final
}

func (p *part) state() (int, bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n, p.done, p.err
}

func (p *part) poke() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// fill reads body into p.buf, waking the writer every progressStep bytes.
func (p *part) fill(body io.ReadCloser) {
	defer body.Close()
	n, woke := 0, 0
	var err error
	for n < len(p.buf) && err == nil {
		var k int
		k, err = body.Read(p.buf[n:min(len(p.buf), n+progressStep)])
		n += k
		if n-woke >= progressStep || n == len(p.buf) {
			p.mu.Lock()
			p.n = n
			p.mu.Unlock()
			woke = n
			p.poke()
		}
	}
	if n == len(p.buf) {
		err = nil
	} else if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF // the registry sent fewer bytes than the range
	}
	p.mu.Lock()
	p.n, p.done, p.err = n, true, err
	p.mu.Unlock()
	p.poke()
}

var partBuffers sync.Pool

func partBuffer(size int64) []byte {
	if bp, ok := partBuffers.Get().(*[]byte); ok && int64(cap(*bp)) >= size {
		return (*bp)[:size]
	}
	return make([]byte, size)
}

// fetchRanged writes bytes [offset, size) of desc into w. It asks for the
// first part alone: a registry that answers it with the whole blob does
// not do ranges, and that answer is read as the one stream. A registry
// that sent the part within parallelAfter is fast enough for one
// connection: the rest comes in one more request. A slower one gets the
// rest in parallel parts (fetchParts). written is told each new end of
// the ingest's data; the returned count is where the data ends.
func (f *fetcher) fetchRanged(ctx context.Context, repo *registry.Repository, desc ocispec.Descriptor, w content.Writer, offset int64, o order, written func(int64)) (int64, error) {
	if err := o.slots.acquire(ctx, o.rank, 0); err != nil {
		return offset, err
	}
	began := time.Now()
	end := min(offset+f.partSize, desc.Size)
	first, err := repo.FetchRange(ctx, desc, offset, end)
	if err != nil {
		o.slots.release()
		return offset, classify(err)
	}
	if !first.Partial {
		// No ranges here: the whole blob in one stream, skipping what
		// the ingest holds (the commit's digest covers those bytes too).
		defer o.slots.release()
		defer first.Close()
		if _, err := io.CopyN(io.Discard, first, offset); err != nil {
			return offset, classify(err)
		}
		return f.pour(w, first, offset, desc.Size, written)
	}
	done, err := f.pour(w, first, offset, end, written)
	first.Close()
	o.slots.release()
	if err != nil || done >= desc.Size {
		return done, err
	}
	if time.Since(began) >= f.parallelAfter {
		return f.fetchParts(ctx, repo, desc, w, done, o, written)
	}
	if err := o.slots.acquire(ctx, o.rank, 1); err != nil {
		return done, err
	}
	defer o.slots.release()
	rest, err := repo.FetchRange(ctx, desc, done, -1)
	if err != nil {
		return done, classify(err)
	}
	defer rest.Close()
	if !rest.Partial {
		return done, fmt.Errorf("registry answered the range from %d with the whole blob after answering an earlier one: %w", done, errdefs.ErrUnavailable)
	}
	return f.pour(w, rest, done, desc.Size, written)
}

// fetchParts writes bytes [offset, size) of desc into w from ranged parts
// of partSize, fetched as the pull's slots allow, each read into memory
// by its own goroutine and written into the ingest in order.
func (f *fetcher) fetchParts(ctx context.Context, repo *registry.Repository, desc ocispec.Descriptor, w content.Writer, offset int64, o order, written func(int64)) (int64, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	// Room for every part, so the producer never waits on the writer.
	parts := make(chan *part, (desc.Size-offset)/f.partSize+1)
	var workers sync.WaitGroup
	// The producer asks for the next part whenever a slot is free for it.
	var produced []*part // the producer's until it exits
	producerDone := make(chan struct{})
	go func() {
		defer close(producerDone)
		defer close(parts)
		for i, at := 1, offset; at < desc.Size; i, at = i+1, at+f.partSize {
			if err := o.slots.acquire(ctx, o.rank, i); err != nil {
				return
			}
			end := min(at+f.partSize, desc.Size)
			p := &part{start: at, end: end, buf: partBuffer(end - at), wake: make(chan struct{}, 1)}
			produced = append(produced, p)
			body, err := repo.FetchRange(ctx, desc, p.start, p.end)
			if err == nil && !body.Partial {
				body.Close()
				err = fmt.Errorf("registry answered the range %d-%d with the whole blob after answering an earlier one: %w", p.start, p.end-1, errdefs.ErrUnavailable)
			}
			if err != nil {
				p.mu.Lock()
				p.done, p.err = true, err
				p.mu.Unlock()
				cancel(err)
			} else {
				workers.Add(1)
				go func() {
					defer workers.Done()
					p.fill(body)
					if _, _, err := p.state(); err != nil {
						cancel(err)
					}
				}()
			}
			select {
			case parts <- p:
			case <-ctx.Done():
				return
			}
		}
	}()

	done := offset
	var pending sync.WaitGroup // writes the store may still read from a part's buffer
	var errOut error
	write := func(p *part) error {
		for off := 0; ; {
			n, finished, perr := p.state()
			if n > off {
				pending.Add(1)
				if err := writeOwned(w, p.buf[off:n], pending.Done); err != nil {
					return fmt.Errorf("write %s: %w", desc.Digest, err)
				}
				done += int64(n - off)
				off = n
				written(done)
				continue
			}
			if perr != nil {
				return classify(perr)
			}
			if finished {
				return nil
			}
			select {
			case <-p.wake:
			case <-ctx.Done():
				if _, _, perr := p.state(); perr != nil {
					return classify(perr)
				}
				return classify(context.Cause(ctx))
			}
		}
	}
	for p := range parts {
		if errOut != nil {
			continue // draining
		}
		if errOut = write(p); errOut != nil {
			cancel(errOut)
			continue
		}
		// Written: its slot goes to the next part.
		p.released = true
		o.slots.release()
	}
	// Every goroutine is gone before the slots and buffers are given back.
	<-producerDone
	workers.Wait()
	for _, p := range produced {
		if !p.released {
			o.slots.release()
		}
	}
	go func() {
		pending.Wait()
		for _, p := range produced {
			b := p.buf[:0]
			partBuffers.Put(&b)
		}
	}()
	if errOut != nil {
		return done, errOut
	}
	if done != desc.Size {
		if err := context.Cause(ctx); err != nil {
			return done, classify(err)
		}
		return done, fmt.Errorf("parts ended at %d of %d bytes: %w", done, desc.Size, io.ErrUnexpectedEOF)
	}
	return done, nil
}

// pour copies r into w from offset to size, failing on a body shorter or
// longer than that.
func (f *fetcher) pour(w content.Writer, r io.Reader, offset, size int64, written func(int64)) (int64, error) {
	done := offset
	lr := io.LimitReader(r, size-offset+1) // one byte more shows an oversized blob
	for {
		// The store may hash a buffer after Write returns: each read
		// takes a fresh one, given back once the store is done with it.
		bp := bufPool.Get().(*[]byte)
		n, rerr := io.ReadFull(lr, *bp)
		if n > 0 {
			if err := writeOwned(w, (*bp)[:n], func() { bufPool.Put(bp) }); err != nil {
				return done, err
			}
			done += int64(n)
			written(done)
		} else {
			bufPool.Put(bp)
		}
		if (rerr == io.EOF || rerr == io.ErrUnexpectedEOF) && done >= size {
			return done, nil
		}
		if rerr == io.EOF {
			// Cut short: keep what came, for the next pull to resume.
			rerr = io.ErrUnexpectedEOF
		}
		if rerr != nil {
			return done, classify(rerr)
		}
	}
}
