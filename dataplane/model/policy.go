package model

import (
	"net/netip"
	"regexp"
	"strings"
)

// Policy is one authorization filter of a service: an L4 one on its
// listener (an xDS envoy.filters.network.rbac, in Service.Policies), which
// a connection must pass, or an HTTP one (envoy.filters.http.rbac, in
// L7.Policies), which each request must pass. A service's connections or
// requests must pass every policy of its kind. A policy has enforced
// rules, shadow (dry-run) rules, or both; shadow rules never block, they
// only record what they would have done.
//
// The HTTP kinds — PermissionHeader, PermissionPath and PrincipalHeader —
// may appear in HTTP policies only: an L4 policy is decided before any
// request is seen, and dataplane/policy refuses them.
type Policy struct {
	Name    string   // required: the filter's name (or stat prefix), used in counters and events
	Rules   *RuleSet // optional: enforced rules; nil enforces nothing
	Shadow  *RuleSet // optional: dry-run rules; nil records nothing
	Monitor bool     // optional: Rules are recorded but not enforced (RBAC action LOG)
	// Continuous: a connection that the policy denies after a change is
	// terminated (RBAC enforcement_type CONTINUOUS). Otherwise a verdict
	// holds for the connection's lifetime, as Envoy's default
	// ONE_TIME_ON_FIRST_BYTE does.
	// Continuous applies to L4 policies only: an HTTP policy decides
	// each request anew.
	Continuous bool
}

// Action is what a rule set does with a connection that one of its rules
// matches.
type Action uint8

// Actions of a rule set.
const (
	Allow Action = iota // what no rule matches is denied
	Deny                // what a rule matches is denied
)

func (a Action) String() string {
	if a == Deny {
		return "DENY"
	}
	return "ALLOW"
}

// RuleSet is an RBAC: an action and named rules (Envoy "policies"). An
// ALLOW set with no rules denies everything; a DENY set with no rules
// denies nothing.
type RuleSet struct {
	Action Action
	Rules  []Rule // evaluated in order: the first that matches decides and is counted
}

// Rule matches a connection when one of its principals matches the source
// and one of its permissions matches the destination.
type Rule struct {
	Name        string       // required: unique within its rule set
	Principals  []Principal  // required: OR
	Permissions []Permission // required: OR
}

// PrincipalKind says which field of a Principal is in use.
type PrincipalKind uint8

// Principal kinds.
const (
	PrincipalAny           PrincipalKind = iota // every source, mesh or not
	PrincipalAuthenticated                      // a mesh source whose SPIFFE ID matches Name (any mesh source if Name is unset)
	PrincipalSourceIP                           // a source whose address is in CIDR
	PrincipalAnd                                // all of Ids
	PrincipalOr                                 // any of Ids
	PrincipalNot                                // not Ids[0]
	PrincipalHeader                             // HTTP only: the request's header matches Header
)

// Principal is a predicate on a connection's source: its identity and its
// address — and, in an HTTP policy, on the request's headers.
type Principal struct {
	Kind   PrincipalKind
	Name   StringMatch  // PrincipalAuthenticated; the zero value matches every mesh identity
	CIDR   netip.Prefix // PrincipalSourceIP; masked
	Ids    []Principal  // PrincipalAnd, PrincipalOr, PrincipalNot (exactly one)
	Header HeaderMatch  // PrincipalHeader; matched as a route matches headers
}

// PermissionKind says which field of a Permission is in use.
type PermissionKind uint8

// Permission kinds.
const (
	PermissionAny    PermissionKind = iota // every destination
	PermissionPort                         // destination port in [Port, PortEnd]
	PermissionIP                           // destination address in CIDR
	PermissionAnd                          // all of Rules
	PermissionOr                           // any of Rules
	PermissionNot                          // not Rules[0]
	PermissionHeader                       // HTTP only: the request's header matches Header
	PermissionPath                         // HTTP only: the request's path matches Path
)

// Permission is a predicate on a connection's destination — and, in an
// HTTP policy, on the request. The destination of a connection to a
// service is the service's VIP and port (the listener's address),
// whichever backend gets the connection.
type Permission struct {
	Kind    PermissionKind
	Port    uint16       // PermissionPort: first port
	PortEnd uint16       // PermissionPort: last port, >= Port
	CIDR    netip.Prefix // PermissionIP; masked
	Rules   []Permission // PermissionAnd, PermissionOr, PermissionNot (exactly one)
	// Header (PermissionHeader) is matched as a route matches headers
	// (HTTPMatch.Headers): pseudo-headers :method, :authority, :path (with
	// the query) and :scheme; several values joined by commas.
	Header HeaderMatch
	// Path (PermissionPath) is matched against the request's path as sent,
	// without the query (xDS url_path), as a route's path is: not
	// decoded, not normalised.
	Path StringMatch
}

// MatchKind says how a StringMatch compares.
type MatchKind uint8

// String match kinds. MatchNone matches every string.
const (
	MatchNone MatchKind = iota
	MatchExact
	MatchPrefix
	MatchSuffix
	MatchContains
	MatchRegex // the whole string matches Regex (HTTP routes and HTTP policies only)
)

// StringMatch matches a SPIFFE ID, or an HTTP header, query value or path.
type StringMatch struct {
	Kind       MatchKind
	Value      string
	IgnoreCase bool
	Regex      *regexp.Regexp // MatchRegex: anchored at both ends
}

// Match reports whether s matches.
func (m StringMatch) Match(s string) bool {
	v := m.Value
	if m.IgnoreCase {
		s, v = strings.ToLower(s), strings.ToLower(v)
	}
	switch m.Kind {
	case MatchExact:
		return s == v
	case MatchPrefix:
		return strings.HasPrefix(s, v)
	case MatchSuffix:
		return strings.HasSuffix(s, v)
	case MatchContains:
		return strings.Contains(s, v)
	case MatchRegex:
		return m.Regex != nil && m.Regex.MatchString(s)
	}
	return true
}

// Identities is what a node knows about who is who: the numeric identity
// of every SPIFFE ID in the mesh, which local cgroup runs which identity,
// and which address belongs to which identity. Policy is evaluated against
// Names plus the unknown identity (0).
type Identities struct {
	Names   map[uint32]string // numeric identity → SPIFFE ID; 0 is never a key
	Cgroups []CgroupIdentity  // local workloads
	Addrs   []AddrIdentity    // workload addresses, local and remote
	// Proxies are the addresses the node's L7 proxy connects from: a
	// connection from one carries the identity of the proxy's client, and
	// its tag is trusted whatever identity it claims (docs/l7.md).
	Proxies []netip.Addr
}

// CgroupIdentity binds a local workload's cgroup to its identity.
type CgroupIdentity struct {
	CgroupID uint64       // required: cgroup v2 id (inode number of its directory)
	Path     string       // optional: for errors and logs
	Identity uint32       // required: a key of Identities.Names
	Addrs    []netip.Addr // optional: the workload's addresses, one per family, for CIDR principals at connect
	// FastPath is the workload's setting of the same-node fast path
	// (docs/fastpath.md). The fast path finds workloads by address: a
	// workload without Addrs never takes it, and FastPathOn needs them.
	FastPath FastPath
}

// AddrIdentity binds a workload address to its identity. A connection
// from the address is taken to come from that identity only if it carries
// the same identity in its tag.
type AddrIdentity struct {
	Addr     netip.Addr
	Identity uint32
}
