package policy_test

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"

	"github.com/sluice-mesh/sluice/dataplane/model"
	"github.com/sluice-mesh/sluice/dataplane/policy"
)

// TestCompileAgreesWithReference compiles random small policies and checks
// that looking connections up in the tables, as the kernel does, gives what
// evaluating the model directly gives, for every destination, source
// address and identity of the input.
func TestCompileAgreesWithReference(t *testing.T) {
	runs := 3000
	if testing.Short() {
		runs = 300
	}
	for seed := range uint64(runs) {
		rng := rand.New(rand.NewPCG(seed, 1))
		services, names := randomInput(rng)
		tb, err := policy.Compile(services, names)
		if err != nil {
			t.Fatalf("seed %d: %v", seed, err)
		}
		checkInvariants(t, tb)
		if !checkAgainstReference(t, services, names, tb) {
			t.Fatalf("seed %d: tables\n%s", seed, dump(tb))
		}
	}
}

// Pools the random inputs draw from: SPIFFE IDs and matchers that overlap
// in several ways, nested and disjoint CIDRs of both families, and source
// addresses in each of their classes.
var (
	spiffePool = []string{frontend, backend, prom, admin, "spiffe://td/ns/ops/sa/grafana", "spiffe://other/ns/shop/sa/frontend"}
	matchPool  = []model.StringMatch{
		{},
		{Kind: model.MatchExact, Value: frontend},
		{Kind: model.MatchExact, Value: strings.ToUpper(backend), IgnoreCase: true},
		{Kind: model.MatchPrefix, Value: "spiffe://td/ns/shop/"},
		{Kind: model.MatchPrefix, Value: "spiffe://td/ns/ops/"},
		{Kind: model.MatchSuffix, Value: "/sa/frontend"},
		{Kind: model.MatchSuffix, Value: "/sa/admin", IgnoreCase: true},
		{Kind: model.MatchContains, Value: "shop"},
		{Kind: model.MatchNone, Value: "ignored"},
	}
	cidrPool = []string{
		"0.0.0.0/0", "10.0.0.0/8", "10.1.0.0/16", "10.1.0.0/24", "10.1.2.0/24", "10.1.2.3/32", "10.2.0.0/16", "192.168.1.0/24",
		"::/0", "fd00::/8", "fd00::/16", "fd00:1::/32", "fd00:1::5/128",
	}
	srcPool = []string{
		"10.1.0.9", "10.1.2.3", "10.1.2.4", "10.1.3.1", "10.2.0.1", "10.3.0.1", "192.168.1.5", "172.16.0.1",
		"fd00::9", "fd00:1::5", "fd00:1::6", "fd00:2::1", "2001:db8::1",
	}
	endpointPool = []string{"10.244.0.1:8080", "10.244.0.2:8080", "10.244.0.3:8080", "10.244.0.1:9090", "[fd00:244::1]:8080"}
)

func randomInput(rng *rand.Rand) ([]model.Service, map[uint32]string) {
	names := make(map[uint32]string)
	for range rng.IntN(6) {
		names[1+rng.Uint32N(20)] = spiffePool[rng.IntN(len(spiffePool))]
	}
	var services []model.Service
	for k := range 1 + rng.IntN(4) {
		s := model.Service{
			Name:     fmt.Sprintf("s%d", rng.IntN(100)*10+k), // distinct, in random order
			VIP:      netip.AddrFrom4([4]byte{10, 96, 0, byte(1 + rng.IntN(3))}),
			Port:     []uint16{80, 443}[rng.IntN(2)],
			Protocol: model.TCP,
		}
		if rng.IntN(8) == 0 {
			s.Protocol = model.UDP
		}
		var eps []model.Endpoint
		for _, e := range endpointPool {
			if rng.IntN(3) == 0 {
				eps = append(eps, endpoint(e))
			}
		}
		if rng.IntN(4) == 0 && len(eps) > 0 {
			cut := rng.IntN(len(eps))
			s.Splits = []model.Split{{Name: "a", Weight: 1, Endpoints: eps[:cut]}, {Name: "b", Weight: 1, Endpoints: eps[cut:]}}
		} else {
			s.Endpoints = eps
		}
		for p := range rng.IntN(3) {
			pol := model.Policy{Name: fmt.Sprintf("p%d", p), Monitor: rng.IntN(4) == 0, Continuous: rng.IntN(2) == 0}
			if rng.IntN(4) > 0 {
				pol.Rules = randomRuleSet(rng)
			}
			if rng.IntN(3) == 0 {
				pol.Shadow = randomRuleSet(rng)
			}
			s.Policies = append(s.Policies, pol)
		}
		services = append(services, s)
	}
	return services, names
}

func randomRuleSet(rng *rand.Rand) *model.RuleSet {
	rs := &model.RuleSet{Action: model.Action(rng.IntN(2))}
	for r := range rng.IntN(4) {
		rule := model.Rule{Name: fmt.Sprintf("r%d", r)}
		for range 1 + rng.IntN(2) {
			rule.Principals = append(rule.Principals, randomPrincipal(rng, 3))
		}
		for range 1 + rng.IntN(2) {
			rule.Permissions = append(rule.Permissions, randomPermission(rng, 2))
		}
		rs.Rules = append(rs.Rules, rule)
	}
	return rs
}

func randomPrincipal(rng *rand.Rand, depth int) model.Principal {
	kinds := 3
	if depth > 0 {
		kinds = 6
	}
	switch kind := model.PrincipalKind(rng.IntN(kinds)); kind {
	case model.PrincipalAny:
		return anyone
	case model.PrincipalAuthenticated:
		return model.Principal{Kind: kind, Name: matchPool[rng.IntN(len(matchPool))]}
	case model.PrincipalSourceIP:
		return sourceIP(cidrPool[rng.IntN(len(cidrPool))])
	case model.PrincipalNot:
		return not(randomPrincipal(rng, depth-1))
	default:
		p := model.Principal{Kind: kind}
		for range 1 + rng.IntN(3) {
			p.Ids = append(p.Ids, randomPrincipal(rng, depth-1))
		}
		return p
	}
}

func randomPermission(rng *rand.Rand, depth int) model.Permission {
	kinds := 3
	if depth > 0 {
		kinds = 6
	}
	switch kind := model.PermissionKind(rng.IntN(kinds)); kind {
	case model.PermissionAny:
		return anyPerm
	case model.PermissionPort:
		first := []uint16{1, 80, 81, 443}[rng.IntN(4)]
		return ports(first, first+[]uint16{0, 0, 400}[rng.IntN(3)])
	case model.PermissionIP:
		return destIP([]string{"10.96.0.0/16", "10.96.0.1/32", "10.96.0.2/31", "fd00::/8"}[rng.IntN(4)])
	case model.PermissionNot:
		return permNot(randomPermission(rng, depth-1))
	default:
		p := model.Permission{Kind: kind}
		for range 1 + rng.IntN(3) {
			p.Rules = append(p.Rules, randomPermission(rng, depth-1))
		}
		return p
	}
}

// checkAgainstReference compares lookups in tb with the reference
// evaluation of services for every endpoint of the input (and one that is
// in none), every source of srcPool and of tb's classes, and every identity.
func checkAgainstReference(t testing.TB, services []model.Service, names map[uint32]string, tb *policy.Tables) bool {
	t.Helper()
	dsts := []netip.AddrPort{netip.MustParseAddrPort("10.244.9.9:8080")}
	for i := range services {
		for _, pool := range services[i].Pools() {
			for _, e := range pool.Endpoints {
				dsts = append(dsts, netip.AddrPortFrom(e.Addr, e.Port))
			}
		}
	}
	var srcs []netip.Addr
	for _, s := range srcPool {
		srcs = append(srcs, netip.MustParseAddr(s))
	}
	for _, c := range tb.Classes {
		srcs = append(srcs, c.Prefix.Addr())
	}
	ids := []uint32{0}
	for id := range names {
		ids = append(ids, id)
	}
	ok := true
	for _, dst := range dsts {
		for _, src := range srcs {
			for _, id := range ids {
				want, wantOK := reference(services, names, dst, src, id)
				v, gotOK := lookup(t, tb, dst, src, id)
				if wantOK != gotOK {
					t.Errorf("%s from %s identity %d: policy found %v, want %v", dst, src, id, gotOK, wantOK)
					ok = false
					continue
				}
				if got := named(t, tb, v); got != want {
					t.Errorf("%s from %s identity %d:\n got %+v\nwant %+v", dst, src, id, got, want)
					ok = false
				}
			}
		}
	}
	return ok
}

// checkInvariants checks what the kernel and the caller rely on, whatever
// the input: sorted tables, dense ids, an identity-0 verdict for every
// (set, class), no stored verdict equal to its fallback, rule references in
// range and distinct rule keys.
func checkInvariants(t testing.TB, tb *policy.Tables) {
	t.Helper()
	classes := make([]uint32, tb.Sets+1) // classes per set
	for i, c := range tb.Classes {
		if c.Set < 1 || int(c.Set) > tb.Sets {
			t.Fatalf("class %+v: set out of range", c)
		}
		if i > 0 {
			p := tb.Classes[i-1]
			if cmp.Or(cmp.Compare(p.Set, c.Set), p.Prefix.Compare(c.Prefix)) >= 0 {
				t.Fatalf("classes %+v, %+v: not sorted", p, c)
			}
		}
		if c.Prefix != c.Prefix.Masked() {
			t.Fatalf("class %+v: not masked", c)
		}
		classes[c.Set]++
		if c.Class != classes[c.Set] {
			t.Fatalf("class %+v: want id %d", c, classes[c.Set])
		}
	}
	next := uint32(1)
	for i, d := range tb.Dests {
		if i > 0 {
			p := tb.Dests[i-1]
			if cmp.Or(p.Addr.Compare(d.Addr), cmp.Compare(p.Port, d.Port)) >= 0 {
				t.Fatalf("dests %+v, %+v: not sorted", p, d)
			}
		}
		switch {
		case d.Set == next:
			next++
		case d.Set < 1 || d.Set > next:
			t.Fatalf("dest %+v: set ids not in order of first appearance", d)
		}
		if d.HasCIDR != (classes[d.Set] > 0) {
			t.Fatalf("dest %+v: HasCIDR wrong, set has %d classes", d, classes[d.Set])
		}
	}
	if int(next-1) != tb.Sets {
		t.Fatalf("dests use %d sets, Sets is %d", next-1, tb.Sets)
	}
	type key struct{ set, class uint32 }
	fallback := make(map[key]policy.Verdict)
	for i, v := range tb.Verdicts {
		if i > 0 {
			p := tb.Verdicts[i-1]
			if cmp.Or(cmp.Compare(p.Set, v.Set), cmp.Compare(p.Class, v.Class), cmp.Compare(p.Identity, v.Identity)) >= 0 {
				t.Fatalf("verdicts %+v, %+v: not sorted", p, v)
			}
		}
		if v.Set < 1 || int(v.Set) > tb.Sets || v.Class > classes[v.Set] {
			t.Fatalf("verdict %+v: set or class out of range", v)
		}
		if int(v.Rule) > len(tb.Rules) || int(v.ShadowRule) > len(tb.Rules) {
			t.Fatalf("verdict %+v: rule out of range (%d rules)", v, len(tb.Rules))
		}
		if (v.Shadow == policy.ShadowNone) != (v.ShadowRule == 0) || v.Terminate && !v.Deny {
			t.Fatalf("verdict %+v: inconsistent", v)
		}
		k := key{v.Set, v.Class}
		if v.Identity == 0 {
			fallback[k] = v
			continue
		}
		f, ok := fallback[k]
		if !ok {
			t.Fatalf("verdict %+v: no identity-0 verdict before it", v)
		}
		f.Identity = v.Identity
		if f == v {
			t.Fatalf("verdict %+v: stored though equal to identity 0's", v)
		}
	}
	for set := uint32(1); int(set) <= tb.Sets; set++ {
		for c := uint32(0); c <= classes[set]; c++ {
			if _, ok := fallback[key{set, c}]; !ok {
				t.Fatalf("set %d class %d: no identity-0 verdict", set, c)
			}
		}
	}
	keys := make(map[string]bool, len(tb.Rules))
	for _, r := range tb.Rules {
		if keys[r.Key()] {
			t.Fatalf("rule key %q twice", r.Key())
		}
		keys[r.Key()] = true
	}
}

// dump prints tables one entry a line, for failure messages.
func dump(tb *policy.Tables) string {
	if tb == nil {
		return "<nil>"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "sets: %d\n", tb.Sets)
	for _, d := range tb.Dests {
		fmt.Fprintf(&b, "dest %+v\n", d)
	}
	for _, c := range tb.Classes {
		fmt.Fprintf(&b, "class %+v\n", c)
	}
	for i, r := range tb.Rules {
		fmt.Fprintf(&b, "rule %d %s %+v\n", i+1, r.Key(), r)
	}
	for _, v := range tb.Verdicts {
		fmt.Fprintf(&b, "verdict %+v\n", v)
	}
	return b.String()
}
