package e2e_test

import (
	"math"
	"strings"
	"testing"

	"github.com/sluice-mesh/sluice/e2e/probe"
)

// summarize pairs each round with direct's round of the same number, skips
// warm-ups, and keeps stopped modes as rows; goals judge the medians.
func TestSideBySideSummary(t *testing.T) {
	conn := func(setup string, round, ops int, secs float64) sbSample {
		return sbSample{Scenario: sbConnect, Placement: sbCross, Services: 2, Setup: setup, Round: round,
			Load: probe.Load{Ops: ops, Seconds: secs, P50: 100, P99: 300}}
	}
	run := sbRun{
		Config: sbConfig{Sizes: []int{2, 100}, Rounds: 3},
		Samples: []sbSample{
			conn(sbDirect, 0, 1, 1), conn(sbSluice, 0, 1000, 1), // warm-ups: ignored
			conn(sbDirect, 1, 1000, 1), conn(sbSluice, 1, 900, 1), // 0.9
			conn(sbDirect, 2, 2000, 1), conn(sbSluice, 2, 2000, 1), // 1.0
			conn(sbDirect, 3, 500, 1), conn(sbSluice, 3, 400, 1), // 0.8
			{Scenario: sbRR, Placement: sbSame, Services: 2, Setup: sbDirect, Round: 1, Load: probe.Load{Ops: 10, Seconds: 1, P50: 20, P99: 40}},
			{Scenario: sbRR, Placement: sbSame, Services: 2, Setup: sbSluiceFast, Round: 1, Load: probe.Load{Ops: 10, Seconds: 1, P50: 14, P99: 50}},
		},
		Installs: []sbInstall{{Setup: sbNFTables, Services: 100, Stopped: "too slow"}},
	}
	sum := summarize(run)
	r := sum.find(sbConnect, sbCross, 2, sbSluice)
	if r == nil || r.Ratio == nil || r.Rounds != 3 {
		t.Fatalf("sluice connect row: %+v", r)
	}
	if want := (sbStat{Min: 0.8, Median: 0.9, Max: 1.0}); math.Abs(r.Ratio.Min-want.Min)+math.Abs(r.Ratio.Median-want.Median)+math.Abs(r.Ratio.Max-want.Max) > 1e-9 {
		t.Errorf("ratio %+v, want %+v", *r.Ratio, want)
	}
	if r.Value.Median != 900 {
		t.Errorf("median rate %v, want 900 connections/s", r.Value.Median)
	}
	if d := sum.find(sbConnect, sbCross, 2, sbDirect); d == nil || d.Ratio != nil {
		t.Errorf("direct has a ratio to itself: %+v", d)
	}
	rr := sum.find(sbRR, sbSame, 2, sbSluiceFast)
	if rr == nil || rr.Ratio == nil || math.Abs(rr.Ratio.Median-0.7) > 1e-9 || math.Abs(rr.P99Ratio.Median-1.25) > 1e-9 {
		t.Fatalf("rr row: %+v", rr)
	}
	if s := sum.find(sbConnect, sbSame, 100, sbNFTables); s == nil || s.Stopped != "too slow" {
		t.Errorf("stopped row: %+v", s)
	}
	gs := goals(run, sum)
	for _, g := range gs {
		switch {
		case strings.HasPrefix(g.goal, "same-node round trip"):
			if !g.met {
				t.Errorf("0.70× met the ≤ 0.75× goal: %+v", g)
			}
		case strings.HasPrefix(g.goal, "connection rate cross-node"):
			if g.met || !strings.Contains(g.measured, "0.90×") {
				t.Errorf("a 0.90× connection rate against a 0.95× goal: %+v", g)
			}
		}
	}
	if len(gs) != 2 { // only the goals with figures
		t.Errorf("goals: %+v", gs)
	}
	md := renderSideBySide(run, sum, "x.json")
	for _, want := range []string{"| 2 | sluice | 900 (400–2000) | 0.90 (0.80–1.00) | 300 |", "stopped: too slow", "**missed**", "No connection or request failed"} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q", want)
		}
	}
}

// The cost figures are per operation, medians over the measured rounds,
// and Sluice's extra is taken against direct's median.
func TestSideBySideCosts(t *testing.T) {
	conn := func(setup string, round, ops int, cpu, agent float64, bpf map[string]sbProgCost) sbSample {
		return sbSample{Scenario: sbConnect, Placement: sbCross, Services: 2, Setup: setup, Round: round,
			Load: probe.Load{Ops: ops, Seconds: 1}, Cost: &sbCost{CPU: cpu, Agent: agent, BPF: bpf}}
	}
	prog := func(ns uint64) map[string]sbProgCost {
		return map[string]sbProgCost{"sl_connect4": {Runs: 1000, NS: ns}, "sl_sockops": {Runs: 5000, NS: 3 * ns}}
	}
	run := sbRun{
		Config: sbConfig{Sizes: []int{2}, Rounds: 3, BPFStats: true},
		Samples: []sbSample{
			conn(sbDirect, 0, 1000, 9, 0, nil), conn(sbSluice, 0, 1000, 9, 9, prog(9e9)), // warm-ups: ignored
			conn(sbDirect, 1, 1000, 0.100, 0, nil), conn(sbSluice, 1, 1000, 0.130, 0.010, prog(1e6)),
			conn(sbDirect, 2, 2000, 0.220, 0, nil), conn(sbSluice, 2, 2000, 0.300, 0.030, prog(4e6)),
			conn(sbDirect, 3, 500, 0.060, 0, nil), conn(sbSluice, 3, 500, 0.070, 0.010, prog(1e6)),
		},
	}
	sum := summarize(run)
	d, s := sum.find(sbConnect, sbCross, 2, sbDirect), sum.find(sbConnect, sbCross, 2, sbSluice)
	if d == nil || s == nil || d.CPU == nil || s.CPU == nil || s.Agent == nil {
		t.Fatalf("rows without costs: %+v %+v", d, s)
	}
	near := func(got, want float64) bool { return math.Abs(got-want) < 1e-6 }
	// direct: 100, 110, 120 µs per connection; sluice: 130, 150, 140.
	if !near(d.CPU.Median, 110) || !near(s.CPU.Median, 140) || !near(s.CPU.Min, 130) || !near(s.CPU.Max, 150) {
		t.Errorf("CPU per connection: direct %+v, sluice %+v", *d.CPU, *s.CPU)
	}
	if d.Agent != nil || !near(s.Agent.Median, 15) { // 10, 15, 20
		t.Errorf("agents' CPU per connection: direct %+v, sluice %+v", d.Agent, *s.Agent)
	}
	if !near(s.BPF["sl_connect4"], 2) || !near(s.BPF["sl_sockops"], 6) { // 1, 2, 2 and 3, 6, 6
		t.Errorf("BPF µs per connection: %v", s.BPF)
	}
	md := renderSideBySide(run, sum, "")
	for _, want := range []string{"## Where the time goes", "| connect | cross-node | 2 | sluice | 140.0 (130.0–150.0) | +30.0 | 15.0 | 8.00: sl_sockops 6.00, sl_connect4 2.00 | 0.71 | 1.00 |"} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	if strings.Contains(renderSideBySide(sbRun{Config: run.Config}, summarize(sbRun{Config: run.Config}), ""), "Where the time goes") {
		t.Error("a run without costs has a costs section")
	}
}
