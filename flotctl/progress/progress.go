// Package progress shows a transfer's progress reports: live bars per blob
// and a total on a terminal (github.com/vbauerster/mpb), plain lines
// elsewhere (one per change of state, so logs stay readable).
package progress

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"

	"github.com/flotilla/flotilla/flotctl/output"
	"github.com/flotilla/flotilla/flotctl/transfer"
)

// Display receives a transfer's progress reports and shows them.
type Display interface {
	// Report takes one report; it is safe to call from any goroutine.
	Report(transfer.Progress)
	// Finish stops the display and prints the totals: what was
	// transferred, how much, in how long.
	Finish(err error)
}

// finished are the events after which a blob's bytes are all there.
var finished = map[string]bool{
	"complete": true, "already exists": true, "exists": true, "done": true,
	"extracted": true, "saved": true, "pushed": true, "mounted": true,
}

// blob is what a display knows about one named item.
type blob struct {
	name     string
	event    atomic.Value // string
	total    int64
	progress int64
	bar      *mpb.Bar
}

// tally keeps the state shared by both displays.
type tally struct {
	mu     sync.Mutex
	start  time.Time
	status string
	blobs  map[string]*blob
	order  []*blob
}

func newTally() tally { return tally{start: time.Now(), blobs: map[string]*blob{}} }

// totals sums the sizes of the blobs whose size is known.
func (t *tally) totals() (done, total int64, n int) {
	for _, b := range t.order {
		if b.total > 0 {
			total += b.total
			done += min(b.progress, b.total)
			n++
		}
	}
	return done, total, n
}

func (t *tally) summary(verb string, err error) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	done, total, n := t.totals()
	elapsed := time.Since(t.start).Round(10 * time.Millisecond)
	switch {
	case err != nil && n > 0:
		return fmt.Sprintf("failed after %s, with %d of %d blobs done (%s of %s)", elapsed, countDone(t.order), n, output.Size(done), output.Size(total))
	case err != nil:
		return fmt.Sprintf("failed after %s", elapsed)
	case n == 0:
		// The server reported no sizes (an import does not).
		return fmt.Sprintf("%s in %s", verb, elapsed)
	}
	return fmt.Sprintf("%s %d blobs, %s in %s", verb, n, output.Size(total), elapsed)
}

func countDone(bs []*blob) int {
	n := 0
	for _, b := range bs {
		if ev, _ := b.event.Load().(string); finished[ev] {
			n++
		}
	}
	return n
}

// ShortName makes a blob's report name readable: "layer-sha256:0123456789abcdef…"
// becomes "layer 0123456789ab".
func ShortName(name string) string {
	kind, rest, ok := strings.Cut(name, "-sha256:")
	if ok {
		return kind + " " + output.Short(rest)
	}
	if i := strings.Index(name, "sha256:"); i >= 0 {
		return name[:i] + output.Short(name[i:])
	}
	return name
}

// NewBars returns a display that draws bars on the terminal w: one per
// blob whose size is known, a total at the bottom, and the transfer's
// status lines printed above them.
func NewBars(w io.Writer, verb string) Display {
	b := &bars{tally: newTally(), verb: verb, w: w}
	b.p = mpb.New(mpb.WithOutput(w), mpb.WithWidth(40), mpb.WithRefreshRate(100*time.Millisecond))
	b.totalBar = b.p.AddBar(0,
		mpb.BarPriority(1<<30), // always last
		mpb.PrependDecorators(decor.Name(fmt.Sprintf("%-24s %-12s", "total", ""))),
		mpb.AppendDecorators(decor.CountersKibiByte("% .1f / % .1f", decor.WCSyncWidth), decor.Name(" "), decor.AverageSpeed(decor.SizeB1024(0), "% .1f", decor.WCSyncWidth)),
	)
	return b
}

type bars struct {
	tally
	verb     string
	w        io.Writer
	p        *mpb.Progress
	totalBar *mpb.Bar
}

func (b *bars) Report(p transfer.Progress) {
	b.mu.Lock()
	defer b.mu.Unlock()
	it, ok := b.blobs[p.Name]
	if p.Name == "" || (!ok && p.Total <= 0) {
		// The transfer's status, or an item without bytes to count (the
		// image itself): a line above the bars when it changes.
		line := p.Event
		if p.Name != "" {
			line = ShortName(p.Name) + ": " + p.Event
		}
		if line != b.status {
			b.status = line
			fmt.Fprintln(b.p, line)
		}
		return
	}
	if !ok {
		it = &blob{name: p.Name}
		it.event.Store("")
		b.blobs[p.Name] = it
		b.order = append(b.order, it)
		it.bar = b.p.AddBar(p.Total,
			mpb.PrependDecorators(decor.Name(fmt.Sprintf("%-24.24s", ShortName(p.Name))), decor.Any(func(decor.Statistics) string {
				ev, _ := it.event.Load().(string)
				return fmt.Sprintf(" %-12.12s", ev)
			})),
			mpb.AppendDecorators(decor.CountersKibiByte("% .1f / % .1f", decor.WCSyncWidth)),
		)
	}
	it.event.Store(p.Event)
	if p.Total > 0 {
		it.total = p.Total
	}
	if p.Progress > it.progress {
		it.progress = p.Progress
	}
	if finished[p.Event] && it.total > 0 {
		it.progress = it.total
	}
	if it.total > 0 {
		it.bar.SetTotal(it.total, false)
		it.bar.SetCurrent(it.progress)
	}
	done, total, _ := b.totals()
	b.totalBar.SetTotal(total, false)
	b.totalBar.SetCurrent(done)
}

func (b *bars) Finish(err error) {
	b.mu.Lock()
	for _, it := range b.order {
		if err != nil {
			it.bar.Abort(false)
		} else {
			it.bar.SetTotal(-1, true)
		}
	}
	done, total, _ := b.totals()
	if err != nil {
		b.totalBar.Abort(false)
	} else {
		b.totalBar.SetTotal(total, false)
		b.totalBar.SetCurrent(done)
		b.totalBar.SetTotal(-1, true)
	}
	b.mu.Unlock()
	b.p.Wait()
	fmt.Fprintln(b.w, b.summary(b.verb, err))
}

// NewLines returns a display that prints one line per state change of a
// blob, for output that is not a terminal.
func NewLines(w io.Writer, verb string) Display {
	return &lines{tally: newTally(), w: w, verb: verb}
}

type lines struct {
	tally
	w    io.Writer
	verb string
}

func (l *lines) Report(p transfer.Progress) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if p.Name == "" {
		if p.Event != l.status {
			l.status = p.Event
			fmt.Fprintln(l.w, p.Event)
		}
		return
	}
	it, ok := l.blobs[p.Name]
	if !ok {
		it = &blob{name: p.Name}
		it.event.Store("")
		l.blobs[p.Name] = it
		l.order = append(l.order, it)
	}
	if p.Total > 0 {
		it.total = p.Total
	}
	if p.Progress > it.progress {
		it.progress = p.Progress
	}
	if finished[p.Event] && it.total > 0 {
		it.progress = it.total
	}
	if prev, _ := it.event.Load().(string); prev != p.Event {
		it.event.Store(p.Event)
		if it.total > 0 {
			fmt.Fprintf(l.w, "%s: %s (%s)\n", ShortName(p.Name), p.Event, output.Size(it.total))
		} else {
			fmt.Fprintf(l.w, "%s: %s\n", ShortName(p.Name), p.Event)
		}
	}
}

func (l *lines) Finish(err error) {
	fmt.Fprintln(l.w, l.summary(l.verb, err))
}
