package dataplane_test

import (
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"

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
		if cg.Path != m.pods["normal"].Cgroup {
			cg.FastPath = model.FastPathOn
		}
	}
	m.apply("a", s)
	return m
}

// interleave runs each path's load once per round, rotating which goes
// first, and returns each path's loads, one per round.
func interleave(b *testing.B, rounds int, kind string, count int, paths map[string]func() (*probeTarget, string)) map[string][]probe.Load {
	loads := map[string][]probe.Load{}
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
			loads[name] = append(loads[name], l)
		}
	}
	return loads
}

// total adds up loads.
func total(loads []probe.Load) probe.Load {
	var t probe.Load
	for _, l := range loads {
		t.Ops += l.Ops
		t.Seconds += l.Seconds
	}
	return t
}

// medianRatio is the median over rounds of f(a's round) / f(b's round).
func medianRatio(a, b []probe.Load, f func(probe.Load) float64) float64 {
	r := make([]float64, len(a))
	for i := range a {
		r[i] = f(a[i]) / f(b[i])
	}
	slices.Sort(r)
	return r[len(r)/2]
}

type probeTarget struct{ pod *cluster.Pod }

// BenchmarkSameNode compares, interleaved in one run: request/response
// round trips of 64 bytes on one connection, and bulk throughput (rounds of
// 1 GiB: shorter transfers measure start-up, not the path), 5 rounds each, through
// the fast path, the normal path between two pods of a Sluice node, and
// plain loopback TCP in one pod of a node without Sluice. Metrics:
// rr-fast/loopback and bulk-fast/loopback (ratios of time per round trip
// and of throughput, over all rounds and the median of the rounds'), with
// the absolute figures.
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
	rrs := interleave(b, 5, "rr", max(b.N, 2000), paths("7000"))
	bulks := interleave(b, 5, "bulk", 1024, paths("7001"))
	b.StopTimer()
	after := m.stats("a")
	if after.FastBytes == before.FastBytes {
		b.Fatal("the fast path carried nothing")
	}
	us := func(l probe.Load) float64 { return l.Seconds / float64(l.Ops) * 1e6 }
	gbps := func(l probe.Load) float64 { return float64(l.Ops) * 8 / 1024 / l.Seconds }
	rr := map[string]probe.Load{}
	bulk := map[string]probe.Load{}
	for name := range rrs {
		rr[name], bulk[name] = total(rrs[name]), total(bulks[name])
	}
	b.ReportMetric(us(rr["fast"]), "µs/rr-fast")
	b.ReportMetric(us(rr["normal"]), "µs/rr-normal")
	b.ReportMetric(us(rr["loopback"]), "µs/rr-loopback")
	b.ReportMetric(us(rr["fast"])/us(rr["loopback"]), "rr-fast/loopback")
	b.ReportMetric(medianRatio(rrs["fast"], rrs["loopback"], us), "rr-fast/loopback-median")
	b.ReportMetric(gbps(bulk["fast"]), "Gbit/s-fast")
	b.ReportMetric(gbps(bulk["normal"]), "Gbit/s-normal")
	b.ReportMetric(gbps(bulk["loopback"]), "Gbit/s-loopback")
	b.ReportMetric(gbps(bulk["fast"])/gbps(bulk["loopback"]), "bulk-fast/loopback")
	b.ReportMetric(medianRatio(bulks["fast"], bulks["loopback"], gbps), "bulk-fast/loopback-median")
}

// BenchmarkFlowExport compares the connection rate (connect, one request,
// the server closes) between two pods of a node with flow events on and
// off, in short rounds of 2,000 connections taken in pairs (on then off,
// then off then on) so that the machine's drift falls on both alike, and
// checks that every flow event was read or counted lost: 4 per connection
// (open and close at both ends). Metrics: flows/noflows over all rounds,
// the median and spread of the pairs' ratios, and the machine's busy CPU
// time per connection (user, system and interrupts, from /proc/stat), which
// a shared machine's drift disturbs less than the rate.
func BenchmarkFlowExport(b *testing.B) {
	m := sameNode(b)
	dp := m.nodes["a"].dp
	target := m.pods["srv"].IP.String() + ":7002"
	const perRound = 2000
	pairs := max((b.N+perRound-1)/perRound, 3)
	var on, off probe.Load
	var events, lost uint64
	ratios := make([]float64, 0, pairs)
	var cpuOn, cpuOff float64 // busy CPU seconds of the machine
	rate := func(l probe.Load) float64 { return float64(l.Ops) / l.Seconds }
	// A first round warms up (page faults, caches); it is not counted.
	if l, err := probe.RunLoad(m.pods["normal"], "connect", target, perRound); err != nil || l.Errors > 0 {
		b.Fatalf("warm-up: %+v %v", l, err)
	}
	b.ResetTimer()
	for p := range pairs {
		var pair [2]probe.Load // off, on
		var cpu [2]float64
		for i := range 2 {
			flows := (i+p)%2 == 0
			if err := dp.SetFlows(flows); err != nil {
				b.Fatal(err)
			}
			before, seen := m.stats("a"), m.nodes["a"].flows.Load()
			busy := busySeconds(b)
			l, err := probe.RunLoad(m.pods["normal"], "connect", target, perRound)
			if err != nil || l.Errors > 0 {
				b.Fatalf("connect load: %+v %v", l, err)
			}
			if !flows {
				pair[0], cpu[0] = l, busySeconds(b)-busy
				continue
			}
			pair[1], cpu[1] = l, busySeconds(b)-busy
			want := uint64(4 * perRound)
			got, gone := m.flowEvents("a", seen, before.EventsLost, want)
			if got+gone != want {
				b.Fatalf("%d flow events read and %d counted lost, want %d in all", got, gone, want)
			}
			events += got
			lost += gone
		}
		off.Ops, off.Seconds = off.Ops+pair[0].Ops, off.Seconds+pair[0].Seconds
		on.Ops, on.Seconds = on.Ops+pair[1].Ops, on.Seconds+pair[1].Seconds
		ratios = append(ratios, rate(pair[1])/rate(pair[0]))
		cpuOff, cpuOn = cpuOff+cpu[0], cpuOn+cpu[1]
	}
	b.StopTimer()
	if err := dp.SetFlows(false); err != nil {
		b.Fatal(err)
	}
	slices.Sort(ratios)
	b.ReportMetric(rate(on), "conn/s-flows")
	b.ReportMetric(rate(off), "conn/s-noflows")
	b.ReportMetric(rate(on)/rate(off), "flows/noflows")
	b.ReportMetric(ratios[len(ratios)/2], "flows/noflows-median")
	b.ReportMetric(ratios[0], "flows/noflows-min")
	b.ReportMetric(ratios[len(ratios)-1], "flows/noflows-max")
	b.ReportMetric(cpuOn/cpuOff, "cpu-flows/noflows")
	b.ReportMetric(cpuOn/float64(on.Ops)*1e6, "cpu-µs/conn-flows")
	b.ReportMetric(cpuOff/float64(off.Ops)*1e6, "cpu-µs/conn-noflows")
	b.ReportMetric(float64(lost), "events-lost")
	b.ReportMetric(float64(events), "events-read")
}

// busySeconds reads the CPU time the machine has spent busy (user, nice,
// system, irq, softirq) since boot, from /proc/stat.
func busySeconds(b *testing.B) float64 {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		b.Fatal(err)
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		b.Fatalf("/proc/stat: unexpected first line %q", line)
	}
	var ticks float64
	for _, i := range []int{1, 2, 3, 6, 7} {
		v, err := strconv.ParseFloat(f[i], 64)
		if err != nil {
			b.Fatalf("/proc/stat: %v", err)
		}
		ticks += v
	}
	return ticks / 100 // USER_HZ
}

// BenchmarkFastPathChurn opens and closes b.N connections between two
// pods with the fast path on (connect, one request, the server closes)
// and checks that every socket was registered and that nothing is left on
// the fast path afterwards: no socket in the sockhash, no byte counts.
// Run it with -benchtime 1000000x for the million-connection check. The
// server's network namespace keeps no TIME_WAIT sockets: the client's
// ports come round every few seconds, and a SYN that meets an old
// TIME_WAIT socket of the same 4-tuple may wait a second for its
// retransmission.
func BenchmarkFastPathChurn(b *testing.B) {
	m := sameNode(b)
	if out, err := exec.Command("ip", "netns", "exec", m.pods["srv"].NetNS, "sysctl", "-qw", "net.ipv4.tcp_max_tw_buckets=0").CombinedOutput(); err != nil {
		b.Fatalf("sysctl in the server's netns: %v: %s", err, out)
	}
	before := m.stats("a")
	b.ResetTimer()
	l, err := probe.RunLoad(m.pods["fast"], "connect", m.pods["srv"].IP.String()+":7002", b.N)
	if err != nil || l.Errors > 0 {
		b.Fatalf("connect load: %+v %v", l, err)
	}
	b.StopTimer()
	after := m.stats("a")
	if got := after.FastRegistered - before.FastRegistered; got != 2*uint64(b.N) {
		b.Errorf("%d sockets registered, want %d (both ends of %d connections)", got, 2*b.N, b.N)
	}
	sockets, counts := m.fastLeft("a")
	if sockets != 0 || counts != 0 {
		b.Errorf("after %d connections: %d sockets and %d byte counts left on the fast path", b.N, sockets, counts)
	}
	b.ReportMetric(float64(l.Ops)/l.Seconds, "conn/s")
	b.ReportMetric(float64(after.FastFull-before.FastFull), "full")
	b.ReportMetric(float64(sockets), "sockets-left")
	b.ReportMetric(float64(counts), "counts-left")
}
