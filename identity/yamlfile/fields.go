package yamlfile

import (
	"slices"
	"strings"

	"gopkg.in/yaml.v3"
)

// Fields is a YAML mapping whose keys have been checked against the fields
// its place in the file allows.
type Fields struct {
	file *File
	node *yaml.Node
	at   string // field path of the mapping
	vals map[string]*yaml.Node
}

// Fields checks that n is a mapping at field path at holding only known keys,
// each once, and returns its values. Merge keys (<<) are refused. A null value
// counts as absent, as in Kubernetes.
func (f *File) Fields(n *yaml.Node, at string, known ...string) (Fields, error) {
	fs := Fields{file: f, node: n, at: at, vals: map[string]*yaml.Node{}}
	if n.Kind != yaml.MappingNode {
		return fs, f.Errorf(n, at, "must be a mapping, not %s", Describe(n))
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := Resolve(n.Content[i]), Resolve(n.Content[i+1])
		if k.Kind != yaml.ScalarNode {
			return fs, f.Errorf(k, at, "keys must be field names, not %s", Describe(k))
		}
		if k.Tag == "!!merge" {
			return fs, f.Errorf(k, fs.Path(k.Value), "merge keys (<<) are not supported; repeat the fields")
		}
		if !slices.Contains(known, k.Value) {
			return fs, f.Errorf(k, fs.Path(k.Value), "unknown field; known fields are %s", strings.Join(known, ", "))
		}
		if seen[k.Value] {
			return fs, f.Errorf(k, fs.Path(k.Value), "field given twice")
		}
		seen[k.Value] = true
		if IsNull(v) {
			continue
		}
		fs.vals[k.Value] = v
	}
	return fs, nil
}

// At returns the field path of the mapping.
func (fs Fields) At() string { return fs.at }

// Get returns the value of field key, nil if it is absent or null.
func (fs Fields) Get(key string) *yaml.Node { return fs.vals[key] }

// Len returns the number of fields given, not counting null ones.
func (fs Fields) Len() int { return len(fs.vals) }

// Path returns the field path of field key.
func (fs Fields) Path(key string) string {
	if fs.at == "" {
		return key
	}
	return fs.at + "." + key
}

// Missing returns the error for a required field key that is absent.
func (fs Fields) Missing(key string) error {
	return fs.file.Errorf(fs.node, fs.Path(key), "required field is missing")
}

// Name returns the string field key if check accepts it (check returns why
// not, or ""), def if the field is absent. The field is required if def is "".
func (fs Fields) Name(key, def string, check func(string) string) (string, error) {
	n := fs.Get(key)
	if n == nil {
		if def == "" {
			return "", fs.Missing(key)
		}
		return def, nil
	}
	s, err := fs.file.Str(n, fs.Path(key))
	if err != nil {
		return "", err
	}
	if reason := check(s); reason != "" {
		return "", fs.file.Errorf(n, fs.Path(key), "%q %s", s, reason)
	}
	return s, nil
}
