package e2e_test

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/e2e/cluster"
	"github.com/sluice-mesh/sluice/e2e/kubeproxy"
	"github.com/sluice-mesh/sluice/e2e/probe"
	"github.com/sluice-mesh/sluice/e2e/testenv"
)

// The side-by-side benchmark (make bench, docs/benchmarks.md) measures, in
// one run and interleaved, the same traffic through four set-ups of the
// simulated cluster:
//
//   - direct: the client dials the server pod's address (no mesh);
//   - iptables, nftables: the client dials a service VIP that kube-proxy's
//     rules, in the shape of its iptables or nftables mode, translate in
//     the client's node namespace (package kubeproxy);
//   - sluice: the client dials the VIP and Sluice's agents translate it at
//     connect; sluice-fast is the same with the same-node fast path on.
//
// Each set-up has two routed nodes of its own (cluster.AddRoutedNode), so
// packets cross a node's namespace as on a real node, and the set-ups do
// not share any netfilter or BPF state. Every measurement ("phase") runs in
// fresh network namespaces (Pod.Renew) for the client and server pods, with
// the client node's conntrack table flushed, so nothing one phase leaves
// behind (TIME_WAIT, conntrack entries) meets the next; the servers close
// connections first.
var (
	sbReport = flag.String("sidebyside.report", "", "side-by-side benchmark: write the Markdown report to this file (a relative path is taken from the repository's root)")
	sbJSON   = flag.String("sidebyside.json", "", "side-by-side benchmark: write the raw results as JSON to this file (a relative path is taken from the repository's root)")
	sbSizes  = flag.String("sidebyside.sizes", "2,1000,10000,100000", "side-by-side benchmark: services in the tables for the connection-rate runs")
	sbRounds = flag.Int("sidebyside.rounds", 9, "side-by-side benchmark: measured rounds per figure, after one warm-up round")
	sbLimit  = flag.Duration("sidebyside.load-limit", 3*time.Minute, "side-by-side benchmark: a kube-proxy mode whose rules take longer to load stops at that size")
	sbFrom   = flag.String("sidebyside.from", "", "side-by-side benchmark: measure nothing, render the report from this raw JSON file (relative to the repository's root)")
	sbCP     = flag.Bool("sidebyside.control-plane", true, "side-by-side benchmark: also measure control-plane scale (10,000 services × 10 endpoints)")
	sbOnly   = flag.String("sidebyside.setups", strings.Join(sbSetupOrder, ","), "side-by-side benchmark: the set-ups to measure (direct is always measured: it is the baseline)")
	sbArgs   = flag.String("sidebyside.agent-args", "", "side-by-side benchmark: more flags for the Sluice agents, space-separated (e.g. --flows=false)")
	sbScen   = flag.String("sidebyside.scenarios", "rr,bulk,connect", "side-by-side benchmark: the scenarios to measure")
	sbStats  = flag.Bool("sidebyside.bpf-stats", false, "side-by-side benchmark: record the run time of each of Sluice's BPF programs per phase (the kernel's statistics cost each program run two clock reads)")
)

// Set-up names, in the order of the report.
const (
	sbDirect     = "direct"
	sbIPTables   = "iptables"
	sbNFTables   = "nftables"
	sbSluice     = "sluice"
	sbSluiceFast = "sluice-fast"
)

// Scenarios and placements.
const (
	sbRR      = "rr"      // 64-byte request/response on one connection
	sbBulk    = "bulk"    // one connection writing MiB to a sink
	sbConnect = "connect" // connect, one request, close
	sbSame    = "same-node"
	sbCross   = "cross-node"
)

var (
	sbPodCIDR  = netip.MustParsePrefix("10.244.0.0/16")
	sbVIPSame  = netip.MustParseAddr("10.96.0.10")
	sbVIPCross = netip.MustParseAddr("10.96.0.11")
	// The port each scenario's server listens on (and its service port).
	sbPorts = map[string]uint16{sbRR: 7000, sbBulk: 7001, sbConnect: 7002}
	// The echo role's mode for each scenario's server.
	sbServerMode = map[string]string{sbRR: "read", sbBulk: "sink", sbConnect: "oneshot"}
)

// sbConfig sizes a run.
type sbConfig struct {
	Sizes     []int         // services in the tables, connection-rate runs
	Rounds    int           // measured rounds, after one warm-up round
	RoundTrip int           // round trips per rr phase
	BulkMiB   int           // MiB per bulk phase
	Conns     int           // the most connections per connect phase
	ConnTime  time.Duration // what a connect phase aims to last (its count comes from the warm-up's rate)
	LoadLimit time.Duration
	Setups    []string `json:",omitempty"` // the set-ups measured; all when empty
	Scenarios []string `json:",omitempty"` // the scenarios measured; all when empty
	AgentArgs []string `json:",omitempty"` // more flags for the Sluice agents
	BPFStats  bool     `json:",omitempty"` // per-program BPF run time recorded
}

// sbSetup is one set-up: its client pods and server pods, on its nodes.
type sbSetup struct {
	Name   string
	mode   kubeproxy.Mode // iptables and nftables only
	nodes  [2]*cluster.Node
	client *cluster.Pod
	server map[string]*cluster.Pod // by placement
	agents []*cluster.Agent        // sluice and sluice-fast
	// stopped says why a kube-proxy mode measures no further sizes.
	stopped string
}

// sbSample is one phase's measurement.
type sbSample struct {
	Scenario  string
	Placement string
	Services  int
	Setup     string
	Round     int // 0 is the warm-up
	Load      probe.Load
	Conntrack int     // entries in the client node's conntrack table when the phase started
	Cost      *sbCost `json:",omitempty"`
}

// sbInstall is how long putting a table size in place took.
type sbInstall struct {
	Setup    string
	Services int
	Seconds  float64
	Stopped  string `json:",omitempty"`
}

// sbRun is a whole run's raw results.
type sbRun struct {
	Machine      map[string]string
	Config       sbConfig
	Samples      []sbSample
	Installs     []sbInstall
	ControlPlane *sbControlPlane `json:",omitempty"`
}

type sbHarness struct {
	tb     testing.TB
	cfg    sbConfig
	c      *cluster.Cluster
	bin    string
	mesh   *cluster.MeshFile
	setups map[string]*sbSetup
	order  []string // every set-up name
	run    sbRun
}

// newSideBySide builds the set-ups on a new cluster, with the largest size
// in mind for Sluice's map capacities.
func newSideBySide(tb testing.TB, cfg sbConfig, bin string) *sbHarness {
	testenv.RequirePrivileged(tb)
	for _, tool := range []string{"iptables-restore", "nft", "conntrack"} {
		testenv.Tool(tb, tool)
	}
	c, err := cluster.New()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := c.Close(); err != nil {
			tb.Error(err)
		}
		if left, err := cluster.Leftovers(c.ID); err != nil || len(left) > 0 {
			tb.Errorf("left behind: %v %v", left, err)
		}
	})
	h := &sbHarness{tb: tb, cfg: cfg, c: c, bin: bin, setups: map[string]*sbSetup{}}
	h.run.Config = cfg
	pod := func(n *cluster.Node, name string, subnet, host byte) *cluster.Pod {
		p, err := n.AddPod(name, netip.AddrFrom4([4]byte{10, 244, subnet, host}))
		if err != nil {
			tb.Fatal(err)
		}
		return p
	}
	for i, name := range []string{sbDirect, sbIPTables, sbNFTables, sbSluice} {
		s := &sbSetup{Name: name, server: map[string]*cluster.Pod{}}
		for j := range s.nodes {
			if s.nodes[j], err = c.AddRoutedNode(fmt.Sprintf("%s-%d", name, j+1)); err != nil {
				tb.Fatal(err)
			}
		}
		local, remote := byte(10+2*i), byte(11+2*i)
		s.client = pod(s.nodes[0], name+"-cli", local, 10)
		// The server pods are the endpoints of the measured services.
		s.server[sbSame] = pod(s.nodes[0], name+"-srv1", local, 20)
		s.server[sbCross] = pod(s.nodes[1], name+"-srv2", remote, 20)
		switch name {
		case sbIPTables:
			s.mode = kubeproxy.IPTables
		case sbNFTables:
			s.mode = kubeproxy.NFTables
		}
		h.setups[name] = s
		h.order = append(h.order, name)
		if name == sbSluice {
			fast := *s
			fast.Name = sbSluiceFast
			fast.client = pod(s.nodes[0], "sluice-fast-cli", local, 11)
			h.setups[sbSluiceFast] = &fast
			h.order = append(h.order, sbSluiceFast)
		}
	}
	if len(cfg.Setups) > 0 {
		for _, name := range h.order {
			if name != sbDirect && !slices.Contains(cfg.Setups, name) {
				h.setups[name].stopped = "not selected"
			}
		}
	}
	h.startSluice()
	return h
}

// startSluice starts the agents of the sluice nodes, with two services.
func (h *sbHarness) startSluice() {
	s, fast := h.setups[sbSluice], h.setups[sbSluiceFast]
	on, off := true, false
	workload := func(p *cluster.Pod, fp *bool) cluster.Workload {
		w := p.Workload("bench", p.Name)
		w.FastPath = fp
		return w
	}
	m := cluster.Mesh{TrustDomain: "cluster.local", Workloads: []cluster.Workload{
		workload(s.client, &off), workload(fast.client, &on),
		workload(s.server[sbSame], &on), workload(s.server[sbCross], nil),
	}}
	var err error
	h.mesh, err = cluster.WriteMesh(filepath.Join(h.c.Dir, "mesh.yaml"), m)
	if err != nil {
		h.tb.Fatal(err)
	}
	biggest := 2
	for _, n := range h.cfg.Sizes {
		biggest = max(biggest, n)
	}
	for _, n := range s.nodes {
		a, err := n.StartAgent(cluster.AgentConfig{Binary: h.bin, Mesh: h.mesh, Args: append([]string{
			"--log-level", "warn",
			"--max-services", strconv.Itoa(biggest + 64), "--max-backends", strconv.Itoa(2*biggest + 64),
		}, h.cfg.AgentArgs...)})
		if err != nil {
			h.tb.Fatal(err)
		}
		s.agents = append(s.agents, a)
	}
	fast.agents = s.agents
	h.install(h.cfg.Sizes[0])
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, a := range s.agents {
		if err := a.Ready(ctx); err != nil {
			h.tb.Fatal(err)
		}
	}
}

// services is the table of n services for set-up s: the two measured ones
// (same, cross), with a port per scenario and s's server pods as
// endpoints, in the middle of n-2 others whose two endpoints nothing
// answers at. kube-proxy gives each service port a chain of its own.
func (h *sbHarness) services(s *sbSetup, n int) []kubeproxy.Service {
	var targets []kubeproxy.Service
	for _, t := range []struct {
		name      string
		vip       netip.Addr
		placement string
	}{{"same", sbVIPSame, sbSame}, {"cross", sbVIPCross, sbCross}} {
		for _, scenario := range []string{sbRR, sbBulk, sbConnect} {
			port := sbPorts[scenario]
			svc := kubeproxy.Service{Namespace: "bench", Name: t.name, VIP: t.vip, Port: port, Protocol: "tcp"}
			svc.Endpoints = []netip.AddrPort{netip.AddrPortFrom(s.server[t.placement].IP, port)}
			targets = append(targets, svc)
		}
	}
	fillers := max(n-2, 0)
	out := make([]kubeproxy.Service, 0, fillers+len(targets))
	for i := range fillers {
		if i == fillers/2 {
			out = append(out, targets...)
		}
		vip := 10<<24 | 96<<16 | uint32(256+i)
		ep := 10<<24 | 250<<16 | uint32(2*i)
		out = append(out, kubeproxy.Service{
			Namespace: fmt.Sprintf("ns%d", i%100), Name: fmt.Sprintf("svc%d", i),
			VIP: sbAddr(vip), Port: 80, Protocol: "tcp",
			Endpoints: []netip.AddrPort{netip.AddrPortFrom(sbAddr(ep), 8080), netip.AddrPortFrom(sbAddr(ep+1), 8080)},
		})
	}
	if fillers == 0 {
		out = append(out, targets...)
	}
	return out
}

func sbAddr(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// install puts the table of n services in place in every set-up that still
// runs, and records how long each took.
func (h *sbHarness) install(n int) {
	for _, name := range []string{sbIPTables, sbNFTables} {
		s := h.setups[name]
		if s.stopped != "" {
			continue
		}
		// Loading grows at least linearly with the table: a size that
		// would take over the limit by that measure is not tried.
		if last := h.lastInstall(name); last != nil && last.Seconds*float64(n)/float64(last.Services) > h.cfg.LoadLimit.Seconds() {
			s.stopped = fmt.Sprintf("loading %d services would take at least %.0f s (%d took %.1f s), over the limit of %s",
				n, last.Seconds*float64(n)/float64(last.Services), last.Services, last.Seconds, h.cfg.LoadLimit)
			h.run.Installs = append(h.run.Installs, sbInstall{Setup: name, Services: n, Stopped: s.stopped})
			_ = kubeproxy.Flush(context.Background(), s.nodes[0].NetNS, s.mode)
			h.tb.Logf("%s: %s", name, s.stopped)
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), h.cfg.LoadLimit)
		took, err := kubeproxy.Load(ctx, s.nodes[0].NetNS, s.mode, h.services(s, n), sbPodCIDR)
		cancel()
		rec := sbInstall{Setup: name, Services: n, Seconds: took.Seconds()}
		if err != nil {
			if ctx.Err() == nil {
				h.tb.Fatalf("%s: load %d services: %v", name, n, err)
			}
			s.stopped = fmt.Sprintf("loading %d services took over %s", n, h.cfg.LoadLimit)
			rec.Stopped = s.stopped
			rec.Seconds = h.cfg.LoadLimit.Seconds()
			_ = kubeproxy.Flush(context.Background(), s.nodes[0].NetNS, s.mode)
		}
		h.run.Installs = append(h.run.Installs, rec)
		h.tb.Logf("%s: %d services in %.2fs %s", name, n, rec.Seconds, rec.Stopped)
	}
	if h.mesh == nil {
		return
	}
	// Sluice: the mesh file the agents' embedded control planes serve, in
	// force when both agents report every VIP:port entry.
	s := h.setups[sbSluice]
	svcs := h.services(s, n)
	start := time.Now()
	err := h.mesh.Update(func(m *cluster.Mesh) error {
		m.Services = sbMeshServices(svcs)
		return nil
	})
	if err != nil {
		h.tb.Fatal(err)
	}
	want := float64(len(svcs))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for _, a := range s.agents {
		for {
			page, err := a.Metrics(ctx)
			if err == nil {
				if got, err := cluster.MetricSum(page, "sluice_services"); err == nil && got == want {
					break
				}
			}
			if ctx.Err() != nil {
				h.tb.Fatalf("agent of %s did not apply %d services: %v\n%s", a.Node.Name, n, ctx.Err(), a.Log())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	rec := sbInstall{Setup: sbSluice, Services: n, Seconds: time.Since(start).Seconds()}
	h.run.Installs = append(h.run.Installs, rec)
	h.tb.Logf("sluice: %d services in %.2fs", n, rec.Seconds)
}

// lastInstall is the last table size set-up name put in place, or nil.
func (h *sbHarness) lastInstall(name string) *sbInstall {
	for i := len(h.run.Installs) - 1; i >= 0; i-- {
		if in := &h.run.Installs[i]; in.Setup == name && in.Stopped == "" {
			return in
		}
	}
	return nil
}

// sbMeshServices turns the per-port service list into mesh services.
func sbMeshServices(svcs []kubeproxy.Service) []cluster.Service {
	var out []cluster.Service
	index := map[string]int{}
	for _, s := range svcs {
		key := s.Namespace + "/" + s.Name
		i, ok := index[key]
		if !ok {
			i = len(out)
			index[key] = i
			out = append(out, cluster.Service{Name: s.Name, Namespace: s.Namespace, VIPs: []netip.Addr{s.VIP}})
			for _, ep := range s.Endpoints {
				out[i].Endpoints = append(out[i].Endpoints, cluster.Endpoint{Address: ep.Addr()})
			}
		}
		target := s.Port
		if len(s.Endpoints) > 0 {
			target = s.Endpoints[0].Port()
		}
		out[i].Ports = append(out[i].Ports, cluster.Port{Port: s.Port, TargetPort: target})
	}
	return out
}

// phase runs one measurement of set-up s in fresh network namespaces and
// returns it with the number of conntrack entries it started with and what
// it cost the machine.
func (h *sbHarness) phase(s *sbSetup, scenario, placement string, count int) (probe.Load, int, *sbCost, error) {
	srv := s.server[placement]
	for _, p := range []*cluster.Pod{s.client, srv} {
		if err := p.Renew(); err != nil {
			return probe.Load{}, 0, nil, err
		}
	}
	port := sbPorts[scenario]
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := srv.Command(ctx, os.Args[0])
	cmd.Env = append(os.Environ(), probe.RoleEnv+"=echo", probe.ListenEnv+"=0.0.0.0:"+strconv.Itoa(int(port)),
		probe.EchoModeEnv+"="+sbServerMode[scenario])
	var serverLog cluster.LogBuffer
	cmd.Stdout, cmd.Stderr = &serverLog, &serverLog
	if err := srv.Start(cmd); err != nil {
		return probe.Load{}, 0, nil, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	short, cancelWait := context.WithTimeout(ctx, 20*time.Second)
	err := srv.WaitListening(short, netip.AddrPortFrom(srv.IP, port).String())
	cancelWait()
	if err != nil {
		select {
		case e := <-exited:
			err = fmt.Errorf("%w; it exited: %v", err, e)
		default:
		}
		return probe.Load{}, 0, nil, fmt.Errorf("%s server: %w; its output: %s", s.Name, err, serverLog.String())
	}
	entries := 0
	for _, n := range s.nodes {
		left, err := flushConntrack(n.NetNS)
		if err != nil {
			return probe.Load{}, 0, nil, err
		}
		if n == s.nodes[0] {
			entries = left
		}
	}
	addr := netip.AddrPortFrom(srv.IP, port)
	if s.Name != sbDirect {
		vip := sbVIPSame
		if placement == sbCross {
			vip = sbVIPCross
		}
		addr = netip.AddrPortFrom(vip, port)
	}
	var pids []int
	for _, a := range s.agents {
		pids = append(pids, a.Pid())
	}
	cgroups := []string{s.nodes[0].Cgroup, s.nodes[1].Cgroup}
	before, err := costMark(cgroups, pids, h.cfg.BPFStats)
	if err != nil {
		return probe.Load{}, entries, nil, err
	}
	l, err := probe.RunLoad(s.client, scenario, addr.String(), count)
	if err != nil {
		return l, entries, nil, fmt.Errorf("%s %s %s: %w", s.Name, scenario, placement, err)
	}
	after, err := costMark(cgroups, pids, h.cfg.BPFStats)
	if err != nil {
		return l, entries, nil, err
	}
	return l, entries, after.since(before), nil
}

// flushConntrack empties the conntrack table of network namespace ns and
// returns how many entries it holds afterwards (0 unless something raced).
func flushConntrack(ns string) (int, error) {
	if out, err := exec.Command("ip", "netns", "exec", ns, "conntrack", "-F").CombinedOutput(); err != nil {
		return 0, fmt.Errorf("conntrack -F in %s: %v: %s", ns, err, strings.TrimSpace(string(out)))
	}
	return conntrackCount(ns)
}

// conntrackCount is the number of conntrack entries in ns; 0 when conntrack
// never ran there.
func conntrackCount(ns string) (int, error) {
	out, err := exec.Command("ip", "netns", "exec", ns, "cat", "/proc/sys/net/netfilter/nf_conntrack_count").CombinedOutput()
	if err != nil {
		if strings.Contains(string(out), "No such file") {
			return 0, nil
		}
		return 0, fmt.Errorf("conntrack count in %s: %v: %s", ns, err, strings.TrimSpace(string(out)))
	}
	return strconv.Atoi(strings.TrimSpace(string(out)))
}

// block runs one warm-up round and the measured rounds of a scenario at a
// placement and size, over the set-ups given, rotating which goes first.
// count gives each set-up's count for a round from its warm-up.
func (h *sbHarness) block(scenario, placement string, services int, setups []string, count func(warm *probe.Load) int) {
	var active []string
	for _, name := range setups {
		if h.setups[name].stopped == "" {
			active = append(active, name)
		}
	}
	warm := map[string]*probe.Load{}
	for round := 0; round <= h.cfg.Rounds; round++ {
		for i := range active {
			s := h.setups[active[(i+round)%len(active)]]
			l, entries, cost, err := h.phase(s, scenario, placement, count(warm[s.Name]))
			if err != nil {
				h.tb.Fatal(err)
			}
			if round == 0 {
				warm[s.Name] = &l
			}
			h.run.Samples = append(h.run.Samples, sbSample{Scenario: scenario, Placement: placement, Services: services,
				Setup: s.Name, Round: round, Load: l, Conntrack: entries, Cost: cost})
		}
	}
}

// measure runs every scenario of the run.
func (h *sbHarness) measure() {
	same := []string{sbDirect, sbIPTables, sbNFTables, sbSluice, sbSluiceFast}
	cross := []string{sbDirect, sbIPTables, sbNFTables, sbSluice}
	fixed := func(n int) func(*probe.Load) int { return func(*probe.Load) int { return n } }
	conns := func(warm *probe.Load) int {
		if warm == nil || warm.Seconds <= 0 {
			return max(h.cfg.Conns/4, 100)
		}
		rate := float64(warm.Ops) / warm.Seconds
		return min(max(int(rate*h.cfg.ConnTime.Seconds()), 200), h.cfg.Conns)
	}
	sizes := h.cfg.Sizes
	// Round trips and bulk transfers with the smallest table: kube-proxy's
	// rules act on a connection's first packet; conntrack carries the rest.
	on := func(scenario string) bool {
		return len(h.cfg.Scenarios) == 0 || slices.Contains(h.cfg.Scenarios, scenario)
	}
	for _, p := range []struct {
		placement string
		setups    []string
	}{{sbSame, same}, {sbCross, cross}} {
		if on(sbRR) {
			h.block(sbRR, p.placement, sizes[0], p.setups, fixed(h.cfg.RoundTrip))
		}
		if on(sbBulk) {
			h.block(sbBulk, p.placement, sizes[0], p.setups, fixed(h.cfg.BulkMiB))
		}
	}
	for i, n := range sizes {
		if !on(sbConnect) {
			break
		}
		if i > 0 {
			h.install(n)
		}
		h.block(sbConnect, sbCross, n, cross, conns)
		h.block(sbConnect, sbSame, n, same, conns)
	}
}

// machine describes where the run happened.
func sbMachine() map[string]string {
	m := map[string]string{"date": time.Now().UTC().Format(time.RFC3339)}
	if out, err := exec.Command("uname", "-sr").Output(); err == nil {
		m["kernel"] = strings.TrimSpace(string(out))
	}
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		cpus := 0
		for _, line := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok {
				switch strings.TrimSpace(k) {
				case "model name":
					m["cpu"] = strings.TrimSpace(v)
				case "processor":
					cpus++
				}
			}
		}
		m["cpus"] = strconv.Itoa(cpus)
	}
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		if line, _, ok := strings.Cut(string(data), "\n"); ok {
			m["memory"] = strings.Join(strings.Fields(line)[1:], " ")
		}
	}
	for _, mode := range []kubeproxy.Mode{kubeproxy.IPTables, kubeproxy.NFTables} {
		if v, err := kubeproxy.Backend(context.Background(), mode); err == nil {
			m[string(mode)] = v
		}
	}
	if out, err := exec.Command("go", "version").Output(); err == nil {
		m["go"] = strings.TrimSpace(string(out))
	}
	if out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output(); err == nil {
		m["commit"] = strings.TrimSpace(string(out))
	}
	return m
}

// BenchmarkSideBySide is the side-by-side benchmark (make bench). It runs
// once whatever b.N is; -sidebyside.report and -sidebyside.json write
// what it measured.
func BenchmarkSideBySide(b *testing.B) {
	var sizes []int
	for _, f := range strings.Split(*sbSizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 2 {
			b.Fatalf("-sidebyside.sizes: %q is not a service count of at least 2", f)
		}
		sizes = append(sizes, n)
	}
	if *sbRounds < 1 {
		b.Fatalf("-sidebyside.rounds %d: at least one round", *sbRounds)
	}
	report, raw := sbOutput(b, *sbReport), sbOutput(b, *sbJSON)
	if *sbFrom != "" {
		run, err := readSideBySide(filepath.Join("..", *sbFrom))
		if err != nil {
			b.Fatal(err)
		}
		if err := writeSideBySide(run, summarize(run), report, raw); err != nil {
			b.Fatal(err)
		}
		return
	}
	cfg := sbConfig{Sizes: sizes, Rounds: *sbRounds, RoundTrip: 20000, BulkMiB: 1024, Conns: 4000,
		ConnTime: time.Second, LoadLimit: *sbLimit, AgentArgs: strings.Fields(*sbArgs), BPFStats: *sbStats}
	for _, name := range strings.Split(*sbOnly, ",") {
		name = strings.TrimSpace(name)
		if !slices.Contains(sbSetupOrder, name) {
			b.Fatalf("-sidebyside.setups: unknown set-up %q; the set-ups are %s", name, strings.Join(sbSetupOrder, ", "))
		}
		cfg.Setups = append(cfg.Setups, name)
	}
	if len(cfg.Setups) == len(sbSetupOrder) {
		cfg.Setups = nil // all of them
	}
	for _, name := range strings.Split(*sbScen, ",") {
		name = strings.TrimSpace(name)
		if name != sbRR && name != sbBulk && name != sbConnect {
			b.Fatalf("-sidebyside.scenarios: unknown scenario %q; the scenarios are rr, bulk, connect", name)
		}
		cfg.Scenarios = append(cfg.Scenarios, name)
	}
	if len(cfg.Scenarios) == 3 {
		cfg.Scenarios = nil
	}
	if cfg.BPFStats {
		stats, err := enableBPFStats()
		if err != nil {
			b.Fatal(err)
		}
		defer stats.Close()
	}
	// The control plane's figures first, while nothing else runs.
	bin := buildSluice(b)
	var cp *sbControlPlane
	if *sbCP {
		// In a sub-benchmark of its own, so that its control planes and
		// clients are gone (its cleanups run) before the rest begins.
		b.Run("control-plane", func(b *testing.B) { cp = measureControlPlane(b, bin) })
		if cp == nil {
			b.Fatal("the control-plane measurement failed")
		}
	}
	h := newSideBySide(b, cfg, bin)
	h.run.Machine = sbMachine()
	h.run.ControlPlane = cp
	b.ResetTimer()
	h.measure()
	b.StopTimer()
	sum := summarize(h.run)
	for _, r := range sum.Rows {
		if r.Setup == sbDirect || r.Ratio == nil {
			continue
		}
		b.ReportMetric(r.Ratio.Median, fmt.Sprintf("%s-%s-%d-%s/direct", r.Scenario, r.Placement, r.Services, r.Setup))
	}
	if err := writeSideBySide(h.run, sum, report, raw); err != nil {
		b.Fatal(err)
	}
}

// sbOutput resolves an output path, a relative one from the repository's
// root (go test runs in the package's directory), and checks it can be
// written before anything is measured.
func sbOutput(tb testing.TB, path string) string {
	if path == "" {
		return ""
	}
	if !filepath.IsAbs(path) {
		path = filepath.Join("..", path) // e2e/ is one level below the root
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		tb.Fatalf("side-by-side output: %v", err)
	}
	f.Close()
	return path
}

// measureControlPlane runs the control-plane scale measurements of the
// xDS benchmarks at 10,000 services × 10 endpoints.
func measureControlPlane(tb testing.TB, bin string) *sbControlPlane {
	const n = 10000
	cp := &sbControlPlane{Services: n, Endpoints: 10}
	client, total := measureFullSync(tb, n, 3)
	for i := range total {
		cp.FullSyncMS = append(cp.FullSyncMS, float64(total[i].Microseconds())/1000)
		cp.FullSyncClientMS = append(cp.FullSyncClientMS, float64(client[i].Microseconds())/1000)
	}
	changes, _, _ := measureEndpointChanges(tb, n, 300)
	for _, d := range changes {
		cp.EndpointChangeMS = append(cp.EndpointChangeMS, float64(d.Microseconds())/1000)
	}
	m := measureAgentMemory(tb, bin, n)
	cp.RSSMiB, cp.PeakRSSMiB, cp.MapsMiB = m.RSS, m.Peak, m.Maps
	cp.AnonMiB, cp.BinaryMiB, cp.MappedMapsMiB, cp.OtherMiB = m.Anon, m.Binary, m.MappedMaps, m.Other
	return cp
}

// TestSideBySideQuick runs the benchmark's harness small, and checks that
// each set-up really translates the way it claims: kube-proxy's rules by
// conntrack entries in the client's node, Sluice at connect with nothing
// in conntrack, and the fast path by the bytes it carried.
func TestSideBySideQuick(t *testing.T) {
	cfg := sbConfig{Sizes: []int{2, 40}, Rounds: 1, RoundTrip: 300, BulkMiB: 8, Conns: 200,
		ConnTime: 100 * time.Millisecond, LoadLimit: time.Minute}
	h := newSideBySide(t, cfg, buildSluice(t))
	before := h.sluiceCounters()
	h.measure()
	after := h.sluiceCounters()

	seen := map[string]int{}
	agents := 0.0
	for _, s := range h.run.Samples {
		seen[s.Scenario+" "+s.Placement+" "+s.Setup]++
		if s.Load.Errors > 0 || s.Load.Ops == 0 || s.Load.Seconds <= 0 {
			t.Errorf("%+v: errors or nothing measured", s)
		}
		if s.Conntrack != 0 {
			t.Errorf("%+v: the phase started with %d conntrack entries", s, s.Conntrack)
		}
		if s.Scenario != sbBulk && (s.Load.P50 <= 0 || s.Load.P99 < s.Load.P50) {
			t.Errorf("%+v: percentiles", s)
		}
		// Each phase's cost: its pods worked; only Sluice has agents (a
		// short phase may pass without them running).
		if c := s.Cost; c == nil || c.CPU <= 0 || c.Agent < 0 || (c.Agent > 0 && s.Setup != sbSluice && s.Setup != sbSluiceFast) || c.BPF != nil {
			t.Errorf("%s %s %s: cost %+v", s.Scenario, s.Placement, s.Setup, c)
		} else {
			agents += c.Agent
		}
	}
	if agents <= 0 {
		t.Error("no phase saw Sluice's agents use CPU")
	}
	for _, scenario := range []string{sbRR, sbBulk} {
		for _, setup := range []string{sbDirect, sbIPTables, sbNFTables, sbSluice, sbSluiceFast} {
			if seen[scenario+" "+sbSame+" "+setup] != cfg.Rounds+1 {
				t.Errorf("%s same-node %s: %d phases", scenario, setup, seen[scenario+" "+sbSame+" "+setup])
			}
		}
		if seen[scenario+" "+sbCross+" "+sbSluiceFast] != 0 {
			t.Errorf("%s: the fast path measured cross-node", scenario)
		}
	}
	if want := len(cfg.Sizes) * (cfg.Rounds + 1); seen[sbConnect+" "+sbCross+" "+sbIPTables] != want {
		t.Errorf("connect cross-node iptables: %d phases, want %d", seen[sbConnect+" "+sbCross+" "+sbIPTables], want)
	}

	// Translation: one last connect phase per set-up, then look at the
	// client node's conntrack table.
	for _, name := range []string{sbDirect, sbIPTables, sbNFTables, sbSluice} {
		s := h.setups[name]
		if _, _, _, err := h.phase(s, sbConnect, sbCross, 50); err != nil {
			t.Fatal(err)
		}
		dnat, err := conntrackDNAT(s.nodes[0].NetNS, sbVIPCross, s.server[sbCross].IP)
		if err != nil {
			t.Fatal(err)
		}
		switch name {
		case sbIPTables, sbNFTables:
			if dnat < 50 {
				t.Errorf("%s: %d conntrack entries translated %s to the server pod, want 50", name, dnat, sbVIPCross)
			}
		default:
			if n, err := conntrackCount(s.nodes[0].NetNS); err != nil || n != 0 {
				t.Errorf("%s: %d conntrack entries in the client's node (%v), want none", name, n, err)
			}
		}
	}
	if opened := after.opened - before.opened; opened < float64(h.connectOps(sbSluice)+h.connectOps(sbSluiceFast)) {
		t.Errorf("sluice agents counted %v connections opened, fewer than the %d of the sluice connect phases", opened, h.connectOps(sbSluice)+h.connectOps(sbSluiceFast))
	}
	if after.fast <= before.fast {
		t.Error("the fast path carried nothing")
	}
	// Each fast-path phase goes through it.
	for i := range 3 {
		was := h.sluiceCounters()
		if _, _, _, err := h.phase(h.setups[sbSluiceFast], sbRR, sbSame, 300); err != nil {
			t.Fatal(err)
		}
		if now := h.sluiceCounters(); now.fast <= was.fast {
			t.Errorf("fast-path phase %d: the fast path carried nothing", i)
		}
	}
	if r := summarize(h.run); len(r.Rows) == 0 {
		t.Error("nothing summarized")
	}

	// With the kernel's statistics on, a phase records the run count of
	// each of Sluice's programs: one connect per connection, and the
	// socket operations of each.
	stats, err := enableBPFStats()
	if err != nil {
		t.Fatal(err)
	}
	defer stats.Close()
	h.cfg.BPFStats = true
	const conns = 100
	l, _, cost, err := h.phase(h.setups[sbSluice], sbConnect, sbCross, conns)
	if err != nil {
		t.Fatal(err)
	}
	if l.Ops != conns || cost == nil || cost.BPF["sl_connect4"].Runs < conns || cost.BPF["sl_sockops"].Runs < 2*conns || cost.BPF["sl_connect4"].NS == 0 {
		t.Errorf("a phase of %d connections recorded %+v of Sluice's programs", conns, cost)
	}
}

type sluiceCounters struct{ opened, fast float64 }

// sluiceCounters adds up the sluice agents' counters of connections opened
// and of bytes the fast path carried, once flow records have settled.
func (h *sbHarness) sluiceCounters() sluiceCounters {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var c sluiceCounters
	last := -1.0
	for {
		c = sluiceCounters{}
		for _, a := range h.setups[sbSluice].agents {
			page, err := a.Metrics(ctx)
			if err != nil {
				h.tb.Fatal(err)
			}
			opened, _ := cluster.MetricSum(page, "sluice_tcp_connections_opened_total")
			fast, _ := cluster.MetricSum(page, "sluice_fastpath_redirected_bytes_total")
			c.opened += opened
			c.fast += fast
		}
		if c.opened == last || ctx.Err() != nil {
			return c
		}
		last = c.opened
		time.Sleep(500 * time.Millisecond)
	}
}

// connectOps adds up the connections of a set-up's connect phases.
func (h *sbHarness) connectOps(setup string) int {
	n := 0
	for _, s := range h.run.Samples {
		if s.Setup == setup && s.Scenario == sbConnect {
			n += s.Load.Ops
		}
	}
	return n
}

// conntrackDNAT counts the conntrack entries of ns for connections to vip
// whose replies come from backend: those the rules translated.
func conntrackDNAT(ns string, vip, backend netip.Addr) (int, error) {
	out, err := exec.Command("ip", "netns", "exec", ns, "conntrack", "-L", "-p", "tcp", "-d", vip.String()).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return 0, fmt.Errorf("conntrack -L in %s: %v: %s", ns, err, ee.Stderr)
		}
		return 0, err
	}
	n := 0
	for _, line := range strings.Split(string(out), "\n") {
		// The reply direction's source is the backend.
		if i := strings.LastIndex(line, "src="); i >= 0 && strings.HasPrefix(line[i:], "src="+backend.String()+" ") {
			n++
		}
	}
	return n, nil
}
