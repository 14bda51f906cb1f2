package dataplane_test

import (
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
