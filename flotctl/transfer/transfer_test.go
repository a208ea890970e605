package transfer

import (
	"archive/tar"
	"bytes"
	"io"
	"testing"

	transfertypes "github.com/containerd/containerd/api/types/transfer"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/anypb"
)

// An export ends at the archive's end marker, whatever follows it on the
// stream: containerd's server does not end the stream.
func TestCopyTarStopsAtTheEndOfTheArchive(t *testing.T) {
	var archive bytes.Buffer
	tw := tar.NewWriter(&archive)
	for _, f := range []struct{ name, body string }{{"index.json", "{}"}, {"blobs/sha256/x", "0123456789"}} {
		tw.WriteHeader(&tar.Header{Name: f.name, Mode: 0o644, Size: int64(len(f.body))})
		io.WriteString(tw, f.body)
	}
	tw.Close()
	want := archive.Bytes()

	pr, pw := io.Pipe()
	go func() {
		pw.Write(want)
		// The stream stays open: nothing more, no end.
	}()
	var got bytes.Buffer
	if err := copyTar(&got, pr); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Bytes(), want) {
		t.Fatalf("copied %d bytes, want the archive's %d", got.Len(), len(want))
	}
}

func TestCopyTarRejectsWhatIsNotATar(t *testing.T) {
	if err := copyTar(io.Discard, bytes.NewReader(bytes.Repeat([]byte("x"), 1024))); err == nil {
		t.Fatal("no error for 1 KiB of x")
	}
}

// Servers may name types with or without the "type.googleapis.com/" prefix
// (containerd: without; anypb.New: with); both decode.
func TestDecodeTakesBothTypeURLForms(t *testing.T) {
	p := &transfertypes.Progress{Event: "downloading", Name: "layer-sha256:abc", Total: 10}
	bare, err := typeurl.MarshalAnyToProto(p)
	if err != nil {
		t.Fatal(err)
	}
	prefixed, err := anypb.New(p)
	if err != nil {
		t.Fatal(err)
	}
	if bare.TypeUrl == prefixed.TypeUrl {
		t.Fatalf("both forms are %q", bare.TypeUrl)
	}
	for _, a := range []*anypb.Any{bare, prefixed} {
		got, ok := decode(a).(*transfertypes.Progress)
		if !ok || got.Name != p.Name || got.Total != 10 {
			t.Errorf("%s decoded to %v", a.TypeUrl, decode(a))
		}
	}
}
