package e2e_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/e2e/cluster"
	"github.com/sluice-mesh/sluice/e2e/probe"
	"github.com/sluice-mesh/sluice/e2e/testenv"
)

// The L7 benchmark (make bench, docs/l7.md, Measured) measures what the
// node's L7 proxy adds to a request, on the L7 tests' cluster (newL7Mesh):
// fortio in the frontend pod sends keep-alive HTTP/1.1 requests at a fixed,
// moderate rate to web-v1 (same node) and web-v2 (the other node), each
// three ways:
//
//   - direct: to the pod's address;
//   - l4: to the pool's L4 service VIP, translated by the kernel at connect;
//   - relay: through a plain TCP relay (the probe's echo role in relay mode,
//     io.Copy both ways) in the client node's network namespace, where the
//     proxy runs: the least any user-space hop adds on this machine, the
//     floor under the proxy's figure;
//   - l7: to the L7 service's VIP, through the client node's proxy, which
//     routes by path (web-v1) or by the header x-version: v2 (web-v2).
//
// Each round loads every path once, in an order that rotates from round to
// round, and the figures compare each path with direct's in the same round,
// so that this noisy shared machine's moods hit both alike. Then it holds
// connections through the proxy with a request in flight on each, for the
// proxy's memory per 1,000 connections. It asserts no timing.
//
// newL7Mesh needs a *testing.T, so BenchmarkL7 runs the measurement,
// TestL7Measure, in a test process of its own and reports what it wrote.
var (
	l7bRounds = flag.Int("l7bench.rounds", 5, "L7 benchmark: measured rounds, after one warm-up round")
	l7bTime   = flag.Duration("l7bench.duration", 5*time.Second, "L7 benchmark: how long fortio loads each path per round")
	l7bQPS    = flag.Int("l7bench.qps", 500, "L7 benchmark: requests per second of the load, over all its connections")
	l7bConns  = flag.Int("l7bench.conns", 4, "L7 benchmark: keep-alive connections of the load")
	l7bHeld   = flag.Int("l7bench.held", 1000, "L7 benchmark: connections held through the proxy for the memory figure")
	l7bJSON   = flag.String("l7bench.json", "", "L7 benchmark: write the raw results as JSON to this file (a relative path is taken from the repository's root)")
)

// l7BenchEnv names the file TestL7Measure writes its results to; without
// it, TestL7Measure skips.
const l7BenchEnv = "SLUICE_L7_BENCH_OUT"

// The ways to a backend.
const (
	l7bDirect = "direct"
	l7bL4     = "l4"
	l7bRelay  = "relay"
	l7bL7     = "l7"
)

// The ports of the relays of the relay paths, at n1's address: to web-v1
// and to web-v2.
const (
	l7bRelaySame  = 15101
	l7bRelayCross = 15102
)

// The goals of the L7 issue for the latency the L7 path adds, in µs.
const (
	l7bGoalP50 = 100
	l7bGoalP99 = 1000
)

// l7bHoldSleep is how long the backend holds each request of the memory
// measurement: long enough to open and count the connections, shorter than
// the route's default timeout (15 s).
const l7bHoldSleep = 10 * time.Second

type l7bConfig struct {
	Rounds    int
	Duration  time.Duration // of each load
	QPS       int
	Conns     int    // of each load
	Held      int    // connections of the memory measurement
	LoadFlags string // fortio's, for the report
}

// l7bPath is one way from the frontend pod to a backend pod.
type l7bPath struct {
	Placement string // sbSame or sbCross
	Kind      string // l7bDirect, l7bL4, l7bRelay or l7bL7
	URL       string
	Header    string // a request header, "name: value", or ""
	Backend   string // the pod that must answer
}

func (m *l7Mesh) benchPaths() []l7bPath {
	l7 := "http://" + l7VIP.String() + "/bench"
	pod := func(name string) string { return "http://" + m.pods[name].IP.String() + ":8080/bench" }
	relay := func(port uint16) string {
		return "http://" + netip.AddrPortFrom(m.nodes["n1"].Addr, port).String() + "/bench"
	}
	return []l7bPath{
		{sbSame, l7bDirect, pod("web-v1"), "", "web-v1"},
		{sbSame, l7bL4, "http://10.96.51.1/bench", "", "web-v1"},
		{sbSame, l7bRelay, relay(l7bRelaySame), "", "web-v1"},
		{sbSame, l7bL7, l7, "", "web-v1"},
		{sbCross, l7bDirect, pod("web-v2"), "", "web-v2"},
		{sbCross, l7bL4, "http://10.96.51.2/bench", "", "web-v2"},
		{sbCross, l7bRelay, relay(l7bRelayCross), "", "web-v2"},
		{sbCross, l7bL7, l7, "x-version: v2", "web-v2"},
	}
}

// startRelays runs the relay paths' relays in n1's network namespace, as
// processes of their own like the proxy, until the test ends. They run in
// the frontend pod's cgroup: their upstream connections then carry the
// frontend's identity from n1's address, as the proxy's do, which web-v2's
// policy requires. (Their CPU time counts as the client pod's.)
func (m *l7Mesh) startRelays(t *testing.T) {
	t.Helper()
	n1 := m.nodes["n1"]
	cg, err := os.Open(m.pods["frontend"].Cgroup)
	if err != nil {
		t.Fatal(err)
	}
	defer cg.Close()
	for port, to := range map[uint16]string{l7bRelaySame: "web-v1", l7bRelayCross: "web-v2"} {
		cmd := exec.Command("nsenter", "--net=/run/netns/"+n1.NetNS, os.Args[0])
		cmd.Env = append(os.Environ(), probe.RoleEnv+"=echo", probe.EchoModeEnv+"=relay",
			probe.ListenEnv+"="+netip.AddrPortFrom(n1.Addr, port).String(),
			probe.UpstreamEnv+"="+netip.AddrPortFrom(m.pods[to].IP, 8080).String())
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, UseCgroupFD: true, CgroupFD: int(cg.Fd())}
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatalf("relay to %s: %v", to, err)
		}
		t.Cleanup(func() {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		})
		if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "ready\n" {
			t.Fatalf("relay to %s: %q %v", to, line, err)
		}
	}
}

// l7bSample is one load of one path. Times are in µs.
type l7bSample struct {
	Placement, Kind string
	Round           int // 0 is the warm-up
	Requests        int
	QPS             float64 // achieved
	// From every request's latency (fortio's access log), nearest rank.
	P50, P90, P99, Max float64
	// fortio's own histogram, interpolated within its buckets (10 µs wide
	// up to 110 µs, then wider): a cross-check.
	FortioP50, FortioP99 float64
	// CPU time per request (µs) of the client pod (fortio), the backend
	// pod and the client node's proxy, and the proxy's context switches
	// per request.
	ClientCPU, BackendCPU, ProxyCPU float64
	ProxySwitches                   float64
	ProxyCores                      float64 // the proxy's CPU time over the load's duration (1: one core)
	MachineBusy                     float64 // the share of the machine's CPUs busy during the load
}

// l7bMemory is the proxy's memory holding Conns connections. MiB.
type l7bMemory struct {
	Conns     int
	OpenFiles int // the proxy's limit
	Before    l7bRSS
	// InFlight: a request in flight on every connection, so the proxy
	// holds Down client connections and Up upstream ones.
	InFlight l7bRSS
	// Idle: the responses are in; the client connections stay open
	// (keep-alive) and the proxy pools a few upstream ones.
	Idle l7bRSS
}

type l7bRSS struct {
	RSS, Anon float64 // VmRSS, RssAnon
	Down, Up  int     // the proxy's established client and upstream TCP connections
}

type l7bRun struct {
	Machine map[string]string
	Config  l7bConfig
	Samples []l7bSample
	Memory  l7bMemory
}

// BenchmarkL7 is the L7 benchmark (make bench). It runs once whatever b.N
// is, and prints the report on stdout.
func BenchmarkL7(b *testing.B) {
	testenv.RequirePrivileged(b)
	testenv.Tool(b, "fortio")
	raw := *l7bJSON
	if raw != "" && !filepath.IsAbs(raw) {
		raw = filepath.Join("..", raw) // e2e/ is one level below the root
	}
	out := filepath.Join(b.TempDir(), "l7bench.json")
	args := []string{"-test.run", "^TestL7Measure$", "-test.count", "1", "-test.timeout", "30m", "-test.v",
		"-l7bench.rounds=" + strconv.Itoa(*l7bRounds), "-l7bench.duration=" + l7bTime.String(),
		"-l7bench.qps=" + strconv.Itoa(*l7bQPS), "-l7bench.conns=" + strconv.Itoa(*l7bConns),
		"-l7bench.held=" + strconv.Itoa(*l7bHeld)}
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), l7BenchEnv+"="+out)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var log cluster.LogBuffer
	cmd.Stdout, cmd.Stderr = &log, &log
	b.ResetTimer()
	err := cmd.Run()
	b.StopTimer()
	if err != nil {
		b.Fatalf("the measurement (%s): %v\n%s", strings.Join(cmd.Args, " "), err, log.String())
	}
	data, err := os.ReadFile(out)
	if err != nil {
		b.Fatalf("the measurement wrote no results: %v\n%s", err, log.String())
	}
	var run l7bRun
	if err := json.Unmarshal(data, &run); err != nil {
		b.Fatal(err)
	}
	if raw != "" {
		if err := os.WriteFile(raw, data, 0o644); err != nil {
			b.Fatal(err)
		}
	}
	rows := summarizeL7(run)
	for _, r := range rows {
		name := r.Placement + "-" + r.Kind
		b.ReportMetric(r.P50.Median, name+"-p50-µs")
		b.ReportMetric(r.P99.Median, name+"-p99-µs")
		if r.Added != nil {
			b.ReportMetric(r.Added[0].Median, name+"-added-p50-µs")
			b.ReportMetric(r.Added[1].Median, name+"-added-p99-µs")
			b.ReportMetric(r.Ratio[0].Median, name+"/direct-p50")
			b.ReportMetric(r.Ratio[1].Median, name+"/direct-p99")
		}
		if r.OverRelay != nil {
			b.ReportMetric(r.OverRelay[0].Median, name+"-over-relay-p50-µs")
			b.ReportMetric(r.OverRelay[1].Median, name+"-over-relay-p99-µs")
		}
		if r.Kind == l7bL7 {
			b.ReportMetric(r.ProxyCPU.Median, name+"-proxy-cpu-µs/req")
		}
	}
	mem := run.Memory
	b.ReportMetric(perThousand(mem.InFlight.RSS-mem.Before.RSS, mem.Conns), "proxy-rss-MiB/1000-conns")
	b.ReportMetric(perThousand(mem.Idle.RSS-mem.Before.RSS, mem.Conns), "proxy-idle-rss-MiB/1000-conns")
	// b.Log would keep 10 lines of it.
	fmt.Println(renderL7(run, rows))
}

func perThousand(v float64, n int) float64 { return v * 1000 / float64(n) }

// TestL7Measure is BenchmarkL7's measurement; it runs only when BenchmarkL7
// starts it.
func TestL7Measure(t *testing.T) {
	out := os.Getenv(l7BenchEnv)
	if out == "" {
		t.Skip("a measurement, not a test: BenchmarkL7 runs it (make bench)")
	}
	fortio := testenv.Tool(t, "fortio")
	cfg := l7bConfig{Rounds: *l7bRounds, Duration: *l7bTime, QPS: *l7bQPS, Conns: *l7bConns, Held: *l7bHeld}
	if cfg.Rounds < 1 || cfg.QPS < 1 || cfg.Conns < 1 || cfg.Held < 1 || cfg.Duration < time.Second {
		t.Fatalf("L7 benchmark: %+v: want at least one round, request per second, connection and held connection, and loads of 1 s or more", cfg)
	}
	cfg.LoadFlags = strings.Join(fortioLoadFlags(cfg, "<json>", "<log>"), " ")
	m := newL7Mesh(t)
	m.startRelays(t)
	paths := m.benchPaths()
	for _, p := range paths {
		var hdr []string
		if p.Header != "" {
			hdr = []string{"-H", p.Header}
		}
		for _, a := range m.get(t, "frontend", p.URL, 2, hdr...) {
			if a.Code != 200 || a.Name != p.Backend {
				t.Fatalf("%s %s: %+v, want 200 from %s", p.Placement, p.Kind, a, p.Backend)
			}
		}
	}
	run := l7bRun{Machine: sbMachine(), Config: cfg}
	delete(run.Machine, "iptables")
	delete(run.Machine, "nftables")
	dir := t.TempDir()
	for round := 0; round <= cfg.Rounds; round++ {
		for i := range paths {
			p := paths[(i+round)%len(paths)]
			s := m.loadPath(t, fortio, dir, p, cfg)
			s.Round = round
			run.Samples = append(run.Samples, s)
		}
	}
	run.Memory = m.measureProxyMemory(t, cfg.Held)
	t.Log("\n" + renderL7(run, summarizeL7(run)))
	data, err := json.MarshalIndent(run, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(out, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// fortioLoadFlags are the flags of fortio load for one path, before the
// URL: exact per-request latencies go to the access log.
func fortioLoadFlags(cfg l7bConfig, jsonPath, logPath string) []string {
	return []string{"load", "-qps", strconv.Itoa(cfg.QPS), "-c", strconv.Itoa(cfg.Conns), "-t", cfg.Duration.String(),
		"-uniform", "-r", "0.00001", "-p", "50,90,99", "-loglevel", "Warning", "-json", jsonPath, "-access-log-file", logPath}
}

// l7bFortio is the part of `fortio load -json` the benchmark reads.
type l7bFortio struct {
	ActualQPS         float64
	ActualDuration    int64 // ns
	RetCodes          map[string]int
	SocketCount       int
	DurationHistogram struct {
		Count       int
		Percentiles []struct{ Percentile, Value float64 }
	}
}

// loadPath runs fortio in the frontend pod against p and returns what it
// measured, with what the load cost the client, the backend and n1's
// proxy.
func (m *l7Mesh) loadPath(t *testing.T, fortio, dir string, p l7bPath, cfg l7bConfig) l7bSample {
	t.Helper()
	name := fmt.Sprintf("%s-%s-%d", p.Placement, p.Kind, time.Now().UnixNano())
	jsonPath, logPath := filepath.Join(dir, name+".json"), filepath.Join(dir, name+".log")
	args := fortioLoadFlags(cfg, jsonPath, logPath)
	if p.Header != "" {
		args = append(args, "-H", p.Header)
	}
	args = append(args, p.URL)
	ctx, cancel := context.WithTimeout(context.Background(), cfg.Duration+time.Minute)
	defer cancel()
	pod := m.pods["frontend"]
	c := m.costs(t, pod.Cgroup, m.pods[p.Backend].Cgroup)
	if out, err := pod.Output(pod.Command(ctx, fortio, args...)); err != nil {
		t.Fatalf("fortio %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	c = m.costs(t, pod.Cgroup, m.pods[p.Backend].Cgroup).since(c)
	data, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	var r l7bFortio
	if err := json.Unmarshal(data, &r); err != nil {
		t.Fatalf("fortio's JSON %s: %v", jsonPath, err)
	}
	what := p.Placement + " " + p.Kind
	if len(r.RetCodes) != 1 || r.RetCodes["200"] != r.DurationHistogram.Count {
		t.Fatalf("%s: fortio's status codes %v, want %d × 200", what, r.RetCodes, r.DurationHistogram.Count)
	}
	if r.SocketCount != cfg.Conns {
		t.Fatalf("%s: fortio opened %d connections for %d clients: keep-alive did not hold", what, r.SocketCount, cfg.Conns)
	}
	lat, err := accessLogLatencies(logPath)
	if err != nil {
		t.Fatal(err)
	}
	if len(lat) != r.DurationHistogram.Count || len(lat) == 0 {
		t.Fatalf("%s: %d requests in the access log, %d in fortio's histogram", what, len(lat), r.DurationHistogram.Count)
	}
	slices.Sort(lat)
	at := func(q float64) float64 { return lat[int(q*float64(len(lat)-1))] }
	s := l7bSample{Placement: p.Placement, Kind: p.Kind, Requests: len(lat), QPS: r.ActualQPS,
		P50: at(0.5), P90: at(0.9), P99: at(0.99), Max: lat[len(lat)-1]}
	for _, pc := range r.DurationHistogram.Percentiles {
		switch pc.Percentile {
		case 50:
			s.FortioP50 = pc.Value * 1e6
		case 99:
			s.FortioP99 = pc.Value * 1e6
		}
	}
	per := func(v float64) float64 { return v / float64(len(lat)) }
	s.ClientCPU, s.BackendCPU = per(c.client), per(c.backend)
	s.ProxyCPU, s.ProxySwitches = per(c.proxy), per(c.switches)
	s.ProxyCores = c.proxy * 1e3 / float64(r.ActualDuration)
	if c.all > 0 {
		s.MachineBusy = c.busy / c.all
	}
	return s
}

// accessLogLatencies reads the latency of every request, in µs, from a
// fortio JSON access log (one object per line, latency in seconds).
func accessLogLatencies(path string) ([]float64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []float64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var e struct {
			Latency float64 `json:"latency"`
			OK      bool    `json:"ok"`
		}
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			return nil, fmt.Errorf("access log %s: %w: %q", path, err, sc.Text())
		}
		if !e.OK {
			return nil, fmt.Errorf("access log %s: a failed request: %q", path, sc.Text())
		}
		out = append(out, e.Latency*1e6)
	}
	return out, sc.Err()
}

// l7bCosts are CPU counters over a load: µs for the cgroups and the
// proxy, ticks for the machine.
type l7bCosts struct {
	client, backend, proxy, switches float64
	busy, all                        float64
}

func (c l7bCosts) since(a l7bCosts) l7bCosts {
	return l7bCosts{c.client - a.client, c.backend - a.backend, c.proxy - a.proxy, c.switches - a.switches, c.busy - a.busy, c.all - a.all}
}

// costs reads the CPU time of the client and backend cgroups, of n1's
// proxy, the proxy's context switches and the machine's CPU ticks.
func (m *l7Mesh) costs(t *testing.T, client, backend string) l7bCosts {
	t.Helper()
	var c l7bCosts
	pid := m.proxies["n1"].Pid()
	cl, err1 := cgroupUsage(client)
	be, err2 := cgroupUsage(backend)
	px, err3 := processRunTime(pid)
	sw, err4 := contextSwitches(pid)
	busy, all, err5 := machineCPU()
	if err := errors.Join(err1, err2, err3, err4, err5); err != nil {
		t.Fatal(err)
	}
	c.client, c.backend, c.proxy, c.switches = float64(cl), float64(be), float64(px)/1e3, float64(sw)
	c.busy, c.all = float64(busy), float64(all)
	return c
}

// contextSwitches is the number of context switches, voluntary or not, of
// every thread of process pid.
func contextSwitches(pid int) (uint64, error) {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	var n uint64
	for _, task := range tasks {
		data, err := os.ReadFile(filepath.Join(dir, task.Name(), "status"))
		if errors.Is(err, os.ErrNotExist) {
			continue // the thread has exited
		}
		if err != nil {
			return 0, err
		}
		for _, line := range strings.Split(string(data), "\n") {
			k, v, ok := strings.Cut(line, ":")
			if ok && (k == "voluntary_ctxt_switches" || k == "nonvoluntary_ctxt_switches") {
				x, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
				if err != nil {
					return 0, fmt.Errorf("%s/%s/status: %q: %w", dir, task.Name(), line, err)
				}
				n += x
			}
		}
	}
	return n, nil
}

// machineCPU returns the busy and total time of all CPUs, in ticks, from
// /proc/stat.
func machineCPU() (busy, total uint64, err error) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, err
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line)
	if len(f) < 6 || f[0] != "cpu" {
		return 0, 0, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	for i, v := range f[1:] {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("/proc/stat: %q: %w", line, err)
		}
		if i >= 8 { // guest time is counted in user time already
			break
		}
		total += n
		if i != 3 && i != 4 { // idle, iowait
			busy += n
		}
	}
	return busy, total, nil
}

// measureProxyMemory holds n connections from the frontend pod through
// n1's proxy to web-v1 and reads the proxy's memory before, while a
// request is in flight on every connection, and once the responses are in
// with the connections kept open.
func (m *l7Mesh) measureProxyMemory(t *testing.T, n int) l7bMemory {
	t.Helper()
	pid := m.proxies["n1"].Pid()
	mem := l7bMemory{Conns: n}
	var err error
	if mem.OpenFiles, err = openFilesLimit(pid); err != nil {
		t.Fatal(err)
	}
	if need := 2*n + 100; mem.OpenFiles < need {
		t.Fatalf("the proxy may open %d files, fewer than %d connections each way need", mem.OpenFiles, n)
	}
	// The loads' connections are closed; their TIME_WAITs are the
	// kernel's, not the proxy's.
	mem.Before = proxyRSS(t, pid)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pod := m.pods["frontend"]
	cmd := pod.Command(ctx, os.Args[0])
	cmd.Env = append(os.Environ(), probe.RoleEnv+"=httphold", probe.DialEnv+"="+l7VIP.String()+":80",
		probe.ConnsEnv+"="+strconv.Itoa(n), probe.PathEnv+"=/hold?sleep="+l7bHoldSleep.String())
	var stderr cluster.LogBuffer
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := pod.Start(cmd); err != nil {
		t.Fatal(err)
	}
	defer func() {
		stdin.Close()
		_ = cmd.Wait()
	}()
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	next := func(what string) string {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("httphold ended before %s: %s", what, stderr.String())
			}
			return l
		case <-ctx.Done():
			t.Fatalf("httphold: no %s: %s", what, stderr.String())
		}
		return ""
	}
	if l := next("opening its connections"); l != "open" {
		t.Fatalf("httphold: %q, want open", l)
	}
	if l := next("sending its requests"); l != "sent" {
		t.Fatalf("httphold: %q, want sent", l)
	}
	deadline := time.Now().Add(l7bHoldSleep - time.Second)
	for {
		down, up, err := proxyConns(pid)
		if err != nil {
			t.Fatal(err)
		}
		if down >= n && up >= n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the proxy holds %d client and %d upstream connections, want %d each while the requests are in flight", down, up, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	mem.InFlight = proxyRSS(t, pid)
	var got probe.HTTPHold
	if err := json.Unmarshal([]byte(next("the responses")), &got); err != nil {
		t.Fatal(err)
	}
	if got.Codes[200] != n || got.Err != "" {
		t.Fatalf("%d requests held through the proxy: %+v, want %d × 200", n, got, n)
	}
	// The upstream pool keeps some of the connections it no longer needs
	// (maxIdleConnsPerHost); give it a moment to close the others.
	time.Sleep(time.Second)
	mem.Idle = proxyRSS(t, pid)
	return mem
}

// proxyRSS reads process pid's memory and TCP connections.
func proxyRSS(t *testing.T, pid int) l7bRSS {
	t.Helper()
	var r l7bRSS
	r.RSS, _, r.Anon = procMemory(t, pid)
	var err error
	if r.Down, r.Up, err = proxyConns(pid); err != nil {
		t.Fatal(err)
	}
	return r
}

// proxyConns counts the established TCP connections of the proxy pid:
// down, those on its listening port (from clients); up, the others.
func proxyConns(pid int) (down, up int, err error) {
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return 0, 0, err
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		if in, ok := strings.CutPrefix(l, "socket:["); ok {
			inodes[strings.TrimSuffix(in, "]")] = true
		}
	}
	for _, table := range []string{"tcp", "tcp6"} {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, table))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return 0, 0, err
		}
		for _, line := range strings.Split(string(data), "\n")[1:] {
			// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
			f := strings.Fields(line)
			if len(f) < 10 || f[3] != "01" || !inodes[f[9]] { // 01: ESTABLISHED
				continue
			}
			_, port, _ := strings.Cut(f[1], ":")
			if p, _ := strconv.ParseUint(port, 16, 16); p == cluster.L7ProxyPort {
				down++
			} else {
				up++
			}
		}
	}
	return down, up, nil
}

// openFilesLimit is process pid's soft limit of open files.
func openFilesLimit(pid int) (int, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "Max open files"); ok {
			if f := strings.Fields(rest); len(f) > 0 {
				return strconv.Atoi(f[0])
			}
		}
	}
	return 0, fmt.Errorf("/proc/%d/limits: no open-files limit", pid)
}

// l7bRow is one path's figures over the measured rounds.
type l7bRow struct {
	Placement, Kind string
	Rounds          int
	P50, P90, P99   sbStat
	// fortio's own histogram's, for comparison.
	FortioP50, FortioP99 sbStat
	QPS                  sbStat
	// CPU µs per request, as in l7bSample.
	ClientCPU, BackendCPU, ProxyCPU sbStat
	ProxySwitches, ProxyCores       sbStat
	MachineBusy                     sbStat
	// Added and Ratio compare the round's p50 ([0]) and p99 ([1]) with
	// direct's in the same round; nil for direct.
	Added, Ratio *[2]sbStat
	// OverRelay compares an L7 row's p50 and p99 with the relay's in the
	// same round: what the proxy adds beyond the floor of a user-space hop.
	OverRelay *[2]sbStat
}

// summarizeL7 gives a row per placement and path, in the order of the
// paths, leaving out the warm-up round.
func summarizeL7(run l7bRun) []l7bRow {
	type key struct {
		placement, kind string
		round           int
	}
	byKey := map[key]l7bSample{}
	var order []key
	for _, s := range run.Samples {
		if s.Round == 0 {
			continue
		}
		k := key{s.Placement, s.Kind, 0}
		if !slices.Contains(order, k) {
			order = append(order, k)
		}
		k.round = s.Round
		byKey[k] = s
	}
	kinds := []string{l7bDirect, l7bL4, l7bRelay, l7bL7}
	slices.SortStableFunc(order, func(a, b key) int {
		if a.placement != b.placement {
			return strings.Compare(b.placement, a.placement) // same-node first
		}
		return slices.Index(kinds, a.kind) - slices.Index(kinds, b.kind)
	})
	var rows []l7bRow
	for _, k := range order {
		var p50, p90, p99, fp50, fp99, qps, client, backend, proxy, switches, cores, busy []float64
		var added, ratio, overRelay [2][]float64
		for round := 1; round <= run.Config.Rounds; round++ {
			s, ok := byKey[key{k.placement, k.kind, round}]
			if !ok {
				continue
			}
			p50, p90, p99 = append(p50, s.P50), append(p90, s.P90), append(p99, s.P99)
			fp50, fp99 = append(fp50, s.FortioP50), append(fp99, s.FortioP99)
			qps, client, backend = append(qps, s.QPS), append(client, s.ClientCPU), append(backend, s.BackendCPU)
			proxy, switches, cores = append(proxy, s.ProxyCPU), append(switches, s.ProxySwitches), append(cores, s.ProxyCores)
			busy = append(busy, s.MachineBusy)
			if d, ok := byKey[key{k.placement, l7bDirect, round}]; ok && k.kind != l7bDirect {
				added[0], added[1] = append(added[0], s.P50-d.P50), append(added[1], s.P99-d.P99)
				ratio[0], ratio[1] = append(ratio[0], s.P50/d.P50), append(ratio[1], s.P99/d.P99)
			}
			if rl, ok := byKey[key{k.placement, l7bRelay, round}]; ok && k.kind == l7bL7 {
				overRelay[0], overRelay[1] = append(overRelay[0], s.P50-rl.P50), append(overRelay[1], s.P99-rl.P99)
			}
		}
		r := l7bRow{Placement: k.placement, Kind: k.kind, Rounds: len(p50), P50: spread(p50), P90: spread(p90), P99: spread(p99),
			FortioP50: spread(fp50), FortioP99: spread(fp99),
			QPS: spread(qps), ClientCPU: spread(client), BackendCPU: spread(backend), ProxyCPU: spread(proxy),
			ProxySwitches: spread(switches), ProxyCores: spread(cores), MachineBusy: spread(busy)}
		if len(added[0]) > 0 {
			r.Added = &[2]sbStat{spread(added[0]), spread(added[1])}
			r.Ratio = &[2]sbStat{spread(ratio[0]), spread(ratio[1])}
		}
		if len(overRelay[0]) > 0 {
			r.OverRelay = &[2]sbStat{spread(overRelay[0]), spread(overRelay[1])}
		}
		rows = append(rows, r)
	}
	return rows
}

// renderL7 is the benchmark's report, in Markdown.
func renderL7(run l7bRun, rows []l7bRow) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	c := run.Config
	w("L7 benchmark: `fortio %s <url>` from the frontend pod (n1), keep-alive HTTP/1.1; %d measured rounds after a warm-up, "+
		"paths rotated each round. Figures: median over the rounds (lowest–highest); latencies in µs, exact per request.",
		strings.Join(strings.Fields(c.LoadFlags), " "), c.Rounds)
	w("")
	w("| placement | path | p50 µs | p90 µs | p99 µs | fortio's histogram p50, p99 | req/s | machine busy |")
	w("|---|---|---|---|---|---|---|---|")
	for _, r := range rows {
		w("| %s | %s | %s | %s | %s | %.0f, %.0f | %.0f | %s |", r.Placement, r.Kind, fmtStat(r.P50, "%.0f"), fmtStat(r.P90, "%.0f"),
			fmtStat(r.P99, "%.0f"), r.FortioP50.Median, r.FortioP99.Median, r.QPS.Median, fmtStat(sbStat{Min: r.MachineBusy.Min * 100, Median: r.MachineBusy.Median * 100, Max: r.MachineBusy.Max * 100}, "%.0f%%"))
	}
	w("")
	w("CPU time per request, µs (the client pod is fortio's, and on the relay paths the relay's too; the proxy is n1's, and its figures for the other paths are its idle work):")
	w("")
	w("| placement | path | client pod | backend pod | proxy | proxy context switches/req | proxy cores busy |")
	w("|---|---|---|---|---|---|---|")
	for _, r := range rows {
		w("| %s | %s | %s | %s | %s | %s | %s |", r.Placement, r.Kind, fmtStat(r.ClientCPU, "%.0f"), fmtStat(r.BackendCPU, "%.0f"),
			fmtStat(r.ProxyCPU, "%.0f"), fmtStat(r.ProxySwitches, "%.1f"), fmtStat(r.ProxyCores, "%.3f"))
	}
	w("")
	w("Against direct, round by round (the same round's direct load):")
	w("")
	w("| placement | path | added p50 µs | added p99 µs | p50 ratio | p99 ratio | goal (L7: ≤ %d µs added at p50, ≤ %d µs at p99) |", l7bGoalP50, l7bGoalP99)
	w("|---|---|---|---|---|---|---|")
	for _, r := range rows {
		if r.Added == nil {
			continue
		}
		goal := "–"
		if r.Kind == l7bL7 {
			goal = fmt.Sprintf("p50 %s, p99 %s", metOrMissed(r.Added[0].Median <= l7bGoalP50), metOrMissed(r.Added[1].Median <= l7bGoalP99))
		}
		w("| %s | %s | %s | %s | %s | %s | %s |", r.Placement, r.Kind, fmtAdded(r.Added[0]), fmtAdded(r.Added[1]),
			fmtStat(r.Ratio[0], "%.2f"), fmtStat(r.Ratio[1], "%.2f"), goal)
	}
	var over []l7bRow
	for _, r := range rows {
		if r.OverRelay != nil {
			over = append(over, r)
		}
	}
	if len(over) > 0 {
		w("")
		w("The proxy against the plain TCP relay at its place, round by round: what HTTP adds beyond the least a user-space hop costs here:")
		w("")
		w("| placement | L7 p50 minus relay p50, µs | L7 p99 minus relay p99, µs | relay's own added p50 and p99 over direct, µs |")
		w("|---|---|---|---|")
		for _, r := range over {
			floor := "–"
			for _, f := range rows {
				if f.Placement == r.Placement && f.Kind == l7bRelay && f.Added != nil {
					floor = fmtAdded(f.Added[0]) + ", " + fmtAdded(f.Added[1])
				}
			}
			w("| %s | %s | %s | %s |", r.Placement, fmtAdded(r.OverRelay[0]), fmtAdded(r.OverRelay[1]), floor)
		}
	}
	mem := run.Memory
	if mem.Conns > 0 {
		w("")
		w("Proxy memory (n1's `sluice proxy`, open-file limit %d), %d connections from the frontend pod through the L7 VIP to web-v1, "+
			"one request on each:", mem.OpenFiles, mem.Conns)
		w("")
		w("| when | client conns | upstream conns | VmRSS MiB | RssAnon MiB | VmRSS over before, per 1,000 conns |")
		w("|---|---|---|---|---|---|")
		for _, r := range []struct {
			name string
			v    l7bRSS
		}{{"before", mem.Before}, {"every request in flight", mem.InFlight}, {"responses in, connections kept open", mem.Idle}} {
			per := "–"
			if r.v != mem.Before {
				per = fmt.Sprintf("%+.1f MiB", perThousand(r.v.RSS-mem.Before.RSS, mem.Conns))
			}
			w("| %s | %d | %d | %.1f | %.1f | %s |", r.name, r.v.Down, r.v.Up, r.v.RSS, r.v.Anon, per)
		}
	}
	return b.String()
}

// fmtAdded shows an added time with its sign, and its range.
func fmtAdded(s sbStat) string { return fmt.Sprintf("%+.0f (%.0f–%.0f)", s.Median, s.Min, s.Max) }

func metOrMissed(ok bool) string {
	if ok {
		return "met"
	}
	return "**missed**"
}

// The summary compares each round with direct's of the same round, leaves
// out the warm-up, and the report judges the L7 goals.
func TestL7BenchSummary(t *testing.T) {
	s := func(placement, kind string, round int, p50, p99 float64) l7bSample {
		return l7bSample{Placement: placement, Kind: kind, Round: round, P50: p50, P99: p99, QPS: 500}
	}
	run := l7bRun{Config: l7bConfig{Rounds: 3, LoadFlags: "load -qps 500"}, Samples: []l7bSample{
		s(sbSame, l7bL7, 0, 9000, 9000), s(sbSame, l7bDirect, 0, 1, 1), // warm-up: ignored
		s(sbSame, l7bL7, 1, 200, 900), s(sbSame, l7bDirect, 1, 100, 300),
		s(sbSame, l7bDirect, 2, 120, 400), s(sbSame, l7bL7, 2, 300, 2000),
		s(sbSame, l7bL7, 3, 180, 1000), s(sbSame, l7bDirect, 3, 90, 350),
		s(sbCross, l7bDirect, 1, 100, 300), s(sbCross, l7bL4, 1, 110, 330),
	}}
	rows := summarizeL7(run)
	if len(rows) != 4 || rows[0].Kind != l7bDirect || rows[1].Kind != l7bL7 || rows[2].Placement != sbCross || rows[3].Kind != l7bL4 {
		t.Fatalf("rows: %+v", rows)
	}
	l7 := rows[1]
	near := func(got sbStat, min, med, max float64) bool {
		return math.Abs(got.Min-min)+math.Abs(got.Median-med)+math.Abs(got.Max-max) < 1e-9
	}
	// added p50: 100, 180, 90; p99: 600, 1600, 650; p50 ratios 2, 2.5, 2.
	if l7.Rounds != 3 || !near(l7.Added[0], 90, 100, 180) || !near(l7.Added[1], 600, 650, 1600) || !near(l7.Ratio[0], 2, 2, 2.5) {
		t.Errorf("l7 row: %+v added %+v ratio %+v", l7, *l7.Added, *l7.Ratio)
	}
	if rows[0].Added != nil {
		t.Errorf("direct compared with itself: %+v", *rows[0].Added)
	}
	md := renderL7(run, rows)
	for _, want := range []string{"| same-node | l7 | +100 (90–180) | +650 (600–1600) | 2.00 (2.00–2.50) |", "p50 met, p99 met", "| cross-node | l4 | +10 (10–10) |"} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
	// The proxy over the relay, round by round: p50 +50, +60; p99 +100,
	// -500. The relay over direct: p50 +50, +120; p99 +500, +2100. (The
	// median of two is the higher.)
	run.Samples = append(run.Samples, s(sbSame, l7bRelay, 1, 150, 800), s(sbSame, l7bRelay, 2, 240, 2500))
	rows = summarizeL7(run)
	if len(rows) != 5 || rows[1].Kind != l7bRelay || rows[2].Kind != l7bL7 || rows[1].OverRelay != nil {
		t.Fatalf("rows with a relay: %+v", rows)
	}
	if o := rows[2].OverRelay; o == nil || !near(o[0], 50, 60, 60) || !near(o[1], -500, 100, 100) {
		t.Errorf("l7 over relay: %+v", o)
	}
	md = renderL7(run, rows)
	for _, want := range []string{"| same-node | relay | +120 (50–120) |", "| same-node | +60 (50–60) | +100 (-500–100) | +120 (50–120), +2100 (500–2100) |"} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
	run.Samples = run.Samples[:len(run.Samples)-2]

	run.Samples[2].P50 = 400 // round 1: +300
	run.Samples[6].P50 = 400 // round 3: +310
	if md := renderL7(run, summarizeL7(run)); !strings.Contains(md, "p50 **missed**, p99 met") {
		t.Errorf("a median of +300 µs at p50 met the goal:\n%s", md)
	}
}
