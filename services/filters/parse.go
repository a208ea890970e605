package filters

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/containerd/errdefs"
)

// parser is a recursive-descent parser over one filter string. pos is a byte
// offset into src; every method leaves it just past what it consumed.
type parser struct {
	src string
	pos int
}

func (p *parser) parse() (Filter, error) {
	for i := 0; i < len(p.src); {
		r, size := utf8.DecodeRuneInString(p.src[i:])
		if r == utf8.RuneError && size == 1 {
			return nil, p.errorf(i, "invalid UTF-8")
		}
		i += size
	}
	p.skipSpace()
	if p.eof() {
		return Always, nil
	}
	var sels allOf
	for {
		s, err := p.selector()
		if err != nil {
			return nil, err
		}
		sels = append(sels, s)
		p.skipSpace()
		if p.eof() {
			break
		}
		if p.peek() != ',' {
			return nil, p.expected("',' or end of filter")
		}
		p.pos++
	}
	if len(sels) == 1 {
		return sels[0], nil
	}
	return sels, nil
}

// selector parses fieldpath [op value].
func (p *parser) selector() (*selector, error) {
	path, err := p.fieldpath()
	if err != nil {
		return nil, err
	}
	s := &selector{fieldpath: path}
	p.skipSpace()
	if p.eof() || p.peek() == ',' {
		return s, nil // presence
	}
	switch rest := p.src[p.pos:]; {
	case strings.HasPrefix(rest, "=="):
		s.op = opEqual
	case strings.HasPrefix(rest, "!="):
		s.op = opNotEqual
	case strings.HasPrefix(rest, "~="):
		s.op = opMatch
	default:
		return nil, p.expected("operator (==, != or ~=), ',' or end of filter")
	}
	p.pos += 2
	p.skipSpace()
	valuePos := p.pos
	if s.value, err = p.value(s.op == opMatch); err != nil {
		return nil, err
	}
	if s.op == opMatch {
		if s.re, err = regexp.Compile(s.value); err != nil {
			return nil, p.errorf(valuePos, "invalid regexp %q: %v", s.value, err)
		}
	}
	return s, nil
}

// fieldpath parses component ('.' component)*.
func (p *parser) fieldpath() ([]string, error) {
	var path []string
	for {
		p.skipSpace()
		c, err := p.component(len(path) == 0)
		if err != nil {
			return nil, err
		}
		path = append(path, c)
		p.skipSpace()
		if p.eof() || p.peek() != '.' {
			return path, nil
		}
		p.pos++
	}
}

// component parses an identifier or a double-quoted string.
func (p *parser) component(first bool) (string, error) {
	if !p.eof() {
		switch c := p.peek(); {
		case c == '"':
			return p.quoted()
		case isIdentStart(c):
			start := p.pos
			for p.pos++; !p.eof() && isIdentPart(p.peek()); p.pos++ {
			}
			return p.src[start:p.pos], nil
		}
	}
	if first {
		return "", p.expected("field path")
	}
	return "", p.expected("field name after '.'")
}

// value parses a quoted, slash- or pipe-delimited (only if regexp) or
// unquoted value.
func (p *parser) value(regexp bool) (string, error) {
	if p.eof() || p.peek() == ',' {
		return "", p.expected("value")
	}
	switch c := p.peek(); c {
	case '"':
		return p.quoted()
	case '\'':
		return "", p.errorf(p.pos, "single quotes are not supported, use double quotes")
	case '/', '|':
		if regexp {
			return p.delimited(c)
		}
		if c == '|' {
			// containerd's scanner reads |...| as a quoted string, which
			// only ~= takes.
			return "", p.errorf(p.pos, "|quoted| values are only for ~=; use double quotes")
		}
	}
	start := p.pos
	for !p.eof() {
		r, size := utf8.DecodeRuneInString(p.src[p.pos:])
		if r == ',' || unicode.IsSpace(r) {
			break
		}
		if r == '"' || r == '\'' {
			return "", p.errorf(p.pos, "quote inside unquoted value; quote the whole value")
		}
		p.pos += size
	}
	return p.src[start:p.pos], nil
}

// quoted parses a double-quoted string with Go escapes; p.peek() is '"'.
func (p *parser) quoted() (string, error) {
	start := p.pos
	for p.pos++; !p.eof(); p.pos++ {
		switch p.peek() {
		case '\\':
			p.pos++ // the escaped byte cannot end the string
		case '"':
			p.pos++
			s, err := strconv.Unquote(p.src[start:p.pos])
			if err != nil {
				return "", p.errorf(start, "invalid escape or character in quoted string")
			}
			return s, nil
		}
	}
	return "", p.errorf(start, "unterminated quoted string")
}

// delimited parses a regexp between two quote bytes (/re/ or |re|) as
// containerd unquotes it: the escapes of a Go string (\a \b \f \n \r \t \v
// \\, octal \ooo, \xhh, \uhhhh, \Uhhhhhhhh) and \ before the quote byte
// stand for what they mean there. containerd refuses any other backslash;
// here it is kept, with the byte after it, for the regexp (\d, \.).
// p.peek() is the quote byte.
func (p *parser) delimited(quote byte) (string, error) {
	start := p.pos
	var b strings.Builder
	for p.pos++; !p.eof(); {
		c := p.peek()
		switch {
		case c == quote:
			p.pos++
			return b.String(), nil
		case c == '\n':
			return "", p.errorf(start, "newline in %c-delimited regexp", quote)
		case c == '\\' && p.pos+1 < len(p.src):
			if p.src[p.pos+1] == quote {
				b.WriteByte(quote)
				p.pos += 2
				continue
			}
			if r, multibyte, tail, err := strconv.UnquoteChar(p.src[p.pos:], '"'); err == nil && p.src[p.pos+1] != '"' {
				if multibyte {
					b.WriteRune(r)
				} else {
					b.WriteByte(byte(r))
				}
				p.pos = len(p.src) - len(tail)
				continue
			}
			b.WriteString(p.src[p.pos : p.pos+2])
			p.pos += 2
		default:
			b.WriteByte(c)
			p.pos++
		}
	}
	return "", p.errorf(start, "unterminated %c-delimited regexp", quote)
}

func (p *parser) skipSpace() {
	for !p.eof() {
		r, size := utf8.DecodeRuneInString(p.src[p.pos:])
		if !unicode.IsSpace(r) {
			return
		}
		p.pos += size
	}
}

func (p *parser) eof() bool  { return p.pos >= len(p.src) }
func (p *parser) peek() byte { return p.src[p.pos] }

// expected reports that what was expected at p.pos, and names the
// character found there unless the filter ended.
func (p *parser) expected(what string) error {
	if p.eof() {
		return p.errorf(p.pos, "expected %s", what)
	}
	r, _ := utf8.DecodeRuneInString(p.src[p.pos:])
	return p.errorf(p.pos, "expected %s, found %s", what, strconv.QuoteRune(r))
}

func (p *parser) errorf(pos int, format string, args ...any) error {
	return fmt.Errorf("filters: parse %q: %s at position %d: %w",
		p.src, fmt.Sprintf(format, args...), pos, errdefs.ErrInvalidArgument)
}

func isIdentStart(c byte) bool {
	return c == '_' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z'
}

func isIdentPart(c byte) bool {
	return isIdentStart(c) || '0' <= c && c <= '9'
}
