package logging

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
)

func TestOrPrefersTheCallsLogger(t *testing.T) {
	var call, component bytes.Buffer
	callLog := slog.New(slog.NewTextHandler(&call, nil)).With("method", "/x.Y/Z")
	componentLog := slog.New(slog.NewTextHandler(&component, nil))

	Or(WithLogger(context.Background(), callLog), componentLog).Info("in a call")
	Or(context.Background(), componentLog).Info("outside")
	if !strings.Contains(call.String(), "method=/x.Y/Z") || !strings.Contains(call.String(), "in a call") {
		t.Errorf("call's logger got %q", call.String())
	}
	if !strings.Contains(component.String(), "outside") || strings.Contains(component.String(), "in a call") {
		t.Errorf("component's logger got %q", component.String())
	}
}
