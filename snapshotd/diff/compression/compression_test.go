package compression

import (
	"bytes"
	"io"
	"testing"

	"github.com/containerd/errdefs"
)

func TestRoundTrip(t *testing.T) {
	data := bytes.Repeat([]byte("flotilla layer "), 1000)
	for _, c := range []Compression{Uncompressed, Gzip, Zstd} {
		t.Run(c.String()+" compresses and decompresses to the same bytes", func(t *testing.T) {
			var buf bytes.Buffer
			w, err := Compress(&buf, c)
			if err != nil {
				t.Fatal(err)
			}
			w.Write(data)
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			if got := Detect(buf.Bytes()); got != c {
				t.Fatalf("detected %v", got)
			}
			want, err := FromMediaType(MediaType(c))
			if err != nil || want != c {
				t.Fatalf("FromMediaType(MediaType(%v)) = %v, %v", c, want, err)
			}
			rc, _, err := Decompress(&buf, want)
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(rc)
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("round trip differs (%v)", err)
			}
		})
	}
	t.Run("a plain media type over gzip data is decompressed, as containerd does", func(t *testing.T) {
		var buf bytes.Buffer
		w, _ := Compress(&buf, Gzip)
		w.Write(data)
		w.Close()
		rc, got, err := Decompress(&buf, Uncompressed)
		if err != nil || got != Gzip {
			t.Fatalf("Decompress = %v, %v", got, err)
		}
		if b, _ := io.ReadAll(rc); !bytes.Equal(b, data) {
			t.Fatal("content differs")
		}
	})
	t.Run("a zstd media type over plain data is InvalidArgument", func(t *testing.T) {
		if _, _, err := Decompress(bytes.NewReader(data), Zstd); !errdefs.IsInvalidArgument(err) {
			t.Fatalf("Decompress = %v", err)
		}
	})
}
