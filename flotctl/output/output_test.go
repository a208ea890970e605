package output

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

type row struct {
	Name string `json:"name"`
	N    int    `json:"n"`
}

var columns = []Column[row]{
	{Header: "NAME", Cell: func(r row) string { return r.Name }},
	{Header: "N", Cell: func(r row) string { return string(rune('0' + r.N)) }},
}

func TestPrintTableAlignsColumns(t *testing.T) {
	var b bytes.Buffer
	if err := Print(&b, Table, []row{{"a", 1}, {"longer", 2}}, columns); err != nil {
		t.Fatal(err)
	}
	want := "NAME     N\na        1\nlonger   2\n"
	if b.String() != want {
		t.Errorf("got\n%q\nwant\n%q", b.String(), want)
	}
}

func TestPrintJSONIsAnArrayOfRows(t *testing.T) {
	for name, rows := range map[string][]row{"rows": {{"a", 1}}, "no rows print []": nil} {
		t.Run(name, func(t *testing.T) {
			var b bytes.Buffer
			if err := Print(&b, JSON, rows, columns); err != nil {
				t.Fatal(err)
			}
			var back []row
			if err := json.Unmarshal(b.Bytes(), &back); err != nil || back == nil || len(back) != len(rows) {
				t.Errorf("%q does not parse back to %d rows: %v", b.String(), len(rows), err)
			}
		})
	}
}

func TestParseFormat(t *testing.T) {
	for in, want := range map[string]Format{"": Table, "table": Table, "JSON": JSON} {
		if got, err := ParseFormat(in); err != nil || got != want {
			t.Errorf("ParseFormat(%q) = %q, %v", in, got, err)
		}
	}
	if _, err := ParseFormat("yaml"); !errdefs.IsInvalidArgument(err) {
		t.Errorf("yaml: err = %v, want InvalidArgument", err)
	}
}

func TestSizeAgoShort(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 85458944: "81.5 MiB", 3 << 30: "3.0 GiB"} {
		if got := Size(n); got != want {
			t.Errorf("Size(%d) = %q, want %q", n, got, want)
		}
	}
	now := time.Now()
	for d, want := range map[time.Duration]string{0: "just now", time.Second: "1 second ago", 3 * time.Minute: "3 minutes ago", 50 * time.Hour: "2 days ago"} {
		if got := Ago(now.Add(-d), now); got != want {
			t.Errorf("Ago(%s) = %q, want %q", d, got, want)
		}
	}
	if Ago(time.Time{}, now) != "-" {
		t.Error("zero time should print -")
	}
	if got := Short("sha256:0123456789abcdef"); got != "0123456789ab" {
		t.Errorf("Short = %q", got)
	}
}
