package transfer

import (
	"slices"
	"testing"

	transfertypes "github.com/containerd/containerd/api/types/transfer"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func TestImportNames(t *testing.T) {
	d := digest.FromString("m")
	tests := []struct {
		name        string
		annotations map[string]string
		ref         *transfertypes.ImageReference
		want        []string
	}{
		{name: "a full name is kept when overwriting is allowed",
			annotations: map[string]string{annotationImageName: "docker.io/library/busybox:1"},
			ref:         &transfertypes.ImageReference{Name: "import-2026", IsPrefix: true, AllowOverwrite: true},
			want:        []string{"docker.io/library/busybox:1"}},
		{name: "a full name outside the prefix is dropped",
			annotations: map[string]string{annotationImageName: "docker.io/library/busybox:1"},
			ref:         &transfertypes.ImageReference{Name: "example.com/mine", IsPrefix: true},
			want:        nil},
		{name: "a tag goes after the prefix",
			annotations: map[string]string{ocispec.AnnotationRefName: "1"},
			ref:         &transfertypes.ImageReference{Name: "example.com/mine", IsPrefix: true},
			want:        []string{"example.com/mine:1"}},
		{name: "no name gives the digest reference when asked",
			ref:  &transfertypes.ImageReference{Name: "example.com/mine", IsPrefix: true, AddDigest: true},
			want: []string{"example.com/mine@" + d.String()}},
		{name: "a name and its digest reference",
			annotations: map[string]string{ocispec.AnnotationRefName: "1"},
			ref:         &transfertypes.ImageReference{Name: "example.com/mine", IsPrefix: true, AddDigest: true},
			want:        []string{"example.com/mine:1", "example.com/mine@" + d.String()}},
		{name: "skip_named_digest leaves the digest reference out of a named image",
			annotations: map[string]string{ocispec.AnnotationRefName: "1"},
			ref:         &transfertypes.ImageReference{Name: "example.com/mine", IsPrefix: true, AddDigest: true, SkipNamedDigest: true},
			want:        []string{"example.com/mine:1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := importNames(ocispec.Descriptor{Digest: d, Annotations: tt.annotations}, []*transfertypes.ImageReference{tt.ref})
			if !slices.Equal(got, tt.want) {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestTagOf(t *testing.T) {
	for in, want := range map[string]string{
		"docker.io/library/busybox:1":               "1",
		"127.0.0.1:5000/busybox":                    "",
		"127.0.0.1:5000/busybox:tag":                "tag",
		"busybox@sha256:" + string(make([]byte, 0)): "",
	} {
		if got := tagOf(in); got != want {
			t.Errorf("tagOf(%q) = %q, want %q", in, got, want)
		}
	}
}
