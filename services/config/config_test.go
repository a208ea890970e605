package config

import (
	"flag"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"
)

type testConfig struct {
	Common
	Backend string `toml:"backend"`
}

func parse(t *testing.T, args ...string) (testConfig, error) {
	t.Helper()
	var cfg testConfig
	fs := flag.NewFlagSet("testd", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	cfg.Register(fs, "testd", "a test daemon")
	fs.StringVar(&cfg.Backend, "backend", "default-backend", "backend address")
	err := Parse(fs, args, &cfg, &cfg.ConfigFile)
	return cfg, err
}

func TestParse(t *testing.T) {
	t.Setenv("FLOTILLA_STATE", "/tmp/st")
	t.Setenv("FLOTILLA_ROOT", "/tmp/rt")
	file := filepath.Join(t.TempDir(), "c.toml")
	if err := os.WriteFile(file, []byte("address = \"/from/file.sock\"\nbackend = \"file-backend\"\nshutdown_timeout = \"3s\"\nlog_level = \"debug\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	t.Run("defaults follow FLOTILLA_ROOT and FLOTILLA_STATE", func(t *testing.T) {
		cfg, err := parse(t)
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Address != "/tmp/st/testd.sock" || cfg.Root != "/tmp/rt/testd" || cfg.State != "/tmp/st/testd" {
			t.Fatalf("defaults = %+v", cfg.Common)
		}
		if time.Duration(cfg.ShutdownTimeout) != 10*time.Second {
			t.Fatalf("shutdown timeout = %v", cfg.ShutdownTimeout)
		}
	})
	t.Run("file sets what it mentions and flags win over it", func(t *testing.T) {
		cfg, err := parse(t, "--config", file, "--backend", "flag-backend")
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Address != "/from/file.sock" || cfg.Backend != "flag-backend" || cfg.LogLevel != "debug" {
			t.Fatalf("cfg = %+v", cfg)
		}
		if time.Duration(cfg.ShutdownTimeout) != 3*time.Second {
			t.Fatalf("shutdown timeout = %v", cfg.ShutdownTimeout)
		}
	})
	t.Run("unknown setting in the file is an error", func(t *testing.T) {
		bad := filepath.Join(t.TempDir(), "bad.toml")
		os.WriteFile(bad, []byte("adress = \"x\"\n"), 0o644)
		if _, err := parse(t, "--config", bad); err == nil {
			t.Fatal("want an error for a misspelt setting")
		}
	})
	t.Run("missing file is an error", func(t *testing.T) {
		if _, err := parse(t, "--config", "/nonexistent.toml"); err == nil {
			t.Fatal("want an error")
		}
	})
}
