package dataplane_test

import (
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/dataplane/model"
	"github.com/sluice-mesh/sluice/e2e/cluster"
	"github.com/sluice-mesh/sluice/e2e/probe"
)

// sameNode is the set-up of the same-node benchmarks: on node a (Sluice),
// fast and srv with the fast path on, normal with it off; on node p (no
// Sluice) pod lo, whose client and servers talk over its loopback. Each
// pod with servers runs an echo on 7000, a sink on 7001 and a oneshot
// server on 7002.
func sameNode(b *testing.B) *mesh {
	m := newMesh(b)
	m.node("a", true)
	m.node("p", false)
	m.pod("a", "fast", "10.244.1.10")
	m.pod("a", "normal", "10.244.1.11")
	m.pod("a", "srv", "10.244.1.12")
	m.pod("p", "lo", "10.244.9.10")
	for _, pod := range []string{"srv", "lo"} {
		m.echoOn(pod, "0.0.0.0:7000", "read", "")
		m.echoOn(pod, "0.0.0.0:7001", "sink", "")
		m.echoOn(pod, "0.0.0.0:7002", "oneshot", "")
	}
	ids := map[string]uint32{"fast": idFrontend, "normal": idBatch, "srv": idDB}
	s := model.State{Identities: m.identities("a", ids, ids)}
	for i := range s.Identities.Cgroups {
		cg := &s.Identities.Cgroups[i]
		cg.FastPath = cg.Path != m.pods["normal"].Cgroup
	}
	m.apply("a", s)
	return m
}

// interleave runs each path's load once per round, rotating which goes
// first, and returns each path's total seconds and ops.
func interleave(b *testing.B, rounds int, kind string, count int, paths map[string]func() (*probeTarget, string)) map[string]probe.Load {
	totals := map[string]probe.Load{}
	names := []string{}
	for n := range paths {
		names = append(names, n)
	}
	for r := range rounds {
		for i := range names {
			name := names[(i+r)%len(names)]
			t, addr := paths[name]()
			l, err := probe.RunLoad(t.pod, kind, addr, count)
			if err != nil || l.Errors > 0 {
				b.Fatalf("%s %s: %+v %v", name, kind, l, err)
			}
			tot := totals[name]
			tot.Ops += l.Ops
			tot.Seconds += l.Seconds
			totals[name] = tot
		}
	}
	return totals
}

type probeTarget struct{ pod *cluster.Pod }

// BenchmarkSameNode compares, interleaved in one run: request/response
// round trips of 64 bytes on one connection, and bulk throughput, through
// the fast path, the normal path between two pods of a Sluice node, and
// plain loopback TCP in one pod of a node without Sluice. Metrics:
// rr-fast/loopback and bulk-fast/loopback (ratios of time per round trip
// and of throughput), with the absolute figures.
func BenchmarkSameNode(b *testing.B) {
	m := sameNode(b)
	srv := m.pods["srv"].IP.String()
	paths := func(port string) map[string]func() (*probeTarget, string) {
		return map[string]func() (*probeTarget, string){
			"fast":     func() (*probeTarget, string) { return &probeTarget{m.pods["fast"]}, srv + ":" + port },
			"normal":   func() (*probeTarget, string) { return &probeTarget{m.pods["normal"]}, srv + ":" + port },
			"loopback": func() (*probeTarget, string) { return &probeTarget{m.pods["lo"]}, "127.0.0.1:" + port },
		}
	}
	before := m.stats("a")
	b.ResetTimer()
	rr := interleave(b, 3, "rr", max(b.N, 2000), paths("7000"))
	bulk := interleave(b, 3, "bulk", 256, paths("7001"))
	b.StopTimer()
	after := m.stats("a")
	if after.FastBytes == before.FastBytes {
		b.Fatal("the fast path carried nothing")
	}
	us := func(l probe.Load) float64 { return l.Seconds / float64(l.Ops) * 1e6 }
	gbps := func(l probe.Load) float64 { return float64(l.Ops) * 8 / 1024 / l.Seconds }
	b.ReportMetric(us(rr["fast"]), "µs/rr-fast")
	b.ReportMetric(us(rr["normal"]), "µs/rr-normal")
	b.ReportMetric(us(rr["loopback"]), "µs/rr-loopback")
	b.ReportMetric(us(rr["fast"])/us(rr["loopback"]), "rr-fast/loopback")
	b.ReportMetric(gbps(bulk["fast"]), "Gbit/s-fast")
	b.ReportMetric(gbps(bulk["normal"]), "Gbit/s-normal")
	b.ReportMetric(gbps(bulk["loopback"]), "Gbit/s-loopback")
	b.ReportMetric(gbps(bulk["fast"])/gbps(bulk["loopback"]), "bulk-fast/loopback")
}

// BenchmarkFlowExport compares the connection rate (connect, one request,
// the server closes) between two pods of a node with flow events on and
// off, interleaved, and checks that every flow event was read or counted
// lost: 4 per connection (open and close at both ends).
func BenchmarkFlowExport(b *testing.B) {
	m := sameNode(b)
	dp := m.nodes["a"].dp
	target := m.pods["srv"].IP.String() + ":7002"
	conns := max(b.N, 5000)
	var on, off probe.Load
	var events, lost uint64
	b.ResetTimer()
	for r := range 6 {
		flows := r%2 == 0
		if err := dp.SetFlows(flows); err != nil {
			b.Fatal(err)
		}
		before, seen := m.stats("a"), m.nodes["a"].flows.Load()
		l, err := probe.RunLoad(m.pods["normal"], "connect", target, conns)
		if err != nil || l.Errors > 0 {
			b.Fatalf("connect load: %+v %v", l, err)
		}
		if !flows {
			off.Ops, off.Seconds = off.Ops+l.Ops, off.Seconds+l.Seconds
			continue
		}
		on.Ops, on.Seconds = on.Ops+l.Ops, on.Seconds+l.Seconds
		// Events still in flight arrive within a moment; the closes of
		// the server's sockets come when the client has acknowledged.
		want := uint64(4 * conns)
		deadline := time.Now().Add(5 * time.Second)
		var got, gone uint64
		for {
			got = m.nodes["a"].flows.Load() - seen
			gone = m.stats("a").EventsLost - before.EventsLost
			if got+gone >= want || time.Now().After(deadline) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if got+gone != want {
			b.Fatalf("%d flow events read and %d counted lost, want %d in all", got, gone, want)
		}
		events += got
		lost += gone
	}
	b.StopTimer()
	if err := dp.SetFlows(false); err != nil {
		b.Fatal(err)
	}
	rate := func(l probe.Load) float64 { return float64(l.Ops) / l.Seconds }
	b.ReportMetric(rate(on), "conn/s-flows")
	b.ReportMetric(rate(off), "conn/s-noflows")
	b.ReportMetric(rate(on)/rate(off), "flows/noflows")
	b.ReportMetric(float64(lost), "events-lost")
	b.ReportMetric(float64(events), "events-read")
}
