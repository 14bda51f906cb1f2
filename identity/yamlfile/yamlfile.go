// Package yamlfile strictly decodes Sluice's YAML files, with errors that name
// the file, line and field of each problem.
package yamlfile

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Error is a problem found in a YAML file. It names the place in the file so
// that the file's author can find it.
type Error struct {
	File   string // the file name given to the parser
	Line   int    // 1-based; 0 when the problem is not at one line
	Field  string // path of the field, e.g. "services[0].vips[1]"; empty for the whole file
	Reason string
	Class  error // what errors.Is matches, e.g. the parser's ErrInvalid; may be nil
}

// Error formats e as "file:line: field: reason", leaving out what is unknown.
func (e *Error) Error() string {
	s := e.File
	if e.Line > 0 {
		s += ":" + strconv.Itoa(e.Line)
	}
	if e.Field != "" {
		s += ": " + e.Field
	}
	return s + ": " + e.Reason
}

// Unwrap returns e.Class, making errors.Is(err, class) true.
func (e *Error) Unwrap() error { return e.Class }

// File is one YAML file being parsed. Its methods check nodes of the file's
// tree and return an *Error naming the file and Class for the first problem.
// A File is not modified by its methods.
type File struct {
	Name  string // the file's name in errors; required
	Kind  string // what the file is, e.g. "mesh file"; required
	Class error  // the class of every error; required
}

var yamlLine = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// Decode parses data as one YAML document and returns its root node, nil for
// an empty document. Empty documents around it (a stray "---") are ignored.
// Decode never panics, whatever data holds.
func (f *File) Decode(data []byte) (root *yaml.Node, err error) {
	// yaml.v3 reports syntax errors by panicking internally and recovering;
	// should one of its bugs let a panic escape on hostile input, it is
	// reported as a syntax error instead of taking the process down.
	defer func() {
		if r := recover(); r != nil {
			root, err = nil, f.err(0, "", fmt.Sprintf("invalid YAML: %v", r))
		}
	}()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var doc yaml.Node
		if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
			return root, nil
		} else if err != nil {
			return nil, f.syntaxError(err)
		}
		if len(doc.Content) == 0 || IsNull(Resolve(doc.Content[0])) {
			continue
		}
		if root != nil {
			return nil, f.err(doc.Line, "", "a second YAML document; a "+f.Kind+" holds one")
		}
		root = doc.Content[0]
	}
}

func (f *File) syntaxError(err error) error {
	msg := err.Error()
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		return f.err(line, "", "invalid YAML: "+m[2])
	}
	return f.err(0, "", "invalid YAML: "+strings.TrimPrefix(msg, "yaml: "))
}

func (f *File) err(line int, field, reason string) error {
	return &Error{File: f.Name, Line: line, Field: field, Reason: reason, Class: f.Class}
}

// Errorf returns an *Error at n's line and field.
func (f *File) Errorf(n *yaml.Node, field, format string, args ...any) error {
	return f.err(n.Line, field, fmt.Sprintf(format, args...))
}

// Seq returns the items of list n at field path at, aliases resolved. A null
// item is an error.
func (f *File) Seq(n *yaml.Node, at string) ([]*yaml.Node, error) {
	if n.Kind != yaml.SequenceNode {
		return nil, f.Errorf(n, at, "must be a list, not %s", Describe(n))
	}
	items := make([]*yaml.Node, len(n.Content))
	for i, c := range n.Content {
		items[i] = Resolve(c)
		if IsNull(items[i]) {
			return nil, f.Errorf(items[i], fmt.Sprintf("%s[%d]", at, i), "empty list item")
		}
	}
	return items, nil
}

// Str returns the text of scalar n at field path at.
func (f *File) Str(n *yaml.Node, at string) (string, error) {
	if n.Kind != yaml.ScalarNode {
		return "", f.Errorf(n, at, "must be a string, not %s", Describe(n))
	}
	return n.Value, nil
}

// Bool returns the value of boolean scalar n at field path at: true or
// false, as YAML 1.2 spells them.
func (f *File) Bool(n *yaml.Node, at string) (bool, error) {
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!bool" {
		switch n.Value {
		case "true", "True", "TRUE":
			return true, nil
		case "false", "False", "FALSE":
			return false, nil
		}
	}
	return false, f.Errorf(n, at, "must be true or false, not %s", Describe(n))
}

// Resolve follows an alias to the node it names. Errors inside an aliased
// node report the line of the anchor.
func Resolve(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	return n
}

// IsNull reports whether n is absent or a YAML null.
func IsNull(n *yaml.Node) bool {
	return n == nil || n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// Describe names what n is, for errors: "a mapping", "a list", a quoted
// string or the text of another scalar.
func Describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		if n.ShortTag() == "!!str" {
			return strconv.Quote(n.Value)
		}
		return n.Value
	}
	return "an unexpected YAML node"
}
