package l7

import (
	"net/http"
	"net/netip"

	"github.com/sluice-mesh/sluice/dataplane/model"
	"github.com/sluice-mesh/sluice/dataplane/policy"
)

// Authorizer decides whether requests pass an L7 service's HTTP policies
// (model.L7.Policies), with the semantics of the L4 model
// (dataplane/policy): a request is allowed iff every policy allows it; an
// enforced ALLOW rule set denies what none of its rules matches, a DENY
// rule set what one of its rules matches; dry-run rule sets (Shadow, and
// the Rules of a Monitor policy) never deny, and are reported apart.
//
// It is immutable and safe for concurrent use; a new configuration gets a
// new Authorizer. Authorize allocates nothing of its own (a header with
// several values, and an IgnoreCase match, cost what they cost routes).
type Authorizer struct {
	policies   []model.Policy
	broken     []bool // by policy: malformed, so it denies every request
	identities func(uint32) string
}

// NewAuthorizer returns an Authorizer of policies, in filter order; it
// keeps policies, which must not change. identities returns the SPIFFE ID
// of a mesh identity, "" for one it does not know; nil knows no one. It is
// called at most once per request, from any goroutine.
//
// The policies are expected to be well formed, as TranslateHTTPRBAC makes
// them. One that is not — an unknown kind or action, a NOT of other than
// one, an AND or OR of nothing, a port range that ends before it starts —
// denies every request, enforced or not: what it means is unknown, and
// authorization fails closed.
func NewAuthorizer(policies []model.Policy, identities func(uint32) string) *Authorizer {
	a := &Authorizer{policies: policies, broken: make([]bool, len(policies)), identities: identities}
	for i := range policies {
		a.broken[i] = !wellFormed(&policies[i])
	}
	return a
}

// Shadow is what the dry-run rule sets of an Authorizer's policies would
// have done with a request: the same outcomes as at L4.
type Shadow = policy.Shadow

// Dry-run outcomes.
const (
	ShadowNone  = policy.ShadowNone  // no policy has a dry-run rule set
	ShadowAllow = policy.ShadowAllow // they would have allowed the request
	ShadowDeny  = policy.ShadowDeny  // they would have denied it
)

// Decision is the outcome of authorizing one request.
type Decision struct {
	Allowed bool
	// Policy and Rule name what decided: for a denied request, the first
	// policy that denies it; for an allowed one, the first policy with
	// enforced rules, or "" if no policy has any. Rule is the rule of that
	// policy that matched, "" if none did and the rule set's default
	// decided (an ALLOW set denies, a DENY set allows), or if the policy
	// is malformed.
	Policy, Rule string
	// Shadow is what the dry-run rule sets would have decided, attributed
	// as above to ShadowPolicy and ShadowRule: the first that would deny,
	// else the first dry-run rule set. A rule of a Monitor (LOG) policy
	// that matched is reported so too.
	Shadow                   Shadow
	ShadowPolicy, ShadowRule string
}

// Authorize decides r, which came from src and was sent to dst — the
// service's VIP and port, whichever backend serves it — by a client of
// mesh identity identity (0: unknown). IPv4-mapped IPv6 addresses are taken
// as the IPv4 addresses they map.
//
// A principal's source addresses (remote_ip, direct_remote_ip, source_ip)
// match src: no address is taken from a header. An authenticated principal
// matches only a client with a non-zero identity whose SPIFFE ID is known.
// Header matches are those of routes (pseudo-headers :method, :authority,
// :path with its query, :scheme; several values joined by commas; a
// missing header matches nothing unless presence is asked). A path match
// takes the path as sent, without its query, as a route does.
func (a *Authorizer) Authorize(r *http.Request, src netip.AddrPort, dst netip.AddrPort, identity uint32) Decision {
	q := request{
		r:          r,
		src:        src.Addr().Unmap(),
		dst:        dst.Addr().Unmap(),
		dstPort:    dst.Port(),
		identity:   identity,
		identities: a.identities,
	}
	d := Decision{Allowed: true}
	enforced := false // an enforced rule set has been seen
	for i := range a.policies {
		p := &a.policies[i]
		if a.broken[i] {
			if d.Allowed {
				d.Allowed, d.Policy, d.Rule = false, p.Name, ""
			}
			continue
		}
		if p.Rules != nil {
			if p.Monitor {
				q.dryRun(&d, p.Name, p.Rules)
			} else if d.Allowed {
				// Once denied, no enforced rule set can change the outcome.
				deny, rule := q.ruleSet(p.Rules)
				if deny || !enforced {
					d.Allowed, d.Policy, d.Rule = !deny, p.Name, rule
				}
				enforced = true
			}
		}
		if p.Shadow != nil {
			q.dryRun(&d, p.Name, p.Shadow)
		}
	}
	return d
}

// request is one request being authorized, with what is worked out from it
// only when a rule asks.
type request struct {
	r          *http.Request
	src, dst   netip.Addr
	dstPort    uint16
	identity   uint32
	identities func(uint32) string

	spiffe, path         string
	spiffeDone, pathDone bool
}

// dryRun evaluates the dry-run rule set rs of the policy named policy into
// d's shadow outcome.
func (q *request) dryRun(d *Decision, policy string, rs *model.RuleSet) {
	if d.Shadow == ShadowDeny {
		return // the outcome is known
	}
	deny, rule := q.ruleSet(rs)
	if deny || d.Shadow == ShadowNone {
		d.Shadow, d.ShadowPolicy, d.ShadowRule = ShadowAllow, policy, rule
		if deny {
			d.Shadow = ShadowDeny
		}
	}
}

// ruleSet reports whether rs denies q, and the name of the rule that
// decided ("" for the default: no rule matched). The first rule that
// matches decides.
func (q *request) ruleSet(rs *model.RuleSet) (bool, string) {
	for i := range rs.Rules {
		r := &rs.Rules[i]
		if q.anyPrincipal(r.Principals) && q.anyPermission(r.Permissions) {
			return rs.Action == model.Deny, r.Name
		}
	}
	return rs.Action == model.Allow, ""
}

func (q *request) anyPrincipal(ps []model.Principal) bool {
	for i := range ps {
		if q.principal(&ps[i]) {
			return true
		}
	}
	return false
}

func (q *request) anyPermission(ps []model.Permission) bool {
	for i := range ps {
		if q.permission(&ps[i]) {
			return true
		}
	}
	return false
}

func (q *request) principal(p *model.Principal) bool {
	switch p.Kind {
	case model.PrincipalAny:
		return true
	case model.PrincipalAuthenticated:
		id := q.spiffeID()
		return id != "" && p.Name.Match(id)
	case model.PrincipalSourceIP:
		return p.CIDR.Contains(q.src)
	case model.PrincipalHeader:
		return headerMatches(&p.Header, q.r)
	case model.PrincipalAnd:
		for i := range p.Ids {
			if !q.principal(&p.Ids[i]) {
				return false
			}
		}
		return true
	case model.PrincipalOr:
		return q.anyPrincipal(p.Ids)
	case model.PrincipalNot:
		return !q.principal(&p.Ids[0])
	}
	return false // not reached: wellFormed refuses other kinds
}

func (q *request) permission(p *model.Permission) bool {
	switch p.Kind {
	case model.PermissionAny:
		return true
	case model.PermissionPort:
		return p.Port <= q.dstPort && q.dstPort <= p.PortEnd
	case model.PermissionIP:
		return p.CIDR.Contains(q.dst)
	case model.PermissionHeader:
		return headerMatches(&p.Header, q.r)
	case model.PermissionPath:
		return p.Path.Match(q.urlPath())
	case model.PermissionAnd:
		for i := range p.Rules {
			if !q.permission(&p.Rules[i]) {
				return false
			}
		}
		return true
	case model.PermissionOr:
		return q.anyPermission(p.Rules)
	case model.PermissionNot:
		return !q.permission(&p.Rules[0])
	}
	return false // not reached: wellFormed refuses other kinds
}

// spiffeID returns the client's SPIFFE ID, "" if it is not a known mesh
// identity.
func (q *request) spiffeID() string {
	if !q.spiffeDone {
		q.spiffeDone = true
		if q.identity != 0 && q.identities != nil {
			q.spiffe = q.identities(q.identity)
		}
	}
	return q.spiffe
}

// urlPath returns the request's path as routes see it: escaped, without
// the query.
func (q *request) urlPath() string {
	if !q.pathDone {
		q.pathDone = true
		if q.r.URL != nil {
			q.path = q.r.URL.EscapedPath()
		}
	}
	return q.path
}

// wellFormed reports whether Authorize can evaluate every rule set of p.
func wellFormed(p *model.Policy) bool {
	for _, rs := range []*model.RuleSet{p.Rules, p.Shadow} {
		if rs == nil {
			continue
		}
		if rs.Action != model.Allow && rs.Action != model.Deny {
			return false
		}
		for i := range rs.Rules {
			r := &rs.Rules[i]
			for j := range r.Principals {
				if !principalWellFormed(&r.Principals[j]) {
					return false
				}
			}
			for j := range r.Permissions {
				if !permissionWellFormed(&r.Permissions[j]) {
					return false
				}
			}
		}
	}
	return true
}

func principalWellFormed(p *model.Principal) bool {
	switch p.Kind {
	case model.PrincipalAny:
		return true
	case model.PrincipalSourceIP:
		return p.CIDR.IsValid()
	case model.PrincipalHeader:
		return headerWellFormed(&p.Header)
	case model.PrincipalAuthenticated:
		return matchWellFormed(&p.Name)
	case model.PrincipalAnd, model.PrincipalOr:
		if len(p.Ids) == 0 {
			return false
		}
	case model.PrincipalNot:
		if len(p.Ids) != 1 {
			return false
		}
	default:
		return false
	}
	for i := range p.Ids {
		if !principalWellFormed(&p.Ids[i]) {
			return false
		}
	}
	return true
}

func permissionWellFormed(p *model.Permission) bool {
	switch p.Kind {
	case model.PermissionAny:
		return true
	case model.PermissionIP:
		return p.CIDR.IsValid()
	case model.PermissionPort:
		return p.Port <= p.PortEnd
	case model.PermissionHeader:
		return headerWellFormed(&p.Header)
	case model.PermissionPath:
		return matchWellFormed(&p.Path)
	case model.PermissionAnd, model.PermissionOr:
		if len(p.Rules) == 0 {
			return false
		}
	case model.PermissionNot:
		if len(p.Rules) != 1 {
			return false
		}
	default:
		return false
	}
	for i := range p.Rules {
		if !permissionWellFormed(&p.Rules[i]) {
			return false
		}
	}
	return true
}

func headerWellFormed(h *model.HeaderMatch) bool {
	return h.Name != "" && (h.Present || matchWellFormed(&h.Value))
}

// matchWellFormed reports whether m is of a known kind, with its regex if
// it is one.
func matchWellFormed(m *model.StringMatch) bool {
	return m.Kind <= model.MatchRegex && (m.Kind != model.MatchRegex || m.Regex != nil)
}
