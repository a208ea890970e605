package labels

import (
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		k, v string
		ok   bool
	}{
		{"a short label is accepted", "containerd.io/gc.root", "now", true},
		{"key and value of exactly 4096 bytes are accepted", strings.Repeat("k", 2048), strings.Repeat("v", 2048), true},
		{"an empty key is refused", "", "v", false},
		{"a key over 4096 bytes is refused", strings.Repeat("k", 4097), "", false},
		{"key and value over 4096 bytes together are refused", strings.Repeat("k", 2048), strings.Repeat("v", 2049), false},
		{"a 1 MiB key is refused", strings.Repeat("k", 1<<20), "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Validate(tt.k, tt.v)
			if tt.ok {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errdefs.IsInvalidArgument(err) {
				t.Fatalf("error %v, want InvalidArgument", err)
			}
			if len(err.Error()) > 200 {
				t.Errorf("error is %d bytes long: it quotes the whole key", len(err.Error()))
			}
		})
	}
}
