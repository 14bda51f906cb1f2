package policy_test

import (
	"math/rand/v2"
	"net/netip"
	"reflect"
	"testing"

	"github.com/sluice-mesh/sluice/dataplane/model"
	"github.com/sluice-mesh/sluice/dataplane/policy"
)

// Entries of Tables.Rules, by how they came to be.
func enforcedRule(svc, pol, name string, a model.Action) policy.Rule {
	return policy.Rule{Service: svc, Policy: pol, Rule: name, Action: a}
}

func enforcedDefault(svc, pol string, a model.Action) policy.Rule {
	return policy.Rule{Service: svc, Policy: pol, Action: a, Default: true}
}

func shadowRule(svc, pol, name string, a model.Action) policy.Rule {
	return policy.Rule{Service: svc, Policy: pol, Rule: name, Action: a, Shadow: true, Default: name == ""}
}

func monitorRule(svc, pol, name string, a model.Action) policy.Rule {
	return policy.Rule{Service: svc, Policy: pol, Rule: name, Action: a, Shadow: true, Monitor: true, Default: name == ""}
}

func dest(addrPort string, set uint32, hasCIDR bool) policy.Dest {
	ap := netip.MustParseAddrPort(addrPort)
	return policy.Dest{Addr: ap.Addr(), Port: ap.Port(), Set: set, HasCIDR: hasCIDR}
}

func class(set uint32, prefix string, c uint32) policy.Class {
	return policy.Class{Set: set, Prefix: netip.MustParsePrefix(prefix), Class: c}
}

// The tables below are written from the package documentation, not from
// Compile's output. Identities: 1 frontend, 2 backend (both in ns shop),
// 3 prometheus (ns ops), 4 Admin (ns shop).
func TestCompile(t *testing.T) {
	webEndpoints := []string{"10.244.1.1:8080", "10.244.1.2:8080"}
	web := func(policies ...model.Policy) []model.Service {
		s := service("web", "10.96.0.10", 80, webEndpoints, policies...)
		s.Endpoints[1].Health = model.HealthDraining // draining endpoints keep connections: still policed
		return []model.Service{s}
	}
	webDests := func(hasCIDR bool) []policy.Dest {
		return []policy.Dest{dest("10.244.1.1:8080", 1, hasCIDR), dest("10.244.1.2:8080", 1, hasCIDR)}
	}
	const (
		A = model.Allow
		D = model.Deny
	)
	for _, tc := range []struct {
		name     string
		services []model.Service
		want     *policy.Tables
	}{
		{
			name: "no policy, UDP policy ignored",
			services: []model.Service{
				service("web", "10.96.0.10", 80, webEndpoints),
				func() model.Service {
					s := service("dns", "10.96.0.53", 53, []string{"10.244.1.9:53"},
						model.Policy{Name: "authz", Rules: allowRules()})
					s.Protocol = model.UDP
					return s
				}(),
			},
			want: &policy.Tables{},
		},
		{
			name: "allow exact principal: only identities that differ from unknown are stored",
			services: web(model.Policy{Name: "authz", Rules: allowRules(
				rule("fe", exact(frontend)),
			)}),
			want: &policy.Tables{
				Sets:  1,
				Dests: webDests(false),
				Rules: []policy.Rule{enforcedRule("web", "authz", "fe", A), enforcedDefault("web", "authz", A)},
				Verdicts: []policy.Verdict{
					{Set: 1, Identity: 0, Deny: true, Rule: 2},
					{Set: 1, Identity: 1, Rule: 1},
				},
			},
		},
		{
			name: "deny beats allow; namespace prefix",
			services: web(
				model.Policy{Name: "shop-only", Rules: allowRules(rule("shop", authenticated(model.MatchPrefix, "spiffe://td/ns/shop/")))},
				model.Policy{Name: "no-backend", Rules: denyRules(rule("backend", exact(backend)))},
			),
			want: &policy.Tables{
				Sets:  1,
				Dests: webDests(false),
				Rules: []policy.Rule{
					enforcedRule("web", "shop-only", "shop", A), enforcedDefault("web", "shop-only", A),
					enforcedRule("web", "no-backend", "backend", D), enforcedDefault("web", "no-backend", D),
				},
				Verdicts: []policy.Verdict{
					{Set: 1, Identity: 0, Deny: true, Rule: 2},
					{Set: 1, Identity: 1, Rule: 1},
					{Set: 1, Identity: 2, Deny: true, Rule: 3},
					// 3 (ns ops) is denied like 0, by the default of shop-only.
					{Set: 1, Identity: 4, Rule: 1},
				},
			},
		},
		{
			name: "suffix, with and without case",
			services: web(model.Policy{Name: "authz", Rules: allowRules(
				rule("fe", authenticated(model.MatchSuffix, "/sa/frontend")),
				rule("admin-exact-case", authenticated(model.MatchSuffix, "/sa/admin")),
				rule("admin", model.Principal{Kind: model.PrincipalAuthenticated, Name: model.StringMatch{Kind: model.MatchSuffix, Value: "/SA/ADMIN", IgnoreCase: true}}),
			)}),
			want: &policy.Tables{
				Sets:  1,
				Dests: webDests(false),
				Rules: []policy.Rule{
					enforcedRule("web", "authz", "fe", A), enforcedRule("web", "authz", "admin-exact-case", A),
					enforcedRule("web", "authz", "admin", A), enforcedDefault("web", "authz", A),
				},
				Verdicts: []policy.Verdict{
					{Set: 1, Identity: 0, Deny: true, Rule: 4},
					{Set: 1, Identity: 1, Rule: 1},
					{Set: 1, Identity: 4, Rule: 3},
				},
			},
		},
		{
			name: "any mesh identity",
			services: web(model.Policy{Name: "authz", Rules: allowRules(
				rule("mesh", authenticated(model.MatchNone, "")),
			)}),
			want: &policy.Tables{
				Sets:  1,
				Dests: webDests(false),
				Rules: []policy.Rule{enforcedRule("web", "authz", "mesh", A), enforcedDefault("web", "authz", A)},
				Verdicts: []policy.Verdict{
					{Set: 1, Identity: 0, Deny: true, Rule: 2},
					{Set: 1, Identity: 1, Rule: 1},
					{Set: 1, Identity: 2, Rule: 1},
					{Set: 1, Identity: 3, Rule: 1},
					{Set: 1, Identity: 4, Rule: 1},
				},
			},
		},
		{
			name: "nested CIDRs: 10/8 allowed but 10.1/16 denied, class 0 denied",
			services: web(
				model.Policy{Name: "corp", Rules: allowRules(model.Rule{
					Name:        "corp",
					Principals:  []model.Principal{sourceIP("10.0.0.0/8"), sourceIP("fd00::/8")},
					Permissions: []model.Permission{anyPerm},
				})},
				model.Policy{Name: "block-lab", Rules: denyRules(rule("lab", sourceIP("10.1.0.0/16")))},
			),
			want: &policy.Tables{
				Sets:    1,
				Dests:   webDests(true),
				Classes: []policy.Class{class(1, "10.0.0.0/8", 1), class(1, "10.1.0.0/16", 2), class(1, "fd00::/8", 3)},
				Rules: []policy.Rule{
					enforcedRule("web", "corp", "corp", A), enforcedDefault("web", "corp", A),
					enforcedRule("web", "block-lab", "lab", D), enforcedDefault("web", "block-lab", D),
				},
				Verdicts: []policy.Verdict{
					{Set: 1, Class: 0, Deny: true, Rule: 2},
					{Set: 1, Class: 1, Rule: 1},
					{Set: 1, Class: 2, Deny: true, Rule: 3},
					{Set: 1, Class: 3, Rule: 1},
				},
			},
		},
		{
			name: "and, or, not",
			services: web(model.Policy{Name: "authz", Rules: allowRules(
				rule("shop-but-backend", and(authenticated(model.MatchPrefix, "spiffe://td/ns/shop/"), not(exact(backend)))),
				rule("prom-from-lab", and(exact(prom), or(sourceIP("10.1.0.0/16"), sourceIP("192.168.0.0/24")))),
			)}),
			want: &policy.Tables{
				Sets:    1,
				Dests:   webDests(true),
				Classes: []policy.Class{class(1, "10.1.0.0/16", 1), class(1, "192.168.0.0/24", 2)},
				Rules: []policy.Rule{
					enforcedRule("web", "authz", "shop-but-backend", A), enforcedRule("web", "authz", "prom-from-lab", A),
					enforcedDefault("web", "authz", A),
				},
				Verdicts: []policy.Verdict{
					{Set: 1, Class: 0, Identity: 0, Deny: true, Rule: 3},
					{Set: 1, Class: 0, Identity: 1, Rule: 1},
					{Set: 1, Class: 0, Identity: 4, Rule: 1},
					{Set: 1, Class: 1, Identity: 0, Deny: true, Rule: 3},
					{Set: 1, Class: 1, Identity: 1, Rule: 1},
					{Set: 1, Class: 1, Identity: 3, Rule: 2},
					{Set: 1, Class: 1, Identity: 4, Rule: 1},
					{Set: 1, Class: 2, Identity: 0, Deny: true, Rule: 3},
					{Set: 1, Class: 2, Identity: 1, Rule: 1},
					{Set: 1, Class: 2, Identity: 3, Rule: 2},
					{Set: 1, Class: 2, Identity: 4, Rule: 1},
				},
			},
		},
		{
			name: "permissions against the service's VIP and port",
			services: web(model.Policy{Name: "authz", Rules: allowRules(
				rule("other-port", anyone, ports(9000, 9100)),
				rule("port-but-not-vip", anyone, permAnd(ports(80, 80), permNot(destIP("10.96.0.0/16")))),
				rule("fe", exact(frontend), permOr(ports(443, 443), destIP("10.96.0.0/16"))),
			)}),
			want: &policy.Tables{
				Sets:  1,
				Dests: webDests(false),
				Rules: []policy.Rule{
					enforcedRule("web", "authz", "other-port", A), enforcedRule("web", "authz", "port-but-not-vip", A),
					enforcedRule("web", "authz", "fe", A), enforcedDefault("web", "authz", A),
				},
				Verdicts: []policy.Verdict{
					{Set: 1, Identity: 0, Deny: true, Rule: 4},
					{Set: 1, Identity: 1, Rule: 3},
				},
			},
		},
		{
			// Nor do its CIDRs make classes.
			name: "a rule for another port never matches: ALLOW denies all",
			services: web(model.Policy{Name: "authz", Rules: allowRules(
				rule("admin-port", sourceIP("10.0.0.0/8"), ports(9000, 9000)),
			)}),
			want: &policy.Tables{
				Sets:     1,
				Dests:    webDests(false),
				Rules:    []policy.Rule{enforcedRule("web", "authz", "admin-port", A), enforcedDefault("web", "authz", A)},
				Verdicts: []policy.Verdict{{Set: 1, Identity: 0, Deny: true, Rule: 2}},
			},
		},
		{
			name: "two services share an endpoint: both must allow",
			services: []model.Service{
				service("web", "10.96.0.10", 80, []string{"10.244.1.1:8080", "10.244.1.2:8080"},
					model.Policy{Name: "authz", Rules: allowRules(rule("fe", exact(frontend)))}),
				service("api", "10.96.0.20", 80, []string{"10.244.1.3:8080", "10.244.1.2:8080"},
					model.Policy{Name: "authz", Rules: allowRules(rule("shop", authenticated(model.MatchPrefix, "spiffe://td/ns/shop/")))}),
				// Neither a service without policy nor a UDP one changes a set.
				service("cache", "10.96.0.30", 80, []string{"10.244.1.3:8080"}),
				func() model.Service {
					s := service("udp", "10.96.0.40", 80, []string{"10.244.1.1:8080"}, model.Policy{Name: "authz", Rules: allowRules()})
					s.Protocol = model.UDP
					return s
				}(),
			},
			want: &policy.Tables{
				Sets: 3,
				// Set ids in the order of the sorted destinations.
				Dests: []policy.Dest{
					dest("10.244.1.1:8080", 1, false), // web
					dest("10.244.1.2:8080", 2, false), // api, web
					dest("10.244.1.3:8080", 3, false), // api
				},
				Rules: []policy.Rule{
					enforcedRule("api", "authz", "shop", A), enforcedDefault("api", "authz", A),
					enforcedRule("web", "authz", "fe", A), enforcedDefault("web", "authz", A),
				},
				Verdicts: []policy.Verdict{
					{Set: 1, Identity: 0, Deny: true, Rule: 4},
					{Set: 1, Identity: 1, Rule: 3},
					{Set: 2, Identity: 0, Deny: true, Rule: 2}, // api, first in the set, denies first
					{Set: 2, Identity: 1, Rule: 1},
					{Set: 2, Identity: 2, Deny: true, Rule: 4},
					{Set: 2, Identity: 4, Deny: true, Rule: 4},
					{Set: 3, Identity: 0, Deny: true, Rule: 2},
					{Set: 3, Identity: 1, Rule: 1},
					{Set: 3, Identity: 2, Rule: 1},
					{Set: 3, Identity: 4, Rule: 1},
				},
			},
		},
		{
			name: "endpoint in two pools of one service",
			services: []model.Service{{
				Name: "web", VIP: netip.MustParseAddr("10.96.0.10"), Port: 80, Protocol: model.TCP,
				Splits: []model.Split{
					{Name: "stable", Weight: 9, Endpoints: []model.Endpoint{endpoint("10.244.1.1:8080")}},
					{Name: "canary", Weight: 1, Endpoints: []model.Endpoint{endpoint("10.244.1.1:8080"), endpoint("[fd00::5]:8080")}},
				},
				Policies: []model.Policy{{Name: "authz", Rules: denyRules()}},
			}},
			want: &policy.Tables{
				Sets:     1,
				Dests:    []policy.Dest{dest("10.244.1.1:8080", 1, false), dest("[fd00::5]:8080", 1, false)},
				Rules:    []policy.Rule{enforcedDefault("web", "authz", D)},
				Verdicts: []policy.Verdict{{Set: 1, Identity: 0, Rule: 1}},
			},
		},
		{
			name: "shadow and monitor: Deny unaffected, Shadow recorded",
			services: web(
				model.Policy{
					Name:   "authz",
					Rules:  allowRules(rule("fe", exact(frontend))),
					Shadow: allowRules(rule("shop", authenticated(model.MatchPrefix, "spiffe://td/ns/shop/"))),
				},
				model.Policy{
					Name:       "audit",
					Monitor:    true,
					Continuous: true, // dry-run denies terminate nothing
					Rules:      denyRules(rule("backend", exact(backend))),
				},
			),
			want: &policy.Tables{
				Sets:  1,
				Dests: webDests(false),
				Rules: []policy.Rule{
					enforcedRule("web", "authz", "fe", A), enforcedDefault("web", "authz", A),
					shadowRule("web", "authz", "shop", A), shadowRule("web", "authz", "", A),
					monitorRule("web", "audit", "backend", D), monitorRule("web", "audit", "", D),
				},
				Verdicts: []policy.Verdict{
					{Set: 1, Identity: 0, Deny: true, Rule: 2, Shadow: policy.ShadowDeny, ShadowRule: 4},
					{Set: 1, Identity: 1, Rule: 1, Shadow: policy.ShadowAllow, ShadowRule: 3},
					{Set: 1, Identity: 2, Deny: true, Rule: 2, Shadow: policy.ShadowDeny, ShadowRule: 5},
					// 3 (ns ops): as 0.
					{Set: 1, Identity: 4, Deny: true, Rule: 2, Shadow: policy.ShadowAllow, ShadowRule: 3},
				},
			},
		},
		{
			name:     "monitor only: nothing denied, no enforced rule",
			services: web(model.Policy{Name: "audit", Monitor: true, Rules: denyRules(rule("prom", exact(prom)))}),
			want: &policy.Tables{
				Sets:  1,
				Dests: webDests(false),
				Rules: []policy.Rule{monitorRule("web", "audit", "prom", D), monitorRule("web", "audit", "", D)},
				Verdicts: []policy.Verdict{
					{Set: 1, Identity: 0, Shadow: policy.ShadowAllow, ShadowRule: 2},
					{Set: 1, Identity: 3, Shadow: policy.ShadowDeny, ShadowRule: 1},
				},
			},
		},
		{
			name:     "policy without rule sets allows all",
			services: web(model.Policy{Name: "empty"}),
			want: &policy.Tables{
				Sets:     1,
				Dests:    webDests(false),
				Verdicts: []policy.Verdict{{Set: 1, Identity: 0}},
			},
		},
		{
			name: "continuous terminates; the first denying policy decides",
			services: web(
				model.Policy{Name: "lenient", Rules: denyRules(rule("backend", exact(backend)))},
				model.Policy{Name: "strict", Continuous: true, Rules: allowRules(rule("fe", exact(frontend)))},
			),
			want: &policy.Tables{
				Sets:  1,
				Dests: webDests(false),
				Rules: []policy.Rule{
					enforcedRule("web", "lenient", "backend", D), enforcedDefault("web", "lenient", D),
					enforcedRule("web", "strict", "fe", A), enforcedDefault("web", "strict", A),
				},
				Verdicts: []policy.Verdict{
					{Set: 1, Identity: 0, Deny: true, Rule: 4, Terminate: true},
					{Set: 1, Identity: 1, Rule: 2}, // allowed: the first enforced rule set decided, by its default
					{Set: 1, Identity: 2, Deny: true, Rule: 1},
				},
			},
		},
		{
			name: "the first matching rule decides; all rules are listed",
			services: web(model.Policy{Name: "authz", Rules: allowRules(
				rule("tls-only", anyone, ports(443, 443)),
				rule("shop", authenticated(model.MatchPrefix, "spiffe://td/ns/shop/")),
				rule("fe", exact(frontend)),
			)}),
			want: &policy.Tables{
				Sets:  1,
				Dests: webDests(false),
				Rules: []policy.Rule{
					enforcedRule("web", "authz", "tls-only", A), enforcedRule("web", "authz", "shop", A),
					enforcedRule("web", "authz", "fe", A), enforcedDefault("web", "authz", A),
				},
				Verdicts: []policy.Verdict{
					{Set: 1, Identity: 0, Deny: true, Rule: 4},
					{Set: 1, Identity: 1, Rule: 2},
					{Set: 1, Identity: 2, Rule: 2},
					{Set: 1, Identity: 4, Rule: 2},
				},
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := policy.Compile(tc.services, mesh)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got\n%s\nwant\n%s", dump(got), dump(tc.want))
			}
			checkInvariants(t, got)
			checkAgainstReference(t, tc.services, mesh, got)
		})
	}
}

// TestLookupCIDRClasses follows addresses through the nested CIDR classes
// of a set as the kernel's LPM lookup would.
func TestLookupCIDRClasses(t *testing.T) {
	services := []model.Service{service("web", "10.96.0.10", 80, []string{"10.244.1.1:8080"},
		model.Policy{Name: "corp", Rules: allowRules(rule("corp", or(sourceIP("10.0.0.0/8"), sourceIP("fd00::/8"))))},
		model.Policy{Name: "block-lab", Rules: denyRules(rule("lab", sourceIP("10.1.0.0/16")))},
	)}
	tb, err := policy.Compile(services, mesh)
	if err != nil {
		t.Fatal(err)
	}
	dst := netip.MustParseAddrPort("10.244.1.1:8080")
	for _, tc := range []struct {
		src  string
		deny bool
		rule string
	}{
		{"10.2.3.4", false, "web/corp/corp"},
		{"10.1.2.3", true, "web/block-lab/lab"},
		{"11.0.0.1", true, "web/corp/"},
		{"fd00::1", false, "web/corp/corp"},
		{"fe80::1", true, "web/corp/"},
		{"::ffff:10.2.3.4", true, "web/corp/"}, // IPv4-mapped: not in 10.0.0.0/8
	} {
		v, ok := lookup(t, tb, dst, netip.MustParseAddr(tc.src), 1)
		if !ok {
			t.Fatal("destination not found")
		}
		if got := named(t, tb, v); got.Deny != tc.deny || got.Rule != tc.rule {
			t.Errorf("from %s: got deny=%v rule %q, want deny=%v rule %q", tc.src, got.Deny, got.Rule, tc.deny, tc.rule)
		}
	}
	if _, ok := lookup(t, tb, netip.MustParseAddrPort("10.244.1.1:9090"), netip.MustParseAddr("10.1.2.3"), 0); ok {
		t.Error("a port without policy has a destination entry")
	}
}

// TestCompileDeterministic compiles the same input, with services in
// another order and the identity map rebuilt, and wants the same tables.
func TestCompileDeterministic(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	for range 50 {
		services, names := randomInput(rng)
		a, errA := policy.Compile(services, names)
		shuffled := append([]model.Service(nil), services...)
		rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		names2 := make(map[uint32]string, len(names))
		for k, v := range names {
			names2[k] = v
		}
		b, errB := policy.Compile(shuffled, names2)
		if (errA == nil) != (errB == nil) {
			t.Fatalf("errors differ: %v, %v", errA, errB)
		}
		if !reflect.DeepEqual(a, b) {
			t.Fatalf("tables differ:\n%s\n%s", dump(a), dump(b))
		}
	}
}

func TestRuleKey(t *testing.T) {
	for _, tc := range []struct {
		rule policy.Rule
		want string
	}{
		{policy.Rule{Service: "web", Policy: "authz", Rule: "fe"}, "web/authz/fe"},
		{policy.Rule{Service: "web", Policy: "authz", Default: true}, "web/authz/"},
		{policy.Rule{Service: "web", Policy: "authz", Rule: "fe", Shadow: true}, "web/authz/shadow/fe"},
		{policy.Rule{Service: "web", Policy: "authz", Shadow: true, Default: true}, "web/authz/shadow/"},
		{policy.Rule{Service: "web", Policy: "authz", Rule: "fe", Shadow: true, Monitor: true}, "web/authz/monitor/fe"},
		{policy.Rule{Service: "web", Policy: "authz", Shadow: true, Monitor: true, Default: true}, "web/authz/monitor/"},
		// An enforced rule named "shadow" is not the shadow default.
		{policy.Rule{Service: "web", Policy: "authz", Rule: "shadow"}, "web/authz/shadow"},
		{policy.Rule{Service: "a/b", Policy: "c%d", Rule: "e/f"}, "a%2Fb/c%25d/e%2Ff"},
		{policy.Rule{Service: "a", Policy: "b/c", Rule: "d"}, "a/b%2Fc/d"},
	} {
		if got := tc.rule.Key(); got != tc.want {
			t.Errorf("%+v: got %q, want %q", tc.rule, got, tc.want)
		}
	}
}
