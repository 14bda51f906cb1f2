package translate_test

import (
	"errors"
	"net/http/httptest"
	"net/netip"
	"reflect"
	"regexp"
	"strings"
	"testing"

	rbacconfigv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbachttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	stringmatcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/sluice-mesh/sluice/dataplane/l7"
	"github.com/sluice-mesh/sluice/dataplane/model"
	"github.com/sluice-mesh/sluice/xds/translate"
)

// Builders of the HTTP parts of RBAC policies.

func methodIs(m string) *routev3.HeaderMatcher {
	return &routev3.HeaderMatcher{Name: ":method", HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: exact(m)}}
}

func headerPerm(h *routev3.HeaderMatcher) *rbacconfigv3.Permission {
	return &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_Header{Header: h}}
}

func urlPath(sm *stringmatcherv3.StringMatcher) *rbacconfigv3.Permission {
	return &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_UrlPath{UrlPath: &stringmatcherv3.PathMatcher{
		Rule: &stringmatcherv3.PathMatcher_Path{Path: sm},
	}}}
}

func urlPrefix(p string) *rbacconfigv3.Permission {
	return urlPath(&stringmatcherv3.StringMatcher{MatchPattern: &stringmatcherv3.StringMatcher_Prefix{Prefix: p}})
}

func safeRegex(re string) *stringmatcherv3.StringMatcher {
	return &stringmatcherv3.StringMatcher{MatchPattern: &stringmatcherv3.StringMatcher_SafeRegex{SafeRegex: &stringmatcherv3.RegexMatcher{Regex: re}}}
}

func andPerms(pms ...*rbacconfigv3.Permission) *rbacconfigv3.Permission {
	return &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_AndRules{AndRules: &rbacconfigv3.Permission_Set{Rules: pms}}}
}

// httpFilter is an HTTP RBAC exercising every honoured field, and the
// ignored ones.
func httpRBACConfig() *rbachttpv3.RBAC {
	const frontend = "spiffe://cluster.local/ns/shop/sa/frontend"
	return &rbachttpv3.RBAC{
		RulesStatPrefix:       "authz.",     // ignored
		ShadowRulesStatPrefix: "authz-dry.", // ignored
		TrackPerRuleStats:     true,         // ignored
		Rules: rules(rbacconfigv3.RBAC_ALLOW, map[string]*rbacconfigv3.Policy{
			"a-frontend-reads": rbacPolicy([]*rbacconfigv3.Permission{
				andPerms(
					headerPerm(methodIs("GET")),
					urlPrefix("/api/"),
					port(80),
				),
			}, authn(exact(frontend))),
			"b-paths": rbacPolicy([]*rbacconfigv3.Permission{
				urlPath(exact("/healthz")),
				urlPath(&stringmatcherv3.StringMatcher{MatchPattern: &stringmatcherv3.StringMatcher_SafeRegex{SafeRegex: &stringmatcherv3.RegexMatcher{
					Regex:      "/users/[0-9]+",
					EngineType: &stringmatcherv3.RegexMatcher_GoogleRe2{GoogleRe2: &stringmatcherv3.RegexMatcher_GoogleRE2{}}, // ignored
				}}}),
				urlPath(&stringmatcherv3.StringMatcher{MatchPattern: &stringmatcherv3.StringMatcher_Suffix{Suffix: ".JSON"}, IgnoreCase: true}),
			}, anyPrincipal()),
			"c-headers": rbacPolicy([]*rbacconfigv3.Permission{
				headerPerm(&routev3.HeaderMatcher{Name: "X-Tenant", HeaderMatchSpecifier: &routev3.HeaderMatcher_ExactMatch{ExactMatch: "a"}}),
				headerPerm(&routev3.HeaderMatcher{Name: "x-debug", HeaderMatchSpecifier: &routev3.HeaderMatcher_PresentMatch{PresentMatch: false}}),
				headerPerm(&routev3.HeaderMatcher{Name: "Host", HeaderMatchSpecifier: &routev3.HeaderMatcher_SuffixMatch{SuffixMatch: ".shop"}}),
				headerPerm(&routev3.HeaderMatcher{Name: "x-version", HeaderMatchSpecifier: &routev3.HeaderMatcher_SafeRegexMatch{SafeRegexMatch: &stringmatcherv3.RegexMatcher{Regex: "v[12]"}}, InvertMatch: true}),
			}, anyPrincipal()),
			"d-destination": rbacPolicy([]*rbacconfigv3.Permission{
				destIP("10.96.0.0", 16), portRange(8000, 8100),
				{Rule: &rbacconfigv3.Permission_NotRule{NotRule: urlPrefix("/admin")}},
			}, anyPrincipal()),
			"e-principals": rbacPolicy([]*rbacconfigv3.Permission{anyPerm()},
				&rbacconfigv3.Principal{Identifier: &rbacconfigv3.Principal_Header{Header: &routev3.HeaderMatcher{
					Name: "User-Agent", HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: &stringmatcherv3.StringMatcher{
						MatchPattern: &stringmatcherv3.StringMatcher_Contains{Contains: "bot"}}},
				}}},
				&rbacconfigv3.Principal{Identifier: &rbacconfigv3.Principal_AndIds{AndIds: &rbacconfigv3.Principal_Set{Ids: []*rbacconfigv3.Principal{
					authn(nil),
					{Identifier: &rbacconfigv3.Principal_NotId{NotId: remoteIP("10.9.0.0", 16)}},
				}}}},
				&rbacconfigv3.Principal{Identifier: &rbacconfigv3.Principal_DirectRemoteIp{DirectRemoteIp: cidrRange("fd00::1", 64)}},
			),
		}),
		ShadowRules: rules(rbacconfigv3.RBAC_DENY, map[string]*rbacconfigv3.Policy{
			"no-delete": rbacPolicy([]*rbacconfigv3.Permission{headerPerm(methodIs("DELETE"))}, anyPrincipal()),
		}),
	}
}

func TestTranslateHTTPRBAC(t *testing.T) {
	const frontend = "spiffe://cluster.local/ns/shop/sa/frontend"
	hdr := func(name string, m model.StringMatch) model.Permission {
		return model.Permission{Kind: model.PermissionHeader, Header: model.HeaderMatch{Name: name, Value: m}}
	}
	path := func(m model.StringMatch) model.Permission {
		return model.Permission{Kind: model.PermissionPath, Path: m}
	}
	want := model.Policy{
		Name: "envoy.filters.http.rbac",
		Rules: &model.RuleSet{Action: model.Allow, Rules: []model.Rule{
			mRule("a-frontend-reads", []model.Permission{{Kind: model.PermissionAnd, Rules: []model.Permission{
				hdr(":method", model.StringMatch{Kind: model.MatchExact, Value: "GET"}),
				path(model.StringMatch{Kind: model.MatchPrefix, Value: "/api/"}),
				mPorts(80, 80),
			}}}, mAuthn(model.MatchExact, frontend, false)),
			mRule("b-paths", []model.Permission{
				path(model.StringMatch{Kind: model.MatchExact, Value: "/healthz"}),
				path(model.StringMatch{Kind: model.MatchRegex, Regex: regexp.MustCompile("^(?:/users/[0-9]+)$")}),
				path(model.StringMatch{Kind: model.MatchSuffix, Value: ".JSON", IgnoreCase: true}),
			}, mAnyPrincipal),
			mRule("c-headers", []model.Permission{
				hdr("x-tenant", model.StringMatch{Kind: model.MatchExact, Value: "a"}),
				{Kind: model.PermissionHeader, Header: model.HeaderMatch{Name: "x-debug", Present: true, Invert: true}},
				hdr(":authority", model.StringMatch{Kind: model.MatchSuffix, Value: ".shop"}),
				{Kind: model.PermissionHeader, Header: model.HeaderMatch{Name: "x-version", Invert: true,
					Value: model.StringMatch{Kind: model.MatchRegex, Regex: regexp.MustCompile("^(?:v[12])$")}}},
			}, mAnyPrincipal),
			mRule("d-destination", []model.Permission{
				mDest("10.96.0.0/16"), mPorts(8000, 8099),
				{Kind: model.PermissionNot, Rules: []model.Permission{path(model.StringMatch{Kind: model.MatchPrefix, Value: "/admin"})}},
			}, mAnyPrincipal),
			mRule("e-principals", []model.Permission{mAnyPerm},
				model.Principal{Kind: model.PrincipalHeader, Header: model.HeaderMatch{Name: "user-agent", Value: model.StringMatch{Kind: model.MatchContains, Value: "bot"}}},
				model.Principal{Kind: model.PrincipalAnd, Ids: []model.Principal{
					{Kind: model.PrincipalAuthenticated},
					{Kind: model.PrincipalNot, Ids: []model.Principal{mSource("10.9.0.0/16")}},
				}},
				mSource("fd00::/64"),
			),
		}},
		Shadow: &model.RuleSet{Action: model.Deny, Rules: []model.Rule{
			mRule("no-delete", []model.Permission{hdr(":method", model.StringMatch{Kind: model.MatchExact, Value: "DELETE"})}, mAnyPrincipal),
		}},
	}
	got, ignored, err := translate.TranslateHTTPRBAC("envoy.filters.http.rbac", httpRBACConfig())
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("policy:\n got %+v\nwant %+v", got, want)
		if got.Rules != nil && want.Rules != nil {
			for i := range min(len(got.Rules.Rules), len(want.Rules.Rules)) {
				if g, w := got.Rules.Rules[i], want.Rules.Rules[i]; !reflect.DeepEqual(g, w) {
					t.Errorf("rule %d:\n got %+v\nwant %+v", i, g, w)
				}
			}
		}
	}
	wantIgnored := map[string]int{
		"HTTP RBAC.rules_stat_prefix":                    1,
		"HTTP RBAC.shadow_rules_stat_prefix":             1,
		"HTTP RBAC.track_per_rule_stats":                 1,
		"HTTP RBAC.rules.policies.safe_regex.google_re2": 1,
	}
	if !reflect.DeepEqual(ignored, wantIgnored) {
		t.Errorf("ignored %v, want %v", ignored, wantIgnored)
	}

	for _, tc := range []struct {
		name string
		f    *rbachttpv3.RBAC
		want model.Policy
	}{
		{"LOG records and never enforces", &rbachttpv3.RBAC{Rules: rules(rbacconfigv3.RBAC_LOG, map[string]*rbacconfigv3.Policy{"all": anyone()})},
			model.Policy{Name: "audit", Monitor: true, Rules: &model.RuleSet{Action: model.Allow, Rules: []model.Rule{mRule("all", []model.Permission{mAnyPerm}, mAnyPrincipal)}}}},
		{"DENY", &rbachttpv3.RBAC{Rules: rules(rbacconfigv3.RBAC_DENY, map[string]*rbacconfigv3.Policy{"admin": rbacPolicy([]*rbacconfigv3.Permission{urlPrefix("/admin")}, anyPrincipal())})},
			model.Policy{Name: "audit", Rules: &model.RuleSet{Action: model.Deny, Rules: []model.Rule{mRule("admin", []model.Permission{path(model.StringMatch{Kind: model.MatchPrefix, Value: "/admin"})}, mAnyPrincipal)}}}},
		{"empty ALLOW rules deny everything", &rbachttpv3.RBAC{Rules: &rbacconfigv3.RBAC{}},
			model.Policy{Name: "audit", Rules: &model.RuleSet{Action: model.Allow}}},
		{"neither rules nor shadow rules enforce nothing", &rbachttpv3.RBAC{RulesStatPrefix: "x"},
			model.Policy{Name: "audit"}},
	} {
		got, _, err := translate.TranslateHTTPRBAC("audit", tc.f)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s:\n got %+v\nwant %+v", tc.name, got, tc.want)
		}
	}
	if got, _, err := translate.TranslateHTTPRBAC("", &rbachttpv3.RBAC{Rules: &rbacconfigv3.RBAC{}}); err != nil || got.Name != "rbac#0" {
		t.Errorf("unnamed filter: policy %q, error %v; want rbac#0", got.Name, err)
	}
}

// TestTranslatedHTTPRBACAuthorizes checks that what the translation makes
// means to l7.Authorizer what the xDS said: names lower-cased, host as
// :authority, regexes whole-path, the query out of url_path.
func TestTranslatedHTTPRBACAuthorizes(t *testing.T) {
	pol, _, err := translate.TranslateHTTPRBAC("authz", &rbachttpv3.RBAC{Rules: rules(rbacconfigv3.RBAC_ALLOW, map[string]*rbacconfigv3.Policy{
		"reads": rbacPolicy([]*rbacconfigv3.Permission{andPerms(
			headerPerm(methodIs("GET")),
			urlPath(safeRegex("/items/[0-9]+")),
			headerPerm(&routev3.HeaderMatcher{Name: "Host", HeaderMatchSpecifier: &routev3.HeaderMatcher_ExactMatch{ExactMatch: "web.shop"}}),
			headerPerm(&routev3.HeaderMatcher{Name: "X-Tenant", HeaderMatchSpecifier: &routev3.HeaderMatcher_PrefixMatch{PrefixMatch: "acme"}}),
		)}, anyPrincipal()),
	})})
	if err != nil {
		t.Fatal(err)
	}
	a := l7.NewAuthorizer([]model.Policy{pol}, nil)
	src, dst := netip.MustParseAddrPort("10.244.1.5:40000"), netip.MustParseAddrPort("10.96.0.10:80")
	for target, want := range map[string]bool{
		"/items/7?x=1":   true,
		"/items/7/price": false,
		"/items/x":       false,
	} {
		r := httptest.NewRequest("GET", target, nil)
		r.Host = "web.shop"
		r.Header.Set("x-tenant", "acme-1")
		if d := a.Authorize(r, src, dst, 0); d.Allowed != want {
			t.Errorf("GET %s: %+v, want allowed %v", target, d, want)
		}
	}
	r := httptest.NewRequest("GET", "/items/7", nil)
	r.Host = "other.shop"
	r.Header.Set("x-tenant", "acme-1")
	if d := a.Authorize(r, src, dst, 0); d.Allowed {
		t.Errorf("host other.shop allowed: %+v", d)
	}
}

func TestTranslateHTTPRBACRefusals(t *testing.T) {
	const (
		rx  = `rules.policies["p"]`
		pm0 = rx + ".permissions[0]"
		pr0 = rx + ".principals[0]"
	)
	permission := func(pm *rbacconfigv3.Permission) *rbachttpv3.RBAC {
		return &rbachttpv3.RBAC{Rules: rules(rbacconfigv3.RBAC_ALLOW, map[string]*rbacconfigv3.Policy{"p": rbacPolicy([]*rbacconfigv3.Permission{pm}, anyPrincipal())})}
	}
	principal := func(pr *rbacconfigv3.Principal) *rbachttpv3.RBAC {
		return &rbachttpv3.RBAC{Rules: rules(rbacconfigv3.RBAC_ALLOW, map[string]*rbacconfigv3.Policy{"p": rbacPolicy([]*rbacconfigv3.Permission{anyPerm()}, pr)})}
	}
	permissionField := func(name protoreflect.Name) *rbachttpv3.RBAC {
		return permission(withField(&rbacconfigv3.Permission{}, name))
	}
	principalField := func(name protoreflect.Name) *rbachttpv3.RBAC {
		return principal(withField(&rbacconfigv3.Principal{}, name))
	}
	header := func(h *routev3.HeaderMatcher) *rbachttpv3.RBAC { return permission(headerPerm(h)) }
	unknown := permission(anyPerm())
	unknown.ProtoReflect().SetUnknown(unknownField(nil))

	for _, tc := range []struct {
		name   string
		f      *rbachttpv3.RBAC
		field  string
		reason string // a substring of the reason
	}{
		// The filter.
		{"nil filter", nil, "", "nil filter configuration"},
		{"matcher", withField(&rbachttpv3.RBAC{}, "matcher"), "matcher", "the matcher API is not supported for RBAC; use rules"},
		{"shadow_matcher", withField(&rbachttpv3.RBAC{}, "shadow_matcher"), "shadow_matcher", "the matcher API is not supported for RBAC; use shadow_rules"},
		{"unknown field", unknown, "", "unknown field number 9999 in envoy.extensions.filters.http.rbac.v3.RBAC"},
		{"unknown action", &rbachttpv3.RBAC{Rules: rules(9, nil)}, "rules.action", "unknown value 9; want ALLOW, DENY or LOG"},
		{"LOG in shadow rules", &rbachttpv3.RBAC{ShadowRules: rules(rbacconfigv3.RBAC_LOG, nil)}, "shadow_rules.action", "LOG is not supported in shadow rules"},
		{"LOG rules with shadow rules", &rbachttpv3.RBAC{Rules: rules(rbacconfigv3.RBAC_LOG, nil), ShadowRules: rules(rbacconfigv3.RBAC_DENY, nil)},
			"shadow_rules", "not supported together with rules of action LOG"},
		{"CEL condition", &rbachttpv3.RBAC{Rules: rules(rbacconfigv3.RBAC_ALLOW, map[string]*rbacconfigv3.Policy{"p": withField(anyone(), "condition")})},
			rx + ".condition", "CEL conditions are not supported"},
		{"refusal in shadow rules", &rbachttpv3.RBAC{ShadowRules: rules(rbacconfigv3.RBAC_DENY, map[string]*rbacconfigv3.Policy{
			"p": rbacPolicy([]*rbacconfigv3.Permission{withField(&rbacconfigv3.Permission{}, "metadata")}, anyPrincipal()),
		})}, `shadow_rules.policies["p"].permissions[0].metadata`, "metadata matching is not supported"},

		// Permissions.
		{"requested_server_name", permissionField("requested_server_name"), pm0 + ".requested_server_name", "Sluice does not terminate TLS"},
		{"metadata", permissionField("metadata"), pm0 + ".metadata", "metadata matching is not supported; Sluice has no dynamic or route metadata"},
		{"sourced_metadata", permissionField("sourced_metadata"), pm0 + ".sourced_metadata", "metadata matching is not supported"},
		{"matcher extension", permissionField("matcher"), pm0 + ".matcher", "custom permission matchers are not supported"},
		{"uri_template", permissionField("uri_template"), pm0 + ".uri_template", "URI template matching is not supported; use url_path"},
		{"permission without rule", permission(&rbacconfigv3.Permission{}), pm0, "no rule set; want any, header, url_path,"},
		{"refusal deep in permission sets", permission(andPerms(port(80), &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_NotRule{
			NotRule: withField(&rbacconfigv3.Permission{}, "requested_server_name")}})),
			pm0 + ".and_rules.rules[1].not_rule.requested_server_name", "server name"},

		// url_path.
		{"url_path without path", permission(withField(&rbacconfigv3.Permission{}, "url_path")), pm0 + ".url_path.path", "missing; want a string matcher of the path"},
		{"url_path empty prefix", permission(urlPrefix("")), pm0 + ".url_path.path.prefix", "empty; want at least one character"},
		{"url_path bad regex", permission(urlPath(safeRegex("/items/[0-9"))), pm0 + ".url_path.path.safe_regex.regex", "is not a valid RE2 expression"},
		{"url_path custom matcher", permission(urlPath(withField(&stringmatcherv3.StringMatcher{}, "custom"))), pm0 + ".url_path.path.custom", "custom string matchers are not supported"},

		// Headers.
		{"header without name", header(&routev3.HeaderMatcher{}), pm0 + ".header.name", "empty"},
		{"header of another pseudo-header", header(&routev3.HeaderMatcher{Name: ":status"}), pm0 + ".header.name",
			`":status": the pseudo-headers an HTTP RBAC policy can match are :method, :authority, :path and :scheme`},
		{"header range_match", header(withField(&routev3.HeaderMatcher{Name: "x-n"}, "range_match")), pm0 + ".header.range_match", "range matches are not supported"},
		{"header treat_missing_header_as_empty", header(&routev3.HeaderMatcher{Name: "x-n", TreatMissingHeaderAsEmpty: true}),
			pm0 + ".header.treat_missing_header_as_empty", "not supported"},
		{"header empty prefix", header(&routev3.HeaderMatcher{Name: "x-n", HeaderMatchSpecifier: &routev3.HeaderMatcher_PrefixMatch{}}),
			pm0 + ".header.prefix_match", "empty; want at least one character"},
		{"header bad regex in string_match", header(&routev3.HeaderMatcher{Name: "x-n", HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: safeRegex("(")}}),
			pm0 + ".header.string_match.safe_regex.regex", "is not a valid RE2 expression"},

		// Principals.
		{"principal url_path", principalField("url_path"), pr0 + ".url_path", "match the path with a url_path permission"},
		{"principal metadata", principalField("metadata"), pr0 + ".metadata", "metadata matching is not supported"},
		{"principal sourced_metadata", principalField("sourced_metadata"), pr0 + ".sourced_metadata", "metadata matching is not supported"},
		{"principal filter_state", principalField("filter_state"), pr0 + ".filter_state", "filter state matching is not supported"},
		{"principal custom", principalField("custom"), pr0 + ".custom", "custom principal extensions are not supported"},
		{"principal without identifier", principal(&rbacconfigv3.Principal{}), pr0, "no identifier set; want any, authenticated, remote_ip, direct_remote_ip, source_ip, header,"},
		{"principal header of another pseudo-header", principal(&rbacconfigv3.Principal{Identifier: &rbacconfigv3.Principal_Header{Header: &routev3.HeaderMatcher{Name: ":protocol"}}}),
			pr0 + ".header.name", "pseudo-headers an HTTP RBAC policy can match"},
		{"principal name regex, refused as at L4", principal(authn(safeRegex("spiffe://.*"))),
			pr0 + ".authenticated.principal_name.safe_regex", "regular expressions are not supported"},
		{"remote_ip /33", principal(remoteIP("10.0.0.0", 33)), pr0 + ".remote_ip.prefix_len", "33 is longer than an IPv4 address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pol, _, err := translate.TranslateHTTPRBAC("authz", tc.f)
			if err == nil {
				t.Fatalf("accepted: %+v", pol)
			}
			var re *translate.ResourceError
			if !errors.As(err, &re) {
				t.Fatalf("error %v (%T) is not a *ResourceError", err, err)
			}
			if re.Type != "HTTP RBAC" || re.Name != "authz" || re.Field != tc.field {
				t.Errorf("refused %s %q field %q, want HTTP RBAC \"authz\" field %q\n(%v)", re.Type, re.Name, re.Field, tc.field, err)
			}
			if !strings.Contains(re.Reason, tc.reason) {
				t.Errorf("reason %q does not say %q", re.Reason, tc.reason)
			}
		})
	}

	// The text an operator sees.
	_, _, err := translate.TranslateHTTPRBAC("authz", permission(urlPath(safeRegex("/items/[0-9"))))
	const want = `HTTP RBAC "authz": rules.policies["p"].permissions[0].url_path.path.safe_regex.regex: "/items/[0-9" is not a valid RE2 expression: missing closing ]: ` + "`[0-9)$`"
	if err == nil || err.Error() != want {
		t.Errorf("error\n%v\nwant\n%s", err, want)
	}
}
