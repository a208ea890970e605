// Package config reads a daemon's settings from its flags and, when --config
// names one, a TOML file. The file sets what it mentions; a flag given on the
// command line wins over the file; defaults fill the rest.
package config

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/flotilla/flotilla/services/mtls"
)

// Common holds the settings every Flotilla daemon takes.
type Common struct {
	// Address is where the daemon serves gRPC: a unix socket path
	// ("/run/flotilla/x.sock", "unix:///run/...") or TCP ("tcp://host:port").
	Address string `toml:"address"`
	// Root holds the daemon's durable data.
	Root string `toml:"root"`
	// State holds what lives only as long as the machine is up: sockets, pids.
	State string `toml:"state"`
	// MetricsAddress is the HTTP host:port serving Prometheus metrics; empty disables it.
	MetricsAddress string `toml:"metrics_address"`
	// Pprof serves Go's profiles at /debug/pprof/ on the metrics address,
	// to loopback clients only; off by default.
	Pprof bool `toml:"pprof"`
	// LogLevel is one of debug, info, warn, error.
	LogLevel string `toml:"log_level"`
	// ShutdownTimeout bounds how long in-flight calls may run after SIGTERM.
	ShutdownTimeout Duration `toml:"shutdown_timeout"`
	// OTLPEndpoint is the OpenTelemetry collector traces are exported to
	// over OTLP/gRPC ("http://host:4317"); empty turns tracing off.
	OTLPEndpoint string `toml:"otlp_endpoint"`
	// TLS names the CA, certificate and key of the daemon's mutual TLS:
	// required to serve or dial TCP; unix sockets need none.
	mtls.Files
	// Node names the node the daemon runs on (default the host name): it
	// registers under it, and a gateway sends it with every call it relays.
	Node string `toml:"node"`
	// Discovery is the Redis (redis://host:port/db, rediss:// for TLS) of
	// the service registry; empty runs with static addresses only.
	Discovery string `toml:"discovery"`
	// DiscoveryInterval is how often the daemon renews its registration
	// and reads the registry again; a registration lives three intervals.
	DiscoveryInterval Duration `toml:"discovery_interval"`
	// AdvertiseAddress is the address other hosts reach the daemon at, as
	// registered; default the listen address (a TCP host:port with a
	// specific host, or the unix socket).
	AdvertiseAddress string `toml:"advertise_address"`
	// ConfigFile is the TOML file the settings were read from, if any.
	ConfigFile string `toml:"-"`
}

// DefaultDiscoveryInterval is how often registrations are renewed and the
// registry read when no interval is configured.
const DefaultDiscoveryInterval = 5 * time.Second

// DefaultRoot is the parent of every daemon's root: $FLOTILLA_ROOT or /var/lib/flotilla.
func DefaultRoot() string {
	if v := os.Getenv("FLOTILLA_ROOT"); v != "" {
		return v
	}
	return "/var/lib/flotilla"
}

// DefaultState is the parent of every daemon's state: $FLOTILLA_STATE or /run/flotilla.
func DefaultState() string {
	if v := os.Getenv("FLOTILLA_STATE"); v != "" {
		return v
	}
	return "/run/flotilla"
}

// Register binds the common flags of daemon name to c on fs, with defaults
// under DefaultRoot and DefaultState, and sets fs.Usage to explain the daemon
// with summary.
func (c *Common) Register(fs *flag.FlagSet, name, summary string) {
	fs.StringVar(&c.Address, "address", filepath.Join(DefaultState(), name+".sock"),
		"gRPC address to serve on: a unix socket path, unix:///path, or tcp://host:port")
	fs.StringVar(&c.Root, "root", filepath.Join(DefaultRoot(), name),
		"directory for durable data (default from $FLOTILLA_ROOT)")
	fs.StringVar(&c.State, "state", filepath.Join(DefaultState(), name),
		"directory for runtime state such as sockets (default from $FLOTILLA_STATE)")
	fs.StringVar(&c.MetricsAddress, "metrics-address", "",
		"host:port to serve Prometheus metrics on at /metrics; empty disables")
	fs.BoolVar(&c.Pprof, "pprof", false,
		"serve Go's profiles at /debug/pprof/ on the metrics address, to loopback clients only")
	fs.StringVar(&c.CA, "tls-ca", "", "PEM file of the cluster CA; with --tls-cert and --tls-key, TCP is served and dialled over mutual TLS (never in plaintext)")
	fs.StringVar(&c.Cert, "tls-cert", "", "PEM file of this daemon's certificate, signed by --tls-ca (flotctl certs issue --role service)")
	fs.StringVar(&c.Key, "tls-key", "", "PEM file of the private key of --tls-cert")
	host, _ := os.Hostname()
	fs.StringVar(&c.Node, "node", host, "name of the node this daemon runs on, as it registers and as a gateway names it in every call it relays (flotilla-node metadata)")
	fs.StringVar(&c.Discovery, "discovery", os.Getenv("FLOTILLA_DISCOVERY"),
		"Redis URL of the service registry (redis://host:port/db, rediss:// over mutual TLS): register this daemon and resolve discover://<service> addresses; empty: static addresses only (default $FLOTILLA_DISCOVERY)")
	c.DiscoveryInterval = Duration(DefaultDiscoveryInterval)
	fs.Var(&c.DiscoveryInterval, "discovery-interval", "how often the registration is renewed and the registry read again (a registration lives three intervals)")
	fs.StringVar(&c.AdvertiseAddress, "advertise-address", "", "address other hosts reach this daemon at, as registered (default the listen address)")
	fs.StringVar(&c.ConfigFile, "config", "",
		"TOML file with settings; flags given on the command line override it")
	fs.StringVar(&c.LogLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&c.OTLPEndpoint, "otlp-endpoint", os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT"),
		"OpenTelemetry collector to export traces to over OTLP/gRPC (http://host:4317); empty turns tracing off (default $OTEL_EXPORTER_OTLP_ENDPOINT)")
	c.ShutdownTimeout = Duration(10 * time.Second)
	fs.Var(&c.ShutdownTimeout, "shutdown-timeout", "how long in-flight calls may finish after SIGTERM before they are cut")
	fs.Usage = func() {
		out := fs.Output()
		fmt.Fprintf(out, "%s — %s\n\nUsage: %s [flags]\n\nEvery flag can also be set in the --config TOML file, under the flag's name\nwith '-' written as '_' (metrics-address = \"127.0.0.1:9100\").\n\nFlags:\n", name, summary, name)
		fs.PrintDefaults()
	}
}

// Parse parses args into fs. When --config names a file, the file is decoded
// into cfg (a pointer to the daemon's config struct, with toml tags), and args
// are parsed again so that flags on the command line win over the file.
func Parse(fs *flag.FlagSet, args []string, cfg any, configFile *string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if *configFile == "" {
		return nil
	}
	file := *configFile
	md, err := toml.DecodeFile(file, cfg)
	if err != nil {
		return fmt.Errorf("config %s: %w", file, err)
	}
	if undecoded := md.Undecoded(); len(undecoded) > 0 {
		return fmt.Errorf("config %s: unknown settings %v", file, undecoded)
	}
	*configFile = file
	return fs.Parse(args)
}

// Duration is a time.Duration that reads "5s" from flags and TOML alike.
type Duration time.Duration

func (d Duration) String() string { return time.Duration(d).String() }

// Set implements flag.Value.
func (d *Duration) Set(s string) error {
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	if v < 0 {
		return errors.New("duration must not be negative")
	}
	*d = Duration(v)
	return nil
}

// UnmarshalText implements encoding.TextUnmarshaler for TOML.
func (d *Duration) UnmarshalText(b []byte) error { return d.Set(string(b)) }
