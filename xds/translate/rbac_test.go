package translate_test

import (
	"net/netip"
	"reflect"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacconfigv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	stringmatcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sluice-mesh/sluice/dataplane/model"
	"github.com/sluice-mesh/sluice/xds/translate"
)

// Builders of RBAC filters and their parts.

func rbacFilter(name string, cfg *rbacv3.RBAC) *listenerv3.Filter { return filter(name, cfg) }

// withRBAC puts filters before the tcp_proxy of demo()'s listener.
func withRBAC(filters ...*listenerv3.Filter) func(r *translate.Resources) {
	return changeListener(func(l *listenerv3.Listener) {
		fc := l.FilterChains[0]
		fc.Filters = append(filters, fc.Filters...)
	})
}

// setRBAC puts one RBAC filter, cfg, before demo()'s tcp_proxy.
func setRBAC(cfg *rbacv3.RBAC) func(r *translate.Resources) {
	return withRBAC(rbacFilter("envoy.filters.network.rbac", cfg))
}

func rules(action rbacconfigv3.RBAC_Action, policies map[string]*rbacconfigv3.Policy) *rbacconfigv3.RBAC {
	return &rbacconfigv3.RBAC{Action: action, Policies: policies}
}

// allowOnly is a filter that allows what pol matches, under the name "x".
func allowOnly(pol *rbacconfigv3.Policy) *rbacv3.RBAC {
	return &rbacv3.RBAC{StatPrefix: "authz", Rules: rules(rbacconfigv3.RBAC_ALLOW, map[string]*rbacconfigv3.Policy{"x": pol})}
}

func rbacPolicy(perms []*rbacconfigv3.Permission, princs ...*rbacconfigv3.Principal) *rbacconfigv3.Policy {
	return &rbacconfigv3.Policy{Permissions: perms, Principals: princs}
}

// anyone is a policy matching every connection.
func anyone() *rbacconfigv3.Policy {
	return rbacPolicy([]*rbacconfigv3.Permission{anyPerm()}, anyPrincipal())
}

func withPrincipal(pr *rbacconfigv3.Principal) *rbacv3.RBAC {
	return allowOnly(rbacPolicy([]*rbacconfigv3.Permission{anyPerm()}, pr))
}

func withPermission(pm *rbacconfigv3.Permission) *rbacv3.RBAC {
	return allowOnly(rbacPolicy([]*rbacconfigv3.Permission{pm}, anyPrincipal()))
}

func anyPrincipal() *rbacconfigv3.Principal {
	return &rbacconfigv3.Principal{Identifier: &rbacconfigv3.Principal_Any{Any: true}}
}

func anyPerm() *rbacconfigv3.Permission {
	return &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_Any{Any: true}}
}

func authn(sm *stringmatcherv3.StringMatcher) *rbacconfigv3.Principal {
	return &rbacconfigv3.Principal{Identifier: &rbacconfigv3.Principal_Authenticated_{
		Authenticated: &rbacconfigv3.Principal_Authenticated{PrincipalName: sm},
	}}
}

func exact(s string) *stringmatcherv3.StringMatcher {
	return &stringmatcherv3.StringMatcher{MatchPattern: &stringmatcherv3.StringMatcher_Exact{Exact: s}}
}

// cidrRange is addr/bits; bits < 0 leaves prefix_len unset.
func cidrRange(addr string, bits int) *corev3.CidrRange {
	c := &corev3.CidrRange{AddressPrefix: addr}
	if bits >= 0 {
		c.PrefixLen = wrapperspb.UInt32(uint32(bits))
	}
	return c
}

func remoteIP(addr string, bits int) *rbacconfigv3.Principal {
	return &rbacconfigv3.Principal{Identifier: &rbacconfigv3.Principal_RemoteIp{RemoteIp: cidrRange(addr, bits)}}
}

func port(p uint32) *rbacconfigv3.Permission {
	return &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_DestinationPort{DestinationPort: p}}
}

func portRange(start, end int32) *rbacconfigv3.Permission {
	return &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_DestinationPortRange{
		DestinationPortRange: &typev3.Int32Range{Start: start, End: end},
	}}
}

func destIP(addr string, bits int) *rbacconfigv3.Permission {
	return &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_DestinationIp{DestinationIp: cidrRange(addr, bits)}}
}

// withField returns m with its field name set to an empty message (which
// for a oneof member selects it).
func withField[M proto.Message](m M, name protoreflect.Name) M {
	r := m.ProtoReflect()
	fd := r.Descriptor().Fields().ByName(name)
	if fd == nil {
		panic("no field " + string(name) + " in " + string(r.Descriptor().FullName()))
	}
	r.Set(fd, r.NewField(fd))
	return m
}

// Model values, as the spec of the translation says they must be.

var (
	mAnyPrincipal = model.Principal{Kind: model.PrincipalAny}
	mAnyPerm      = model.Permission{Kind: model.PermissionAny}
)

func mRule(name string, perms []model.Permission, princs ...model.Principal) model.Rule {
	return model.Rule{Name: name, Permissions: perms, Principals: princs}
}

func mAuthn(kind model.MatchKind, v string, ignoreCase bool) model.Principal {
	return model.Principal{Kind: model.PrincipalAuthenticated, Name: model.StringMatch{Kind: kind, Value: v, IgnoreCase: ignoreCase}}
}

func mSource(prefix string) model.Principal {
	return model.Principal{Kind: model.PrincipalSourceIP, CIDR: netip.MustParsePrefix(prefix)}
}

func mPorts(first, last uint16) model.Permission {
	return model.Permission{Kind: model.PermissionPort, Port: first, PortEnd: last}
}

func mDest(prefix string) model.Permission {
	return model.Permission{Kind: model.PermissionIP, CIDR: netip.MustParsePrefix(prefix)}
}

func TestTranslateRBAC(t *testing.T) {
	const spiffe = "spiffe://cluster.local/ns/demo/sa/web"
	tests := []struct {
		name    string
		change  func(r *translate.Resources)
		want    []model.Policy // of every service of the listener
		ignored map[string]int // checked when not nil
	}{
		{
			name: "principal kinds",
			change: setRBAC(&rbacv3.RBAC{StatPrefix: "authz", Rules: rules(rbacconfigv3.RBAC_ALLOW, map[string]*rbacconfigv3.Policy{
				"z-any": anyone(),
				"a-exact": rbacPolicy([]*rbacconfigv3.Permission{anyPerm()},
					authn(exact(spiffe))),
				"b-any-authenticated": rbacPolicy([]*rbacconfigv3.Permission{anyPerm()},
					authn(nil)),
				"c-matchers": rbacPolicy([]*rbacconfigv3.Permission{anyPerm()},
					authn(&stringmatcherv3.StringMatcher{MatchPattern: &stringmatcherv3.StringMatcher_Prefix{Prefix: "spiffe://cluster.local/ns/demo/"}}),
					authn(&stringmatcherv3.StringMatcher{MatchPattern: &stringmatcherv3.StringMatcher_Suffix{Suffix: "/sa/web"}, IgnoreCase: true}),
					authn(&stringmatcherv3.StringMatcher{MatchPattern: &stringmatcherv3.StringMatcher_Contains{Contains: "/ns/demo/"}}),
					authn(&stringmatcherv3.StringMatcher{MatchPattern: &stringmatcherv3.StringMatcher_Exact{Exact: "SPIFFE://X"}, IgnoreCase: true})),
				"d-addresses": rbacPolicy([]*rbacconfigv3.Permission{anyPerm()},
					&rbacconfigv3.Principal{Identifier: &rbacconfigv3.Principal_SourceIp{SourceIp: cidrRange("10.1.2.3", 16)}},
					&rbacconfigv3.Principal{Identifier: &rbacconfigv3.Principal_DirectRemoteIp{DirectRemoteIp: cidrRange("fd00::1:2", 64)}},
					remoteIP("192.168.7.9", 32),
					remoteIP("10.9.9.9", -1)), // no prefix_len: /0, as in Envoy
				"e-sets": rbacPolicy([]*rbacconfigv3.Permission{anyPerm()},
					&rbacconfigv3.Principal{Identifier: &rbacconfigv3.Principal_AndIds{AndIds: &rbacconfigv3.Principal_Set{Ids: []*rbacconfigv3.Principal{
						authn(exact(spiffe)), remoteIP("10.0.0.0", 8),
					}}}},
					&rbacconfigv3.Principal{Identifier: &rbacconfigv3.Principal_OrIds{OrIds: &rbacconfigv3.Principal_Set{Ids: []*rbacconfigv3.Principal{
						remoteIP("10.0.0.0", 8),
					}}}},
					&rbacconfigv3.Principal{Identifier: &rbacconfigv3.Principal_NotId{NotId: authn(nil)}}),
			})}),
			want: []model.Policy{{Name: "authz", Rules: &model.RuleSet{Action: model.Allow, Rules: []model.Rule{
				mRule("a-exact", []model.Permission{mAnyPerm}, mAuthn(model.MatchExact, spiffe, false)),
				mRule("b-any-authenticated", []model.Permission{mAnyPerm}, model.Principal{Kind: model.PrincipalAuthenticated}),
				mRule("c-matchers", []model.Permission{mAnyPerm},
					mAuthn(model.MatchPrefix, "spiffe://cluster.local/ns/demo/", false),
					mAuthn(model.MatchSuffix, "/sa/web", true),
					mAuthn(model.MatchContains, "/ns/demo/", false),
					mAuthn(model.MatchExact, "SPIFFE://X", true)),
				mRule("d-addresses", []model.Permission{mAnyPerm},
					mSource("10.1.0.0/16"), mSource("fd00::/64"), mSource("192.168.7.9/32"), mSource("0.0.0.0/0")),
				mRule("e-sets", []model.Permission{mAnyPerm},
					model.Principal{Kind: model.PrincipalAnd, Ids: []model.Principal{mAuthn(model.MatchExact, spiffe, false), mSource("10.0.0.0/8")}},
					model.Principal{Kind: model.PrincipalOr, Ids: []model.Principal{mSource("10.0.0.0/8")}},
					model.Principal{Kind: model.PrincipalNot, Ids: []model.Principal{{Kind: model.PrincipalAuthenticated}}}),
				mRule("z-any", []model.Permission{mAnyPerm}, mAnyPrincipal),
			}}}},
		},
		{
			name: "permission kinds",
			change: setRBAC(&rbacv3.RBAC{StatPrefix: "ports", Rules: rules(rbacconfigv3.RBAC_ALLOW, map[string]*rbacconfigv3.Policy{
				"ports": rbacPolicy([]*rbacconfigv3.Permission{port(80), port(65535), portRange(8000, 8100), portRange(0, 2), portRange(65535, 65536)}, anyPrincipal()),
				"addresses": rbacPolicy([]*rbacconfigv3.Permission{
					destIP("10.96.0.10", 32), destIP("10.96.7.7", 12), destIP("fd00::10", -1),
				}, anyPrincipal()),
				"sets": rbacPolicy([]*rbacconfigv3.Permission{
					{Rule: &rbacconfigv3.Permission_AndRules{AndRules: &rbacconfigv3.Permission_Set{Rules: []*rbacconfigv3.Permission{destIP("10.96.0.0", 16), port(80)}}}},
					{Rule: &rbacconfigv3.Permission_OrRules{OrRules: &rbacconfigv3.Permission_Set{Rules: []*rbacconfigv3.Permission{port(443)}}}},
					{Rule: &rbacconfigv3.Permission_NotRule{NotRule: port(22)}},
				}, anyPrincipal()),
			})}),
			want: []model.Policy{{Name: "ports", Rules: &model.RuleSet{Action: model.Allow, Rules: []model.Rule{
				mRule("addresses", []model.Permission{mDest("10.96.0.10/32"), mDest("10.96.0.0/12"), mDest("::/0")}, mAnyPrincipal),
				mRule("ports", []model.Permission{mPorts(80, 80), mPorts(65535, 65535), mPorts(8000, 8099), mPorts(0, 1), mPorts(65535, 65535)}, mAnyPrincipal),
				mRule("sets", []model.Permission{
					{Kind: model.PermissionAnd, Rules: []model.Permission{mDest("10.96.0.0/16"), mPorts(80, 80)}},
					{Kind: model.PermissionOr, Rules: []model.Permission{mPorts(443, 443)}},
					{Kind: model.PermissionNot, Rules: []model.Permission{mPorts(22, 22)}},
				}, mAnyPrincipal),
			}}}},
		},
		{
			name: "DENY",
			change: setRBAC(&rbacv3.RBAC{StatPrefix: "deny", Rules: rules(rbacconfigv3.RBAC_DENY, map[string]*rbacconfigv3.Policy{
				"ssh": rbacPolicy([]*rbacconfigv3.Permission{port(22)}, anyPrincipal()),
			})}),
			want: []model.Policy{{Name: "deny", Rules: &model.RuleSet{Action: model.Deny, Rules: []model.Rule{
				mRule("ssh", []model.Permission{mPorts(22, 22)}, mAnyPrincipal),
			}}}},
		},
		{
			name: "LOG records and never enforces",
			change: setRBAC(&rbacv3.RBAC{StatPrefix: "audit", Rules: rules(rbacconfigv3.RBAC_LOG, map[string]*rbacconfigv3.Policy{
				"all": anyone(),
			})}),
			want: []model.Policy{{Name: "audit", Monitor: true, Rules: &model.RuleSet{Action: model.Allow, Rules: []model.Rule{
				mRule("all", []model.Permission{mAnyPerm}, mAnyPrincipal),
			}}}},
		},
		{
			name: "shadow rules only",
			change: setRBAC(&rbacv3.RBAC{StatPrefix: "dry", ShadowRules: rules(rbacconfigv3.RBAC_DENY, map[string]*rbacconfigv3.Policy{
				"all": anyone(),
			})}),
			want: []model.Policy{{Name: "dry", Shadow: &model.RuleSet{Action: model.Deny, Rules: []model.Rule{
				mRule("all", []model.Permission{mAnyPerm}, mAnyPrincipal),
			}}}},
		},
		{
			name: "rules and shadow rules, CONTINUOUS, shadow stat prefix ignored",
			change: setRBAC(&rbacv3.RBAC{
				StatPrefix:            "both",
				ShadowRulesStatPrefix: "both-shadow",
				EnforcementType:       rbacv3.RBAC_CONTINUOUS,
				Rules: rules(rbacconfigv3.RBAC_ALLOW, map[string]*rbacconfigv3.Policy{
					"web": rbacPolicy([]*rbacconfigv3.Permission{anyPerm()}, authn(exact(spiffe))),
				}),
				ShadowRules: rules(rbacconfigv3.RBAC_ALLOW, map[string]*rbacconfigv3.Policy{
					"web-v2": rbacPolicy([]*rbacconfigv3.Permission{port(80)}, authn(exact(spiffe))),
				}),
			}),
			want: []model.Policy{{
				Name:       "both",
				Continuous: true,
				Rules: &model.RuleSet{Action: model.Allow, Rules: []model.Rule{
					mRule("web", []model.Permission{mAnyPerm}, mAuthn(model.MatchExact, spiffe, false)),
				}},
				Shadow: &model.RuleSet{Action: model.Allow, Rules: []model.Rule{
					mRule("web-v2", []model.Permission{mPorts(80, 80)}, mAuthn(model.MatchExact, spiffe, false)),
				}},
			}},
			ignored: map[string]int{"TcpProxy.stat_prefix": 1, "RBAC.shadow_rules_stat_prefix": 1},
		},
		{
			name:   "empty ALLOW rules deny everything",
			change: setRBAC(&rbacv3.RBAC{StatPrefix: "closed", Rules: &rbacconfigv3.RBAC{}}),
			want:   []model.Policy{{Name: "closed", Rules: &model.RuleSet{Action: model.Allow}}},
		},
		{
			name:   "neither rules nor shadow rules is no policy",
			change: setRBAC(&rbacv3.RBAC{StatPrefix: "none", EnforcementType: rbacv3.RBAC_CONTINUOUS}),
			want:   nil,
		},
		{
			name: "names: stat_prefix, then filter name, then index",
			change: withRBAC(
				rbacFilter("first", &rbacv3.RBAC{StatPrefix: "one", Rules: rules(rbacconfigv3.RBAC_DENY, nil)}),
				rbacFilter("second", &rbacv3.RBAC{Rules: rules(rbacconfigv3.RBAC_DENY, nil)}),
				rbacFilter("", &rbacv3.RBAC{Rules: rules(rbacconfigv3.RBAC_DENY, nil)}),
			),
			want: []model.Policy{
				{Name: "one", Rules: &model.RuleSet{Action: model.Deny}},
				{Name: "second", Rules: &model.RuleSet{Action: model.Deny}},
				{Name: "rbac#2", Rules: &model.RuleSet{Action: model.Deny}},
			},
		},
		{
			name: "several filters keep their order",
			change: withRBAC(
				rbacFilter("b", &rbacv3.RBAC{StatPrefix: "zz-deny-ssh", Rules: rules(rbacconfigv3.RBAC_DENY, map[string]*rbacconfigv3.Policy{
					"ssh": rbacPolicy([]*rbacconfigv3.Permission{port(22)}, anyPrincipal()),
				})}),
				rbacFilter("a", &rbacv3.RBAC{StatPrefix: "aa-allow-web", Rules: rules(rbacconfigv3.RBAC_ALLOW, map[string]*rbacconfigv3.Policy{
					"web": rbacPolicy([]*rbacconfigv3.Permission{anyPerm()}, authn(exact(spiffe))),
				})}),
			),
			want: []model.Policy{
				{Name: "zz-deny-ssh", Rules: &model.RuleSet{Action: model.Deny, Rules: []model.Rule{
					mRule("ssh", []model.Permission{mPorts(22, 22)}, mAnyPrincipal),
				}}},
				{Name: "aa-allow-web", Rules: &model.RuleSet{Action: model.Allow, Rules: []model.Rule{
					mRule("web", []model.Permission{mAnyPerm}, mAuthn(model.MatchExact, spiffe, false)),
				}}},
			},
		},
		{
			name: "every address of a listener gets the policies",
			change: func(r *translate.Resources) {
				setRBAC(allowOnly(anyone()))(r)
				l := listener(*r)
				l.AdditionalAddresses = []*listenerv3.AdditionalAddress{{Address: sockAddr("fd00::10", 80)}}
				r.Endpoints["web"] = cla("web", lbEndpoint("10.244.1.5", 8080), lbEndpoint("fd00::5", 8080))
			},
			want: []model.Policy{{Name: "authz", Rules: &model.RuleSet{Action: model.Allow, Rules: []model.Rule{
				mRule("x", []model.Permission{mAnyPerm}, mAnyPrincipal),
			}}}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := demo()
			tt.change(&r)
			got, err := translate.Translate(r)
			if err != nil {
				t.Fatalf("Translate: %v", err)
			}
			svcs := got.State.Services
			if want := 1 + len(listener(r).AdditionalAddresses); len(svcs) != want {
				t.Fatalf("%d services, want %d", len(svcs), want)
			}
			for _, s := range svcs {
				if !reflect.DeepEqual(s.Policies, tt.want) {
					t.Errorf("service %s policies:\n got %+v\nwant %+v", s.Key(), s.Policies, tt.want)
				}
			}
			if tt.ignored != nil && !reflect.DeepEqual(got.Ignored, tt.ignored) {
				t.Errorf("Ignored = %v, want %v", got.Ignored, tt.ignored)
			}
			if err := got.State.Validate(); err != nil {
				t.Errorf("State.Validate: %v", err)
			}

			// The same resources built again translate to equal services.
			r2 := demo()
			tt.change(&r2)
			again, err := translate.Translate(r2)
			if err != nil {
				t.Fatalf("second Translate: %v", err)
			}
			if !reflect.DeepEqual(again.State.Services, svcs) {
				t.Errorf("second Translate differs")
			}
			for i := range svcs {
				if !svcs[i].Equal(&again.State.Services[i]) {
					t.Errorf("service %d: not Equal after translating again", i)
				}
			}
			checkTranslator(t, r)
		})
	}
}

// TestTranslatorSeesPolicyChange checks that a Translator does not keep a
// listener's services when only its policies change, and keeps them when
// the listener comes again with equal policies.
func TestTranslatorSeesPolicyChange(t *testing.T) {
	tr := translate.NewTranslator()
	build := func(action rbacconfigv3.RBAC_Action) translate.Resources {
		r := demo()
		setRBAC(&rbacv3.RBAC{StatPrefix: "authz", Rules: rules(action, map[string]*rbacconfigv3.Policy{"x": anyone()})})(&r)
		return r
	}
	allow := build(rbacconfigv3.RBAC_ALLOW)
	if err := sameAsTranslate(t, "allow", tr, allow); err != nil {
		t.Fatal(err)
	}
	deny := samePointers(allow, build(rbacconfigv3.RBAC_DENY))
	if err := sameAsTranslate(t, "deny", tr, deny); err != nil {
		t.Fatal(err)
	}
	res, err := tr.Translate(deny)
	if err != nil {
		t.Fatal(err)
	}
	if got := res.State.Services[0].Policies[0].Rules.Action; got != model.Deny {
		t.Errorf("action %v after the change, want DENY", got)
	}
	// An equal listener in a new message: the services are kept.
	denyAgain := build(rbacconfigv3.RBAC_DENY)
	denyAgain.Clusters, denyAgain.Endpoints = deny.Clusters, deny.Endpoints
	res2, err := tr.Translate(denyAgain)
	if err != nil {
		t.Fatal(err)
	}
	if !sameArray(res.State.Services[0].Policies, res2.State.Services[0].Policies) {
		t.Errorf("an unchanged policy was not kept")
	}
	sameAsTranslate(t, "no rbac", tr, samePointers(deny, demo()))
}

func TestTranslateRefusesRBAC(t *testing.T) {
	const (
		rt  = "filter_chains[0].filters[0].typed_config"
		rx  = rt + `.rules.policies["x"]`
		pr0 = rx + ".principals[0]"
		pm0 = rx + ".permissions[0]"
	)
	principal := func(pr *rbacconfigv3.Principal) func(r *translate.Resources) { return setRBAC(withPrincipal(pr)) }
	permission := func(pm *rbacconfigv3.Permission) func(r *translate.Resources) { return setRBAC(withPermission(pm)) }
	principalField := func(name protoreflect.Name) func(r *translate.Resources) {
		return principal(withField(&rbacconfigv3.Principal{}, name))
	}
	permissionField := func(name protoreflect.Name) func(r *translate.Resources) {
		return permission(withField(&rbacconfigv3.Permission{}, name))
	}
	matcher := func(sm *stringmatcherv3.StringMatcher) func(r *translate.Resources) { return principal(authn(sm)) }
	l7 := "matching is L7; not supported on an L4 policy"
	runRefusals(t, []refusal{
		// The filter.
		{"matcher", setRBAC(withField(allowOnly(anyone()), "matcher")),
			"Listener", lname, rt + ".matcher", "the matcher API is not supported for RBAC; use rules"},
		{"shadow_matcher", setRBAC(withField(&rbacv3.RBAC{}, "shadow_matcher")),
			"Listener", lname, rt + ".shadow_matcher", "the matcher API is not supported for RBAC; use shadow_rules"},
		{"delay_deny", setRBAC(&rbacv3.RBAC{StatPrefix: "x", DelayDeny: durationpb.New(1e9)}),
			"Listener", lname, rt + ".delay_deny", "delaying a denial is not supported"},
		{"unknown enforcement_type", setRBAC(&rbacv3.RBAC{EnforcementType: 7}),
			"Listener", lname, rt + ".enforcement_type", "unknown value 7"},
		{"unknown action", setRBAC(&rbacv3.RBAC{Rules: rules(9, nil)}),
			"Listener", lname, rt + ".rules.action", "unknown value 9; want ALLOW, DENY or LOG"},
		{"LOG in shadow rules", setRBAC(&rbacv3.RBAC{ShadowRules: rules(rbacconfigv3.RBAC_LOG, nil)}),
			"Listener", lname, rt + ".shadow_rules.action", "LOG is not supported in shadow rules"},
		{"LOG rules with shadow rules", setRBAC(&rbacv3.RBAC{Rules: rules(rbacconfigv3.RBAC_LOG, nil), ShadowRules: rules(rbacconfigv3.RBAC_DENY, nil)}),
			"Listener", lname, rt + ".shadow_rules", "not supported together with rules of action LOG (rules.action)"},
		{"audit_logging_options", setRBAC(&rbacv3.RBAC{Rules: &rbacconfigv3.RBAC{AuditLoggingOptions: &rbacconfigv3.RBAC_AuditLoggingOptions{}}}),
			"Listener", lname, rt + ".rules.audit_logging_options", "audit logging is not supported"},
		{"undecodable RBAC", withRBAC(&listenerv3.Filter{Name: "rbac", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: &anypb.Any{
			TypeUrl: "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC", Value: []byte{0x0a, 0x7f},
		}}}), "Listener", lname, rt, "cannot decode envoy.extensions.filters.network.rbac.v3.RBAC"},
		{"RBAC unknown field", func(r *translate.Resources) {
			setRBAC(allowOnly(anyone()))(r)
			a := listener(*r).FilterChains[0].Filters[0].GetTypedConfig()
			a.Value = unknownField(a.Value)
		}, "Listener", lname, rt, "unknown field number 9999 in envoy.extensions.filters.network.rbac.v3.RBAC"},
		{"unknown field deep in a policy", func(r *translate.Resources) {
			pr := anyPrincipal()
			pr.ProtoReflect().SetUnknown(unknownField(nil))
			setRBAC(withPrincipal(pr))(r)
		}, "Listener", lname, pr0, "unknown field number 9999 in envoy.config.rbac.v3.Principal"},

		// The chain.
		{"RBAC after tcp_proxy", changeListener(func(l *listenerv3.Listener) {
			fc := l.FilterChains[0]
			fc.Filters = append(fc.Filters, rbacFilter("rbac", allowOnly(anyone())))
		}), "Listener", lname, fc0 + ".filters[1]", "follows tcp_proxy (filters[0]), a terminal filter, which must be the last of the chain"},
		{"RBAC in a UDP listener's filter chain", func(r *translate.Resources) {
			setUDP(udpCluster("web"))(r)
			listener(*r).FilterChains = []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{rbacFilter("rbac", allowOnly(anyone()))}}}
		}, "Listener", lname, "filter_chains[0].filters[0]", "RBAC is enforced on TCP services only"},
		{"RBAC as a UDP listener filter", func(r *translate.Resources) {
			setUDP(udpCluster("web"))(r)
			l := listener(*r)
			l.ListenerFilters = append([]*listenerv3.ListenerFilter{{Name: "rbac",
				ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: mustAny(allowOnly(anyone()))}}}, l.ListenerFilters...)
		}, "Listener", lname, "listener_filters[0]", "RBAC is enforced on TCP services only"},

		// Policies.
		{"condition", setRBAC(allowOnly(withField(anyone(), "condition"))),
			"Listener", lname, rx + ".condition", "CEL conditions are not supported; Sluice refuses a policy it cannot enforce"},
		{"checked_condition", setRBAC(allowOnly(withField(anyone(), "checked_condition"))),
			"Listener", lname, rx + ".checked_condition", "CEL conditions are not supported"},
		{"cel_config", setRBAC(allowOnly(withField(anyone(), "cel_config"))),
			"Listener", lname, rx + ".cel_config", "CEL conditions are not supported"},
		{"no principals", setRBAC(allowOnly(rbacPolicy([]*rbacconfigv3.Permission{anyPerm()}))),
			"Listener", lname, rx + ".principals", "empty; a policy needs at least one"},
		{"no permissions", setRBAC(allowOnly(rbacPolicy(nil, anyPrincipal()))),
			"Listener", lname, rx + ".permissions", "empty; a policy needs at least one"},
		// An RBAC comes in an Any: a nil message in it arrives empty.
		{"nil policy", setRBAC(allowOnly(nil)),
			"Listener", lname, rx + ".permissions", "empty; a policy needs at least one"},
		{"empty policy name", setRBAC(&rbacv3.RBAC{Rules: rules(rbacconfigv3.RBAC_ALLOW, map[string]*rbacconfigv3.Policy{"": anyone()})}),
			"Listener", lname, rt + `.rules.policies[""]`, "empty policy name"},
		{"refusal in the second policy by name", setRBAC(&rbacv3.RBAC{Rules: rules(rbacconfigv3.RBAC_ALLOW, map[string]*rbacconfigv3.Policy{
			"b": withField(anyone(), "condition"),
			"a": anyone(),
		})}), "Listener", lname, rt + `.rules.policies["b"].condition`, "CEL"},
		{"refusal in shadow rules", setRBAC(&rbacv3.RBAC{ShadowRules: rules(rbacconfigv3.RBAC_ALLOW, map[string]*rbacconfigv3.Policy{
			"x": withField(anyone(), "condition"),
		})}), "Listener", lname, rt + `.shadow_rules.policies["x"].condition`, "CEL"},

		// Principals.
		{"principal header", principalField("header"), "Listener", lname, pr0 + ".header", "header " + l7},
		{"principal url_path", principalField("url_path"), "Listener", lname, pr0 + ".url_path", "URL path " + l7},
		{"principal metadata", principalField("metadata"), "Listener", lname, pr0 + ".metadata", "metadata matching is not supported"},
		{"principal sourced_metadata", principalField("sourced_metadata"), "Listener", lname, pr0 + ".sourced_metadata", "metadata matching is not supported"},
		{"principal filter_state", principalField("filter_state"), "Listener", lname, pr0 + ".filter_state", "filter state matching is not supported"},
		{"principal custom", principalField("custom"), "Listener", lname, pr0 + ".custom", "custom principal extensions are not supported"},
		{"principal without identifier", principal(&rbacconfigv3.Principal{}), "Listener", lname, pr0, "no identifier set"},
		{"nil principal", principal(nil), "Listener", lname, pr0, "no identifier set"},
		{"principal any false", principal(&rbacconfigv3.Principal{Identifier: &rbacconfigv3.Principal_Any{}}),
			"Listener", lname, pr0 + ".any", "false; Envoy accepts only true"},
		{"and_ids empty", principal(&rbacconfigv3.Principal{Identifier: &rbacconfigv3.Principal_AndIds{AndIds: &rbacconfigv3.Principal_Set{}}}),
			"Listener", lname, pr0 + ".and_ids.ids", "empty; want at least one principal"},
		{"or_ids empty", principal(&rbacconfigv3.Principal{Identifier: &rbacconfigv3.Principal_OrIds{OrIds: &rbacconfigv3.Principal_Set{}}}),
			"Listener", lname, pr0 + ".or_ids.ids", "empty"},
		{"not_id without principal", principal(&rbacconfigv3.Principal{Identifier: &rbacconfigv3.Principal_NotId{}}),
			"Listener", lname, pr0 + ".not_id", "no identifier set"},
		{"refusal deep in principal sets", principal(&rbacconfigv3.Principal{Identifier: &rbacconfigv3.Principal_NotId{NotId: &rbacconfigv3.Principal{
			Identifier: &rbacconfigv3.Principal_OrIds{OrIds: &rbacconfigv3.Principal_Set{Ids: []*rbacconfigv3.Principal{
				anyPrincipal(), withField(&rbacconfigv3.Principal{}, "header"),
			}}},
		}}}), "Listener", lname, pr0 + ".not_id.or_ids.ids[1].header", "header " + l7},
		{"safe_regex", matcher(withField(&stringmatcherv3.StringMatcher{}, "safe_regex")),
			"Listener", lname, pr0 + ".authenticated.principal_name.safe_regex", "regular expressions are not supported"},
		{"custom string matcher", matcher(withField(&stringmatcherv3.StringMatcher{}, "custom")),
			"Listener", lname, pr0 + ".authenticated.principal_name.custom", "custom string matchers are not supported"},
		{"string matcher without pattern", matcher(&stringmatcherv3.StringMatcher{IgnoreCase: true}),
			"Listener", lname, pr0 + ".authenticated.principal_name", "no match pattern set"},
		{"empty prefix", matcher(&stringmatcherv3.StringMatcher{MatchPattern: &stringmatcherv3.StringMatcher_Prefix{}}),
			"Listener", lname, pr0 + ".authenticated.principal_name.prefix", "empty; want at least one character"},
		{"empty contains", matcher(&stringmatcherv3.StringMatcher{MatchPattern: &stringmatcherv3.StringMatcher_Contains{}}),
			"Listener", lname, pr0 + ".authenticated.principal_name.contains", "empty"},
		{"remote_ip hostname", principal(remoteIP("gateway.local", 32)),
			"Listener", lname, pr0 + ".remote_ip.address_prefix", `"gateway.local" is not an IP address literal`},
		{"remote_ip empty", principal(remoteIP("", 32)),
			"Listener", lname, pr0 + ".remote_ip.address_prefix", "empty; want an IP address"},
		{"remote_ip IPv4 /33", principal(remoteIP("10.0.0.0", 33)),
			"Listener", lname, pr0 + ".remote_ip.prefix_len", "33 is longer than an IPv4 address (32 bits)"},
		{"direct_remote_ip IPv6 /129", principal(&rbacconfigv3.Principal{Identifier: &rbacconfigv3.Principal_DirectRemoteIp{DirectRemoteIp: cidrRange("fd00::", 129)}}),
			"Listener", lname, pr0 + ".direct_remote_ip.prefix_len", "129 is longer than an IPv6 address (128 bits)"},
		{"source_ip IPv4-mapped", principal(&rbacconfigv3.Principal{Identifier: &rbacconfigv3.Principal_SourceIp{SourceIp: cidrRange("::ffff:10.0.0.0", 104)}}),
			"Listener", lname, pr0 + ".source_ip.address_prefix", "use the IPv4 form 10.0.0.0"},
		{"remote_ip with zone", principal(remoteIP("fe80::1%eth0", 64)),
			"Listener", lname, pr0 + ".remote_ip.address_prefix", "zones are not supported"},
		{"remote_ip without range", principal(&rbacconfigv3.Principal{Identifier: &rbacconfigv3.Principal_RemoteIp{}}),
			"Listener", lname, pr0 + ".remote_ip.address_prefix", "empty; want an IP address"},

		// Permissions.
		{"permission header", permissionField("header"), "Listener", lname, pm0 + ".header", "header " + l7},
		{"permission url_path", permissionField("url_path"), "Listener", lname, pm0 + ".url_path", "URL path " + l7},
		{"permission uri_template", permissionField("uri_template"), "Listener", lname, pm0 + ".uri_template", "URI template " + l7},
		{"permission metadata", permissionField("metadata"), "Listener", lname, pm0 + ".metadata", "metadata matching is not supported"},
		{"permission sourced_metadata", permissionField("sourced_metadata"), "Listener", lname, pm0 + ".sourced_metadata", "metadata matching is not supported"},
		{"permission requested_server_name", permissionField("requested_server_name"), "Listener", lname, pm0 + ".requested_server_name", "server name (SNI) matching needs the TLS handshake"},
		{"permission matcher", permissionField("matcher"), "Listener", lname, pm0 + ".matcher", "custom permission matchers are not supported"},
		{"permission without rule", permission(&rbacconfigv3.Permission{}), "Listener", lname, pm0, "no rule set"},
		{"permission any false", permission(&rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_Any{}}),
			"Listener", lname, pm0 + ".any", "false; Envoy accepts only true"},
		{"destination_port 0", permission(port(0)), "Listener", lname, pm0 + ".destination_port", "0 is not a port (want 1..65535)"},
		{"destination_port 65536", permission(port(65536)), "Listener", lname, pm0 + ".destination_port", "65536 is not a port"},
		{"port range empty", permission(portRange(80, 80)),
			"Listener", lname, pm0 + ".destination_port_range", "[80, 80) is empty: start must be below end, which is exclusive"},
		{"port range reversed", permission(portRange(90, 80)), "Listener", lname, pm0 + ".destination_port_range", "[90, 80) is empty"},
		{"port range negative start", permission(portRange(-1, 80)), "Listener", lname, pm0 + ".destination_port_range.start", "-1 is not a port"},
		{"port range end beyond 65536", permission(portRange(80, 65537)),
			"Listener", lname, pm0 + ".destination_port_range.end", "65537 is out of range (want 1..65536: end is exclusive)"},
		{"port range of port 0 only", permission(portRange(0, 1)), "Listener", lname, pm0 + ".destination_port_range", "holds only port 0"},
		{"port range missing", permission(&rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_DestinationPortRange{}}),
			"Listener", lname, pm0 + ".destination_port_range.end", "0 is out of range"},
		{"destination_ip /40", permission(destIP("10.96.0.10", 40)),
			"Listener", lname, pm0 + ".destination_ip.prefix_len", "40 is longer than an IPv4 address"},
		{"and_rules empty", permission(&rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_AndRules{AndRules: &rbacconfigv3.Permission_Set{}}}),
			"Listener", lname, pm0 + ".and_rules.rules", "empty; want at least one permission"},
		{"or_rules nil", permission(&rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_OrRules{}}),
			"Listener", lname, pm0 + ".or_rules.rules", "empty"},
		{"refusal deep in permission sets", permission(&rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_AndRules{AndRules: &rbacconfigv3.Permission_Set{
			Rules: []*rbacconfigv3.Permission{port(80), {Rule: &rbacconfigv3.Permission_NotRule{NotRule: withField(&rbacconfigv3.Permission{}, "requested_server_name")}}},
		}}}), "Listener", lname, pm0 + ".and_rules.rules[1].not_rule.requested_server_name", "SNI"},

		// What an HTTP RBAC honours stays refused at L4, also when well formed.
		{"permission header of a method", permission(&rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_Header{Header: methodIs("GET")}}),
			"Listener", lname, pm0 + ".header", "header " + l7},
		{"permission url_path prefix", permission(urlPrefix("/admin")), "Listener", lname, pm0 + ".url_path", "URL path " + l7},
		{"url_path deep in permission sets", permission(&rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_OrRules{OrRules: &rbacconfigv3.Permission_Set{
			Rules: []*rbacconfigv3.Permission{port(80), urlPrefix("/admin")},
		}}}), "Listener", lname, pm0 + ".or_rules.rules[1].url_path", "URL path " + l7},
		{"principal header of a user agent", principal(&rbacconfigv3.Principal{Identifier: &rbacconfigv3.Principal_Header{Header: &routev3.HeaderMatcher{
			Name: "user-agent", HeaderMatchSpecifier: &routev3.HeaderMatcher_PresentMatch{PresentMatch: true},
		}}}), "Listener", lname, pr0 + ".header", "header " + l7},
	})
}
