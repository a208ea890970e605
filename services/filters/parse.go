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

// value parses a quoted, slash-delimited (only if slashRegexp) or unquoted
// value.
func (p *parser) value(slashRegexp bool) (string, error) {
	if p.eof() || p.peek() == ',' {
		return "", p.expected("value")
	}
	switch p.peek() {
	case '"':
		return p.quoted()
	case '\'':
		return "", p.errorf(p.pos, "single quotes are not supported, use double quotes")
	case '/':
		if slashRegexp {
			return p.slashDelimited()
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

// slashDelimited parses /regexp/, in which \/ stands for '/' and other
// backslashes are kept; p.peek() is '/'.
func (p *parser) slashDelimited() (string, error) {
	start := p.pos
	var b strings.Builder
	for p.pos++; !p.eof(); p.pos++ {
		switch c := p.peek(); {
		case c == '/':
			p.pos++
			return b.String(), nil
		case c == '\\' && p.pos+1 < len(p.src) && p.src[p.pos+1] == '/':
			b.WriteByte('/')
			p.pos++
		default:
			b.WriteByte(c)
		}
	}
	return "", p.errorf(start, "unterminated /regexp/")
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
