package diff

import (
	"io"
	"sync"
)

// readAhead reads r in a goroutine of its own, up to depth chunks of size
// bytes ahead of its reader, so that decompressing and digesting a layer
// runs beside writing its files.
type readAhead struct {
	chunks chan []byte
	free   chan []byte
	stop   chan struct{}
	exited chan struct{}
	once   sync.Once
	cur    []byte
	buf    []byte
	err    error // set by the goroutine before it closes chunks
}

func newReadAhead(r io.Reader, size, depth int) *readAhead {
	ra := &readAhead{
		chunks: make(chan []byte, depth),
		free:   make(chan []byte, depth+2),
		stop:   make(chan struct{}),
		exited: make(chan struct{}),
	}
	for range depth + 2 {
		ra.free <- make([]byte, size)
	}
	go ra.fill(r)
	return ra
}

func (ra *readAhead) fill(r io.Reader) {
	defer close(ra.exited)
	defer close(ra.chunks)
	for {
		var buf []byte
		select {
		case buf = <-ra.free:
		case <-ra.stop:
			return
		}
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			select {
			case ra.chunks <- buf[:n]:
			case <-ra.stop:
				return
			}
		}
		if err == io.ErrUnexpectedEOF {
			err = io.EOF
		}
		if err != nil {
			ra.err = err
			return
		}
	}
}

// Read returns what the goroutine read, then its error (io.EOF at the end).
func (ra *readAhead) Read(p []byte) (int, error) {
	for len(ra.cur) == 0 {
		if ra.buf != nil {
			ra.free <- ra.buf[:cap(ra.buf)]
			ra.buf = nil
		}
		c, ok := <-ra.chunks
		if !ok {
			return 0, ra.err
		}
		ra.buf, ra.cur = c, c
	}
	n := copy(p, ra.cur)
	ra.cur = ra.cur[n:]
	return n, nil
}

// Close stops the goroutine and waits for it, so that r may be closed.
func (ra *readAhead) Close() error {
	ra.once.Do(func() { close(ra.stop) })
	<-ra.exited
	return nil
}
