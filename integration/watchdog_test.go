package integration

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"
)

// A test that hangs shows up in CI only as go test's timeout panic, whose
// dump of every goroutine is far longer than the tail of a CI log. Shortly
// before that timeout the watchdog prints, last, where this package's code
// is in each goroutine, and ends the run.
func startWatchdog() {
	flag.Parse()
	f := flag.Lookup("test.timeout")
	if f == nil {
		return
	}
	timeout, ok := f.Value.(flag.Getter).Get().(time.Duration)
	if !ok || timeout <= 0 {
		return
	}
	margin := min(timeout/10, time.Minute)
	time.AfterFunc(timeout-margin, func() {
		buf := make([]byte, 64<<20)
		buf = buf[:runtime.Stack(buf, true)]
		os.Stderr.Write(buf)
		fmt.Fprintf(os.Stderr, "\nwatchdog: the tests ran for %s, close to -timeout %s; where the integration code waits:\n%s",
			timeout-margin, timeout, ownFrames(buf))
		os.Exit(2)
	})
}

// ownFrames keeps, of a goroutine dump, the goroutines that are in this
// package's code, each as its header line and those frames.
func ownFrames(dump []byte) string {
	const pkg = "github.com/flotilla/flotilla/integration."
	var out strings.Builder
	for _, g := range bytes.Split(dump, []byte("\n\n")) {
		lines := strings.Split(string(g), "\n")
		var frames []string
		for i := 1; i+1 < len(lines); i++ {
			if strings.HasPrefix(lines[i], pkg) {
				frames = append(frames, "  "+strings.TrimPrefix(lines[i], pkg), "  "+strings.TrimSpace(lines[i+1]))
			}
		}
		if len(frames) > 0 {
			out.WriteString(lines[0] + "\n" + strings.Join(frames, "\n") + "\n")
		}
	}
	return out.String()
}
