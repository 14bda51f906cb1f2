// Package policy compiles the L4 authorization policies of a node's services
// into the verdict tables the kernel looks connections up in.
//
// It is pure Go: no I/O, no globals; Compile is safe to call concurrently.
//
// # What the kernel looks up
//
// A TCP connection to a destination endpoint (address, port) is decided in
// three lookups:
//
//  1. Dests: (address, port) → policy set, and whether the set tests source
//     addresses. No entry: no policy, the connection is allowed.
//  2. Classes, only if the set tests source addresses: the longest prefix of
//     the set that holds the source address → class 1..n; none → class 0.
//  3. Verdicts: (set, source identity, class) → verdict; on a miss,
//     (set, 0, class). Identity 0 has an entry for every (set, class); any
//     other identity only where its verdict differs from identity 0's.
//
// # Semantics
//
// Only TCP services with at least one Policy contribute. Every endpoint of
// such a service, in every pool and every health state (a draining endpoint
// keeps its connections), is a destination. The services that reach one
// destination, sorted by name, form its policy set; destinations reached by
// the same services share the set. Set ids are 1, 2, ... in order of first
// appearance in the destinations sorted by (address, port).
//
// A connection is allowed iff every service of its set allows it, and a
// service allows it iff each of its policies does. A policy's Rules, unless
// the policy is Monitor, are enforced: an ALLOW rule set denies what none of
// its rules matches, a DENY rule set denies what one of its rules matches.
// So DENY beats ALLOW, and a set without enforced rule sets allows
// everything. The dry-run rule sets — Shadow, and the Rules of a Monitor
// policy, in that policy's order Rules then Shadow — never deny; they are
// combined across the set exactly like the enforced ones into
// Verdict.Shadow (ShadowNone if the set has no dry-run rule set).
//
// A rule matches iff one of its principals matches the source and one of its
// permissions matches the destination.
//   - Principals: Any matches every source; Authenticated(Name) a source
//     with identity ≠ 0 whose SPIFFE ID Name matches (MatchNone: every mesh
//     identity); SourceIP(CIDR) a source address in CIDR; And, Or and Not as
//     named. Addresses are known only by class: the CIDRs of a set either
//     nest or are disjoint, so every address of class c (whose longest
//     matching CIDR is P_c) is in a CIDR X of the set iff P_c ⊆ X. Class 0
//     is in no CIDR.
//   - Permissions are evaluated against the service's own VIP and Port (the
//     listener's address, whichever backend is connected to): Port ranges
//     contain the port, IP CIDRs contain the VIP, Any, And, Or, Not.
//
// The classes of a set are the CIDRs of the SourceIP principals of its
// rules, masked, each once, sorted (IPv4 first, then by address, then by
// length) and numbered 1..n; a rule whose permissions cannot match its
// service's destination is left out, as it never matches. Verdicts are
// evaluated for every class 0..n and every identity, 0 and those of names.
//
// Attribution: a rule set's rules are tried in order and the first that
// matches decides; if none matches, the rule set's Default pseudo-rule
// decides. A denied connection's Rule is the deciding rule of the first
// denying rule set (services in set order, then policies, in order); an
// allowed one's is that of the first enforced rule set, or 0 if the set has
// none. ShadowRule is the same for the dry-run rule sets. Terminate is set
// on a deny whose deciding policy is Continuous.
//
// Rules holds every rule and every rule set's Default pseudo-rule of every
// TCP service with policies — also rules that never decide and services
// without endpoints — so that counters exist for them: services by name,
// then their policies in order, each policy's Rules before its Shadow, each
// rule set's rules in order and then its Default.
//
// # Errors
//
// A malformed input is refused with a *model.EntryError that names the
// service, policy and rule, and whose class is ErrInvalid: an unknown kind
// or action; an HTTP principal or permission (header, path), which needs a
// request and belongs in an L7 service's policies; an AND or OR of nothing; a NOT of other than one; a port range
// that ends before it starts; an invalid, unmasked or IPv4-mapped CIDR; a
// rule without name, principals or permissions; principals or permissions
// nested more than 64 deep, or more than 65536 of them in one rule; an
// empty or repeated name of a rule in its rule set, of a policy in its
// service, or of a service with policies (rules are counted by these
// names); an endpoint without address; a names map with identity 0.
package policy

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/sluice-mesh/sluice/dataplane/model"
)

// ErrInvalid classifies the errors of Compile: an input that is not a
// well-formed policy (an empty AND, a port range backwards, a rule without a
// name, ...). It wraps model.ErrInvalidState, so callers that test for that
// catch it too.
var ErrInvalid = fmt.Errorf("invalid policy: %w", model.ErrInvalidState)

// Tables is a compiled policy: what the kernel looks connections up in. It
// is built by Compile and owned by the caller; nothing else refers to it.
type Tables struct {
	Dests    []Dest    // sorted by (Addr, Port)
	Classes  []Class   // sorted by (Set, Prefix)
	Verdicts []Verdict // sorted by (Set, Class, Identity)
	Rules    []Rule    // by service name, then as in the policies; Verdict.Rule and ShadowRule are indexes into Rules plus one
	Sets     int       // number of policy sets; their ids are 1..Sets
}

// Dest maps a destination endpoint to its policy set.
type Dest struct {
	Addr    netip.Addr
	Port    uint16
	Set     uint32
	HasCIDR bool // the set has Classes: look the source address up
}

// Class is one CIDR of a policy set's source-address principals. A source
// address is of the class of the longest Prefix of its set that holds it,
// or of class 0 if none does.
type Class struct {
	Set    uint32
	Prefix netip.Prefix // masked
	Class  uint32       // 1..n, in Prefix order within the set
}

// Shadow is what the dry-run rule sets of a policy set would have done.
type Shadow uint8

// Dry-run outcomes.
const (
	ShadowNone  Shadow = iota // the set has no dry-run rule set
	ShadowAllow               // they would have allowed the connection
	ShadowDeny                // they would have denied it
)

func (s Shadow) String() string {
	switch s {
	case ShadowNone:
		return "none"
	case ShadowAllow:
		return "allow"
	case ShadowDeny:
		return "deny"
	}
	return fmt.Sprintf("shadow(%d)", uint8(s))
}

// Verdict is the decision for connections to a policy set's destinations
// from one identity and source-address class.
type Verdict struct {
	Set, Identity, Class uint32

	Rule       uint32 // the rule that decided: index into Tables.Rules plus one; 0: none
	ShadowRule uint32 // the dry-run rule that decided, as Rule
	Deny       bool
	Shadow     Shadow
	Terminate  bool // Deny by a Continuous policy: existing connections it now denies are to be terminated
}

// Rule is a rule of a policy, or the Default pseudo-rule of a rule set (no
// rule of the set matched), as verdicts and counters name it.
type Rule struct {
	Service string // the service's Name
	Policy  string // model.Policy.Name
	Rule    string // model.Rule.Name; "" for a Default pseudo-rule
	Action  model.Action
	Shadow  bool // dry run: a rule of a Shadow rule set, or of a Monitor policy's Rules
	Monitor bool // a rule of a Monitor policy's Rules (Shadow is set too)
	Default bool // the pseudo-rule "no rule of this rule set matched"
}

// Key returns a string that identifies r across compiles, so that callers
// can keep counters by rule: "service/policy/rule" for an enforced rule,
// "service/policy/monitor/rule" and "service/policy/shadow/rule" for dry-run
// ones; a Default pseudo-rule has an empty last element. In the names, "%"
// and "/" are escaped as "%25" and "%2F", so different rules have different
// keys.
func (r Rule) Key() string {
	var b strings.Builder
	b.WriteString(escape(r.Service))
	b.WriteByte('/')
	b.WriteString(escape(r.Policy))
	b.WriteByte('/')
	switch {
	case r.Monitor:
		b.WriteString("monitor/")
	case r.Shadow:
		b.WriteString("shadow/")
	}
	if !r.Default {
		b.WriteString(escape(r.Rule))
	}
	return b.String()
}

func escape(s string) string {
	if !strings.ContainsAny(s, "%/") {
		return s
	}
	return strings.NewReplacer("%", "%25", "/", "%2F").Replace(s)
}
