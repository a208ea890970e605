package oci

import (
	"encoding/csv"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// ParseMount reads a --mount value as docker and nerdctl write it:
// comma-separated key=value pairs, "type=bind,src=/host,dst=/ctr,options=ro:rprivate".
// type defaults to bind, the only type taken; source/src and
// destination/dst/target are synonyms; "readonly" or "ro" alone makes it
// read-only. A bind mount is recursive (rbind) unless options say bind.
func ParseMount(v string) (specs.Mount, error) {
	bad := func(format string, a ...any) (specs.Mount, error) {
		return specs.Mount{}, fmt.Errorf("--mount %q: %s: %w", v, fmt.Sprintf(format, a...), errdefs.ErrInvalidArgument)
	}
	fields, err := csv.NewReader(strings.NewReader(v)).Read()
	if err != nil {
		return bad("%v", err)
	}
	m := specs.Mount{Type: "bind"}
	var opts []string
	readonly := false
	for _, f := range fields {
		key, val, hasVal := strings.Cut(strings.TrimSpace(f), "=")
		switch strings.ToLower(key) {
		case "type":
			if val != "bind" {
				return bad("type %q: only bind mounts are supported", val)
			}
		case "source", "src":
			m.Source = val
		case "destination", "dst", "target":
			m.Destination = val
		case "readonly", "ro":
			if hasVal {
				b, err := strconv.ParseBool(val)
				if err != nil {
					return bad("readonly=%q is not a boolean", val)
				}
				readonly = b
			} else {
				readonly = true
			}
		case "options":
			for _, o := range strings.Split(val, ":") {
				if o != "" {
					opts = append(opts, o)
				}
			}
		default:
			return bad("unknown key %q (want type, src, dst, options, readonly)", key)
		}
	}
	if m.Source == "" || m.Destination == "" {
		return bad("src and dst are both required")
	}
	if !filepath.IsAbs(m.Destination) {
		return bad("dst %q must be an absolute path", m.Destination)
	}
	src, err := filepath.Abs(m.Source)
	if err != nil {
		return bad("src: %v", err)
	}
	m.Source = src
	hasBind := false
	for _, o := range opts {
		if o == "bind" || o == "rbind" {
			hasBind = true
		}
	}
	if !hasBind {
		opts = append([]string{"rbind"}, opts...)
	}
	if readonly {
		opts = append(opts, "ro")
	}
	m.Options = opts
	return m, nil
}

// ParseMemory reads a --memory size: a number of bytes with an optional
// unit b, k, m, g (powers of 1024; case and a trailing "b"/"ib" ignored).
func ParseMemory(v string) (int64, error) {
	s := strings.ToLower(strings.TrimSpace(v))
	s = strings.TrimSuffix(strings.TrimSuffix(s, "ib"), "b")
	mult := int64(1)
	if s != "" {
		switch s[len(s)-1] {
		case 'k':
			mult = 1 << 10
		case 'm':
			mult = 1 << 20
		case 'g':
			mult = 1 << 30
		case 't':
			mult = 1 << 40
		}
		if mult > 1 {
			s = s[:len(s)-1]
		}
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f <= 0 {
		return 0, fmt.Errorf("--memory %q: want a positive size like 64m or 1g: %w", v, errdefs.ErrInvalidArgument)
	}
	return int64(f * float64(mult)), nil
}
