package dataplane_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/dataplane"
	"github.com/sluice-mesh/sluice/dataplane/model"
)

// BenchmarkConnectRequest measures connect + one request/response + close
// through a service VIP against the same directly to the backend's address.
// Both run interleaved in one loop (alternating which goes first), so machine
// noise hits them alike; the vip/direct metric is the cost ratio.
func BenchmarkConnectRequest(b *testing.B) {
	r := newRig(b, dataplane.Capacity{})
	backend := r.tcpBackend("a", "127.0.0.1:0")
	r.apply(model.State{Services: []model.Service{svc("bench", "10.96.9.1", 80, model.TCP, backend)}})
	direct := r.backends["a"].String()
	const vip = "10.96.9.1:80"

	one := func(addr string) time.Duration {
		start := time.Now()
		if _, _, err := request(addr); err != nil {
			b.Fatalf("request to %s: %v", addr, err)
		}
		return time.Since(start)
	}
	// Warm up both paths (listener backlog, ARP-free loopback, caches).
	for range 200 {
		one(direct)
		one(vip)
	}
	var viaDirect, viaVIP time.Duration
	b.ResetTimer()
	for i := range b.N {
		if i%2 == 0 {
			viaDirect += one(direct)
			viaVIP += one(vip)
		} else {
			viaVIP += one(vip)
			viaDirect += one(direct)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(viaDirect.Nanoseconds())/float64(b.N), "direct-ns/op")
	b.ReportMetric(float64(viaVIP.Nanoseconds())/float64(b.N), "vip-ns/op")
	b.ReportMetric(float64(viaVIP)/float64(viaDirect), "vip/direct")
}

// BenchmarkConnectPolicy measures what L4 authorization adds to a
// connection: a request through a VIP whose backend has an ALLOW policy
// (decided at connect, tagged, decided again at the destination) against
// one through a VIP whose backend has none, alternated in the same run.
func BenchmarkConnectPolicy(b *testing.B) {
	r := newRig(b, dataplane.Capacity{})
	plain := r.tcpBackend("plain", "127.0.0.1:0")
	guarded := r.tcpBackend("guarded", "127.0.0.1:0")
	cg, err := dataplane.CgroupID(r.managed)
	if err != nil {
		b.Fatal(err)
	}
	const self, other = 10, 11
	names := map[uint32]string{self: "spiffe://cluster.local/ns/bench/sa/client", other: "spiffe://cluster.local/ns/bench/sa/other"}
	loopback := netip.MustParseAddr("127.0.0.1")
	policy := model.Policy{Name: "bench", Rules: &model.RuleSet{Action: model.Allow, Rules: []model.Rule{{
		Name:        "client",
		Principals:  []model.Principal{{Kind: model.PrincipalAuthenticated, Name: model.StringMatch{Kind: model.MatchExact, Value: names[self]}}},
		Permissions: []model.Permission{{Kind: model.PermissionAny}},
	}}}}
	guardedSvc := svc("guarded", "10.96.9.2", 80, model.TCP, guarded)
	guardedSvc.Policies = []model.Policy{policy}
	r.apply(model.State{
		Services: []model.Service{svc("plain", "10.96.9.1", 80, model.TCP, plain), guardedSvc},
		Identities: model.Identities{
			Names:   names,
			Cgroups: []model.CgroupIdentity{{CgroupID: cg, Identity: self, Addrs: []netip.Addr{loopback}}},
			Addrs:   []model.AddrIdentity{{Addr: loopback, Identity: self}},
		},
	})
	one := func(addr string) time.Duration {
		start := time.Now()
		if _, _, err := request(addr); err != nil {
			b.Fatalf("request to %s: %v", addr, err)
		}
		return time.Since(start)
	}
	for range 200 {
		one("10.96.9.1:80")
		one("10.96.9.2:80")
	}
	before, err := r.dp.Stats()
	if err != nil {
		b.Fatal(err)
	}
	var viaPlain, viaGuarded time.Duration
	b.ResetTimer()
	for i := range b.N {
		if i%2 == 0 {
			viaPlain += one("10.96.9.1:80")
			viaGuarded += one("10.96.9.2:80")
		} else {
			viaGuarded += one("10.96.9.2:80")
			viaPlain += one("10.96.9.1:80")
		}
	}
	b.StopTimer()
	after, err := r.dp.Stats()
	if err != nil {
		b.Fatal(err)
	}
	// The guarded path must really have been decided at both ends.
	if got := after.TagTrusted - before.TagTrusted; got < uint64(b.N) {
		b.Fatalf("%d trusted tags at the destination for %d guarded requests", got, b.N)
	}
	b.ReportMetric(float64(viaPlain.Nanoseconds())/float64(b.N), "plain-ns/op")
	b.ReportMetric(float64(viaGuarded.Nanoseconds())/float64(b.N), "policy-ns/op")
	b.ReportMetric(float64(viaGuarded)/float64(viaPlain), "policy/plain")
}
