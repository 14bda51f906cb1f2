package l7_test

import (
	"net/http"
	"net/http/httptest"
	"net/netip"
	"regexp"
	"testing"

	"github.com/sluice-mesh/sluice/dataplane/l7"
	"github.com/sluice-mesh/sluice/dataplane/model"
)

const (
	frontendID = "spiffe://td/ns/shop/sa/frontend"
	adminID    = "spiffe://td/ns/ops/sa/admin"
	frontend   = 7
	admin      = 8
	nameless   = 9 // a mesh identity whose SPIFFE ID the node does not know
)

var (
	names = map[uint32]string{frontend: frontendID, admin: adminID}

	meshSrc    = netip.MustParseAddrPort("10.244.1.5:40000")
	mappedSrc  = netip.MustParseAddrPort("[::ffff:10.244.1.5]:40000")
	outsideSrc = netip.MustParseAddrPort("192.168.1.9:5000")
)

func lookup(id uint32) string { return names[id] }

// Model builders.

func allowSet(rules ...model.Rule) *model.RuleSet {
	return &model.RuleSet{Action: model.Allow, Rules: rules}
}

func denySet(rules ...model.Rule) *model.RuleSet {
	return &model.RuleSet{Action: model.Deny, Rules: rules}
}

func allow(name string, rules ...model.Rule) model.Policy {
	return model.Policy{Name: name, Rules: allowSet(rules...)}
}

func deny(name string, rules ...model.Rule) model.Policy {
	return model.Policy{Name: name, Rules: denySet(rules...)}
}

// rrule is a rule matching what one of perms and one of princs match; no
// principals means any.
func rrule(name string, perms []model.Permission, princs ...model.Principal) model.Rule {
	if len(princs) == 0 {
		princs = []model.Principal{anyone}
	}
	return model.Rule{Name: name, Permissions: perms, Principals: princs}
}

func perms(p ...model.Permission) []model.Permission { return p }

var (
	anyone  = model.Principal{Kind: model.PrincipalAny}
	anyPerm = model.Permission{Kind: model.PermissionAny}
)

func exactly(v string) model.StringMatch { return model.StringMatch{Kind: model.MatchExact, Value: v} }

func hdr(name string, m model.StringMatch) model.Permission {
	return model.Permission{Kind: model.PermissionHeader, Header: model.HeaderMatch{Name: name, Value: m}}
}

func method(m string) model.Permission { return hdr(":method", exactly(m)) }

func path(m model.StringMatch) model.Permission {
	return model.Permission{Kind: model.PermissionPath, Path: m}
}

func authn(m model.StringMatch) model.Principal {
	return model.Principal{Kind: model.PrincipalAuthenticated, Name: m}
}

func from(cidr string) model.Principal {
	return model.Principal{Kind: model.PrincipalSourceIP, CIDR: netip.MustParsePrefix(cidr)}
}

// req is a request and where it came from.
type req struct {
	method, target string
	header         http.Header
	src            netip.AddrPort // default meshSrc
	dst            netip.AddrPort // default vip
	identity       uint32
}

func (q req) build() *http.Request {
	m := q.method
	if m == "" {
		m = http.MethodGet
	}
	r := httptest.NewRequest(m, q.target, nil)
	r.Host = "web.shop"
	for k, vs := range q.header {
		for _, v := range vs {
			r.Header.Add(k, v)
		}
	}
	return r
}

func TestAuthorize(t *testing.T) {
	get := func(target string) req { return req{target: target, identity: frontend} }
	with := func(q req, f func(*req)) req { f(&q); return q }
	allowed := func(policy, rule string) l7.Decision { return l7.Decision{Allowed: true, Policy: policy, Rule: rule} }
	denied := func(policy, rule string) l7.Decision { return l7.Decision{Policy: policy, Rule: rule} }

	type check struct {
		req  req
		want l7.Decision
	}
	tests := []struct {
		name     string
		policies []model.Policy
		checks   []check
	}{
		{
			name:     "no policies",
			policies: nil,
			checks:   []check{{get("/"), allowed("", "")}},
		},
		{
			name:     "method by :method",
			policies: []model.Policy{allow("authz", rrule("read", perms(method("GET"), method("HEAD"))))},
			checks: []check{
				{get("/x"), allowed("authz", "read")},
				{with(get("/x"), func(q *req) { q.method = "HEAD" }), allowed("authz", "read")},
				{with(get("/x"), func(q *req) { q.method = "POST" }), denied("authz", "")},
				{with(get("/x"), func(q *req) { q.method = "get" }), denied("authz", "")}, // methods are case-sensitive
			},
		},
		{
			name:     "path exact, without the query",
			policies: []model.Policy{allow("authz", rrule("health", perms(path(exactly("/healthz")))))},
			checks: []check{
				{get("/healthz"), allowed("authz", "health")},
				{get("/healthz?verbose=1"), allowed("authz", "health")},
				{get("/healthz/"), denied("authz", "")},
				{get("/HEALTHZ"), denied("authz", "")},
			},
		},
		{
			name: "path prefix and ignore_case",
			policies: []model.Policy{allow("authz",
				rrule("api", perms(path(model.StringMatch{Kind: model.MatchPrefix, Value: "/api/"}))),
				rrule("docs", perms(path(model.StringMatch{Kind: model.MatchPrefix, Value: "/docs", IgnoreCase: true}))),
			)},
			checks: []check{
				{get("/api/v1/items"), allowed("authz", "api")},
				{get("/apix"), denied("authz", "")},
				{get("/%61pi/v1"), denied("authz", "")},            // as sent, not decoded
				{get("/docs/../api/v1"), allowed("authz", "docs")}, // as sent, not normalised
				{get("/API/v1"), denied("authz", "")},
				{get("/DOCS/intro"), allowed("authz", "docs")},
			},
		},
		{
			name: "path regex matches the whole path",
			policies: []model.Policy{allow("authz", rrule("user", perms(path(model.StringMatch{
				Kind: model.MatchRegex, Regex: regexp.MustCompile(`^(?:/users/[0-9]+)$`),
			}))))},
			checks: []check{
				{get("/users/42"), allowed("authz", "user")},
				{get("/users/42?tab=1"), allowed("authz", "user")},
				{get("/users/42/edit"), denied("authz", "")},
				{get("/users/abc"), denied("authz", "")},
			},
		},
		{
			name: "headers: presence, several values, :path with query, :authority",
			policies: []model.Policy{
				deny("no-debug", rrule("debug", perms(model.Permission{Kind: model.PermissionHeader, Header: model.HeaderMatch{Name: "x-debug", Present: true}}))),
				allow("authz",
					rrule("tenants", perms(hdr("x-tenant", exactly("a,b")))),
					rrule("search", perms(hdr(":path", model.StringMatch{Kind: model.MatchPrefix, Value: "/search?q="}))),
					rrule("host", perms(hdr(":authority", exactly("web.shop")), hdr("x-never", exactly("x")))),
				),
			},
			checks: []check{
				// The DENY policy decides first; its default allows, then
				// the ALLOW policy's rule does.
				{with(get("/a"), func(q *req) { q.header = http.Header{"X-Tenant": {"a", "b"}} }), allowed("no-debug", "")},
				{with(get("/a"), func(q *req) { q.header = http.Header{"X-Tenant": {"a", "b"}, "X-Debug": {""}} }), denied("no-debug", "debug")},
				{get("/search?q=shoes"), allowed("no-debug", "")},
			},
		},
		{
			name: "headers: which rule matched",
			policies: []model.Policy{allow("authz",
				rrule("a-tenants", perms(hdr("x-tenant", exactly("a,b")))),
				rrule("b-search", perms(hdr(":path", model.StringMatch{Kind: model.MatchPrefix, Value: "/search?q="}))),
				rrule("c-host", perms(hdr(":authority", exactly("web.shop")))),
			)},
			checks: []check{
				{with(get("/a"), func(q *req) { q.header = http.Header{"X-Tenant": {"a", "b"}} }), allowed("authz", "a-tenants")},
				{with(get("/a"), func(q *req) { q.header = http.Header{"X-Tenant": {"a"}} }), allowed("authz", "c-host")},
				{get("/search?q=shoes"), allowed("authz", "b-search")},
			},
		},
		{
			name: "missing header matches nothing, inverted or not",
			policies: []model.Policy{allow("authz", rrule("not-beta", perms(model.Permission{Kind: model.PermissionHeader,
				Header: model.HeaderMatch{Name: "x-channel", Value: exactly("beta"), Invert: true}})))},
			checks: []check{
				{with(get("/"), func(q *req) { q.header = http.Header{"X-Channel": {"stable"}} }), allowed("authz", "not-beta")},
				{with(get("/"), func(q *req) { q.header = http.Header{"X-Channel": {"beta"}} }), denied("authz", "")},
				{get("/"), denied("authz", "")},
			},
		},
		{
			name: "authenticated: only known mesh identities",
			policies: []model.Policy{allow("authz",
				rrule("frontend", perms(anyPerm), authn(exactly(frontendID))),
				rrule("ops", perms(anyPerm), authn(model.StringMatch{Kind: model.MatchPrefix, Value: "spiffe://td/ns/ops/"})),
			)},
			checks: []check{
				{get("/"), allowed("authz", "frontend")},
				{with(get("/"), func(q *req) { q.identity = admin }), allowed("authz", "ops")},
				{with(get("/"), func(q *req) { q.identity = 0 }), denied("authz", "")},
				{with(get("/"), func(q *req) { q.identity = nameless }), denied("authz", "")},
			},
		},
		{
			name:     "authenticated without a name: any known mesh identity",
			policies: []model.Policy{allow("authz", rrule("mesh", perms(anyPerm), authn(model.StringMatch{})))},
			checks: []check{
				{with(get("/"), func(q *req) { q.identity = admin }), allowed("authz", "mesh")},
				{with(get("/"), func(q *req) { q.identity = 0 }), denied("authz", "")},
				{with(get("/"), func(q *req) { q.identity = nameless }), denied("authz", "")},
			},
		},
		{
			name:     "source address, also IPv4-mapped",
			policies: []model.Policy{allow("authz", rrule("pods", perms(anyPerm), from("10.244.0.0/16")))},
			checks: []check{
				{with(get("/"), func(q *req) { q.identity = 0 }), allowed("authz", "pods")},
				{with(get("/"), func(q *req) { q.src = mappedSrc }), allowed("authz", "pods")},
				{with(get("/"), func(q *req) { q.src = outsideSrc }), denied("authz", "")},
			},
		},
		{
			name: "header principal, and/or/not",
			policies: []model.Policy{allow("authz", rrule("bot-from-pods", perms(anyPerm), model.Principal{Kind: model.PrincipalAnd, Ids: []model.Principal{
				{Kind: model.PrincipalHeader, Header: model.HeaderMatch{Name: "user-agent", Value: model.StringMatch{Kind: model.MatchContains, Value: "bot"}}},
				{Kind: model.PrincipalNot, Ids: []model.Principal{from("192.168.0.0/16")}},
			}}))},
			checks: []check{
				{with(get("/"), func(q *req) { q.header = http.Header{"User-Agent": {"crawlbot/1"}} }), allowed("authz", "bot-from-pods")},
				{with(get("/"), func(q *req) { q.header = http.Header{"User-Agent": {"crawlbot/1"}}; q.src = outsideSrc }), denied("authz", "")},
				{with(get("/"), func(q *req) { q.header = http.Header{"User-Agent": {"curl"}} }), denied("authz", "")},
			},
		},
		{
			name: "destination: the service's VIP and port",
			policies: []model.Policy{allow("authz",
				rrule("http", perms(model.Permission{Kind: model.PermissionAnd, Rules: []model.Permission{
					{Kind: model.PermissionPort, Port: 80, PortEnd: 80},
					{Kind: model.PermissionIP, CIDR: netip.MustParsePrefix("10.96.0.0/16")},
				}})),
			)},
			checks: []check{
				{get("/"), allowed("authz", "http")},
				{with(get("/"), func(q *req) { q.dst = netip.MustParseAddrPort("10.96.0.10:8080") }), denied("authz", "")},
				{with(get("/"), func(q *req) { q.dst = netip.MustParseAddrPort("10.97.0.10:80") }), denied("authz", "")},
				{with(get("/"), func(q *req) { q.dst = netip.MustParseAddrPort("[::ffff:10.96.0.10]:80") }), allowed("authz", "http")},
			},
		},
		{
			name: "DENY wins, whichever policy comes first",
			policies: []model.Policy{
				allow("allow-all", rrule("all", perms(anyPerm))),
				deny("no-admin", rrule("admin", perms(path(model.StringMatch{Kind: model.MatchPrefix, Value: "/admin"})))),
			},
			checks: []check{
				{get("/admin/users"), denied("no-admin", "admin")},
				{get("/shop"), allowed("allow-all", "all")}, // the first enforced policy is named
			},
		},
		{
			name: "DENY and ALLOW rules in one order of policies",
			policies: []model.Policy{
				deny("no-admin", rrule("admin", perms(path(model.StringMatch{Kind: model.MatchPrefix, Value: "/admin"})))),
				allow("frontend-only", rrule("frontend", perms(anyPerm), authn(exactly(frontendID)))),
			},
			checks: []check{
				{get("/admin"), denied("no-admin", "admin")},
				{with(get("/admin"), func(q *req) { q.identity = admin }), denied("no-admin", "admin")}, // the first denying policy
				{with(get("/shop"), func(q *req) { q.identity = admin }), denied("frontend-only", "")},
				{get("/shop"), allowed("no-admin", "")},
			},
		},
		{
			name: "two policies: both must allow",
			policies: []model.Policy{
				allow("reads", rrule("get", perms(method("GET")))),
				allow("callers", rrule("frontend", perms(anyPerm), authn(exactly(frontendID)))),
			},
			checks: []check{
				{get("/"), allowed("reads", "get")},
				{with(get("/"), func(q *req) { q.identity = admin }), denied("callers", "")},
				{with(get("/"), func(q *req) { q.method = "DELETE" }), denied("reads", "")},
			},
		},
		{
			name: "shadow rules never block, and are reported",
			policies: []model.Policy{{
				Name:   "authz",
				Rules:  allowSet(rrule("all", perms(anyPerm))),
				Shadow: denySet(rrule("no-writes", perms(method("POST"), method("DELETE")))),
			}},
			checks: []check{
				{with(get("/"), func(q *req) { q.method = "POST" }), l7.Decision{Allowed: true, Policy: "authz", Rule: "all",
					Shadow: l7.ShadowDeny, ShadowPolicy: "authz", ShadowRule: "no-writes"}},
				{get("/"), l7.Decision{Allowed: true, Policy: "authz", Rule: "all",
					Shadow: l7.ShadowAllow, ShadowPolicy: "authz"}},
			},
		},
		{
			name: "shadow outcome of a denied request, across policies",
			policies: []model.Policy{
				{Name: "dry-allow", Shadow: allowSet(rrule("get", perms(method("GET"))))},
				deny("no-delete", rrule("delete", perms(method("DELETE")))),
				{Name: "dry-deny", Shadow: denySet(rrule("delete", perms(method("DELETE"))))},
			},
			checks: []check{
				{with(get("/"), func(q *req) { q.method = "DELETE" }), l7.Decision{Policy: "no-delete", Rule: "delete",
					Shadow: l7.ShadowDeny, ShadowPolicy: "dry-allow"}},
				{get("/"), l7.Decision{Allowed: true, Policy: "no-delete",
					Shadow: l7.ShadowAllow, ShadowPolicy: "dry-allow", ShadowRule: "get"}},
			},
		},
		{
			name: "LOG (Monitor) never blocks",
			policies: []model.Policy{{Name: "audit", Monitor: true,
				Rules: allowSet(rrule("admin", perms(path(model.StringMatch{Kind: model.MatchPrefix, Value: "/admin"}))))}},
			checks: []check{
				{get("/admin"), l7.Decision{Allowed: true, Shadow: l7.ShadowAllow, ShadowPolicy: "audit", ShadowRule: "admin"}},
				{get("/shop"), l7.Decision{Allowed: true, Shadow: l7.ShadowDeny, ShadowPolicy: "audit"}},
			},
		},
		{
			name:     "an ALLOW set without rules denies everything, a DENY set nothing",
			policies: []model.Policy{deny("nothing"), allow("everything")},
			checks:   []check{{get("/"), denied("everything", "")}},
		},
		{
			name: "a malformed policy denies every request",
			policies: []model.Policy{
				allow("fine", rrule("all", perms(anyPerm))),
				deny("broken", rrule("r", perms(model.Permission{Kind: 99}))),
			},
			checks: []check{{get("/"), denied("broken", "")}},
		},
		{
			name:     "a malformed dry-run policy denies too",
			policies: []model.Policy{{Name: "broken", Shadow: denySet(rrule("r", perms(model.Permission{Kind: model.PermissionNot})))}},
			checks:   []check{{get("/"), denied("broken", "")}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := l7.NewAuthorizer(tt.policies, lookup)
			for _, c := range tt.checks {
				src, dst := c.req.src, c.req.dst
				if !src.IsValid() {
					src = meshSrc
				}
				if !dst.IsValid() {
					dst = vip
				}
				got := a.Authorize(c.req.build(), src, dst, c.req.identity)
				if got != c.want {
					t.Errorf("%s %s %v from %s (identity %d) to %s:\n got %+v\nwant %+v",
						c.req.method, c.req.target, c.req.header, src, c.req.identity, dst, got, c.want)
				}
			}
		})
	}
}

// TestAuthorizeWithoutNames checks that an Authorizer without identities
// takes every client for unknown.
func TestAuthorizeWithoutNames(t *testing.T) {
	a := l7.NewAuthorizer([]model.Policy{allow("authz", rrule("mesh", perms(anyPerm), authn(model.StringMatch{})))}, nil)
	if d := a.Authorize(httptest.NewRequest("GET", "/", nil), meshSrc, vip, frontend); d.Allowed {
		t.Errorf("allowed a client the Authorizer cannot name: %+v", d)
	}
}

// TestAuthorizeAsksIdentityOnce checks that a request looks its client's
// identity up once, however many rules ask.
func TestAuthorizeAsksIdentityOnce(t *testing.T) {
	calls := 0
	count := func(id uint32) string { calls++; return names[id] }
	a := l7.NewAuthorizer([]model.Policy{
		allow("a", rrule("x", perms(anyPerm), authn(exactly(adminID))), rrule("y", perms(anyPerm), authn(exactly(frontendID)))),
		allow("b", rrule("z", perms(anyPerm), authn(exactly(frontendID)))),
	}, count)
	if d := a.Authorize(httptest.NewRequest("GET", "/", nil), meshSrc, vip, frontend); !d.Allowed || calls != 1 {
		t.Errorf("decision %+v after %d look-ups; want allowed after 1", d, calls)
	}
}

func BenchmarkAuthorize(b *testing.B) {
	prefix := func(p string) model.StringMatch { return model.StringMatch{Kind: model.MatchPrefix, Value: p} }
	a := l7.NewAuthorizer([]model.Policy{
		allow("authz",
			rrule("ops", perms(anyPerm), authn(prefix("spiffe://td/ns/ops/"))),
			rrule("frontend-reads", perms(model.Permission{Kind: model.PermissionAnd, Rules: []model.Permission{
				{Kind: model.PermissionOr, Rules: perms(method("GET"), method("HEAD"))},
				path(prefix("/api/")),
				{Kind: model.PermissionPort, Port: 80, PortEnd: 80},
			}}), authn(exactly(frontendID)), from("10.244.0.0/16")),
		),
		deny("no-admin", rrule("admin", perms(path(prefix("/admin")), hdr("x-debug", exactly("1"))))),
		{Name: "dry", Shadow: denySet(rrule("no-bots", perms(anyPerm), model.Principal{Kind: model.PrincipalHeader,
			Header: model.HeaderMatch{Name: "user-agent", Value: model.StringMatch{Kind: model.MatchContains, Value: "bot"}}}))},
	}, lookup)
	r := httptest.NewRequest("GET", "/api/v1/items?page=2", nil)
	r.Header.Set("User-Agent", "shop-frontend/2.1")
	r.Header.Set("Accept", "application/json")
	b.ReportAllocs()
	for b.Loop() {
		if d := a.Authorize(r, meshSrc, vip, frontend); !d.Allowed || d.Rule != "frontend-reads" || d.Shadow != l7.ShadowAllow {
			b.Fatalf("decision %+v", d)
		}
	}
}
