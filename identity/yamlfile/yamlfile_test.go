package yamlfile_test

import (
	"errors"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/sluice-mesh/sluice/identity/yamlfile"
)

var errTest = errors.New("invalid test file")

func testFile() *yamlfile.File {
	return &yamlfile.File{Name: "t.yaml", Kind: "test file", Class: errTest}
}

// lines joins YAML lines, so that a test can see the line number of every
// line: the i-th argument is line i+1.
func lines(l ...string) []byte { return []byte(strings.Join(l, "\n") + "\n") }

// wantError checks that err is an *yamlfile.Error of class errTest at line
// and field whose reason contains reason.
func wantError(t *testing.T, err error, line int, field, reason string) {
	t.Helper()
	var e *yamlfile.Error
	if !errors.As(err, &e) || !errors.Is(err, errTest) {
		t.Fatalf("error %v (%T) is not a *yamlfile.Error of class errTest", err, err)
	}
	if e.File != "t.yaml" || e.Line != line || e.Field != field || !strings.Contains(e.Reason, reason) {
		t.Errorf("error %q\n got file %q line %d field %q reason %q\nwant file %q line %d field %q reason containing %q",
			err, e.File, e.Line, e.Field, e.Reason, "t.yaml", line, field, reason)
	}
}

func TestErrorString(t *testing.T) {
	for _, tc := range []struct {
		err  yamlfile.Error
		want string
	}{
		{yamlfile.Error{File: "m.yaml", Line: 3, Field: "services", Reason: "must be a list"}, "m.yaml:3: services: must be a list"},
		{yamlfile.Error{File: "m.yaml", Reason: "invalid YAML: x"}, "m.yaml: invalid YAML: x"},
		{yamlfile.Error{File: "m.yaml", Line: 2, Reason: "invalid YAML: x"}, "m.yaml:2: invalid YAML: x"},
		{yamlfile.Error{File: "m.yaml", Field: "a.b", Reason: "r"}, "m.yaml: a.b: r"},
	} {
		if got := tc.err.Error(); got != tc.want {
			t.Errorf("Error() = %q, want %q", got, tc.want)
		}
	}
	if err := error(&yamlfile.Error{File: "m.yaml", Reason: "r", Class: errTest}); !errors.Is(err, errTest) {
		t.Errorf("errors.Is(%v, its Class) = false", err)
	}
}

func TestDecode(t *testing.T) {
	for _, data := range [][]byte{nil, []byte("\n"), []byte("# nothing\n"), []byte("---\n"), []byte("~\n"), []byte("---\n---\nnull\n")} {
		root, err := testFile().Decode(data)
		if err != nil || root != nil {
			t.Errorf("Decode(%q) = %v, %v; want an empty document", data, root, err)
		}
	}
	root, err := testFile().Decode(lines("---", "a: 1", "---"))
	if err != nil || root == nil || root.Kind != yaml.MappingNode || root.Line != 2 {
		t.Errorf("Decode = %+v, %v; want the mapping at line 2", root, err)
	}

	for _, tc := range []struct {
		name   string
		yaml   []byte
		line   int
		reason string
	}{
		{"syntax", lines("a: ["), 1, "invalid YAML"},
		{"syntax later line", lines("a:", "  - x", "  - ["), 3, "invalid YAML"},
		{"two documents", lines("a: 1", "---", "b: 2"), 2, "a second YAML document; a test file holds one"},
		{"two documents after an empty one", lines("---", "a: 1", "---", "---", "b: 2"), 4, "second YAML document"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root, err := testFile().Decode(tc.yaml)
			if err == nil {
				t.Fatalf("Decode succeeded: %+v", root)
			}
			wantError(t, err, tc.line, "", tc.reason)
		})
	}
}

// decode returns the root of data, which must be valid YAML.
func decode(t *testing.T, data []byte) *yaml.Node {
	t.Helper()
	root, err := testFile().Decode(data)
	if err != nil || root == nil {
		t.Fatalf("Decode(%q) = %v, %v", data, root, err)
	}
	return root
}

func TestFields(t *testing.T) {
	f := testFile()
	fs, err := f.Fields(decode(t, lines("name: a", "size: ~", "kind: &k x", "alias: *k")), "top", "name", "size", "kind", "alias", "other")
	if err != nil {
		t.Fatal(err)
	}
	if fs.Len() != 3 || fs.Get("size") != nil || fs.Get("other") != nil || fs.Get("alias").Value != "x" {
		t.Errorf("Fields = %d fields, size %v, other %v, alias %v; want 3, a null size absent, the alias resolved",
			fs.Len(), fs.Get("size"), fs.Get("other"), fs.Get("alias"))
	}
	if got := fs.Path("name"); got != "top.name" {
		t.Errorf("Path = %q, want top.name", got)
	}
	if fs.At() != "top" {
		t.Errorf("At = %q, want top", fs.At())
	}
	wantError(t, fs.Missing("other"), 1, "top.other", "required field is missing")

	for _, tc := range []struct {
		name   string
		yaml   []byte
		line   int
		field  string
		reason string
	}{
		{"not a mapping", lines("- a"), 1, "", "must be a mapping, not a list"},
		{"string", lines(`"a"`), 1, "", `must be a mapping, not "a"`},
		{"key not a scalar", lines("? [a]", ": 1"), 1, "", "keys must be field names, not a list"},
		{"merge key", lines("<<: {name: a}"), 1, "<<", "merge keys (<<) are not supported; repeat the fields"},
		{"unknown field", lines("name: a", "nmae: b"), 2, "nmae", "unknown field; known fields are name, size"},
		{"field twice", lines("name: a", "size: 1", "name: b"), 3, "name", "field given twice"},
		{"null twice", lines("name: ~", "name: ~"), 2, "name", "field given twice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := f.Fields(decode(t, tc.yaml), "", "name", "size")
			wantError(t, err, tc.line, tc.field, tc.reason)
		})
	}
}

func TestFieldsName(t *testing.T) {
	f := testFile()
	fs, err := f.Fields(decode(t, lines("a: web", "b: Web", "c: [web]")), "", "a", "b", "c", "d")
	if err != nil {
		t.Fatal(err)
	}
	if got, err := fs.Name("a", "", yamlfile.CheckLabel); got != "web" || err != nil {
		t.Errorf(`Name("a") = %q, %v; want "web"`, got, err)
	}
	if got, err := fs.Name("d", "default", yamlfile.CheckLabel); got != "default" || err != nil {
		t.Errorf(`Name("d") = %q, %v; want the default`, got, err)
	}
	_, err = fs.Name("d", "", yamlfile.CheckLabel)
	wantError(t, err, 1, "d", "required field is missing")
	_, err = fs.Name("b", "", yamlfile.CheckLabel)
	wantError(t, err, 2, "b", `"Web" is not a DNS-1123 label`)
	_, err = fs.Name("c", "", yamlfile.CheckLabel)
	wantError(t, err, 3, "c", "must be a string, not a list")
}

func TestSeq(t *testing.T) {
	f := testFile()
	root := decode(t, lines("a: &x 1", "l: [*x, b]", "m: {}", "e:", "  - b", "  -"))
	fs, err := f.Fields(root, "", "a", "l", "m", "e")
	if err != nil {
		t.Fatal(err)
	}
	items, err := f.Seq(fs.Get("l"), "l")
	if err != nil || len(items) != 2 || items[0].Value != "1" || items[1].Value != "b" {
		t.Errorf("Seq = %v, %v; want [1 b], the alias resolved", items, err)
	}
	_, err = f.Seq(fs.Get("m"), "m")
	wantError(t, err, 3, "m", "must be a list, not a mapping")
	_, err = f.Seq(fs.Get("e"), "e")
	wantError(t, err, 6, "e[1]", "empty list item")
	_, err = f.Str(fs.Get("l"), "l")
	wantError(t, err, 2, "l", "must be a string, not a list")
	if s, err := f.Str(fs.Get("a"), "a"); s != "1" || err != nil {
		t.Errorf("Str = %q, %v; want 1", s, err)
	}
}

func TestDescribe(t *testing.T) {
	f := testFile()
	fs, err := f.Fields(decode(t, lines("m: {}", "l: []", "s: 'x y'", "i: 7", "b: true")), "", "m", "l", "s", "i", "b")
	if err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string]string{"m": "a mapping", "l": "a list", "s": `"x y"`, "i": "7", "b": "true"} {
		if got := yamlfile.Describe(fs.Get(key)); got != want {
			t.Errorf("Describe(%s) = %q, want %q", key, got, want)
		}
	}
}

func TestCheckNames(t *testing.T) {
	for _, tc := range []struct {
		check func(string) string
		name  string
		s     string
		ok    bool
	}{
		{yamlfile.CheckLabel, "label", "web-1", true},
		{yamlfile.CheckLabel, "label", strings.Repeat("a", 63), true},
		{yamlfile.CheckLabel, "label", strings.Repeat("a", 64), false},
		{yamlfile.CheckLabel, "label", "Web", false},
		{yamlfile.CheckLabel, "label", "-web", false},
		{yamlfile.CheckLabel, "label", "web-", false},
		{yamlfile.CheckLabel, "label", "web.eu", false},
		{yamlfile.CheckLabel, "label", "", false},
		{yamlfile.CheckSubdomain, "subdomain", "web.admin", true},
		{yamlfile.CheckSubdomain, "subdomain", strings.Repeat("a", 253), true},
		{yamlfile.CheckSubdomain, "subdomain", strings.Repeat("a", 254), false},
		{yamlfile.CheckSubdomain, "subdomain", "web..admin", false},
		{yamlfile.CheckSubdomain, "subdomain", "web_admin", false},
		{yamlfile.CheckSubdomain, "subdomain", "", false},
		{yamlfile.CheckTrustDomain, "trust domain", "example.org", true},
		{yamlfile.CheckTrustDomain, "trust domain", "my_td-1.example", true},
		{yamlfile.CheckTrustDomain, "trust domain", "Example.org", false},
		{yamlfile.CheckTrustDomain, "trust domain", "spiffe://example.org", false},
		{yamlfile.CheckTrustDomain, "trust domain", "", false},
		{yamlfile.CheckTrustDomain, "trust domain", strings.Repeat("a", 256), false},
	} {
		if reason := tc.check(tc.s); (reason == "") != tc.ok {
			t.Errorf("check %s %q = %q, want ok %v", tc.name, tc.s, reason, tc.ok)
		}
	}
}

// FuzzDecode checks that no input makes Decode panic and that every error
// is a *yamlfile.Error of the file's class.
func FuzzDecode(f *testing.F) {
	f.Add([]byte("a: &x [*x, *x]\n"))
	f.Add([]byte("---\n---\n"))
	f.Add([]byte("a: [\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		if _, err := testFile().Decode(data); err != nil {
			var e *yamlfile.Error
			if !errors.As(err, &e) || !errors.Is(err, errTest) {
				t.Fatalf("error %v (%T) is not a *yamlfile.Error of class errTest", err, err)
			}
		}
	})
}
