// Package stack starts and stops one node's Flotilla daemons as background
// processes, and reports their health. It is what `make up`, `make down` and
// `flotctl stack status` run.
//
// A node runs in one of two modes: every component in one `flotilla`
// process (OneProcess, the default), or each daemon as a process of its own
// (Separate, as compose.yaml and multi-host deployments run them). Either
// way each component serves its own socket, so status and clients see the
// same stack.
package stack

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/flotilla/flotilla/services/config"
)

// Service is one daemon of the stack.
type Service struct {
	// Name is the daemon's component name and binary name.
	Name string
	// Socket is the unix socket it serves gRPC on.
	Socket string
	// MetricsAddress is its Prometheus endpoint.
	MetricsAddress string
	// Args are the flags it is started with.
	Args []string
}

// Mode is how a node's components run.
type Mode string

const (
	// OneProcess runs every component in one flotilla process.
	OneProcess Mode = "one"
	// Separate runs each daemon as a process of its own.
	Separate Mode = "separate"
)

// ProcessName is the binary, pid file and log of the one-process mode.
const ProcessName = "flotilla"

// ParseMode reads a mode's name; empty is OneProcess.
func ParseMode(s string) (Mode, error) {
	switch Mode(s) {
	case "":
		return OneProcess, nil
	case OneProcess, Separate:
		return Mode(s), nil
	}
	return "", fmt.Errorf("mode %q: want %q or %q", s, OneProcess, Separate)
}

// Layout is where one node's stack keeps its binaries, data and sockets.
type Layout struct {
	// Bin holds the daemons' executables.
	Bin string
	// Root is FLOTILLA_ROOT: every daemon's data lives in Root/<name>.
	Root string
	// State is FLOTILLA_STATE: sockets, pid files and logs.
	State string
	// MetricsHost is the host the metrics endpoints listen on.
	MetricsHost string
	// MetricsBasePort is the gateway's metrics port; the others follow it.
	MetricsBasePort int
	// RedisURL, when set, is given to the services that use Redis.
	RedisURL string
	// LogLevel is passed to every daemon.
	LogLevel string
	// ExtraArgs, keyed by daemon name, are flags appended to that daemon's
	// command line (e.g. "taskd": {"--config", "taskd.toml"}); in one
	// process they are given as that component's (--taskd.config ...).
	ExtraArgs map[string][]string
	// Mode is how the daemons run: OneProcess or Separate.
	Mode Mode
}

// DefaultLayout reads the layout from the environment: FLOTILLA_ROOT,
// FLOTILLA_STATE, REDIS_URL, FLOTILLA_METRICS_PORT, FLOTILLA_MODE (one, the
// default, or separate; an unknown mode is left for Up to refuse).
func DefaultLayout(bin string) Layout {
	port := 19100
	if v, err := strconv.Atoi(os.Getenv("FLOTILLA_METRICS_PORT")); err == nil && v > 0 {
		port = v
	}
	return Layout{
		Bin:             bin,
		Root:            config.DefaultRoot(),
		State:           config.DefaultState(),
		MetricsHost:     "127.0.0.1",
		MetricsBasePort: port,
		RedisURL:        os.Getenv("REDIS_URL"),
		LogLevel:        "info",
		Mode:            defaultMode(),
	}
}

func defaultMode() Mode {
	if v := os.Getenv("FLOTILLA_MODE"); v != "" {
		return Mode(v)
	}
	return OneProcess
}

// Order is the order daemons start in: eventd first, since every other
// service publishes to it; the gateway last, since it fronts them all.
var Order = []string{"eventd", "contentd", "snapshotd", "taskd", "gateway"}

// GatewaySocket is the socket clients such as ctr talk to.
func (l Layout) GatewaySocket() string { return filepath.Join(l.State, "flotilla.sock") }

func (l Layout) socket(name string) string {
	if name == "gateway" {
		return l.GatewaySocket()
	}
	return filepath.Join(l.State, name+".sock")
}

// PidFile is where the pid of a started daemon is kept.
func (l Layout) PidFile(name string) string { return filepath.Join(l.State, "run", name+".pid") }

// LogFile is where a started daemon's output goes.
func (l Layout) LogFile(name string) string { return filepath.Join(l.State, "logs", name+".log") }

// Services returns the stack's daemons in start order.
func (l Layout) Services() []Service {
	var out []Service
	for i, name := range Order {
		metrics := ""
		if l.MetricsBasePort > 0 {
			// The gateway gets the base port so it is easy to remember.
			off := (i + 1) % len(Order)
			metrics = fmt.Sprintf("%s:%d", l.MetricsHost, l.MetricsBasePort+off)
		}
		s := Service{Name: name, Socket: l.socket(name), MetricsAddress: metrics}
		s.Args = []string{
			"--address", s.Socket,
			"--root", filepath.Join(l.Root, name),
			"--state", filepath.Join(l.State, name),
			"--metrics-address", metrics,
			"--log-level", l.LogLevel,
		}
		switch name {
		case "eventd":
			if l.RedisURL != "" {
				s.Args = append(s.Args, "--redis", l.RedisURL)
			}
		case "gateway":
			for _, b := range Order[:len(Order)-1] {
				s.Args = append(s.Args, "--"+b, l.socket(b))
			}
		case "snapshotd":
			s.Args = append(s.Args, "--eventd", l.socket("eventd"), "--contentd", l.socket("contentd"))
		case "taskd":
			// snapshotd: root filesystems for the tasks its restart monitor creates.
			s.Args = append(s.Args, "--eventd", l.socket("eventd"), "--contentd", l.socket("contentd"),
				"--snapshotd", l.socket("snapshotd"))
		case "contentd":
			// Asked only when a namespace is deleted, so it does not
			// matter that they start after contentd.
			s.Args = append(s.Args, "--eventd", l.socket("eventd"),
				"--taskd", l.socket("taskd"), "--snapshotd", l.socket("snapshotd"))
		default:
			s.Args = append(s.Args, "--eventd", l.socket("eventd"))
		}
		s.Args = append(s.Args, l.ExtraArgs[name]...)
		out = append(out, s)
	}
	return out
}

// OneProcessArgs is the command line of the flotilla process that runs
// every service of the stack: each daemon's flags, named for its component
// (--address becomes --contentd.address).
func (l Layout) OneProcessArgs() []string {
	var args []string
	for _, s := range l.Services() {
		for _, a := range s.Args {
			// Flags start with a dash; no value the stack gives does.
			if strings.HasPrefix(a, "-") {
				a = "--" + s.Name + "." + strings.TrimLeft(a, "-")
			}
			args = append(args, a)
		}
	}
	return args
}
