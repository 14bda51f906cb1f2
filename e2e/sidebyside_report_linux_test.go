package e2e_test

import (
	"cmp"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
)

// sbControlPlane is the control-plane scale part of a side-by-side run.
type sbControlPlane struct {
	Services, Endpoints int
	FullSyncMS          []float64 // asking the control plane for the state → in force in the kernel maps
	FullSyncClientMS    []float64 // the control plane's first response → in force (Sluice's part)
	EndpointChangeMS    []float64 // the control plane sending one endpoint's change → in force
	RSSMiB, PeakRSSMiB  float64   // the agent holding the state
	// RSS's parts (agentMemory): private pages, the executable's pages,
	// BPF maps mapped into the process, the rest.
	AnonMiB, BinaryMiB, MappedMapsMiB, OtherMiB float64
	MapsMiB                                     float64 // its BPF maps (memlock)
}

// sbStat is the spread of a figure over the measured rounds.
type sbStat struct{ Min, Median, Max float64 }

func spread(v []float64) sbStat {
	if len(v) == 0 {
		return sbStat{}
	}
	v = slices.Clone(v)
	slices.Sort(v)
	return sbStat{Min: v[0], Median: v[len(v)/2], Max: v[len(v)-1]}
}

// spreadOf is the spread of v, nil when v is empty.
func spreadOf(v []float64) *sbStat {
	if len(v) == 0 {
		return nil
	}
	st := spread(v)
	return &st
}

// sbRow is one set-up's figures for a scenario, placement and size.
type sbRow struct {
	Scenario, Placement string
	Services            int
	Setup               string
	Rounds              int
	// Value is the main figure of each round: rr, the median round trip
	// (µs); bulk, Gbit/s; connect, connections per second.
	Value sbStat
	P99   *sbStat `json:",omitempty"` // rr and connect: the 99th percentile (µs) of each round
	// Ratio is each round's Value over direct's in the same round; for
	// rr a time ratio (lower is better), otherwise a rate ratio (higher
	// is better).
	Ratio    *sbStat `json:",omitempty"`
	P99Ratio *sbStat `json:",omitempty"`
	Stopped  string  `json:",omitempty"`
	// What one operation (a round trip, a MiB, a connection) cost, in
	// µs of CPU: the set-up's pods' (with the kernel's work for them), and
	// the Sluice agents';
	// BPF is the median µs per operation of each of Sluice's programs,
	// when the run recorded them.
	CPU   *sbStat            `json:",omitempty"`
	Agent *sbStat            `json:",omitempty"`
	BPF   map[string]float64 `json:",omitempty"`
}

type sbSummary struct{ Rows []sbRow }

// sbValue is a sample's main figure.
func sbValue(s sbSample) float64 {
	switch s.Scenario {
	case sbRR:
		return s.Load.P50
	case sbBulk:
		return float64(s.Load.Ops) * 8 / 1024 / s.Load.Seconds // MiB → Gbit (2^30 bits)
	default:
		return float64(s.Load.Ops) / s.Load.Seconds
	}
}

var sbSetupOrder = []string{sbDirect, sbIPTables, sbNFTables, sbSluice, sbSluiceFast}

// summarize groups the measured rounds (not the warm-ups) and pairs each
// round with direct's round of the same number.
func summarize(run sbRun) sbSummary {
	type key struct {
		scenario, placement string
		services            int
		setup               string
	}
	rounds := map[key]map[int]sbSample{}
	for _, s := range run.Samples {
		if s.Round == 0 {
			continue
		}
		k := key{s.Scenario, s.Placement, s.Services, s.Setup}
		if rounds[k] == nil {
			rounds[k] = map[int]sbSample{}
		}
		rounds[k][s.Round] = s
	}
	var sum sbSummary
	for k, byRound := range rounds {
		row := sbRow{Scenario: k.scenario, Placement: k.placement, Services: k.services, Setup: k.setup, Rounds: len(byRound)}
		direct := rounds[key{k.scenario, k.placement, k.services, sbDirect}]
		var values, p99s, ratios, p99Ratios, cpu, agent []float64
		bpf := map[string][]float64{}
		for r, s := range byRound {
			values = append(values, sbValue(s))
			if c := s.Cost; c != nil && s.Load.Ops > 0 {
				ops := float64(s.Load.Ops)
				cpu = append(cpu, c.CPU*1e6/ops)
				if s.Setup == sbSluice || s.Setup == sbSluiceFast {
					agent = append(agent, c.Agent*1e6/ops)
				}
				for name, p := range c.BPF {
					bpf[name] = append(bpf[name], float64(p.NS)/1e3/ops)
				}
			}
			if s.Scenario != sbBulk {
				p99s = append(p99s, s.Load.P99)
			}
			d, ok := direct[r]
			if !ok || k.setup == sbDirect {
				continue
			}
			ratios = append(ratios, sbValue(s)/sbValue(d))
			if s.Scenario == sbRR {
				p99Ratios = append(p99Ratios, s.Load.P99/d.Load.P99)
			}
		}
		row.Value = spread(values)
		row.P99, row.Ratio, row.P99Ratio = spreadOf(p99s), spreadOf(ratios), spreadOf(p99Ratios)
		row.CPU, row.Agent = spreadOf(cpu), spreadOf(agent)
		for name, v := range bpf {
			if row.BPF == nil {
				row.BPF = map[string]float64{}
			}
			row.BPF[name] = spread(v).Median
		}
		sum.Rows = append(sum.Rows, row)
	}
	for _, in := range run.Installs {
		if in.Stopped == "" {
			continue
		}
		for _, placement := range []string{sbCross, sbSame} {
			sum.Rows = append(sum.Rows, sbRow{Scenario: sbConnect, Placement: placement, Services: in.Services, Setup: in.Setup, Stopped: in.Stopped})
		}
	}
	slices.SortFunc(sum.Rows, func(a, b sbRow) int {
		return cmp.Or(cmp.Compare(a.Scenario, b.Scenario), cmp.Compare(a.Placement, b.Placement),
			cmp.Compare(a.Services, b.Services), cmp.Compare(slices.Index(sbSetupOrder, a.Setup), slices.Index(sbSetupOrder, b.Setup)))
	})
	return sum
}

func (sum sbSummary) find(scenario, placement string, services int, setup string) *sbRow {
	for i := range sum.Rows {
		r := &sum.Rows[i]
		if r.Scenario == scenario && r.Placement == placement && r.Services == services && r.Setup == setup {
			return r
		}
	}
	return nil
}

// writeSideBySide writes the Markdown report and the raw JSON, each if
// its path is set.
func writeSideBySide(run sbRun, sum sbSummary, mdPath, jsonPath string) error {
	if jsonPath != "" {
		data, err := json.MarshalIndent(struct {
			sbRun
			Summary sbSummary
		}{run, sum}, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(jsonPath, append(data, '\n'), 0o644); err != nil {
			return err
		}
	}
	if mdPath != "" {
		return os.WriteFile(mdPath, []byte(renderSideBySide(run, sum, jsonPath)), 0o644)
	}
	return nil
}

// readSideBySide reads the raw results writeSideBySide wrote.
func readSideBySide(path string) (sbRun, error) {
	var run sbRun
	data, err := os.ReadFile(path)
	if err != nil {
		return run, err
	}
	if err := json.Unmarshal(data, &run); err != nil {
		return run, fmt.Errorf("%s: %w", path, err)
	}
	return run, nil
}

func fmtStat(s sbStat, format string) string {
	return fmt.Sprintf(format+" ("+format+"–"+format+")", s.Median, s.Min, s.Max)
}

func fmtRatio(s *sbStat) string {
	if s == nil {
		return "1 (baseline)"
	}
	return fmtStat(*s, "%.2f")
}

// renderSideBySide is docs/benchmarks.md.
func renderSideBySide(run sbRun, sum sbSummary, jsonPath string) string {
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	w("# Benchmarks: Sluice side by side with no mesh and with kube-proxy\n\n")
	w("Generated by `make bench` (the side-by-side part: `go test ./e2e/ -run '^$' -bench '^BenchmarkSideBySide$' -benchtime 1x -timeout 90m -args -sidebyside.report docs/benchmarks.md -sidebyside.json docs/benchmarks.json`).\n")
	w("Every figure is the median over %d measured rounds, with the lowest and highest in brackets, after one warm-up round; ", run.Config.Rounds)
	w("ratios compare each round with the no-mesh round measured next to it, so machine noise hits both alike.")
	if jsonPath != "" {
		w(" Raw results: `%s`.", strings.TrimPrefix(jsonPath, "../"))
	}
	w("\n\n## The machine\n\n")
	keys := make([]string, 0, len(run.Machine))
	for k := range run.Machine {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		w("- %s: %s\n", k, run.Machine[k])
	}
	w("\n## Set-ups\n\n")
	w("Each set-up has two simulated nodes of its own: a node is a network namespace routing for its pods (as a host namespace does), and a cgroup subtree. ")
	w("The client pod dials:\n\n")
	w("- **direct**: the server pod's address. No mesh, no netfilter rules: the physical limit.\n")
	w("- **iptables**: a service VIP, translated by rules in the shape kube-proxy's iptables mode writes (KUBE-SERVICES → a chain per service port → endpoint chains picked with `statistic --mode random`), loaded with `iptables-restore` into the client's node. Conntrack tracks every connection.\n")
	w("- **nftables**: a service VIP, translated by rules in the shape of kube-proxy's nftables mode (one verdict-map lookup on address, protocol and port, a chain per service port, `numgen random` over endpoint chains), loaded with `nft -f`.\n")
	w("- **sluice**: a service VIP, translated at connect by Sluice's agents (one per node, standalone, flow records on, identity tagged in the TCP options), fast path off. **sluice-fast**: the same with the same-node fast path on for the client and the same-node server.\n\n")
	w("The measured services have one endpoint, the server pod (a workload of Sluice's mesh file has one IPv4 address, by which identity and the fast path know it); they sit in the middle of the tables, and the other services have two endpoints each that nothing answers at. ")
	w("kube-proxy's rules are loaded in the client's node only (a real cluster has them on every node). ")
	w("Each phase gets fresh network namespaces for client and server (no TIME_WAIT or socket state carries over), the servers close first, and the client node's conntrack table is flushed before it: every phase started with 0 conntrack entries")
	maxCT := 0
	for _, s := range run.Samples {
		maxCT = max(maxCT, s.Conntrack)
	}
	if maxCT > 0 {
		w(" except some, which started with up to %d", maxCT)
	}
	w(".\n")
	errs := map[string]int{}
	for _, s := range run.Samples {
		errs[s.Setup] += s.Load.Errors
	}
	var failed []string
	for _, name := range sbSetupOrder {
		if errs[name] > 0 {
			failed = append(failed, fmt.Sprintf("%s %d", name, errs[name]))
		}
	}
	if len(failed) == 0 {
		w("No connection or request failed in any phase.\n\n")
	} else {
		w("Failed connections or requests over all phases: %s.\n\n", strings.Join(failed, ", "))
	}

	w("## Round trip: 64-byte request and response on one connection\n\n")
	w("%d round trips per round; the table holds %d services. Lower is better; the ratio is time over no mesh's.\n\n", run.Config.RoundTrip, run.Config.Sizes[0])
	w("| placement | set-up | p50 µs | p99 µs | p50 ratio | p99 ratio |\n|---|---|---|---|---|---|\n")
	for _, r := range sum.Rows {
		if r.Scenario != sbRR {
			continue
		}
		p99 := ""
		if r.P99 != nil {
			p99 = fmtStat(*r.P99, "%.1f")
		}
		p99r := "1 (baseline)"
		if r.Setup != sbDirect {
			p99r = fmtRatio(r.P99Ratio)
		}
		w("| %s | %s | %s | %s | %s | %s |\n", r.Placement, r.Setup, fmtStat(r.Value, "%.1f"), p99, fmtRatio(r.Ratio), p99r)
	}
	w("\n## Bulk throughput: one connection\n\n%d MiB per round. Higher is better.\n\n", run.Config.BulkMiB)
	w("| placement | set-up | Gbit/s | ratio |\n|---|---|---|---|\n")
	for _, r := range sum.Rows {
		if r.Scenario == sbBulk {
			w("| %s | %s | %s | %s |\n", r.Placement, r.Setup, fmtStat(r.Value, "%.2f"), fmtRatio(r.Ratio))
		}
	}
	w("\n## Connection rate through a VIP\n\n")
	w("Connect, send 64 bytes, read the answer, the server closes; two connections at a time. Each set-up's count per round comes from its warm-up rate (about %s of work, at most %d connections). Higher is better; p99 is the time of one whole connection.\n\n", run.Config.ConnTime, run.Config.Conns)
	for _, placement := range []string{sbCross, sbSame} {
		w("### %s\n\n| services | set-up | connections/s | ratio | p99 µs |\n|---|---|---|---|---|\n", placement)
		for _, r := range sum.Rows {
			if r.Scenario != sbConnect || r.Placement != placement {
				continue
			}
			if r.Stopped != "" {
				w("| %d | %s | stopped: %s | | |\n", r.Services, r.Setup, r.Stopped)
				continue
			}
			p99 := ""
			if r.P99 != nil {
				p99 = fmt.Sprintf("%.0f", r.P99.Median)
			}
			w("| %d | %s | %s | %s | %s |\n", r.Services, r.Setup, fmtStat(r.Value, "%.0f"), fmtRatio(r.Ratio), p99)
		}
		w("\n")
	}
	w("### Putting the tables in place\n\n")
	w("iptables and nftables: the tool's run (`iptables-restore`, `nft -f`); sluice: from writing the mesh file to both agents reporting every VIP:port in force (includes up to 0.2 s of file polling).\n\n")
	w("| services | set-up | seconds |\n|---|---|---|\n")
	for _, in := range run.Installs {
		secs := fmt.Sprintf("%.2f", in.Seconds)
		if in.Stopped != "" {
			secs = "stopped: " + in.Stopped
		}
		w("| %d | %s | %s |\n", in.Services, in.Setup, secs)
	}
	if cp := run.ControlPlane; cp != nil {
		full, change := spread(cp.FullSyncMS), percentiles(cp.EndpointChangeMS)
		w("\n## Control-plane scale\n\n")
		w("%d services × %d endpoints from a go-control-plane xDS server (Delta) in its own process.\n\n", cp.Services, cp.Endpoints)
		w("| measure | value |\n|---|---|\n")
		if len(cp.FullSyncClientMS) > 0 {
			w("| full state, from the control plane's first response → in force in the kernel maps | %s ms over %d runs |\n", fmtStat(spread(cp.FullSyncClientMS), "%.0f"), len(cp.FullSyncClientMS))
		}
		w("| full state, from asking the control plane (includes go-control-plane hashing the snapshot) → in force | %s ms over %d runs |\n", fmtStat(full, "%.0f"), len(cp.FullSyncMS))
		w("| one endpoint change, sent by the control plane → in force | p50 %.2f ms, p99 %.2f ms over %d changes |\n", change[0], change[1], len(cp.EndpointChangeMS))
		w("| agent resident memory holding the state | %.1f MiB (peak %.1f MiB) |\n", cp.RSSMiB, cp.PeakRSSMiB)
		if cp.AnonMiB > 0 {
			w("| … of which private (Go heap, stacks, runtime) | %.1f MiB |\n", cp.AnonMiB)
			w("| … of which the sluice executable's pages (shared by every process running it, reclaimable) | %.1f MiB |\n", cp.BinaryMiB)
			w("| … of which BPF maps mapped into the agent (the flow ring buffer, its data pages mapped twice; kernel memory, counted in the next row too) | %.1f MiB |\n", cp.MappedMapsMiB)
			w("| … of which other mappings (libc, vdso) | %.1f MiB |\n", cp.OtherMiB)
		}
		w("| BPF map memory (memlock) | %.1f MiB |\n", cp.MapsMiB)
	}
	renderCosts(w, run, sum)
	w("\n## Goals\n\n| goal | measured | |\n|---|---|---|\n")
	for _, g := range goals(run, sum) {
		mark := "met"
		if !g.met {
			mark = "**missed**"
		}
		w("| %s | %s | %s |\n", g.goal, g.measured, mark)
	}
	w("\nWhy a missed goal is missed, from profiles: [benchmark-analysis.md](benchmark-analysis.md).\n")
	return b.String()
}

// percentiles returns the p50 and p99 of v.
func percentiles(v []float64) [2]float64 {
	if len(v) == 0 {
		return [2]float64{}
	}
	v = slices.Clone(v)
	slices.Sort(v)
	at := func(q float64) float64 { return v[int(q*float64(len(v)-1))] }
	return [2]float64{at(0.5), at(0.99)}
}

type sbGoal struct {
	goal, measured string
	met            bool
}

// goals checks the figures against the goals the issues set.
func goals(run sbRun, sum sbSummary) []sbGoal {
	var out []sbGoal
	ratio := func(scenario, placement string, services int, setup string) (float64, bool) {
		r := sum.find(scenario, placement, services, setup)
		if r == nil || r.Ratio == nil {
			return 0, false
		}
		return r.Ratio.Median, true
	}
	if v, ok := ratio(sbRR, sbSame, run.Config.Sizes[0], sbSluiceFast); ok {
		out = append(out, sbGoal{"same-node round trip, fast path ≤ 0.75× no mesh (time)", fmt.Sprintf("%.2f×", v), v <= 0.75})
	}
	for _, c := range []struct{ placement, setup string }{{sbSame, sbSluiceFast}, {sbCross, sbSluice}} {
		if v, ok := ratio(sbBulk, c.placement, run.Config.Sizes[0], c.setup); ok {
			out = append(out, sbGoal{fmt.Sprintf("bulk throughput %s (%s) ≥ 1.0× no mesh", c.placement, c.setup), fmt.Sprintf("%.2f×", v), v >= 1.0})
		}
	}
	for _, placement := range []string{sbCross, sbSame} {
		worst, at, ok := 0.0, 0, false
		for _, n := range run.Config.Sizes {
			if v, found := ratio(sbConnect, placement, n, sbSluice); found && (!ok || v < worst) {
				worst, at, ok = v, n, true
			}
		}
		if ok {
			out = append(out, sbGoal{fmt.Sprintf("connection rate %s ≥ 0.95× no mesh at every service count", placement),
				fmt.Sprintf("lowest %.2f× (at %d services)", worst, at), worst >= 0.95})
		}
	}
	if cp := run.ControlPlane; cp != nil {
		if len(cp.FullSyncClientMS) > 0 {
			full := spread(cp.FullSyncClientMS)
			out = append(out, sbGoal{"10k × 10 state applied < 1 s (from the control plane's first response)", fmt.Sprintf("%.0f ms (median)", full.Median), full.Median < 1000})
		} else {
			full := spread(cp.FullSyncMS)
			out = append(out, sbGoal{"10k × 10 state applied < 1 s (measured from asking the control plane, its snapshot hashing included)", fmt.Sprintf("%.0f ms (median)", full.Median), full.Median < 1000})
		}
		p := percentiles(cp.EndpointChangeMS)
		out = append(out, sbGoal{"one-endpoint delta < 10 ms p99", fmt.Sprintf("%.2f ms", p[1]), p[1] < 10})
		out = append(out, sbGoal{"agent RSS < 64 MiB at 10k × 10", fmt.Sprintf("%.1f MiB", cp.RSSMiB), cp.RSSMiB < 64})
	}
	return out
}

// renderCosts writes what each operation cost the machine, where the run
// recorded it.
func renderCosts(w func(string, ...any), run sbRun, sum sbSummary) {
	withCost := false
	for _, r := range sum.Rows {
		withCost = withCost || r.CPU != nil
	}
	if !withCost {
		return
	}
	w("\n## Where the time goes\n\n")
	w("CPU time per operation (a round trip, a MiB, or a connection) during the client's run. *pods* is the CPU of the set-up's two nodes' cgroups, which hold the client and server pods: their processes and the kernel's work done on their behalf (system calls, the TCP/IP stack, netfilter, Sluice's BPF programs); the start-up of the client process is in it alike for every set-up. ")
	w("*over no mesh* is the difference of the medians. For Sluice, *agents* is the CPU its two agents' processes used besides (flow records, metrics)")
	if run.Config.BPFStats {
		w(", and *BPF* the run time of its BPF programs on both nodes (the kernel's statistics were on for this run, which adds two clock reads to every program run)")
	}
	w(". Figures in µs, medians over the rounds. ")
	w("*CPU-bound ratio* is the rate ratio to no mesh these costs predict where the cores are the limit, as they are for bulk transfers and connections two at a time on this machine: no mesh's pods CPU over the set-up's pods and agents CPU. The measured ratio is beside it.")
	if len(run.Config.AgentArgs) > 0 {
		w(" The agents ran with `%s`.", strings.Join(run.Config.AgentArgs, " "))
	}
	w("\n\n| scenario | placement | services | set-up | pods | over no mesh | agents | BPF | CPU-bound ratio | measured ratio |\n|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range sum.Rows {
		if r.CPU == nil {
			continue
		}
		over, agent, bound, measured := "", "", "", ""
		spent := r.CPU.Median
		if r.Agent != nil {
			agent = fmt.Sprintf("%.1f", r.Agent.Median)
			spent += r.Agent.Median
		}
		if d := sum.find(r.Scenario, r.Placement, r.Services, sbDirect); d != nil && d.CPU != nil && r.Setup != sbDirect {
			over = fmt.Sprintf("%+.1f", r.CPU.Median-d.CPU.Median)
			if r.Scenario != sbRR { // one round trip at a time waits more than it computes
				bound = fmt.Sprintf("%.2f", d.CPU.Median/spent)
			}
			if r.Ratio != nil {
				measured = fmt.Sprintf("%.2f", r.Ratio.Median)
			}
		}
		w("| %s | %s | %d | %s | %s | %s | %s | %s | %s | %s |\n", r.Scenario, r.Placement, r.Services, r.Setup, fmtStat(*r.CPU, "%.1f"), over, agent, fmtBPF(r.BPF), bound, measured)
	}
}

// fmtBPF gives the total of the programs' µs per operation and the
// programs that ran, the costliest first.
func fmtBPF(bpf map[string]float64) string {
	if len(bpf) == 0 {
		return ""
	}
	names := make([]string, 0, len(bpf))
	total := 0.0
	for name, v := range bpf {
		total += v
		if v > 0 {
			names = append(names, name)
		}
	}
	slices.SortFunc(names, func(a, b string) int { return cmp.Compare(bpf[b], bpf[a]) })
	parts := make([]string, len(names))
	for i, name := range names {
		parts[i] = fmt.Sprintf("%s %.2f", name, bpf[name])
	}
	return fmt.Sprintf("%.2f: %s", total, strings.Join(parts, ", "))
}
