package tracing_test

import (
	"context"
	"testing"
	"time"

	"github.com/containerd/ttrpc"

	"github.com/flotilla/flotilla/services/tracing"
	"github.com/flotilla/flotilla/services/tracing/tracingtest"
)

func TestWithoutAnEndpointTracingIsOffAndAddsNothing(t *testing.T) {
	t.Setenv(tracing.EndpointEnv, "")
	p, err := tracing.New(context.Background(), "test", "")
	if err != nil {
		t.Fatal(err)
	}
	if p != nil || p.Enabled() || len(p.ServerOptions()) != 0 || len(p.DialOptions()) != 0 || len(p.Env()) != 0 {
		t.Fatalf("tracing off, but provider %v, %d server and %d dial options, env %v", p, len(p.ServerOptions()), len(p.DialOptions()), p.Env())
	}
	if err := p.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	// The interceptors of a provider that is off still pass calls on.
	called := false
	err = p.TTRPCClientInterceptor()(context.Background(), &ttrpc.Request{}, &ttrpc.Response{}, &ttrpc.UnaryClientInfo{FullMethod: "/s/m"},
		func(context.Context, *ttrpc.Request, *ttrpc.Response) error { called = true; return nil })
	if err != nil || !called {
		t.Fatalf("client interceptor: called %v, error %v", called, err)
	}
	if _, span := p.Tracer().Start(context.Background(), "x"); span.IsRecording() {
		t.Fatal("a provider that is off records spans")
	}
}

func TestTwoComponentsOfOneProcessTraceUnderTheirOwnNames(t *testing.T) {
	receiver := tracingtest.Start(t)
	ctx := context.Background()
	contentd, err := tracing.New(ctx, "contentd", receiver.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	taskd, err := tracing.New(ctx, "taskd", receiver.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	// Started one after the other, as cmd/flotilla starts its components:
	// the one started last does not take the other's spans.
	_, a := contentd.Tracer().Start(ctx, "pull")
	a.End()
	_, b := taskd.Tracer().Start(ctx, "run")
	b.End()
	for _, p := range []*tracing.Provider{contentd, taskd} {
		if err := p.Shutdown(ctx); err != nil { // flushes
			t.Fatal(err)
		}
	}
	got := receiver.WaitFor(t, 10*time.Second, tracingtest.Span{Service: "contentd", Name: "pull", Kind: "internal"}, tracingtest.Span{Service: "taskd", Name: "run", Kind: "internal"})
	for _, s := range got {
		if (s.Name == "pull") != (s.Service == "contentd") {
			t.Errorf("span %q sent as %q", s.Name, s.Service)
		}
	}
	if tracing.Process() != nil {
		t.Errorf("New made a provider the process's: %v", tracing.Process())
	}
}
