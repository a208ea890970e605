package discovery

import (
	"context"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc/resolver"
)

// Builder returns a gRPC resolver builder for discover:// targets, reading
// r every interval and at once when gRPC asks (a connection failed).
func (r *Registry) Builder() resolver.Builder { return builder{r} }

type builder struct{ r *Registry }

func (b builder) Scheme() string { return Scheme }

func (b builder) Build(target resolver.Target, cc resolver.ClientConn, _ resolver.BuildOptions) (resolver.Resolver, error) {
	t, _, err := ParseAddress(target.URL.String())
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := &watch{r: b.r, t: t, cc: cc, now: make(chan struct{}, 1), cancel: cancel, done: make(chan struct{})}
	go w.run(ctx)
	return w, nil
}

// watch keeps one ClientConn's addresses in step with the registry.
type watch struct {
	r      *Registry
	t      Target
	cc     resolver.ClientConn
	now    chan struct{}
	cancel context.CancelFunc
	done   chan struct{}
	last   []string
}

func (w *watch) run(ctx context.Context) {
	defer close(w.done)
	t := time.NewTicker(w.r.interval)
	defer t.Stop()
	for {
		w.resolve(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-w.now:
		}
	}
}

func (w *watch) resolve(ctx context.Context) {
	lctx, cancel := context.WithTimeout(ctx, w.r.interval)
	insts, err := w.r.Lookup(lctx, w.t)
	cancel()
	if err != nil {
		// Redis out of reach keeps the addresses known; only a registry
		// that answers "none registered" takes them away.
		if ctx.Err() == nil && (w.last == nil || errdefs.IsNotFound(err)) {
			w.cc.ReportError(err)
			w.last = nil
		}
		return
	}
	addrs := make([]string, 0, len(insts))
	state := resolver.State{}
	for _, inst := range insts {
		addrs = append(addrs, inst.Address)
		state.Addresses = append(state.Addresses, resolver.Address{Addr: inst.Address, ServerName: serverName(inst.Address)})
	}
	if slices.Equal(addrs, w.last) {
		return
	}
	if w.last != nil {
		w.r.log.Info("discovered a change", "target", w.t.String(), "addresses", addrs, "was", w.last)
	}
	w.last = addrs
	if err := w.cc.UpdateState(state); err != nil && ctx.Err() == nil {
		w.r.log.Warn("addresses not taken", "target", w.t.String(), "error", err)
	}
}

// serverName is the host a TLS server at addr must name in its certificate.
func serverName(addr string) string {
	addr = strings.TrimPrefix(addr, "tcp://")
	if host, _, err := net.SplitHostPort(addr); err == nil {
		return host
	}
	return addr
}

func (w *watch) ResolveNow(resolver.ResolveNowOptions) {
	select {
	case w.now <- struct{}{}:
	default:
	}
}

func (w *watch) Close() {
	w.cancel()
	<-w.done
}
