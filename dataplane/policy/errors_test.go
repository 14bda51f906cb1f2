package policy_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/dataplane/model"
	"github.com/sluice-mesh/sluice/dataplane/policy"
)

func TestCompileErrors(t *testing.T) {
	const where = `service "web" (10.96.0.10:80/TCP) policy "authz" rules rule "r": `
	// one compiles a service "web" whose policy "authz" has one ALLOW rule
	// "r" with principal p and permission q.
	one := func(p model.Principal, q model.Permission) []model.Service {
		return []model.Service{service("web", "10.96.0.10", 80, []string{"10.244.1.1:8080"},
			model.Policy{Name: "authz", Rules: allowRules(rule("r", p, q))})}
	}
	deep := func(n int) model.Principal {
		p := anyone
		for range n - 1 {
			p = not(p)
		}
		return p
	}
	withPolicies := func(policies ...model.Policy) []model.Service {
		return []model.Service{service("web", "10.96.0.10", 80, []string{"10.244.1.1:8080"}, policies...)}
	}
	for _, tc := range []struct {
		name     string
		services []model.Service
		want     string // the error message
	}{
		{"NOT of two principals", one(and(anyone, model.Principal{Kind: model.PrincipalNot, Ids: []model.Principal{anyone, anyone}}), anyPerm),
			where + "principals[0].ids[1]: NOT needs exactly one principal, has 2"},
		{"NOT of no principal", one(model.Principal{Kind: model.PrincipalNot}, anyPerm),
			where + "principals[0]: NOT needs exactly one principal, has 0"},
		{"empty AND of principals", one(model.Principal{Kind: model.PrincipalAnd}, anyPerm),
			where + "principals[0]: AND or OR of no principals"},
		{"empty OR of principals", one(or(anyone, model.Principal{Kind: model.PrincipalOr}), anyPerm),
			where + "principals[0].ids[1]: AND or OR of no principals"},
		{"empty AND of permissions", one(anyone, permOr(anyPerm, model.Permission{Kind: model.PermissionAnd})),
			where + "permissions[0].rules[1]: AND or OR of no permissions"},
		{"NOT of two permissions", one(anyone, model.Permission{Kind: model.PermissionNot, Rules: []model.Permission{anyPerm, anyPerm}}),
			where + "permissions[0]: NOT needs exactly one permission, has 2"},
		{"port range backwards", one(anyone, ports(90, 80)),
			where + "permissions[0]: port range 90-80 ends before it starts"},
		{"missing source CIDR", one(model.Principal{Kind: model.PrincipalSourceIP}, anyPerm),
			where + "principals[0]: invalid or missing CIDR"},
		{"unmasked source CIDR", one(model.Principal{Kind: model.PrincipalSourceIP, CIDR: netip.MustParsePrefix("10.1.2.3/16")}, anyPerm),
			where + "principals[0]: CIDR 10.1.2.3/16 has bits set after its prefix length; use 10.1.0.0/16"},
		{"unmasked destination CIDR", one(anyone, model.Permission{Kind: model.PermissionIP, CIDR: netip.MustParsePrefix("10.96.0.10/16")}),
			where + "permissions[0]: CIDR 10.96.0.10/16 has bits set after its prefix length; use 10.96.0.0/16"},
		{"IPv4-mapped CIDR", one(sourceIP("::ffff:10.0.0.0/104"), anyPerm),
			where + "principals[0]: CIDR ::ffff:10.0.0.0/104 is IPv4-mapped IPv6, which no IPv4 address matches; use 10.0.0.0/8"},
		{"unknown principal kind", one(model.Principal{Kind: 9}, anyPerm),
			where + "principals[0]: unknown principal kind 9"},
		{"unknown permission kind", one(anyone, model.Permission{Kind: 9}),
			where + "permissions[0]: unknown permission kind 9"},
		{"header principal", one(model.Principal{Kind: model.PrincipalHeader, Header: model.HeaderMatch{Name: "x-user", Present: true}}, anyPerm),
			where + "principals[0]: a header principal needs an HTTP request; it belongs in an L7 service's HTTP policy, not in an L4 policy, which is decided at connect"},
		{"header permission", one(anyone, model.Permission{Kind: model.PermissionHeader, Header: model.HeaderMatch{Name: ":method", Value: model.StringMatch{Kind: model.MatchExact, Value: "GET"}}}),
			where + "permissions[0]: a header permission needs an HTTP request; it belongs in an L7 service's HTTP policy, not in an L4 policy, which is decided at connect"},
		{"path permission deep in a rule", one(anyone, permOr(anyPerm, model.Permission{Kind: model.PermissionNot, Rules: []model.Permission{{Kind: model.PermissionPath, Path: model.StringMatch{Kind: model.MatchPrefix, Value: "/admin"}}}})),
			where + "permissions[0].rules[1].rules[0]: a path permission needs an HTTP request; it belongs in an L7 service's HTTP policy, not in an L4 policy, which is decided at connect"},
		{"unknown string match", one(authenticated(9, "x"), anyPerm),
			where + "principals[0]: unknown string match kind 9"},
		{"too deep", one(deep(65), anyPerm),
			where + "principals[0]: nested more than 64 deep"},
		{"rule without name", withPolicies(model.Policy{Name: "authz", Rules: allowRules(rule("", anyone))}),
			`service "web" (10.96.0.10:80/TCP) policy "authz" rules rule #0: rule has no name; name it, it is counted under its name`},
		{"duplicate rule names", withPolicies(model.Policy{Name: "authz", Rules: allowRules(rule("a", anyone), rule("b", anyone), rule("a", anyone))}),
			`service "web" (10.96.0.10:80/TCP) policy "authz" rules rule "a": name already used by rule 0 of the same rule set`},
		{"duplicate shadow rule names", withPolicies(model.Policy{Name: "authz", Rules: allowRules(rule("a", anyone)), Shadow: denyRules(rule("b", anyone), rule("b", anyone))}),
			`service "web" (10.96.0.10:80/TCP) policy "authz" shadow rules rule "b": name already used by rule 0 of the same rule set`},
		{"rule without principals", withPolicies(model.Policy{Name: "authz", Rules: allowRules(model.Rule{Name: "r", Permissions: []model.Permission{anyPerm}})}),
			where + "rule has no principals, so it can match nothing; add one (Any for every source)"},
		{"rule without permissions", withPolicies(model.Policy{Name: "authz", Rules: allowRules(model.Rule{Name: "r", Principals: []model.Principal{anyone}})}),
			where + "rule has no permissions, so it can match nothing; add one (Any for every destination)"},
		{"unknown action", withPolicies(model.Policy{Name: "authz", Rules: &model.RuleSet{Action: 7}}),
			`service "web" (10.96.0.10:80/TCP) policy "authz" rules: unknown action 7; use ALLOW or DENY`},
		{"policy without name", withPolicies(model.Policy{Rules: allowRules()}),
			`service "web" (10.96.0.10:80/TCP) policy #0: policy has no name; name it, its rules are counted under it`},
		{"duplicate policy names", withPolicies(model.Policy{Name: "authz"}, model.Policy{Name: "authz"}),
			`service "web" (10.96.0.10:80/TCP) policy "authz": name already used by policy 0; rename one, their rules are counted under it`},
		{"service with policies without name", []model.Service{service("", "10.96.0.10", 80, nil, model.Policy{Name: "authz"})},
			`service #0 (10.96.0.10:80/TCP): a service with policies needs a name, which its rules are counted under`},
		{"services with policies share a name", []model.Service{
			service("web", "10.96.0.10", 80, nil, model.Policy{Name: "authz"}),
			service("web", "10.96.0.11", 80, nil, model.Policy{Name: "authz"}),
		}, `service "web" (10.96.0.11:80/TCP): name already used by service "web" (10.96.0.10:80/TCP); services with policies need distinct names, which their rules are counted under`},
		{"endpoint without address", []model.Service{{Name: "web", VIP: netip.MustParseAddr("10.96.0.10"), Port: 80, Protocol: model.TCP,
			Endpoints: []model.Endpoint{{Port: 8080}}, Policies: []model.Policy{{Name: "authz"}}}},
			`service "web" (10.96.0.10:80/TCP) endpoint 0 of pool "web": missing address`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tb, err := policy.Compile(tc.services, mesh)
			if err == nil {
				t.Fatalf("no error; tables\n%s", dump(tb))
			}
			if !errors.Is(err, policy.ErrInvalid) || !errors.Is(err, model.ErrInvalidState) {
				t.Errorf("error %q is not ErrInvalid and ErrInvalidState", err)
			}
			if err.Error() != tc.want {
				t.Errorf("error\n%q\nwant\n%q", err, tc.want)
			}
		})
	}

	if _, err := policy.Compile(one(deep(64), anyPerm), mesh); err != nil {
		t.Errorf("64 deep: %v", err)
	}

	_, err := policy.Compile(nil, map[uint32]string{0: frontend})
	const want = "identity 0: 0 is the unknown identity and cannot name a SPIFFE ID"
	if !errors.Is(err, policy.ErrInvalid) || err.Error() != want {
		t.Errorf("identity 0 named: error %v, want %q", err, want)
	}
}

// TestCompileHostile feeds Compile inputs built to exhaust it: principals
// and permissions that contain themselves, and shared subtrees that make a
// small input an exponentially large tree. Each must end quickly, with an
// error or with consistent tables.
func TestCompileHostile(t *testing.T) {
	selfNot := make([]model.Principal, 1)
	selfNot[0] = model.Principal{Kind: model.PrincipalNot, Ids: selfNot}
	selfOr := make([]model.Principal, 2)
	selfOr[0] = model.Principal{Kind: model.PrincipalOr, Ids: selfOr}
	selfOr[1] = selfOr[0]
	selfPerm := make([]model.Permission, 1)
	selfPerm[0] = model.Permission{Kind: model.PermissionAnd, Rules: selfPerm}

	// 2^40 paths through 80 principals.
	dag := []model.Principal{anyone, anyone}
	for range 40 {
		dag = []model.Principal{{Kind: model.PrincipalAnd, Ids: dag}, {Kind: model.PrincipalAnd, Ids: dag}}
	}
	permDAG := []model.Permission{anyPerm, anyPerm}
	for range 40 {
		permDAG = []model.Permission{{Kind: model.PermissionOr, Rules: permDAG}, {Kind: model.PermissionOr, Rules: permDAG}}
	}
	deepChain := anyone
	for range 100_000 {
		deepChain = not(deepChain)
	}
	wide := make([]model.Principal, 70_000)
	for i := range wide {
		wide[i] = anyone
	}

	one := func(principals []model.Principal, permissions []model.Permission) []model.Service {
		return []model.Service{service("web", "10.96.0.10", 80, []string{"10.244.1.1:8080"},
			model.Policy{Name: "authz", Rules: allowRules(model.Rule{Name: "r", Principals: principals, Permissions: permissions})})}
	}
	for _, tc := range []struct {
		name     string
		services []model.Service
	}{
		{"principal NOT of itself", one(selfNot, []model.Permission{anyPerm})},
		{"principal OR of itself twice", one(selfOr, []model.Permission{anyPerm})},
		{"permission AND of itself", one([]model.Principal{anyone}, selfPerm)},
		{"principal DAG", one(dag, []model.Permission{anyPerm})},
		{"permission DAG", one([]model.Principal{anyone}, permDAG)},
		{"chain of 100000 NOTs", one([]model.Principal{deepChain}, []model.Permission{anyPerm})},
		{"70000 principals", one(wide, []model.Permission{anyPerm})},
		{"nil everything", []model.Service{{Protocol: model.TCP, Policies: []model.Policy{{}}}}},
		{"zero VIP, zero endpoint port", []model.Service{{Name: "x", Protocol: model.TCP,
			Endpoints: []model.Endpoint{{Addr: netip.MustParseAddr("10.0.0.1")}},
			Policies:  []model.Policy{{Name: "p", Rules: allowRules(rule("r", anyone, destIP("0.0.0.0/0")))}}}}},
		{"zoned endpoint", []model.Service{service("x", "fd00::1", 80, []string{"[fe80::1%eth0]:80"},
			model.Policy{Name: "p", Rules: allowRules(rule("r", sourceIP("fe80::/10")))})}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			tb, err := policy.Compile(tc.services, mesh)
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("took %v", d)
			}
			if err != nil {
				if !errors.Is(err, policy.ErrInvalid) {
					t.Errorf("error %q is not ErrInvalid", err)
				}
				t.Log(err)
				return
			}
			checkInvariants(t, tb)
		})
	}
}

// TestCompileRandomBytes runs the fuzz target's check on random inputs, so
// that plain `go test` covers more than the seed corpus.
func TestCompileRandomBytes(t *testing.T) {
	runs := 5000
	if testing.Short() {
		runs = 500
	}
	rng := rand.New(rand.NewPCG(3, 3))
	data := make([]byte, 512)
	for range runs {
		for i := range data {
			data[i] = byte(rng.Uint32())
		}
		checkBytes(t, data[:rng.IntN(len(data))])
	}
}

func FuzzCompile(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{2, 1, 1, 0, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 0, 1, 3, 1, 1})
	f.Add([]byte("\x04\x01\x02\x03\x01\x01\x00\x03\x01\x01\x01\x01\x00\x02\x01\x01\x02\x03\x04\x05\x01\x02\x03"))
	f.Add([]byte(strings.Repeat("\x01\x03\x02", 40)))
	f.Fuzz(checkBytes)
}

// checkBytes compiles the input data describes. Compile must not panic; it
// either refuses the input with ErrInvalid, or its tables must be
// consistent and agree with the reference evaluation.
func checkBytes(t *testing.T, data []byte) {
	d := decoder{data: data}
	services, names := d.input()
	tb, err := policy.Compile(services, names)
	if err != nil {
		if !errors.Is(err, policy.ErrInvalid) {
			t.Fatalf("error %q is not ErrInvalid", err)
		}
		return
	}
	checkInvariants(t, tb)
	if !checkAgainstReference(t, services, names, tb) {
		t.Fatalf("input %q: tables\n%s", data, dump(tb))
	}
}

// decoder makes model input of bytes: mostly valid, so that the tables
// can be checked against the reference, but with every kind of malformation
// within reach (rare): out-of-range kinds and actions, empty and repeated
// names, backwards port ranges, unmasked, invalid and IPv4-mapped CIDRs,
// missing addresses, identity 0.
type decoder struct{ data []byte }

func (d *decoder) pick(n int) int {
	if len(d.data) == 0 {
		return 0
	}
	b := d.data[0]
	d.data = d.data[1:]
	return int(b) % n
}

// rare reports true one time in 32.
func (d *decoder) rare() bool { return len(d.data) > 0 && d.pick(32) == 0 }

// name returns prefix+k, or, rarely, an empty or repeated name.
func (d *decoder) name(prefix string, k int) string {
	if d.rare() {
		return []string{"", prefix + "0"}[d.pick(2)]
	}
	return fmt.Sprint(prefix, k)
}

var (
	fuzzBadCIDRs = []netip.Prefix{{}, netip.MustParsePrefix("10.1.2.3/16"), netip.MustParsePrefix("::ffff:10.0.0.0/104")}
	fuzzPorts    = []uint16{0, 80, 443, 65535}
	fuzzAddrs    = []netip.Addr{netip.MustParseAddr("10.244.0.1"), netip.MustParseAddr("10.244.0.2"), netip.MustParseAddr("fd00:244::1")}
	fuzzVIPs     = []netip.Addr{netip.MustParseAddr("10.96.0.1"), netip.MustParseAddr("10.96.0.2"), netip.MustParseAddr("fd00::1")}
)

func (d *decoder) cidr() netip.Prefix {
	if d.rare() {
		return fuzzBadCIDRs[d.pick(len(fuzzBadCIDRs))]
	}
	return netip.MustParsePrefix(cidrPool[d.pick(len(cidrPool))])
}

func (d *decoder) input() ([]model.Service, map[uint32]string) {
	names := make(map[uint32]string)
	for range d.pick(6) {
		id := uint32(1 + d.pick(7))
		if d.rare() {
			id = 0
		}
		names[id] = spiffePool[d.pick(len(spiffePool))]
	}
	var services []model.Service
	for k := range 1 + d.pick(3) {
		s := model.Service{
			Name:     d.name("s", k),
			VIP:      fuzzVIPs[d.pick(len(fuzzVIPs))],
			Port:     fuzzPorts[d.pick(len(fuzzPorts))],
			Protocol: []model.Protocol{model.TCP, model.TCP, model.TCP, model.UDP}[d.pick(4)],
		}
		for range d.pick(4) {
			e := model.Endpoint{Addr: fuzzAddrs[d.pick(len(fuzzAddrs))], Port: fuzzPorts[d.pick(len(fuzzPorts))]}
			if d.rare() {
				e.Addr = netip.Addr{}
			}
			s.Endpoints = append(s.Endpoints, e)
		}
		for k := range d.pick(3) {
			p := model.Policy{Name: d.name("p", k), Monitor: d.pick(4) == 0, Continuous: d.pick(2) == 0}
			if d.pick(4) > 0 {
				p.Rules = d.ruleSet()
			}
			if d.pick(3) == 0 {
				p.Shadow = d.ruleSet()
			}
			s.Policies = append(s.Policies, p)
		}
		services = append(services, s)
	}
	return services, names
}

func (d *decoder) ruleSet() *model.RuleSet {
	rs := &model.RuleSet{Action: model.Action(d.pick(2))}
	if d.rare() {
		rs.Action = 2
	}
	for k := range d.pick(4) {
		r := model.Rule{Name: d.name("r", k)}
		n, m := 1+d.pick(2), 1+d.pick(2)
		if d.rare() {
			n, m = d.pick(2), d.pick(2)
		}
		for range n {
			r.Principals = append(r.Principals, d.principal())
		}
		for range m {
			r.Permissions = append(r.Permissions, d.permission())
		}
		rs.Rules = append(rs.Rules, r)
	}
	return rs
}

// operands returns how many operands an AND, OR (and) or NOT has: none
// once the data is used up, so that the input stays finite.
func (d *decoder) operands(and bool) int {
	switch {
	case len(d.data) == 0:
		return 0
	case d.rare():
		return d.pick(3)
	case and:
		return 1 + d.pick(3)
	}
	return 1
}

func (d *decoder) principal() model.Principal {
	p := model.Principal{Kind: model.PrincipalKind(d.pick(6))}
	if d.rare() {
		p.Kind = model.PrincipalKind(6 + d.pick(2))
	}
	switch p.Kind {
	case model.PrincipalAuthenticated:
		p.Name = matchPool[d.pick(len(matchPool))]
		if d.rare() {
			p.Name.Kind = 7
		}
	case model.PrincipalSourceIP:
		p.CIDR = d.cidr()
	case model.PrincipalAnd, model.PrincipalOr, model.PrincipalNot:
		for range d.operands(p.Kind != model.PrincipalNot) {
			p.Ids = append(p.Ids, d.principal())
		}
	}
	return p
}

func (d *decoder) permission() model.Permission {
	p := model.Permission{Kind: model.PermissionKind(d.pick(6))}
	if d.rare() {
		p.Kind = model.PermissionKind(6 + d.pick(2))
	}
	switch p.Kind {
	case model.PermissionPort:
		p.Port, p.PortEnd = fuzzPorts[d.pick(len(fuzzPorts))], fuzzPorts[d.pick(len(fuzzPorts))]
		if p.Port > p.PortEnd && !d.rare() {
			p.Port, p.PortEnd = p.PortEnd, p.Port
		}
	case model.PermissionIP:
		p.CIDR = d.cidr()
	case model.PermissionAnd, model.PermissionOr, model.PermissionNot:
		for range d.operands(p.Kind != model.PermissionNot) {
			p.Rules = append(p.Rules, d.permission())
		}
	}
	return p
}
