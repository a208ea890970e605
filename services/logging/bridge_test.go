package logging

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/sirupsen/logrus"
)

func TestLogrusLinesArriveInSlogWithTheirFields(t *testing.T) {
	var buf bytes.Buffer
	BridgeLogrus(slog.New(slog.NewTextHandler(&buf, nil)).With("component", "test"))
	logrus.WithField("id", "c1").Warn("ttrpc: received message on inactive stream")
	logrus.Debug("not at the default level")
	got := buf.String()
	for _, want := range []string{"level=WARN", `msg="ttrpc: received message on inactive stream"`, "component=test", "id=c1"} {
		if !strings.Contains(got, want) {
			t.Errorf("%q lacks %s", got, want)
		}
	}
	if strings.Contains(got, "not at the default level") {
		t.Errorf("a debug line passed the info level: %q", got)
	}
}

func TestHCLogLinesArriveInSlogWithTheirFields(t *testing.T) {
	var buf bytes.Buffer
	l := HCLog(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})))
	l.Named("plugin").With("snapshotter", "overlayfs").Log(hclog.Error, "plugin exited", "pid", 42)
	l.Trace("below debug")
	got := buf.String()
	for _, want := range []string{"level=ERROR", `msg="plugin exited"`, "logger=plugin", "snapshotter=overlayfs", "pid=42"} {
		if !strings.Contains(got, want) {
			t.Errorf("%q lacks %s", got, want)
		}
	}
	if strings.Contains(got, "below debug") || !l.IsDebug() || l.IsTrace() {
		t.Errorf("levels: debug %v trace %v, output %q", l.IsDebug(), l.IsTrace(), got)
	}
}
