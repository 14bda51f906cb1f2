package translate

import (
	"fmt"
	"slices"
	"strings"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// verdict is what Sluice does with a field that is set in a resource.
type verdict uint8

const (
	// refused is the zero verdict on purpose: a field no rule names (one
	// added to Envoy after these rules were written, say) is refused, so a
	// new routing feature is never silently dropped.
	refused verdict = iota
	// honoured fields are read by the translator, which checks their values.
	honoured
	// ignored fields are accepted and counted in Result.Ignored: they do not
	// change which backend a connection gets or whether it succeeds.
	ignored
)

// rule is the verdict on one field of one message type.
type rule struct {
	verdict verdict
	reason  string // refused: why, for the NACK; empty means the generic reason
	key     string // ignored: the Result.Ignored key, set by newPolicy
}

// genericRefusal is the reason given for a field that no rule names.
const genericRefusal = "not supported (Sluice refuses fields it does not know to be harmless)"

var (
	honour = rule{verdict: honoured}
	ignore = rule{verdict: ignored}
)

func refuse(reason string) rule { return rule{verdict: refused, reason: reason} }

// policy is the field policy of one message type at one place in a resource.
// The same message type (SocketAddress, say) has one policy per place, so
// that its ignored fields are counted under a key that says where they were.
type policy struct {
	msg   protoreflect.MessageDescriptor
	rules map[protoreflect.Name]rule
	// watch is every field of msg that is not honoured, with its rule, in
	// declaration order: the fields check must look at. It is built from
	// the descriptor, not from rules, so a field no rule names is in it.
	watch []watched
	// clean, if set, reports without reflection that a message sets no
	// field in watch, so that check need not ask Has of each: reflection
	// costs some 50 ns a field, which adds up for endpoints, of which a
	// node has hundreds of thousands. It is only a shortcut: when it says
	// no, check decides as usual.
	clean func(proto.Message) bool
}

type watched struct {
	fd   protoreflect.FieldDescriptor
	rule rule
}

// newPolicy returns the policy for messages of m's type whose ignored fields
// are counted under key + "." + field name. Policies are built once, at
// package initialisation, and never change.
func newPolicy(key string, m proto.Message, rules map[protoreflect.Name]rule) *policy {
	p := &policy{msg: m.ProtoReflect().Descriptor(), rules: make(map[protoreflect.Name]rule, len(rules))}
	for name, r := range rules {
		if r.verdict == ignored {
			r.key = key + "." + string(name)
		}
		p.rules[name] = r
	}
	fields := p.msg.Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		if r := p.rules[fd.Name()]; r.verdict != honoured {
			p.watch = append(p.watch, watched{fd: fd, rule: r})
		}
	}
	return p
}

// withClean sets p's shortcut. fields is the number of fields msg had when
// clean was written: if the message has gained fields since, the shortcut
// (which cannot know them) is dropped and every message takes the slow path.
func (p *policy) withClean(fields int, clean func(proto.Message) bool) *policy {
	if p.msg.Fields().Len() == fields {
		p.clean = clean
	}
	return p
}

// check applies p to m: it counts every ignored field set in m and returns
// an error for the refused field declared first, or else for fields unknown
// to this version of the Envoy API.
//
// It asks Has of each field that is not honoured rather than Range over the
// set fields: the classification is the same, the order is the declaration
// order (so the error is deterministic), and it builds no protoreflect.Value
// per field, which made Range the largest cost of a big translation.
func (t *tally) check(m protoreflect.Message, p *policy) *fieldError {
	if m == nil || !m.IsValid() {
		return nil
	}
	if m.Descriptor() != p.msg {
		// A bug in the translator, reported rather than left to panic in Has.
		return errAt("", "internal error: %s checked against the policy of %s", m.Descriptor().FullName(), p.msg.FullName())
	}
	if p.clean != nil && len(m.GetUnknown()) == 0 && p.clean(m.Interface()) {
		return nil
	}
	for _, w := range p.watch {
		if !m.Has(w.fd) {
			continue
		}
		if w.rule.verdict == ignored {
			t.add(w.rule.key)
			continue
		}
		reason := w.rule.reason
		if reason == "" {
			reason = genericRefusal
		}
		return &fieldError{field: string(w.fd.Name()), reason: reason}
	}
	if raw := m.GetUnknown(); len(raw) > 0 {
		// A field this build does not know may come from a newer control
		// plane; what it means cannot be known, so it is refused.
		num, _, n := protowire.ConsumeTag(raw)
		if n < 0 {
			return errAt("", "undecodable unknown fields in %s", m.Descriptor().FullName())
		}
		return errAt("", "unknown field number %d in %s (newer API than this Sluice knows)", num, m.Descriptor().FullName())
	}
	return nil
}

// isEmpty reports whether no field of m is set.
func isEmpty(m protoreflect.Message) bool {
	if m == nil || !m.IsValid() {
		return true
	}
	empty := len(m.GetUnknown()) == 0
	m.Range(func(protoreflect.FieldDescriptor, protoreflect.Value) bool {
		empty = false
		return false
	})
	return empty
}

// tally counts ignored fields per resource: a key set several times within
// one resource (in every endpoint of an assignment, say) counts once.
type tally struct {
	counts map[string]int
	cur    []string // keys seen in the resource being translated
	taken  []string // what take returned last
}

func newTally() *tally { return &tally{counts: make(map[string]int)} }

func (t *tally) add(key string) {
	for _, k := range t.cur {
		if k == key {
			return
		}
	}
	t.cur = append(t.cur, key)
}

// done ends the current resource.
func (t *tally) done() {
	for _, k := range t.cur {
		t.counts[k]++
	}
	t.cur = t.cur[:0]
}

// fieldError is a refusal within one resource; the resource's type and name
// are added when it becomes a ResourceError. The field path is built from
// the inside out as the error returns through the translator, so the common
// path (no error) costs no string building.
type fieldError struct {
	field  string
	reason string
}

func errAt(field, format string, args ...any) *fieldError {
	if len(args) == 0 {
		return &fieldError{field: field, reason: format}
	}
	return &fieldError{field: field, reason: fmt.Sprintf(format, args...)}
}

// in returns e with its field path placed under the path seg.
func (e *fieldError) in(seg string) *fieldError {
	switch {
	case seg == "":
	case e.field == "":
		e.field = seg
	case strings.HasPrefix(e.field, "["):
		e.field = seg + e.field
	default:
		e.field = seg + "." + e.field
	}
	return e
}

func (e *fieldError) resource(typ, name string) *ResourceError {
	return &ResourceError{Type: typ, Name: name, Field: e.field, Reason: e.reason}
}

func index(field string, i int) string { return fmt.Sprintf("%s[%d]", field, i) }

// sortedKeys returns m's keys in order, so resources are visited
// deterministically.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
