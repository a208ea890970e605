package relay_test

import (
	"context"
	"encoding/xml"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/flotilla/flotilla/gateway/internal/sockdir"
	"github.com/flotilla/flotilla/gateway/relay"
)

// h2specPath finds the h2spec binary (scripts/install-deps.sh installs it):
// $H2SPEC, else PATH. Without it the test fails in CI and is skipped
// elsewhere.
func h2specPath(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("H2SPEC"); p != "" {
		return p
	}
	p, err := exec.LookPath("h2spec")
	if err == nil {
		return p
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("h2spec is required in CI: %v", err)
	}
	t.Skip("h2spec not installed (scripts/install-deps.sh installs it)")
	return ""
}

// junitSuites is the part of h2spec's JUnit report the test reads.
type junitSuites struct {
	Suites []struct {
		Cases []struct {
			Package string    `xml:"package,attr"`
			Name    string    `xml:"classname,attr"`
			Skipped *struct{} `xml:"skipped"`
			Failure *struct {
				Text string `xml:",chardata"`
			} `xml:"failure"`
			Error *struct {
				Text string `xml:",chardata"`
			} `xml:"error"`
		} `xml:"testcase"`
	} `xml:"testsuite"`
}

// h2specResult is which cases passed and which did not, by "section: title".
type h2specResult struct {
	passed map[string]bool
	failed map[string]string // case: what h2spec saw
	total  int
}

// runH2spec runs the whole suite against the server on addr.
// It may run on its own goroutine, so it reports errors rather than failing t.
func runH2spec(bin, addr, report string) (h2specResult, error) {
	var r h2specResult
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return r, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "-h", host, "-p", port, "-o", "2", "-j", report).CombinedOutput()
	if ctx.Err() != nil {
		return r, fmt.Errorf("h2spec did not finish: %v\n%s", err, out)
	}
	// h2spec exits non-zero when any case fails; the report says which.
	data, rerr := os.ReadFile(report)
	if rerr != nil {
		return r, fmt.Errorf("h2spec wrote no report (%v): %v\n%s", err, rerr, out)
	}
	var js junitSuites
	if err := xml.Unmarshal(data, &js); err != nil {
		return r, fmt.Errorf("h2spec report: %v", err)
	}
	r = h2specResult{passed: map[string]bool{}, failed: map[string]string{}}
	for _, s := range js.Suites {
		for _, c := range s.Cases {
			name := c.Package + ": " + c.Name
			r.total++
			switch {
			case c.Skipped != nil:
			case c.Failure != nil:
				r.failed[name] = strings.TrimSpace(c.Failure.Text)
			case c.Error != nil:
				r.failed[name] = strings.TrimSpace(c.Error.Text)
			default:
				r.passed[name] = true
			}
		}
	}
	return r, nil
}

// TestH2spec runs the HTTP/2 conformance suite h2spec against the relay on
// TCP, and against a plain grpc-go server for reference: the relay must
// pass every case grpc-go passes.
func TestH2spec(t *testing.T) {
	bin := h2specPath(t)
	dir := sockdir.New(t)

	// The reference: grpc-go serving on TCP itself.
	ref := grpc.NewServer(grpc.UnknownServiceHandler(echo), grpc.ForceServerCodecV2(rawCodec{}))
	refL, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go ref.Serve(refL)
	defer ref.Stop()

	// The relay on TCP, every call routed to a grpc-go backend like it.
	b := startBackend(t, dir, echo)
	up := &relay.Upstream{Name: "backend", Dial: func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", b.addr)
	}}
	r := relay.New(func(string) (*relay.Upstream, error) { return up, nil })
	relayL, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go r.Serve(relayL)
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		r.Shutdown(ctx)
	}()

	// Both at once: each run spends most of its time waiting on timeouts.
	var grpcRes, relayRes h2specResult
	var grpcErr, relayErr error
	reports := t.TempDir()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		grpcRes, grpcErr = runH2spec(bin, refL.Addr().String(), filepath.Join(reports, "grpc-go.xml"))
	}()
	go func() {
		defer wg.Done()
		relayRes, relayErr = runH2spec(bin, relayL.Addr().String(), filepath.Join(reports, "relay.xml"))
	}()
	wg.Wait()
	if grpcErr != nil || relayErr != nil {
		t.Fatalf("grpc-go: %v; relay: %v", grpcErr, relayErr)
	}

	t.Logf("h2spec: relay passes %d of %d cases, grpc-go %d of %d", len(relayRes.passed), relayRes.total, len(grpcRes.passed), grpcRes.total)
	var missing []string
	for name := range grpcRes.passed {
		if !relayRes.passed[name] {
			missing = append(missing, name)
		}
	}
	sort.Strings(missing)
	for _, name := range missing {
		t.Errorf("grpc-go passes, the relay does not: %s\n\t%s", name, strings.ReplaceAll(relayRes.failed[name], "\n", "\n\t"))
	}
	var more []string
	for name := range relayRes.passed {
		if !grpcRes.passed[name] {
			more = append(more, name)
		}
	}
	sort.Strings(more)
	if len(more) > 0 {
		t.Logf("the relay passes %d cases grpc-go does not: %s", len(more), strings.Join(more, "; "))
	}
	if testing.Verbose() {
		var still []string
		for name, why := range relayRes.failed {
			still = append(still, fmt.Sprintf("%s (%s)", name, strconv.Quote(firstLine(why))))
		}
		sort.Strings(still)
		for _, s := range still {
			t.Logf("relay fails: %s", s)
		}
	}
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
