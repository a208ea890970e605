package filters

import (
	"reflect"
	"testing"

	"github.com/containerd/errdefs"
)

// object is a test Adaptor shaped like a containerd image: top-level fields
// by name, and labels."key" for each label. Any other path is absent.
type object struct {
	fields map[string]string
	labels map[string]string
}

func (o object) Field(fp []string) (string, bool) {
	switch {
	case len(fp) == 1:
		v, ok := o.fields[fp[0]]
		return v, ok
	case len(fp) == 2 && fp[0] == "labels":
		v, ok := o.labels[fp[1]]
		return v, ok
	}
	return "", false
}

var (
	nginx = object{
		fields: map[string]string{
			"name":   "docker.io/library/nginx:1.25",
			"target": "sha256:abc",
			"empty":  "",
			"path":   "/var/lib",
		},
		labels: map[string]string{
			"com.example.tier": "web",
			"owner":            "ops",
			"a b":              "spaced",
			`a"b`:              "quoted",
			"csv":              "a,b",
			"eq":               "a=b",
			"é":                "accent",
			"":                 "blank key",
		},
	}
	redis = object{
		fields: map[string]string{"name": "docker.io/library/redis:7"},
		labels: map[string]string{"com.example.tier": "cache"},
	}
	nameless = object{labels: map[string]string{"owner": "dev"}}
)

func TestMatch(t *testing.T) {
	for _, tc := range []struct {
		name   string
		filter string
		obj    object
		want   bool
	}{
		// Empty filters.
		{"empty filter matches everything", "", nameless, true},
		{"whitespace-only filter matches everything", " \t\n", redis, true},

		// Equality.
		{"equality matches equal value", "name==docker.io/library/nginx:1.25", nginx, true},
		{"equality rejects different value", "name==docker.io/library/nginx:1.25", redis, false},
		{"equality rejects absent field", "name==x", nameless, false},
		{"equality with empty quoted value matches empty field", `empty==""`, nginx, true},
		{"equality with empty quoted value rejects absent field", `name==""`, nameless, false},
		{"equality is exact, not prefix", "name==docker.io", nginx, false},
		{"unquoted value keeps : + @ - _ / .", "target==sha256:abc", nginx, true},
		{"unquoted value may contain =", "labels.eq==a=b", nginx, true},
		{"quoted value may contain comma", `labels.csv=="a,b"`, nginx, true},
		{"quoted value may contain spaces", `labels."a b"=="spaced"`, nginx, true},

		// Inequality.
		{"inequality matches different value", "labels.owner!=dev", nginx, true},
		{"inequality rejects equal value", "labels.owner!=ops", nginx, false},
		{"inequality matches absent field", "name!=x", nameless, true},
		{"inequality with empty value rejects absent field", `name!=""`, nameless, false},

		// Regular expressions.
		{"regexp matches unanchored substring", "name~=nginx", nginx, true},
		{"regexp rejects non-matching value", "name~=nginx", redis, false},
		{"regexp anchors are honoured", "name~=^nginx", nginx, false},
		{"regexp in double quotes", `name~="^docker\\.io/.*:1\\.25$"`, nginx, true},
		{"regexp in slashes keeps backslashes", `name~=/^docker\.io\/library\/nginx:\d+\.\d+$/`, nginx, true},
		{"regexp in slashes rejects non-matching value", `name~=/^redis/`, nginx, false},
		{"regexp on quoted label key", `labels."com.example.tier"~=^(web|cache)$`, redis, true},
		{"regexp reads absent field as empty string", "name~=^$", nameless, true},
		{"regexp with escaped leading slash is unquoted", `path~=\/var`, nginx, true},
		{"regexp in pipes", `path~=|^/var/|`, nginx, true},
		{"regexp in pipes rejects non-matching value", `path~=|^/lib|`, nginx, false},
		{"regexp in pipes: escaped pipe is alternation", `path~=|^/usr\|^/var|`, nginx, true},
		{"regexp in pipes keeps other backslashes", `name~=|^docker\.io/library/nginx:\d|`, nginx, true},
		{"regexp in pipes: escaped backslash is one backslash", `name~=|^docker\\.io/|`, nginx, true},
		{"regexp in pipes: Go escapes are decoded", `name~=|^\x64ocker|`, nginx, true},
		{"equality value with leading slash is literal", "path==/var/lib", nginx, true},

		// Presence.
		{"presence matches present field", "name", nginx, true},
		{"presence matches present label", "labels.owner", nameless, true},
		{"presence rejects absent field", "name", nameless, false},
		{"presence matches field with empty value", "empty", nginx, true},

		// Field paths.
		{"quoted label key keeps its dots", `labels."com.example.tier"==web`, nginx, true},
		{"unquoted dots split the path", "labels.com.example.tier==web", nginx, false},
		{"quoted key with escaped quote", `labels."a\"b"==quoted`, nginx, true},
		{"quoted key with unicode escape", `labels."\u00e9"==accent`, nginx, true},
		{"quoted top-level component", `"name"==docker.io/library/redis:7`, redis, true},
		{"empty quoted key", `labels.""=="blank key"`, nginx, true},

		// Comma is AND.
		{"comma requires every selector: all match", "name~=nginx,labels.owner==ops,target", nginx, true},
		{"comma requires every selector: one fails", "name~=nginx,labels.owner==dev", nginx, false},
		{"comma with presence failing", "labels.owner,name", nameless, false},

		// Whitespace.
		{"whitespace around tokens is ignored", "  name ~= nginx ,\tlabels . owner == ops  ", nginx, true},
		{"whitespace around quoted tokens is ignored", ` labels . "com.example.tier" != "cache" `, nginx, true},
		{"newlines count as whitespace", "name\n==\ndocker.io/library/redis:7\n", redis, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := Parse(tc.filter)
			if err != nil {
				t.Fatalf("Parse(%q): %v", tc.filter, err)
			}
			if got := f.Match(tc.obj); got != tc.want {
				t.Errorf("Parse(%q).Match(%v) = %v, want %v", tc.filter, tc.obj.fields, got, tc.want)
			}
		})
	}
}

func TestParseAllIsOr(t *testing.T) {
	for _, tc := range []struct {
		name    string
		filters []string
		obj     object
		want    bool
	}{
		{"no strings matches everything", nil, nameless, true},
		{"one string behaves like Parse", []string{"name~=redis"}, redis, true},
		{"first of two strings matches", []string{"name~=nginx", "name~=redis"}, nginx, true},
		{"second of two strings matches", []string{"name~=nginx", "name~=redis"}, redis, true},
		{"neither string matches", []string{"name~=nginx", "name~=redis"}, nameless, false},
		{"an empty string makes it match everything", []string{"name~=nginx", ""}, nameless, true},
		{"each string is an AND of its selectors", []string{"name~=nginx,labels.owner==dev", "labels.owner==dev,name"}, nginx, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := ParseAll(tc.filters...)
			if err != nil {
				t.Fatalf("ParseAll(%q): %v", tc.filters, err)
			}
			if got := f.Match(tc.obj); got != tc.want {
				t.Errorf("ParseAll(%q).Match(%v) = %v, want %v", tc.filters, tc.obj.fields, got, tc.want)
			}
		})
	}

	t.Run("no strings yields Always", func(t *testing.T) {
		if f, err := ParseAll(); err != nil || f != Always {
			t.Fatalf("ParseAll() = %v, %v; want Always, nil", f, err)
		}
	})
	t.Run("one bad string fails the whole set", func(t *testing.T) {
		_, err := ParseAll("name==a", "name=b")
		want := `filters: parse "name=b": expected operator (==, != or ~=), ',' or end of filter, found '=' at position 4: invalid argument`
		if err == nil || err.Error() != want || !errdefs.IsInvalidArgument(err) {
			t.Fatalf("ParseAll error = %v, want %s", err, want)
		}
	})
}

func TestFieldpathReachesAdaptor(t *testing.T) {
	for _, tc := range []struct {
		name   string
		filter string
		want   []string
	}{
		{"identifier", "name", []string{"name"}},
		{"dotted identifiers", "labels.a.b", []string{"labels", "a", "b"}},
		{"quoted component is one element", `labels."a.b"`, []string{"labels", "a.b"}},
		{"identifiers may hold digits and underscores", "_x1.y_2==v", []string{"_x1", "y_2"}},
		{"spaces around dots", `labels . "x y" == v`, []string{"labels", "x y"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := Parse(tc.filter)
			if err != nil {
				t.Fatalf("Parse(%q): %v", tc.filter, err)
			}
			var got []string
			f.Match(AdapterFunc(func(fp []string) (string, bool) {
				got = append([]string(nil), fp...)
				return "", false
			}))
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Parse(%q) asked for %q, want %q", tc.filter, got, tc.want)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		filter string
		want   string
	}{
		{"missing value at end", "name==",
			`filters: parse "name==": expected value at position 6: invalid argument`},
		{"missing value before comma", "name!= ,target",
			`filters: parse "name!= ,target": expected value, found ',' at position 7: invalid argument`},
		{"single = is not an operator", "name=x",
			`filters: parse "name=x": expected operator (==, != or ~=), ',' or end of filter, found '=' at position 4: invalid argument`},
		{"=~ is not an operator", "name=~x",
			`filters: parse "name=~x": expected operator (==, != or ~=), ',' or end of filter, found '=' at position 4: invalid argument`},
		{"< is not an operator", "name<x",
			`filters: parse "name<x": expected operator (==, != or ~=), ',' or end of filter, found '<' at position 4: invalid argument`},
		{"unterminated quoted field", `labels."a.b==x`,
			`filters: parse "labels.\"a.b==x": unterminated quoted string at position 7: invalid argument`},
		{"unterminated quoted value", `name=="nginx`,
			`filters: parse "name==\"nginx": unterminated quoted string at position 6: invalid argument`},
		{"escaped closing quote leaves string open", `name=="a\"`,
			`filters: parse "name==\"a\\\"": unterminated quoted string at position 6: invalid argument`},
		{"bad escape in quoted string", `name=="\q"`,
			`filters: parse "name==\"\\q\"": invalid escape or character in quoted string at position 6: invalid argument`},
		{"bad regexp", "name~=[a-",
			`filters: parse "name~=[a-": invalid regexp "[a-": error parsing regexp: missing closing ]: ` + "`[a-`" + ` at position 6: invalid argument`},
		{"bad regexp in slashes", "name~= /(/",
			`filters: parse "name~= /(/": invalid regexp "(": error parsing regexp: missing closing ): ` + "`(`" + ` at position 7: invalid argument`},
		{"unterminated slash regexp", "name~=/abc",
			`filters: parse "name~=/abc": unterminated /-delimited regexp at position 6: invalid argument`},
		{"unterminated pipe regexp", "topic~=|^/tasks/",
			`filters: parse "topic~=|^/tasks/": unterminated |-delimited regexp at position 7: invalid argument`},
		{"pipes quote only regexps", "topic==|/tasks/exit|",
			`filters: parse "topic==|/tasks/exit|": |quoted| values are only for ~=; use double quotes at position 7: invalid argument`},
		{"text after slash regexp", "name~=/a/b",
			`filters: parse "name~=/a/b": expected ',' or end of filter, found 'b' at position 9: invalid argument`},
		{"trailing comma", "name==x,",
			`filters: parse "name==x,": expected field path at position 8: invalid argument`},
		{"trailing comma and space", "name==x, ",
			`filters: parse "name==x, ": expected field path at position 9: invalid argument`},
		{"leading comma", ",name",
			`filters: parse ",name": expected field path, found ',' at position 0: invalid argument`},
		{"empty selector between commas", "a,,b",
			`filters: parse "a,,b": expected field path, found ',' at position 2: invalid argument`},
		{"missing field path", "==x",
			`filters: parse "==x": expected field path, found '=' at position 0: invalid argument`},
		{"field may not start with a digit", "1name==x",
			`filters: parse "1name==x": expected field path, found '1' at position 0: invalid argument`},
		{"dot must be followed by a name", "labels.==x",
			`filters: parse "labels.==x": expected field name after '.', found '=' at position 7: invalid argument`},
		{"trailing dot", "labels.",
			`filters: parse "labels.": expected field name after '.' at position 7: invalid argument`},
		{"space inside unquoted value", "name==a b",
			`filters: parse "name==a b": expected ',' or end of filter, found 'b' at position 8: invalid argument`},
		{"quote inside unquoted value", `name==a"b"`,
			`filters: parse "name==a\"b\"": quote inside unquoted value; quote the whole value at position 7: invalid argument`},
		{"single quotes are refused", `name=='a'`,
			`filters: parse "name=='a'": single quotes are not supported, use double quotes at position 6: invalid argument`},
		{"invalid UTF-8", "name==\xff",
			`filters: parse "name==\xff": invalid UTF-8 at position 6: invalid argument`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := Parse(tc.filter)
			if err == nil {
				t.Fatalf("Parse(%q) = %v, want error", tc.filter, f)
			}
			if !errdefs.IsInvalidArgument(err) {
				t.Errorf("Parse(%q) error %v is not invalid argument", tc.filter, err)
			}
			if err.Error() != tc.want {
				t.Errorf("Parse(%q) error\n got %s\nwant %s", tc.filter, err, tc.want)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"", "name", "name==x", `labels."a.b"!="c,d"`, "name~=/^a\\/b$/", "topic~=|^/tasks/\\|x|", "a,b,c",
		" a . b ~= \"x\" , c ", "name==", "labels.\"", "name~=[", ",", "a==b=c",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		flt, err := Parse(s)
		if err != nil {
			return
		}
		flt.Match(nginx)
		flt.Match(AdapterFunc(func([]string) (string, bool) { return "", false }))
	})
}

func BenchmarkMatch(b *testing.B) {
	f, err := ParseAll(
		`name~=^docker\.io/library/redis:,labels."com.example.tier"==cache`,
		`name~=/^docker\.io\/library\/nginx:/,labels."com.example.tier"==web,labels.owner!=dev`,
	)
	if err != nil {
		b.Fatal(err)
	}
	var obj Adaptor = nginx // box once, so only the filter's cost is measured
	b.ReportAllocs()
	for b.Loop() {
		if !f.Match(obj) {
			b.Fatal("no match")
		}
	}
}
