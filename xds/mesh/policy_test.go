package mesh_test

import (
	"bytes"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacconfigv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sluice-mesh/sluice/dataplane/model"
	"github.com/sluice-mesh/sluice/xds/mesh"
)

// db is a service with two TCP ports and a UDP one, whose policies a test
// writes from line 10 on.
var db = []string{
	"services:",                         // 1
	"  - name: db",                      // 2
	"    namespace: shop",               // 3
	"    vips: [10.96.1.10]",            // 4
	"    ports:",                        // 5
	"      - port: 5432",                // 6
	"      - port: 9187",                // 7
	"      - {port: 53, protocol: UDP}", // 8
	"    policies:",                     // 9
}

func withPolicies(extra ...string) []byte {
	return lines(append(append([]string{}, db...), extra...)...)
}

// withRule writes the fields of one rule from line 13 on.
func withRule(extra ...string) []byte {
	return withPolicies(append([]string{
		"      - name: only-frontend", // 10
		"        rules:",              // 11
		"          - name: frontend",  // 12
	}, extra...)...)
}

func TestParsePolicies(t *testing.T) {
	m, err := mesh.Parse("mesh.yaml", lines(
		"trustDomain: example.org",
		"services:",
		"  - name: db",
		"    namespace: shop",
		"    vips: [10.96.1.10]",
		"    ports:",
		"      - {port: 5432, targetPort: 15432}",
		"      - {port: 53, protocol: UDP}",
		"    policies:",
		"      - name: only-frontend",
		"        rules:",
		"          - name: frontend",
		"            from:",
		"              - principals: [spiffe://example.org/ns/shop/sa/frontend, '*']",
		"                notPrincipals: [spiffe://other.example/ns/shop/sa/frontend]",
		"              - namespaces: [shop, web]",
		"                notNamespaces: [dev]",
		"              - serviceAccounts: [batch, ops/backup.v2]", // batch: in the service's namespace
		"                notServiceAccounts: [shop/cron]",
		"              - ipBlocks: [10.244.3.0/24, 10.0.0.1, 'fd00:244::/64', '::1']",
		"                notIpBlocks: [10.244.3.128/25]",
		"            ports: [5432]",
		"          - name: anyone", // neither from nor ports: everything
		"      - name: no-legacy",
		"        action: DENY",
		"        dryRun: false",
		"        continuous: true",
		"        rules: []",
		"      - name: lockdown",
		"        dryRun: true",
		"        continuous: true", // what it will do once dryRun is dropped
		"      - name: audit",
		"        action: AUDIT",
		"        dryRun: false",
		"        rules:",
		"          - {name: all, from: ~, ports: ~}",
	))
	if err != nil {
		t.Fatal(err)
	}
	want := []mesh.Policy{{
		Name:   "only-frontend",
		Action: mesh.ActionAllow,
		Rules: []mesh.Rule{{
			Name: "frontend",
			From: []mesh.Source{{
				Principals:    []string{"spiffe://example.org/ns/shop/sa/frontend", mesh.AnyPrincipal},
				NotPrincipals: []string{"spiffe://other.example/ns/shop/sa/frontend"},
			}, {
				Namespaces:    []string{"shop", "web"},
				NotNamespaces: []string{"dev"},
			}, {
				ServiceAccounts:    []mesh.ServiceAccount{{Namespace: "shop", Name: "batch"}, {Namespace: "ops", Name: "backup.v2"}},
				NotServiceAccounts: []mesh.ServiceAccount{{Namespace: "shop", Name: "cron"}},
			}, {
				IPBlocks: []netip.Prefix{
					netip.MustParsePrefix("10.244.3.0/24"), netip.MustParsePrefix("10.0.0.1/32"),
					netip.MustParsePrefix("fd00:244::/64"), netip.MustParsePrefix("::1/128"),
				},
				NotIPBlocks: []netip.Prefix{netip.MustParsePrefix("10.244.3.128/25")},
			}},
			Ports: []uint16{5432},
		}, {
			Name: "anyone",
		}},
	}, {
		Name:       "no-legacy",
		Action:     mesh.ActionDeny,
		Continuous: true,
	}, {
		Name:       "lockdown",
		DryRun:     true,
		Continuous: true,
	}, {
		Name:   "audit",
		Action: mesh.ActionAudit,
		Rules:  []mesh.Rule{{Name: "all"}},
	}}
	if got := m.Services[0].Policies; !reflect.DeepEqual(got, want) {
		t.Errorf("Policies =\n%+v\nwant\n%+v", got, want)
	}
}

// A service without policies, or with an empty list, has none: even a
// UDP-only one, which cannot have any.
func TestParseNoPolicies(t *testing.T) {
	for _, tail := range []string{"", "    policies:", "    policies: []"} {
		m, err := mesh.Parse("mesh.yaml", lines(
			"services:",
			"  - name: dns",
			"    vips: [10.96.0.53]",
			"    ports: [{port: 53, protocol: UDP}]",
			tail,
		))
		if err != nil {
			t.Fatalf("%q: %v", tail, err)
		}
		if got := m.Services[0].Policies; got != nil {
			t.Errorf("%q: Policies = %+v, want nil", tail, got)
		}
	}
}

func TestParsePolicyErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		yaml   []byte
		line   int
		field  string
		reason string // a substring of Reason
	}{
		{"policies not a list", withPolicies("      name: x"), 10, "services[0].policies", "must be a list"},
		{"policy not a mapping", withPolicies("      - x"), 10, "services[0].policies[0]", `must be a mapping, not "x"`},
		{"UDP-only service", lines(
			"services:",
			"  - name: dns",
			"    vips: [10.96.0.53]",
			"    ports: [{port: 53, protocol: UDP}]",
			"    policies:",
			"      - name: x"), 6, "services[0].policies", "service default/dns has no TCP port; policies apply to TCP ports only"},
		{"unknown policy field", withPolicies("      - name: x", "        mode: STRICT"), 11, "services[0].policies[0].mode",
			"unknown field; known fields are name, action, dryRun, continuous, rules"},
		{"policy name missing", withPolicies("      - action: DENY"), 10, "services[0].policies[0].name", "required field is missing"},
		{"policy name not a label", withPolicies("      - name: Only_Frontend"), 10, "services[0].policies[0].name", `"Only_Frontend" is not a DNS-1123 label`},
		{"policy name twice", withPolicies("      - name: x", "      - name: y", "      - name: x"), 12, "services[0].policies[2].name",
			`policy "x" is already services[0].policies[0]`},
		{"policy name twice, then a bad field", withPolicies("      - name: x", "      - name: x", "        action: bogus"), 11,
			"services[0].policies[1].name", `policy "x" is already services[0].policies[0]`},
		{"action lowercase", withPolicies("      - name: x", "        action: allow"), 11, "services[0].policies[0].action",
			`"allow" is not an action; use ALLOW, DENY or AUDIT`},
		{"action LOG", withPolicies("      - name: x", "        action: LOG"), 11, "services[0].policies[0].action", `"LOG" is not an action`},
		{"dryRun not a boolean", withPolicies("      - name: x", "        dryRun: yes"), 11, "services[0].policies[0].dryRun",
			`"yes" is not a boolean; use true or false`},
		{"continuous a string", withPolicies("      - name: x", "        continuous: 'true'"), 11, "services[0].policies[0].continuous",
			`"true" is not a boolean`},
		{"audit dry run", withPolicies("      - name: x", "        action: AUDIT", "        dryRun: true"), 12, "services[0].policies[0].dryRun",
			"an AUDIT policy only records, never blocks; drop dryRun"},
		{"audit continuous", withPolicies("      - name: x", "        continuous: true", "        action: AUDIT"), 11, "services[0].policies[0].continuous",
			"an AUDIT policy only records, never blocks; drop continuous"},
		{"rules not a list", withPolicies("      - name: x", "        rules: {name: y}"), 11, "services[0].policies[0].rules", "must be a list"},
		{"rule name missing", withPolicies("      - name: x", "        rules:", "          - ports: [5432]"), 12, "services[0].policies[0].rules[0].name",
			"required field is missing"},
		{"rule name not a label", withRule("          - name: from.frontend"), 13, "services[0].policies[0].rules[1].name", "not a DNS-1123 label"},
		{"rule name twice", withRule("          - name: frontend"), 13, "services[0].policies[0].rules[1].name",
			`rule "frontend" is already services[0].policies[0].rules[0]`},
		{"same rule name in two policies", withRule(
			"      - name: other",
			"        rules: [{name: frontend}]",
			"      - name: other"), 15, "services[0].policies[2].name", `policy "other" is already services[0].policies[1]`},
		{"unknown rule field", withRule("            to: [{ports: [5432]}]"), 13, "services[0].policies[0].rules[0].to",
			"unknown field; known fields are name, from, ports"},
		{"from empty", withRule("            from: []"), 13, "services[0].policies[0].rules[0].from",
			"empty list; leave from out to match every source"},
		{"from a mapping", withRule("            from: {namespaces: [shop]}"), 13, "services[0].policies[0].rules[0].from", "must be a list"},
		{"empty source", withRule("            from:", "              - {}"), 14, "services[0].policies[0].rules[0].from[0]",
			"empty source; set at least one of principals, namespaces, serviceAccounts, ipBlocks, notPrincipals, notNamespaces, notServiceAccounts, notIpBlocks"},
		{"source of nulls", withRule("            from:", "              - {namespaces: ~}"), 14, "services[0].policies[0].rules[0].from[0]", "empty source"},
		{"unknown source field", withRule("            from:", "              - ipBlock: 10.0.0.0/8"), 14, "services[0].policies[0].rules[0].from[0].ipBlock",
			"unknown field; known fields are principals"},
		{"principals not a list", withRule("            from:", "              - principals: spiffe://cluster.local/ns/shop/sa/web"), 14,
			"services[0].policies[0].rules[0].from[0].principals", `must be a list, not "spiffe://cluster.local/ns/shop/sa/web"`},
		{"principals empty", withRule("            from:", "              - principals: []"), 14, "services[0].policies[0].rules[0].from[0].principals",
			"empty list; list at least one value or leave principals out"},
		{"principal not a SPIFFE ID", withRule("            from:", "              - principals: [cluster.local/ns/shop/sa/web]"), 14,
			"services[0].policies[0].rules[0].from[0].principals[0]", `"cluster.local/ns/shop/sa/web" is not a workload SPIFFE ID`},
		{"principal not a workload", withRule("            from:", "              - principals: [spiffe://cluster.local/ns/shop]"), 14,
			"services[0].policies[0].rules[0].from[0].principals[0]", "is not a workload SPIFFE ID (spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>)"},
		{"principal prefix", withRule("            from:", "              - principals: ['spiffe://cluster.local/ns/shop/sa/*']"), 14,
			"services[0].policies[0].rules[0].from[0].principals[0]", "use namespaces to match a whole namespace"},
		{"principal bad namespace", withRule("            from:", "              - principals: [spiffe://cluster.local/ns/Shop/sa/web]"), 14,
			"services[0].policies[0].rules[0].from[0].principals[0]", `namespace "Shop" is not a DNS-1123 label`},
		{"principal twice", withRule(
			"            from:",
			"              - principals:",
			"                  - spiffe://cluster.local/ns/shop/sa/web",
			"                  - spiffe://cluster.local/ns/shop/sa/web"), 16,
			"services[0].policies[0].rules[0].from[0].principals[1]", "spiffe://cluster.local/ns/shop/sa/web is already principals[0]"},
		{"not principal bad", withRule("            from:", "              - notPrincipals: [web]"), 14,
			"services[0].policies[0].rules[0].from[0].notPrincipals[0]", `"web" is not a workload SPIFFE ID`},
		{"namespace star", withRule("            from:", "              - namespaces: ['*']"), 14,
			"services[0].policies[0].rules[0].from[0].namespaces[0]", `to match every mesh workload, use principals: ["*"]`},
		{"namespace not a label", withRule("            from:", "              - notNamespaces: [shop.prod]"), 14,
			"services[0].policies[0].rules[0].from[0].notNamespaces[0]", `"shop.prod" is not a DNS-1123 label`},
		{"service account bad namespace", withRule("            from:", "              - serviceAccounts: [Ops/backup]"), 14,
			"services[0].policies[0].rules[0].from[0].serviceAccounts[0]", `"Ops/backup": namespace "Ops" is not a DNS-1123 label`},
		{"service account two slashes", withRule("            from:", "              - serviceAccounts: [ops/backup/x]"), 14,
			"services[0].policies[0].rules[0].from[0].serviceAccounts[0]", `service account "backup/x" is not a DNS-1123 subdomain`},
		{"service account star", withRule("            from:", "              - notServiceAccounts: ['shop/*']"), 14,
			"services[0].policies[0].rules[0].from[0].notServiceAccounts[0]", "to match a whole namespace, use namespaces"},
		{"service account twice", withRule("            from:", "              - serviceAccounts: [batch, shop/batch]"), 14,
			"services[0].policies[0].rules[0].from[0].serviceAccounts[1]", "shop/batch is already serviceAccounts[0]"},
		{"ip block not a CIDR", withRule("            from:", "              - ipBlocks: [10.244.3.0/33]"), 14,
			"services[0].policies[0].rules[0].from[0].ipBlocks[0]", `"10.244.3.0/33" is not a CIDR range (10.244.0.0/16) or an IP address`},
		{"ip block host bits", withRule("            from:", "              - ipBlocks: [10.244.3.1/24]"), 14,
			"services[0].policies[0].rules[0].from[0].ipBlocks[0]", "10.244.3.1/24 has bits set past the /24 prefix; write 10.244.3.0/24"},
		{"ip block v4-mapped", withRule("            from:", "              - ipBlocks: ['::ffff:10.0.0.0/104']"), 14,
			"services[0].policies[0].rules[0].from[0].ipBlocks[0]", "IPv4-mapped IPv6"},
		{"ip block zone", withRule("            from:", "              - notIpBlocks: ['fe80::1%eth0']"), 14,
			"services[0].policies[0].rules[0].from[0].notIpBlocks[0]", "has a zone"},
		{"ip block twice", withRule("            from:", "              - ipBlocks: [10.0.0.1, 10.0.0.1/32]"), 14,
			"services[0].policies[0].rules[0].from[0].ipBlocks[1]", "10.0.0.1/32 is already ipBlocks[0]"},
		{"ports empty", withRule("            ports: []"), 13, "services[0].policies[0].rules[0].ports",
			"empty list; leave ports out to cover every TCP port of the service"},
		{"port a string", withRule("            ports: ['5432']"), 13, "services[0].policies[0].rules[0].ports[0]", `"5432" is not an integer`},
		{"port zero", withRule("            ports: [0]"), 13, "services[0].policies[0].rules[0].ports[0]", "0 is out of range 1..65535"},
		{"port not of the service", withRule("            ports: [5432, 15432]"), 13, "services[0].policies[0].rules[0].ports[1]",
			"service shop/db has no port 15432; list ports clients dial (port, not targetPort)"},
		{"UDP port", withRule("            ports: [53]"), 13, "services[0].policies[0].rules[0].ports[0]",
			"port 53 of service shop/db is UDP; policies apply to TCP ports only"},
		{"port twice", withRule("            ports:", "              - 5432", "              - 5432"), 15, "services[0].policies[0].rules[0].ports[1]",
			"port 5432 is already ports[0]"},
	} {
		t.Run(tc.name, func(t *testing.T) { wantError(t, tc.yaml, tc.line, tc.field, tc.reason) })
	}
}

// policyFile has policies of every kind on a dual-stack service with two
// TCP ports and a UDP one.
var policyFile = lines(
	"trustDomain: example.org",
	"services:",
	"  - name: db",
	"    namespace: shop",
	`    vips: [10.96.1.10, "fd00:96::1:10"]`,
	"    ports:",
	"      - {port: 5432, targetPort: 15432}",
	"      - {port: 9187}",
	"      - {port: 9187, protocol: UDP}",
	"    endpoints:",
	"      - address: 10.244.1.5",
	"        workload: {name: db-0, serviceAccount: db}",
	"    policies:",
	"      - name: only-frontend",
	"        rules:",
	"          - name: frontend",
	"            from:",
	"              - principals: [spiffe://example.org/ns/shop/sa/frontend]",
	"              - serviceAccounts: [batch, ops/backup]",
	"                ipBlocks: [10.244.3.0/24, 'fd00:244:3::/64']",
	"            ports: [5432]",
	"          - name: metrics",
	"            from:",
	"              - namespaces: [monitoring]",
	"                notServiceAccounts: [monitoring/untrusted]",
	"            ports: [9187]",
	"          - name: admins", // sorts first: rules are evaluated in name order
	"            from:",
	"              - principals: ['*']",
	"                notNamespaces: [shop, dev]",
	"                notIpBlocks: [10.0.0.1]",
	"      - name: no-legacy",
	"        action: DENY",
	"        continuous: true",
	"        rules:",
	"          - name: legacy",
	"            from:",
	"              - ipBlocks: [192.168.0.0/16]",
	"                notPrincipals: ['*']",
	"            ports: [5432, 9187]",
	"      - name: try-lockdown",
	"        dryRun: true",
	"        rules:",
	"          - name: anyone-to-5432",
	"            ports: [5432]",
	"      - name: audit",
	"        action: AUDIT",
	"        rules:",
	"          - name: all",
	"      - name: deny-all", // ALLOW without rules
	"  - name: api",
	"    namespace: shop",
	"    vips: [10.96.1.20]",
	"    ports: [{port: 443}]",
)

// The rendered policies are accepted by Sluice's own translator, which
// reads them back as exactly the policies the file describes.
func TestPoliciesTranslate(t *testing.T) {
	res := translated(t, mustParse(t, policyFile))

	authn := func(kind model.MatchKind, v string) model.Principal {
		return model.Principal{Kind: model.PrincipalAuthenticated, Name: model.StringMatch{Kind: kind, Value: v}}
	}
	cidr := func(s string) model.Principal {
		return model.Principal{Kind: model.PrincipalSourceIP, CIDR: netip.MustParsePrefix(s)}
	}
	or := func(ids ...model.Principal) model.Principal {
		return model.Principal{Kind: model.PrincipalOr, Ids: ids}
	}
	and := func(ids ...model.Principal) model.Principal {
		return model.Principal{Kind: model.PrincipalAnd, Ids: ids}
	}
	not := func(id model.Principal) model.Principal {
		return model.Principal{Kind: model.PrincipalNot, Ids: []model.Principal{id}}
	}
	port := func(p uint16) model.Permission {
		return model.Permission{Kind: model.PermissionPort, Port: p, PortEnd: p}
	}
	anyDest := []model.Permission{{Kind: model.PermissionAny}}
	anySource := []model.Principal{{Kind: model.PrincipalAny}}

	want := []model.Policy{{
		Name: "only-frontend",
		Rules: &model.RuleSet{Action: model.Allow, Rules: []model.Rule{{
			Name: "admins",
			Principals: []model.Principal{and(
				model.Principal{Kind: model.PrincipalAuthenticated}, // any mesh identity
				not(or(authn(model.MatchPrefix, "spiffe://example.org/ns/shop/sa/"), authn(model.MatchPrefix, "spiffe://example.org/ns/dev/sa/"))),
				not(cidr("10.0.0.1/32")),
			)},
			Permissions: anyDest,
		}, {
			Name: "frontend",
			Principals: []model.Principal{
				authn(model.MatchExact, "spiffe://example.org/ns/shop/sa/frontend"),
				and(
					or(authn(model.MatchExact, "spiffe://example.org/ns/shop/sa/batch"), authn(model.MatchExact, "spiffe://example.org/ns/ops/sa/backup")),
					or(cidr("10.244.3.0/24"), cidr("fd00:244:3::/64")),
				),
			},
			Permissions: []model.Permission{port(5432)},
		}, {
			Name: "metrics",
			Principals: []model.Principal{and(
				authn(model.MatchPrefix, "spiffe://example.org/ns/monitoring/sa/"),
				not(authn(model.MatchExact, "spiffe://example.org/ns/monitoring/sa/untrusted")),
			)},
			Permissions: []model.Permission{port(9187)},
		}}},
	}, {
		Name: "no-legacy",
		Rules: &model.RuleSet{Action: model.Deny, Rules: []model.Rule{{
			Name:        "legacy",
			Principals:  []model.Principal{and(cidr("192.168.0.0/16"), not(model.Principal{Kind: model.PrincipalAuthenticated}))},
			Permissions: []model.Permission{port(5432), port(9187)},
		}}},
		Continuous: true,
	}, {
		Name: "try-lockdown",
		Shadow: &model.RuleSet{Action: model.Allow, Rules: []model.Rule{{
			Name: "anyone-to-5432", Principals: anySource, Permissions: []model.Permission{port(5432)},
		}}},
	}, {
		Name:    "audit",
		Rules:   &model.RuleSet{Action: model.Allow, Rules: []model.Rule{{Name: "all", Principals: anySource, Permissions: anyDest}}},
		Monitor: true,
	}, {
		Name:  "deny-all",
		Rules: &model.RuleSet{Action: model.Allow},
	}}

	// Every TCP service of db, of both families, has the policies; its UDP
	// port and the other service have none.
	var tcp int
	for _, svc := range res.State.Services {
		switch {
		case svc.Name == "shop/db:5432" || svc.Name == "shop/db:9187":
			tcp++
			if !reflect.DeepEqual(svc.Policies, want) {
				t.Errorf("%s (%s) policies =\n%+v\nwant\n%+v", svc.Name, svc.VIP, svc.Policies, want)
			}
		case svc.Policies != nil:
			t.Errorf("%s (%s/%s) has policies: %+v", svc.Name, svc.VIP, svc.Protocol, svc.Policies)
		}
	}
	if tcp != 4 {
		t.Errorf("found %d TCP services of shop/db, want 4 (2 ports × 2 VIPs); state: %+v", tcp, res.State.Services)
	}
}

// The listener of a TCP port carries one RBAC filter per policy, in file
// order, before its tcp_proxy; the listener of a UDP port carries none.
func TestRenderPolicyFilters(t *testing.T) {
	r := mustParse(t, policyFile).Resources()
	byName := map[string]*listenerv3.Listener{}
	for _, l := range r.Listeners {
		byName[l.Name] = l
	}
	for _, name := range []string{"shop/db:5432", "shop/db:9187"} {
		var got []string
		for _, f := range byName[name].GetFilterChains()[0].GetFilters() {
			got = append(got, f.GetName())
		}
		rbac := "envoy.filters.network.rbac"
		want := []string{rbac, rbac, rbac, rbac, rbac, "envoy.filters.network.tcp_proxy"}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s filters = %q, want %q", name, got, want)
		}
	}
	if l := byName["shop/db:9187/udp"]; l.FilterChains != nil || len(l.ListenerFilters) != 1 {
		t.Errorf("UDP listener = %v, want only its udp_proxy", l)
	}

	// One policy in full: what a client decodes.
	filters := byName["shop/db:5432"].GetFilterChains()[0].GetFilters()
	var cfg rbacv3.RBAC
	if err := filters[1].GetTypedConfig().UnmarshalTo(&cfg); err != nil {
		t.Fatal(err)
	}
	want := &rbacv3.RBAC{
		StatPrefix:      "no-legacy",
		EnforcementType: rbacv3.RBAC_CONTINUOUS,
		Rules: &rbacconfigv3.RBAC{
			Action: rbacconfigv3.RBAC_DENY,
			Policies: map[string]*rbacconfigv3.Policy{"legacy": {
				Permissions: []*rbacconfigv3.Permission{
					{Rule: &rbacconfigv3.Permission_DestinationPort{DestinationPort: 5432}},
					{Rule: &rbacconfigv3.Permission_DestinationPort{DestinationPort: 9187}},
				},
				Principals: []*rbacconfigv3.Principal{{Identifier: &rbacconfigv3.Principal_AndIds{AndIds: &rbacconfigv3.Principal_Set{
					Ids: []*rbacconfigv3.Principal{
						{Identifier: &rbacconfigv3.Principal_DirectRemoteIp{DirectRemoteIp: &corev3.CidrRange{
							AddressPrefix: "192.168.0.0", PrefixLen: wrapperspb.UInt32(16),
						}}},
						{Identifier: &rbacconfigv3.Principal_NotId{NotId: &rbacconfigv3.Principal{
							Identifier: &rbacconfigv3.Principal_Authenticated_{Authenticated: &rbacconfigv3.Principal_Authenticated{}},
						}}},
					},
				}}}},
			}},
		},
	}
	equal(t, "RBAC filter", &cfg, want)

	// A dry run is rendered as shadow rules only.
	cfg.Reset()
	if err := filters[2].GetTypedConfig().UnmarshalTo(&cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.GetStatPrefix() != "try-lockdown" || cfg.GetRules() != nil || cfg.GetShadowRules().GetAction() != rbacconfigv3.RBAC_ALLOW ||
		len(cfg.GetShadowRules().GetPolicies()) != 1 {
		t.Errorf("dry-run filter = %v", &cfg)
	}
}

func TestExamplePoliciesParses(t *testing.T) {
	path := filepath.Join("..", "..", "examples", "mesh-policies.yaml")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	m, err := mesh.Parse(path, data)
	if err != nil {
		t.Fatal(err)
	}
	counts := map[string]int{}
	for _, svc := range translated(t, m).State.Services {
		counts[svc.Name] = len(svc.Policies)
	}
	want := map[string]int{"shop/db:5432": 2, "shop/db:9187": 2, "shop/frontend:80": 2}
	if !reflect.DeepEqual(counts, want) {
		t.Errorf("policies per service = %v, want %v", counts, want)
	}
	var nodes []string
	for _, w := range m.Workloads {
		nodes = append(nodes, w.Name+"@"+w.Node)
	}
	if want := []string{"db-0@node-1", "frontend-0@node-1", "scraper-0@node-2"}; !reflect.DeepEqual(nodes, want) {
		t.Errorf("example workloads %v, want %v", nodes, want)
	}
}

// Rules are rendered by name, so their order in the file does not change
// what is served (nor its version).
func TestRenderPolicyRuleOrder(t *testing.T) {
	file := func(first, second string) []byte {
		return withPolicies(
			"      - name: p",
			"        rules:",
			"          - {name: "+first+", from: [{namespaces: ["+first+"]}]}",
			"          - {name: "+second+", from: [{namespaces: ["+second+"]}]}",
		)
	}
	a := mustParse(t, file("a", "b")).Resources()
	b := mustParse(t, file("b", "a")).Resources()
	am, bm := marshalAll(t, a), marshalAll(t, b)
	if len(am) != len(bm) {
		t.Fatalf("%d resources, then %d", len(am), len(bm))
	}
	for i := range am {
		if !bytes.Equal(am[i], bm[i]) {
			t.Errorf("resource %d marshals differently", i)
		}
	}
}
