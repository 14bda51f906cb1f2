package policy_test

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/sluice-mesh/sluice/dataplane/model"
	"github.com/sluice-mesh/sluice/dataplane/policy"
)

// BenchmarkCompile compiles policies for 100 services (10 endpoints each,
// every tenth sharing one with the next, 110 sets) against 1000
// identities, with principals that mix exact, prefix and suffix SPIFFE ID
// matches with CIDRs. BenchmarkCompileLarge is the scale the package is
// meant for: 500 services and 10,000 identities.
func BenchmarkCompile(b *testing.B) { benchmarkCompile(b, 100, 1000) }

func BenchmarkCompileLarge(b *testing.B) { benchmarkCompile(b, 500, 10_000) }

func benchmarkCompile(b *testing.B, nServices, nIdentities int) {
	services, names := benchInput(nServices, nIdentities)
	tb, err := policy.Compile(services, names)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := policy.Compile(services, names); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(tb.Sets), "sets")
	b.ReportMetric(float64(len(tb.Classes)), "classes")
	b.ReportMetric(float64(len(tb.Verdicts)), "verdicts")
	b.ReportMetric(float64(len(tb.Rules)), "rules")
}

// benchInput: identities spread over 50 namespaces of 20 service accounts
// and more; service k admits its own namespace, five named clients and
// monitoring from 10.0.0.0/8, denies one service account everywhere and
// non-mesh sources outside its lab range, and dry-runs a stricter rule.
func benchInput(nServices, nIdentities int) ([]model.Service, map[uint32]string) {
	names := make(map[uint32]string, nIdentities)
	spiffe := func(i int) string {
		return fmt.Sprintf("spiffe://cluster.local/ns/ns%d/sa/sa%d", i%50, i/50)
	}
	for i := range nIdentities {
		names[uint32(1000+i*7)] = spiffe(i)
	}
	nsMatch := func(ns int) model.Principal {
		return authenticated(model.MatchPrefix, fmt.Sprintf("spiffe://cluster.local/ns/ns%d/", ns))
	}
	services := make([]model.Service, nServices)
	for k := range services {
		var endpoints []string
		for e := range 10 {
			endpoints = append(endpoints, fmt.Sprintf("10.%d.%d.%d:8080", 128+k/250, k%250, e+1))
		}
		if k%10 == 0 && k+1 < nServices {
			endpoints = append(endpoints, fmt.Sprintf("10.%d.%d.1:8080", 128+(k+1)/250, (k+1)%250))
		}
		clients := make([]model.Principal, 5)
		for c := range clients {
			clients[c] = exact(spiffe((k*5 + c) % nIdentities))
		}
		lab := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(k % 128), 0, 0}), 16).String()
		services[k] = service(fmt.Sprintf("svc-%03d", k), fmt.Sprintf("10.96.%d.%d", k/250, k%250+1), 80, endpoints,
			model.Policy{
				Name: "allow",
				Rules: allowRules(
					rule("same-namespace", nsMatch(k%50)),
					rule("clients", or(clients...)),
					rule("monitoring", and(authenticated(model.MatchSuffix, "/sa/sa19"), sourceIP("10.0.0.0/8"))),
					rule("lab", and(sourceIP(lab), not(nsMatch((k+1)%50)))),
				),
				Shadow: allowRules(rule("strict", or(clients...))),
			},
			model.Policy{
				Name:       "deny",
				Continuous: true,
				Rules: denyRules(
					rule("banned", authenticated(model.MatchSuffix, "/sa/sa13")),
					rule("outside", and(not(sourceIP("10.0.0.0/8")), not(authenticated(model.MatchNone, "")))),
				),
			},
		)
	}
	return services, names
}
