package translate

import (
	"fmt"
	"net/netip"
	"strconv"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rbacconfigv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	stringmatcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"

	"github.com/sluice-mesh/sluice/dataplane/model"
)

// rbacFilter translates a network RBAC filter, the i-th filter of its chain
// named name, into a policy. It reports false, and no policy, for a filter
// with neither rules nor shadow_rules: Envoy enforces and records nothing
// for it. Errors are relative to the RBAC message.
func (t *tally) rbacFilter(f *rbacv3.RBAC, name string, i int) (model.Policy, bool, *fieldError) {
	if err := t.check(f.ProtoReflect(), rbacFilterPolicy); err != nil {
		return model.Policy{}, false, err
	}
	pol := model.Policy{Name: f.GetStatPrefix()}
	switch {
	case pol.Name != "":
	case name != "":
		pol.Name = name
	default:
		pol.Name = "rbac#" + strconv.Itoa(i)
	}
	switch et := f.GetEnforcementType(); et {
	case rbacv3.RBAC_ONE_TIME_ON_FIRST_BYTE:
	case rbacv3.RBAC_CONTINUOUS:
		pol.Continuous = true
	default:
		return model.Policy{}, false, errAt("enforcement_type", "unknown value %d; want ONE_TIME_ON_FIRST_BYTE or CONTINUOUS", int32(et))
	}
	if err := t.ruleSets(&pol, f.GetRules(), f.GetShadowRules(), false); err != nil {
		return model.Policy{}, false, err
	}
	return pol, pol.Rules != nil || pol.Shadow != nil, nil
}

// ruleSets translates the rules and shadow_rules of an RBAC filter (L4, or
// HTTP if http) into pol; either may be nil.
func (t *tally) ruleSets(pol *model.Policy, rules, shadow *rbacconfigv3.RBAC, http bool) *fieldError {
	if rules != nil {
		rs, log, err := t.ruleSet(rules, http)
		if err != nil {
			return err.in("rules")
		}
		pol.Rules, pol.Monitor = rs, log
	}
	if shadow != nil {
		rs, log, err := t.ruleSet(shadow, http)
		if err != nil {
			return err.in("shadow_rules")
		}
		if log {
			return errAt("shadow_rules.action",
				"LOG is not supported in shadow rules, which only record anyway; use ALLOW or DENY")
		}
		if pol.Monitor {
			return errAt("shadow_rules",
				"not supported together with rules of action LOG (rules.action), which only record as well; drop one of them")
		}
		pol.Shadow = rs
	}
	return nil
}

// ruleSet translates an RBAC's action and policies, and reports whether the
// action is LOG (recorded, never enforced). The rules are in name order,
// the order Envoy evaluates them in. With http, the rules may match
// requests (headers, paths); without, they are L4 and refuse to.
func (t *tally) ruleSet(r *rbacconfigv3.RBAC, http bool) (*model.RuleSet, bool, *fieldError) {
	if err := t.check(r.ProtoReflect(), rbacRulesPolicy); err != nil {
		return nil, false, err
	}
	rs := &model.RuleSet{}
	log := false
	switch a := r.GetAction(); a {
	case rbacconfigv3.RBAC_ALLOW:
		rs.Action = model.Allow
	case rbacconfigv3.RBAC_DENY:
		rs.Action = model.Deny
	case rbacconfigv3.RBAC_LOG:
		log = true
	default:
		return nil, false, errAt("action", "unknown value %d; want ALLOW, DENY or LOG", int32(a))
	}
	policies := r.GetPolicies()
	if len(policies) == 0 {
		return rs, log, nil
	}
	rs.Rules = make([]model.Rule, 0, len(policies))
	for _, name := range sortedKeys(policies) {
		seg := fmt.Sprintf("policies[%q]", name)
		if name == "" {
			return nil, false, errAt(seg, "empty policy name; Sluice names a rule's counters after it")
		}
		rule, err := t.rbacRule(policies[name], http)
		if err != nil {
			return nil, false, err.in(seg)
		}
		rule.Name = name
		rs.Rules = append(rs.Rules, rule)
	}
	return rs, log, nil
}

// rbacRule translates one RBAC policy; its name is left to the caller.
func (t *tally) rbacRule(p *rbacconfigv3.Policy, http bool) (model.Rule, *fieldError) {
	if p == nil {
		return model.Rule{}, errAt("", "missing")
	}
	if err := t.check(p.ProtoReflect(), rbacRulePolicy); err != nil {
		return model.Rule{}, err
	}
	perms, princs := p.GetPermissions(), p.GetPrincipals()
	if len(perms) == 0 {
		return model.Rule{}, errAt("permissions", "empty; a policy needs at least one (any: true matches every destination)")
	}
	if len(princs) == 0 {
		return model.Rule{}, errAt("principals", "empty; a policy needs at least one (any: true matches every source)")
	}
	rule := model.Rule{
		Permissions: make([]model.Permission, len(perms)),
		Principals:  make([]model.Principal, len(princs)),
	}
	for i, pm := range perms {
		var err *fieldError
		if rule.Permissions[i], err = t.permission(pm, http); err != nil {
			return model.Rule{}, err.in(index("permissions", i))
		}
	}
	for i, pr := range princs {
		var err *fieldError
		if rule.Principals[i], err = t.principal(pr, http); err != nil {
			return model.Rule{}, err.in(index("principals", i))
		}
	}
	return rule, nil
}

// permission translates an RBAC permission; http says whether it is of an
// HTTP RBAC, where it may match the request's headers and path.
func (t *tally) permission(pm *rbacconfigv3.Permission, http bool) (model.Permission, *fieldError) {
	if pm == nil {
		return model.Permission{}, errAt("", "missing")
	}
	pol := rbacPermissionPolicy
	if http {
		pol = httpRBACPermissionPolicy
	}
	if err := t.check(pm.ProtoReflect(), pol); err != nil {
		return model.Permission{}, err
	}
	switch r := pm.GetRule().(type) {
	case *rbacconfigv3.Permission_Any:
		if !r.Any {
			return model.Permission{}, errAt("any", "false; Envoy accepts only true")
		}
		return model.Permission{Kind: model.PermissionAny}, nil
	case *rbacconfigv3.Permission_DestinationPort:
		if r.DestinationPort == 0 || r.DestinationPort > 65535 {
			return model.Permission{}, errAt("destination_port", "%d is not a port (want 1..65535)", r.DestinationPort)
		}
		port := uint16(r.DestinationPort)
		return model.Permission{Kind: model.PermissionPort, Port: port, PortEnd: port}, nil
	case *rbacconfigv3.Permission_DestinationPortRange:
		ports, err := t.portRange(r)
		if err != nil {
			return model.Permission{}, err.in("destination_port_range")
		}
		return ports, nil
	case *rbacconfigv3.Permission_DestinationIp:
		cidr, err := t.cidr(r.DestinationIp)
		if err != nil {
			return model.Permission{}, err.in("destination_ip")
		}
		return model.Permission{Kind: model.PermissionIP, CIDR: cidr}, nil
	case *rbacconfigv3.Permission_AndRules:
		rules, err := t.permissionSet(r.AndRules, http)
		if err != nil {
			return model.Permission{}, err.in("and_rules")
		}
		return model.Permission{Kind: model.PermissionAnd, Rules: rules}, nil
	case *rbacconfigv3.Permission_OrRules:
		rules, err := t.permissionSet(r.OrRules, http)
		if err != nil {
			return model.Permission{}, err.in("or_rules")
		}
		return model.Permission{Kind: model.PermissionOr, Rules: rules}, nil
	case *rbacconfigv3.Permission_NotRule:
		not, err := t.permission(r.NotRule, http)
		if err != nil {
			return model.Permission{}, err.in("not_rule")
		}
		return model.Permission{Kind: model.PermissionNot, Rules: []model.Permission{not}}, nil
	case *rbacconfigv3.Permission_Header:
		// The field policy refuses a header at L4, unless its payload is
		// nil: refused here then.
		if !http {
			return model.Permission{}, errAt("header", "%s", reasonL7("header"))
		}
		h, err := t.headerMatch(r.Header, httpRBACMatchers)
		if err != nil {
			return model.Permission{}, err.in("header")
		}
		return model.Permission{Kind: model.PermissionHeader, Header: h}, nil
	case *rbacconfigv3.Permission_UrlPath:
		if !http {
			return model.Permission{}, errAt("url_path", "%s", reasonL7("URL path"))
		}
		path, err := t.urlPath(r.UrlPath)
		if err != nil {
			return model.Permission{}, err.in("url_path")
		}
		return model.Permission{Kind: model.PermissionPath, Path: path}, nil
	case nil:
		if http {
			return model.Permission{}, errAt("", "no rule set; want any, header, url_path, destination_port, destination_port_range, destination_ip, and_rules, or_rules or not_rule")
		}
		return model.Permission{}, errAt("", "no rule set; want any, destination_port, destination_port_range, destination_ip, and_rules, or_rules or not_rule")
	}
	// Only a oneof member whose payload is a nil message gets here (the
	// field policy refuses the others when they are set): refuse it too.
	return model.Permission{}, errAt("", "unsupported permission %T", pm.GetRule())
}

// portRange translates a destination_port_range, whose end is exclusive, as
// in Envoy.
func (t *tally) portRange(r *rbacconfigv3.Permission_DestinationPortRange) (model.Permission, *fieldError) {
	pr := r.DestinationPortRange
	if pr == nil {
		return model.Permission{}, errAt("", "missing")
	}
	if err := t.check(pr.ProtoReflect(), rbacPortRangePolicy); err != nil {
		return model.Permission{}, err
	}
	start, end := pr.GetStart(), pr.GetEnd()
	switch {
	case start < 0 || start > 65535:
		return model.Permission{}, errAt("start", "%d is not a port (want 0..65535)", start)
	case end < 1 || end > 65536:
		return model.Permission{}, errAt("end", "%d is out of range (want 1..65536: end is exclusive)", end)
	case start >= end:
		return model.Permission{}, errAt("", "[%d, %d) is empty: start must be below end, which is exclusive", start, end)
	case end == 1:
		return model.Permission{}, errAt("", "[0, 1) holds only port 0, which no service has")
	}
	return model.Permission{Kind: model.PermissionPort, Port: uint16(start), PortEnd: uint16(end - 1)}, nil
}

func (t *tally) permissionSet(s *rbacconfigv3.Permission_Set, http bool) ([]model.Permission, *fieldError) {
	if err := t.check(s.ProtoReflect(), rbacPermissionSetPolicy); err != nil {
		return nil, err
	}
	rules := s.GetRules()
	if len(rules) == 0 {
		return nil, errAt("rules", "empty; want at least one permission")
	}
	out := make([]model.Permission, len(rules))
	for i, pm := range rules {
		var err *fieldError
		if out[i], err = t.permission(pm, http); err != nil {
			return nil, err.in(index("rules", i))
		}
	}
	return out, nil
}

// principal translates an RBAC principal; http says whether it is of an
// HTTP RBAC, where it may match the request's headers.
func (t *tally) principal(pr *rbacconfigv3.Principal, http bool) (model.Principal, *fieldError) {
	if pr == nil {
		return model.Principal{}, errAt("", "missing")
	}
	pol := rbacPrincipalPolicy
	if http {
		pol = httpRBACPrincipalPolicy
	}
	if err := t.check(pr.ProtoReflect(), pol); err != nil {
		return model.Principal{}, err
	}
	switch id := pr.GetIdentifier().(type) {
	case *rbacconfigv3.Principal_Any:
		if !id.Any {
			return model.Principal{}, errAt("any", "false; Envoy accepts only true")
		}
		return model.Principal{Kind: model.PrincipalAny}, nil
	case *rbacconfigv3.Principal_Authenticated_:
		name, err := t.authenticated(id.Authenticated)
		if err != nil {
			return model.Principal{}, err.in("authenticated")
		}
		return model.Principal{Kind: model.PrincipalAuthenticated, Name: name}, nil
	case *rbacconfigv3.Principal_SourceIp:
		return t.sourceIP(id.SourceIp, "source_ip")
	case *rbacconfigv3.Principal_DirectRemoteIp:
		return t.sourceIP(id.DirectRemoteIp, "direct_remote_ip")
	case *rbacconfigv3.Principal_RemoteIp:
		// The same as direct_remote_ip: Sluice takes no address from PROXY
		// protocol or headers (x-forwarded-for), which a client could forge.
		return t.sourceIP(id.RemoteIp, "remote_ip")
	case *rbacconfigv3.Principal_AndIds:
		ids, err := t.principalSet(id.AndIds, http)
		if err != nil {
			return model.Principal{}, err.in("and_ids")
		}
		return model.Principal{Kind: model.PrincipalAnd, Ids: ids}, nil
	case *rbacconfigv3.Principal_OrIds:
		ids, err := t.principalSet(id.OrIds, http)
		if err != nil {
			return model.Principal{}, err.in("or_ids")
		}
		return model.Principal{Kind: model.PrincipalOr, Ids: ids}, nil
	case *rbacconfigv3.Principal_NotId:
		not, err := t.principal(id.NotId, http)
		if err != nil {
			return model.Principal{}, err.in("not_id")
		}
		return model.Principal{Kind: model.PrincipalNot, Ids: []model.Principal{not}}, nil
	case *rbacconfigv3.Principal_Header:
		// As in permission: refused at L4 also with a nil payload.
		if !http {
			return model.Principal{}, errAt("header", "%s", reasonL7("header"))
		}
		h, err := t.headerMatch(id.Header, httpRBACMatchers)
		if err != nil {
			return model.Principal{}, err.in("header")
		}
		return model.Principal{Kind: model.PrincipalHeader, Header: h}, nil
	case nil:
		if http {
			return model.Principal{}, errAt("", "no identifier set; want any, authenticated, remote_ip, direct_remote_ip, source_ip, header, and_ids, or_ids or not_id")
		}
		return model.Principal{}, errAt("", "no identifier set; want any, authenticated, remote_ip, direct_remote_ip, source_ip, and_ids, or_ids or not_id")
	}
	// As in permission: a refused member with a nil payload.
	return model.Principal{}, errAt("", "unsupported principal %T", pr.GetIdentifier())
}

func (t *tally) sourceIP(c *corev3.CidrRange, field string) (model.Principal, *fieldError) {
	cidr, err := t.cidr(c)
	if err != nil {
		return model.Principal{}, err.in(field)
	}
	return model.Principal{Kind: model.PrincipalSourceIP, CIDR: cidr}, nil
}

func (t *tally) principalSet(s *rbacconfigv3.Principal_Set, http bool) ([]model.Principal, *fieldError) {
	if err := t.check(s.ProtoReflect(), rbacPrincipalSetPolicy); err != nil {
		return nil, err
	}
	ids := s.GetIds()
	if len(ids) == 0 {
		return nil, errAt("ids", "empty; want at least one principal")
	}
	out := make([]model.Principal, len(ids))
	for i, pr := range ids {
		var err *fieldError
		if out[i], err = t.principal(pr, http); err != nil {
			return nil, err.in(index("ids", i))
		}
	}
	return out, nil
}

// authenticated returns what an authenticated principal matches the
// source's SPIFFE ID with; without principal_name, every mesh identity.
func (t *tally) authenticated(a *rbacconfigv3.Principal_Authenticated) (model.StringMatch, *fieldError) {
	if err := t.check(a.ProtoReflect(), rbacAuthenticatedPolicy); err != nil {
		return model.StringMatch{}, err
	}
	sm := a.GetPrincipalName()
	if sm == nil {
		return model.StringMatch{}, nil
	}
	m, err := t.stringMatch(sm, rbacNameMatchers)
	if err != nil {
		return model.StringMatch{}, err.in("principal_name")
	}
	return m, nil
}

// stringMatch translates a StringMatcher checked against m's policies:
// principal names refuse safe_regex, routes and HTTP RBAC requests honour
// it.
func (t *tally) stringMatch(sm *stringmatcherv3.StringMatcher, m *matchers) (model.StringMatch, *fieldError) {
	if err := t.check(sm.ProtoReflect(), m.str); err != nil {
		return model.StringMatch{}, err
	}
	out := model.StringMatch{IgnoreCase: sm.GetIgnoreCase()}
	field := ""
	switch p := sm.GetMatchPattern().(type) {
	case *stringmatcherv3.StringMatcher_Exact:
		// An empty exact match is valid: it matches the empty value only.
		out.Kind, out.Value = model.MatchExact, p.Exact
		return out, nil
	case *stringmatcherv3.StringMatcher_Prefix:
		out.Kind, out.Value, field = model.MatchPrefix, p.Prefix, "prefix"
	case *stringmatcherv3.StringMatcher_Suffix:
		out.Kind, out.Value, field = model.MatchSuffix, p.Suffix, "suffix"
	case *stringmatcherv3.StringMatcher_Contains:
		out.Kind, out.Value, field = model.MatchContains, p.Contains, "contains"
	case *stringmatcherv3.StringMatcher_SafeRegex:
		// Only where m.str honours it: the check above refuses it elsewhere,
		// unless its payload is nil.
		if m.regex == nil {
			return model.StringMatch{}, errAt("safe_regex", "regular expressions are not supported here")
		}
		re, err := t.regex(p.SafeRegex, m.regex)
		if err != nil {
			return model.StringMatch{}, err.in("safe_regex")
		}
		return model.StringMatch{Kind: model.MatchRegex, Regex: re}, nil
	case nil:
		return model.StringMatch{}, errAt("", "no match pattern set; want exact, prefix, suffix or contains")
	default:
		return model.StringMatch{}, errAt("", "unsupported match pattern %T", p)
	}
	if out.Value == "" {
		// Envoy refuses it too; it would match every value.
		return model.StringMatch{}, errAt(field, "empty; want at least one character")
	}
	return out, nil
}

// cidr parses a CidrRange, masked. An absent prefix_len is 0, as in Envoy:
// the range is every address of the family.
func (t *tally) cidr(c *corev3.CidrRange) (netip.Prefix, *fieldError) {
	if c == nil {
		return netip.Prefix{}, errAt("", "missing")
	}
	if err := t.check(c.ProtoReflect(), rbacCIDRPolicy); err != nil {
		return netip.Prefix{}, err
	}
	if c.GetAddressPrefix() == "" {
		return netip.Prefix{}, errAt("address_prefix", "empty; want an IP address")
	}
	ip, err := parseIP(c.GetAddressPrefix())
	if err != nil {
		return netip.Prefix{}, err.in("address_prefix")
	}
	bits := uint32(0)
	if pl := c.GetPrefixLen(); pl != nil {
		bits = pl.GetValue()
	}
	if bits > uint32(ip.BitLen()) {
		return netip.Prefix{}, errAt("prefix_len", "%d is longer than an IPv%d address (%d bits)", bits, family(ip), ip.BitLen())
	}
	return netip.PrefixFrom(ip, int(bits)).Masked(), nil
}

func family(ip netip.Addr) int {
	if ip.Is4() {
		return 4
	}
	return 6
}
