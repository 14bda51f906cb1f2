package policy_test

import (
	"cmp"
	"net/netip"
	"slices"
	"testing"

	"github.com/sluice-mesh/sluice/dataplane/model"
	"github.com/sluice-mesh/sluice/dataplane/policy"
)

// Identities of the tests' mesh.
const (
	frontend = "spiffe://td/ns/shop/sa/frontend"
	backend  = "spiffe://td/ns/shop/sa/backend"
	prom     = "spiffe://td/ns/ops/sa/prometheus"
	admin    = "spiffe://td/ns/shop/sa/Admin"
)

var mesh = map[uint32]string{1: frontend, 2: backend, 3: prom, 4: admin}

func service(name, vip string, port uint16, endpoints []string, policies ...model.Policy) model.Service {
	s := model.Service{Name: name, VIP: netip.MustParseAddr(vip), Port: port, Protocol: model.TCP, Policies: policies}
	for _, e := range endpoints {
		s.Endpoints = append(s.Endpoints, endpoint(e))
	}
	return s
}

func endpoint(s string) model.Endpoint {
	ap := netip.MustParseAddrPort(s)
	return model.Endpoint{Addr: ap.Addr(), Port: ap.Port()}
}

func allowRules(rules ...model.Rule) *model.RuleSet {
	return &model.RuleSet{Action: model.Allow, Rules: rules}
}

func denyRules(rules ...model.Rule) *model.RuleSet {
	return &model.RuleSet{Action: model.Deny, Rules: rules}
}

// rule is a rule with one principal and, if none is given, the Any permission.
func rule(name string, principal model.Principal, permissions ...model.Permission) model.Rule {
	if len(permissions) == 0 {
		permissions = []model.Permission{anyPerm}
	}
	return model.Rule{Name: name, Principals: []model.Principal{principal}, Permissions: permissions}
}

var (
	anyone  = model.Principal{Kind: model.PrincipalAny}
	anyPerm = model.Permission{Kind: model.PermissionAny}
)

func authenticated(kind model.MatchKind, value string) model.Principal {
	return model.Principal{Kind: model.PrincipalAuthenticated, Name: model.StringMatch{Kind: kind, Value: value}}
}

func exact(id string) model.Principal { return authenticated(model.MatchExact, id) }

func sourceIP(cidr string) model.Principal {
	return model.Principal{Kind: model.PrincipalSourceIP, CIDR: netip.MustParsePrefix(cidr)}
}

func and(ids ...model.Principal) model.Principal {
	return model.Principal{Kind: model.PrincipalAnd, Ids: ids}
}

func or(ids ...model.Principal) model.Principal {
	return model.Principal{Kind: model.PrincipalOr, Ids: ids}
}

func not(id model.Principal) model.Principal {
	return model.Principal{Kind: model.PrincipalNot, Ids: []model.Principal{id}}
}

func ports(first, last uint16) model.Permission {
	return model.Permission{Kind: model.PermissionPort, Port: first, PortEnd: last}
}

func destIP(cidr string) model.Permission {
	return model.Permission{Kind: model.PermissionIP, CIDR: netip.MustParsePrefix(cidr)}
}

func permAnd(rules ...model.Permission) model.Permission {
	return model.Permission{Kind: model.PermissionAnd, Rules: rules}
}

func permOr(rules ...model.Permission) model.Permission {
	return model.Permission{Kind: model.PermissionOr, Rules: rules}
}

func permNot(rule model.Permission) model.Permission {
	return model.Permission{Kind: model.PermissionNot, Rules: []model.Permission{rule}}
}

// lookup decides a connection from the tables as the kernel does: the
// destination's set, the longest class prefix holding the source, the
// verdict of the identity or else of identity 0. ok is false when the
// destination has no policy. A (set, class) without an identity-0 verdict
// fails the test: the kernel would deny and count it as a miss.
func lookup(t testing.TB, tb *policy.Tables, dst netip.AddrPort, src netip.Addr, identity uint32) (v policy.Verdict, ok bool) {
	t.Helper()
	i := slices.IndexFunc(tb.Dests, func(d policy.Dest) bool { return d.Addr == dst.Addr() && d.Port == dst.Port() })
	if i < 0 {
		return policy.Verdict{}, false
	}
	d := tb.Dests[i]
	class, bits := uint32(0), -1
	if d.HasCIDR {
		for _, c := range tb.Classes {
			if c.Set == d.Set && c.Prefix.Contains(src) && c.Prefix.Bits() > bits {
				class, bits = c.Class, c.Prefix.Bits()
			}
		}
	}
	find := func(id uint32) (policy.Verdict, bool) {
		i, found := slices.BinarySearchFunc(tb.Verdicts, [3]uint32{d.Set, class, id}, func(v policy.Verdict, k [3]uint32) int {
			return cmp.Or(cmp.Compare(v.Set, k[0]), cmp.Compare(v.Class, k[1]), cmp.Compare(v.Identity, k[2]))
		})
		if !found {
			return policy.Verdict{}, false
		}
		return tb.Verdicts[i], true
	}
	if v, found := find(identity); found {
		return v, true
	}
	v, found := find(0)
	if !found {
		t.Fatalf("set %d class %d has no verdict for identity 0", d.Set, class)
	}
	return v, true
}

// decision is a verdict with its rules named by key, for comparison with
// the reference evaluation.
type decision struct {
	Deny       bool
	Rule       string
	Shadow     policy.Shadow
	ShadowRule string
	Terminate  bool
}

func named(t testing.TB, tb *policy.Tables, v policy.Verdict) decision {
	t.Helper()
	key := func(ref uint32) string {
		if ref == 0 {
			return ""
		}
		if int(ref) > len(tb.Rules) {
			t.Fatalf("verdict %+v refers to rule %d of %d", v, ref, len(tb.Rules))
		}
		return tb.Rules[ref-1].Key()
	}
	return decision{Deny: v.Deny, Rule: key(v.Rule), Shadow: v.Shadow, ShadowRule: key(v.ShadowRule), Terminate: v.Terminate}
}

// reference decides a connection straight from the model, as the package
// documentation says, with none of the compiler's machinery: the services
// with policies that have dst as an endpoint, in name order, every policy,
// every rule, evaluated for this one source. Rules are named by key, built
// here from the names (the tests' names have no "/" or "%").
func reference(services []model.Service, names map[uint32]string, dst netip.AddrPort, src netip.Addr, identity uint32) (decision, bool) {
	var members []*model.Service
	for i := range services {
		s := &services[i]
		if s.Protocol != model.TCP || len(s.Policies) == 0 {
			continue
		}
		reaches := false
		for _, pool := range s.Pools() {
			for _, e := range pool.Endpoints {
				reaches = reaches || e.Addr == dst.Addr() && e.Port == dst.Port()
			}
		}
		if reaches {
			members = append(members, s)
		}
	}
	if len(members) == 0 {
		return decision{}, false
	}
	slices.SortFunc(members, func(a, b *model.Service) int { return cmp.Compare(a.Name, b.Name) })

	var principal func(p model.Principal) bool
	principal = func(p model.Principal) bool {
		switch p.Kind {
		case model.PrincipalAny:
			return true
		case model.PrincipalAuthenticated:
			return identity != 0 && p.Name.Match(names[identity])
		case model.PrincipalSourceIP:
			return p.CIDR.Contains(src)
		case model.PrincipalAnd:
			for _, q := range p.Ids {
				if !principal(q) {
					return false
				}
			}
			return true
		case model.PrincipalOr:
			for _, q := range p.Ids {
				if principal(q) {
					return true
				}
			}
			return false
		case model.PrincipalNot:
			return !principal(p.Ids[0])
		}
		panic("unknown principal kind")
	}
	var permission func(s *model.Service, p model.Permission) bool
	permission = func(s *model.Service, p model.Permission) bool {
		switch p.Kind {
		case model.PermissionAny:
			return true
		case model.PermissionPort:
			return p.Port <= s.Port && s.Port <= p.PortEnd
		case model.PermissionIP:
			return p.CIDR.Contains(s.VIP)
		case model.PermissionAnd:
			return !slices.ContainsFunc(p.Rules, func(q model.Permission) bool { return !permission(s, q) })
		case model.PermissionOr:
			return slices.ContainsFunc(p.Rules, func(q model.Permission) bool { return permission(s, q) })
		case model.PermissionNot:
			return !permission(s, p.Rules[0])
		}
		panic("unknown permission kind")
	}
	// ruleSet returns whether rs denies and the key of the rule that decided.
	ruleSet := func(s *model.Service, pol *model.Policy, rs *model.RuleSet, mode string) (bool, string) {
		prefix := s.Name + "/" + pol.Name + "/" + mode
		for _, r := range rs.Rules {
			if slices.ContainsFunc(r.Principals, principal) &&
				slices.ContainsFunc(r.Permissions, func(p model.Permission) bool { return permission(s, p) }) {
				return rs.Action == model.Deny, prefix + r.Name
			}
		}
		return rs.Action == model.Allow, prefix
	}

	var d decision
	enforced, dryRun := false, false
	for _, s := range members {
		for k := range s.Policies {
			pol := &s.Policies[k]
			if pol.Rules != nil && !pol.Monitor && !d.Deny {
				deny, key := ruleSet(s, pol, pol.Rules, "")
				if deny {
					d.Deny, d.Rule, d.Terminate = true, key, pol.Continuous
				} else if !enforced {
					d.Rule = key
				}
				enforced = true
			}
			type dryRunSet struct {
				rs   *model.RuleSet
				mode string
			}
			var dry []dryRunSet
			if pol.Rules != nil && pol.Monitor {
				dry = append(dry, dryRunSet{pol.Rules, "monitor/"})
			}
			if pol.Shadow != nil {
				dry = append(dry, dryRunSet{pol.Shadow, "shadow/"})
			}
			for _, x := range dry {
				if d.Shadow == policy.ShadowDeny {
					break
				}
				deny, key := ruleSet(s, pol, x.rs, x.mode)
				if deny {
					d.Shadow, d.ShadowRule = policy.ShadowDeny, key
				} else if !dryRun {
					d.Shadow, d.ShadowRule = policy.ShadowAllow, key
				}
				dryRun = true
			}
		}
	}
	return d, true
}
