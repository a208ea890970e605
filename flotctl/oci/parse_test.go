package oci

import (
	"slices"
	"testing"

	"github.com/containerd/errdefs"
)

func TestParseMount(t *testing.T) {
	for _, tc := range []struct {
		in       string
		src, dst string
		opts     []string
		bad      bool
	}{
		{in: "type=bind,src=/host,dst=/ctr", src: "/host", dst: "/ctr", opts: []string{"rbind"}},
		{in: "source=/host,target=/ctr,readonly", src: "/host", dst: "/ctr", opts: []string{"rbind", "ro"}},
		{in: "type=bind,src=/host,dst=/ctr,options=bind:ro", src: "/host", dst: "/ctr", opts: []string{"bind", "ro"}},
		{in: "src=/host,dst=/ctr,options=rprivate", src: "/host", dst: "/ctr", opts: []string{"rbind", "rprivate"}},
		{in: "src=/host,dst=/ctr,ro=false", src: "/host", dst: "/ctr", opts: []string{"rbind"}},
		{in: "type=volume,src=v,dst=/ctr", bad: true},
		{in: "src=/host", bad: true},
		{in: "src=/host,dst=relative", bad: true},
		{in: "src=/host,dst=/ctr,colour=red", bad: true},
		{in: "src=/host,dst=/ctr,ro=maybe", bad: true},
	} {
		t.Run(tc.in, func(t *testing.T) {
			m, err := ParseMount(tc.in)
			if tc.bad {
				if !errdefs.IsInvalidArgument(err) {
					t.Fatalf("err = %v, want InvalidArgument", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if m.Type != "bind" || m.Source != tc.src || m.Destination != tc.dst || !slices.Equal(m.Options, tc.opts) {
				t.Errorf("got %+v", m)
			}
		})
	}
}

func TestParseMemory(t *testing.T) {
	for in, want := range map[string]int64{
		"1048576": 1 << 20, "64m": 64 << 20, "64M": 64 << 20, "1g": 1 << 30, "1GiB": 1 << 30,
		"512k": 512 << 10, "1.5g": 3 << 29, "100b": 100,
	} {
		got, err := ParseMemory(in)
		if err != nil || got != want {
			t.Errorf("ParseMemory(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "lots", "-1m", "0"} {
		if _, err := ParseMemory(in); !errdefs.IsInvalidArgument(err) {
			t.Errorf("ParseMemory(%q): err = %v, want InvalidArgument", in, err)
		}
	}
}
