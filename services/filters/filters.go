// Package filters parses and evaluates containerd's filter syntax, the one
// accepted by `ctr images ls 'name~=foo'`, by the content store's List, by
// events Subscribe and by introspection Plugins.
//
// A filter string is a comma-separated list of selectors, all of which must
// match:
//
//	name==nginx,labels."com.example.tier"!=test,labels.owner
//
// A selector is a field path, optionally followed by an operator and a value:
//
//	fieldpath               the field is present
//	fieldpath==value        the field is present and equal to value
//	fieldpath!=value        the field's value differs from value
//	fieldpath~=value        the field's value matches the regular expression value
//
// A field path is components joined by '.'. A component is an identifier
// ([A-Za-z_][A-Za-z0-9_]*) or a double-quoted string with Go escapes, so a
// label key holding dots is written labels."com.example.foo".
//
// A value is a double-quoted string with Go escapes, or an unquoted run of
// characters other than the comma, whitespace and double or single quotes
// (so unquoted values may hold letters, digits and . _ - / : + @ = and the
// like). For ~= only, as in containerd, a value that starts with '/' or '|'
// is a regular expression between two of them, /^v[0-9]+$/ or |^/tasks/|,
// unquoted as containerd does: \/ (in /.../) or \| (in |...|) stands for the
// quote, and a Go string escape (\\, \n, \t, \x41, \u00e9…) for what it means
// there; any other backslash (\d, \.), which containerd refuses, is kept for
// the regexp. Write "/foo" or \/foo to match a leading slash instead. A
// |quoted| value after == or != is an error, as in containerd.
// Regular expressions use Go's syntax and are compiled by Parse.
//
// Whitespace around tokens is ignored. An empty filter string, or one of only
// whitespace, matches everything.
//
// As in containerd, != and ~= read an absent field as the empty string:
// name!=foo matches objects that have no name, and labels.x~=^$ matches
// objects without label x. == and the bare field path require the field to
// be present.
package filters

import (
	"regexp"
)

// Adaptor exposes an object's fields to a Filter.
type Adaptor interface {
	// Field returns the value of the field named by fieldpath and whether the
	// object has that field. The meaning of a path is the adaptor's choice
	// (for instance whether labels.a.b reads the label "a.b"); a field that
	// is present may have the empty string as value. The value returned with
	// present false is ignored. Field must not modify or retain fieldpath,
	// and must be safe to call from several goroutines if the Filter is
	// shared between them.
	Field(fieldpath []string) (value string, present bool)
}

// AdapterFunc lets an ordinary function serve as an Adaptor.
type AdapterFunc func(fieldpath []string) (string, bool)

// Field calls f(fieldpath).
func (f AdapterFunc) Field(fieldpath []string) (string, bool) {
	return f(fieldpath)
}

// Filter decides whether an object matches.
type Filter interface {
	// Match reports whether the object seen through the adaptor matches.
	// It calls only adaptor.Field, never changes the filter, and so is safe
	// for concurrent use. The adaptor must not be nil unless the filter is
	// Always.
	Match(adaptor Adaptor) bool
}

// Always matches every object; it never calls the adaptor.
var Always Filter = always{}

type always struct{}

func (always) Match(Adaptor) bool { return true }

// Parse parses one filter string: selectors joined by commas, all of which
// must match. An empty or all-whitespace string yields Always.
//
// A syntax error or an invalid regular expression is returned as an error
// wrapping errdefs.ErrInvalidArgument that quotes s and gives the 0-based byte
// offset of the problem, e.g.
//
//	filters: parse "name==": expected value at position 6: invalid argument
func Parse(s string) (Filter, error) {
	p := parser{src: s}
	return p.parse()
}

// ParseAll parses several filter strings and returns a filter matching the
// objects that match any of them. With no strings, or if any string is empty,
// the result is Always. The first string that fails to parse makes ParseAll
// fail with that string's error.
func ParseAll(ss ...string) (Filter, error) {
	var fs anyOf
	for _, s := range ss {
		f, err := Parse(s)
		if err != nil {
			return nil, err
		}
		if f == Always {
			return Always, nil
		}
		fs = append(fs, f)
	}
	switch len(fs) {
	case 0:
		return Always, nil
	case 1:
		return fs[0], nil
	}
	return fs, nil
}

type operator int

const (
	opPresent operator = iota
	opEqual
	opNotEqual
	opMatch
)

// selector is one fieldpath [op value] term.
type selector struct {
	fieldpath []string
	op        operator
	value     string
	re        *regexp.Regexp // set when op is opMatch
}

func (s *selector) Match(a Adaptor) bool {
	value, present := a.Field(s.fieldpath)
	if !present {
		value = ""
	}
	switch s.op {
	case opPresent:
		return present
	case opEqual:
		return present && value == s.value
	case opNotEqual:
		return value != s.value
	case opMatch:
		return s.re.MatchString(value)
	}
	return false
}

// allOf matches when every member matches (the commas of one string).
type allOf []Filter

func (fs allOf) Match(a Adaptor) bool {
	for _, f := range fs {
		if !f.Match(a) {
			return false
		}
	}
	return true
}

// anyOf matches when some member matches (the strings given to ParseAll).
type anyOf []Filter

func (fs anyOf) Match(a Adaptor) bool {
	for _, f := range fs {
		if f.Match(a) {
			return true
		}
	}
	return false
}
