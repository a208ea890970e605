// Package output prints what flotctl lists: aligned tables for people, JSON
// for scripts.
package output

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/containerd/errdefs"
)

// Format is how a listing is printed.
type Format string

const (
	// Table prints aligned columns under a header line.
	Table Format = "table"
	// JSON prints one JSON document: an array for listings, an object for
	// one item. Field names are the rows' json tags.
	JSON Format = "json"
)

// ParseFormat accepts "", "table" and "json".
func ParseFormat(s string) (Format, error) {
	switch Format(strings.ToLower(s)) {
	case "", Table:
		return Table, nil
	case JSON:
		return JSON, nil
	}
	return "", fmt.Errorf("--format %q: want table or json: %w", s, errdefs.ErrInvalidArgument)
}

// Column is one column of a table: its header and how to read a row's cell.
type Column[T any] struct {
	Header string
	Cell   func(T) string
}

// Print writes rows in format f: as a table with columns, or as a JSON array
// of the rows themselves.
func Print[T any](w io.Writer, f Format, rows []T, columns []Column[T]) error {
	if f == JSON {
		if rows == nil {
			rows = []T{}
		}
		return WriteJSON(w, rows)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 3, ' ', 0)
	headers := make([]string, len(columns))
	for i, c := range columns {
		headers[i] = c.Header
	}
	fmt.Fprintln(tw, strings.Join(headers, "\t"))
	for _, r := range rows {
		cells := make([]string, len(columns))
		for i, c := range columns {
			cells[i] = c.Cell(r)
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	return tw.Flush()
}

// WriteJSON writes v as indented JSON followed by a newline.
func WriteJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// Size prints n bytes the way people read sizes: 512 B, 4.2 KiB, 81.5 MiB.
func Size(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTP"[exp])
}

// Ago prints how long before now t was, coarsely: "3 seconds ago",
// "2 hours ago". The zero time prints as "-".
func Ago(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := now.Sub(t)
	plural := func(n int64, u string) string {
		if n == 1 {
			return fmt.Sprintf("1 %s ago", u)
		}
		return fmt.Sprintf("%d %ss ago", n, u)
	}
	switch {
	case d < time.Second:
		return "just now"
	case d < time.Minute:
		return plural(int64(d/time.Second), "second")
	case d < time.Hour:
		return plural(int64(d/time.Minute), "minute")
	case d < 48*time.Hour:
		return plural(int64(d/time.Hour), "hour")
	}
	return plural(int64(d/(24*time.Hour)), "day")
}

// Short returns the first 12 hex digits of a digest ("sha256:abc…" → "abc…").
func Short(digest string) string {
	if i := strings.IndexByte(digest, ':'); i >= 0 {
		digest = digest[i+1:]
	}
	if len(digest) > 12 {
		return digest[:12]
	}
	return digest
}
