package e2e_test

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/stats"

	"github.com/cilium/ebpf"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/sluice-mesh/sluice/dataplane"
	"github.com/sluice-mesh/sluice/dataplane/model"
	"github.com/sluice-mesh/sluice/e2e/testenv"
	"github.com/sluice-mesh/sluice/sockops/observe"
	"github.com/sluice-mesh/sluice/xds"
	"github.com/sluice-mesh/sluice/xds/mesh"
)

// bigMesh describes services × endpoints with distinct VIPs.
func bigMesh(services, endpoints int) *mesh.Mesh {
	m := &mesh.Mesh{TrustDomain: "cluster.local"}
	for i := range services {
		s := mesh.Service{
			Name:      fmt.Sprintf("svc%d", i),
			Namespace: fmt.Sprintf("ns%d", i%50),
			VIPs:      []netip.Addr{netip.AddrFrom4([4]byte{10, 96, byte(i / 250), byte(i%250 + 1)})},
			Ports:     []mesh.Port{{Port: 80, Protocol: model.TCP, TargetPort: 8080}},
		}
		for j := range endpoints {
			s.Endpoints = append(s.Endpoints, mesh.Endpoint{
				Address: netip.AddrFrom4([4]byte{10, byte(100 + i/60000), byte(i / 250 % 240), byte(j + 1 + 10*(i%20))}),
				Weight:  1, Health: model.HealthHealthy,
			})
		}
		m.Services = append(m.Services, s)
	}
	return m
}

func snapshotOf(version string, r mesh.Resources) *cachev3.Snapshot {
	res := map[resourcev3.Type][]types.Resource{}
	for _, l := range r.Listeners {
		res[resourcev3.ListenerType] = append(res[resourcev3.ListenerType], l)
	}
	for _, c := range r.Clusters {
		res[resourcev3.ClusterType] = append(res[resourcev3.ClusterType], c)
	}
	for _, e := range r.Endpoints {
		res[resourcev3.EndpointType] = append(res[resourcev3.EndpointType], e)
	}
	snap, err := cachev3.NewSnapshot(version, res)
	if err != nil {
		panic(err)
	}
	return snap
}

// meshHash serves one snapshot to every node.
type meshHash struct{}

func (meshHash) ID(*corev3.Node) string { return "mesh" }

// xdsServer is go-control-plane's ADS server on loopback, in process.
type xdsServer struct {
	addr  string
	cache cachev3.SnapshotCache
}

func startXDSServer(tb testing.TB, opts ...grpc.ServerOption) *xdsServer {
	s := &xdsServer{cache: cachev3.NewSnapshotCache(true, meshHash{}, nil)}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	s.addr = lis.Addr().String()
	srv := grpc.NewServer(opts...)
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(srv, serverv3.NewServer(context.Background(), s.cache, nil))
	go srv.Serve(lis)
	tb.Cleanup(srv.Stop)
	return s
}

func (s *xdsServer) set(tb testing.TB, snap *cachev3.Snapshot) {
	if err := s.cache.SetSnapshot(context.Background(), "mesh", snap); err != nil {
		tb.Fatal(err)
	}
}

// timedApplier is the real dataplane, reporting when each state of the
// expected number of services took effect: when Apply returns, the new
// generation is the one the kernel programs read.
type timedApplier struct {
	dp       *dataplane.Dataplane
	services int
	applied  chan time.Time
}

func newTimedApplier(dp *dataplane.Dataplane, services int) *timedApplier {
	return &timedApplier{dp: dp, services: services, applied: make(chan time.Time, 1)}
}

func (a *timedApplier) Apply(s model.State) error {
	err := a.dp.Apply(s)
	if err == nil && len(s.Services) == a.services {
		select {
		case a.applied <- time.Now():
		default:
		}
	}
	return err
}

// node opens a real dataplane on a fresh cgroup and pin directory.
func node(tb testing.TB) *dataplane.Dataplane {
	cg := testenv.Cgroup(tb, "", testenv.UniqueName("sluice-bench-"))
	pin := testenv.PinDir(tb)
	dp, err := dataplane.Open(dataplane.Options{PinDir: pin, Cgroup: cg})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := dp.Teardown(); err != nil {
			tb.Error(err)
		}
	})
	return dp
}

func runClient(tb testing.TB, addr string, app xds.Applier, dial ...grpc.DialOption) *xds.Client {
	c, err := xds.New(xds.Options{Server: addr, Node: xds.NodeInfo{ID: "bench"}, Applier: app, Mode: xds.ModeDelta, Logger: benchLogger(),
		CollectWhenIdle: xds.IdleCollectAfter, // as the agent
		DialOptions:     dial})
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = c.Run(ctx); close(done) }()
	tb.Cleanup(func() { cancel(); <-done })
	return c
}

func waitServices(tb testing.TB, dp *dataplane.Dataplane, n int) {
	deadline := time.Now().Add(60 * time.Second)
	for dp.Status().Services != n {
		if time.Now().After(deadline) {
			tb.Fatalf("dataplane has %d services, want %d", dp.Status().Services, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// BenchmarkXDSFullSync10k: a freshly started client connected to a control
// plane process that then takes a 10,000-service × 10-endpoint snapshot.
// Reported: from the control plane's first response to the state being in
// force in the kernel maps (client-side), and from asking the control plane
// to set the snapshot (which includes go-control-plane hashing it).
func BenchmarkXDSFullSync10k(b *testing.B) {
	testenv.RequirePrivileged(b)
	client, total := measureFullSync(b, 10000, b.N)
	report(b, "client", client)
	report(b, "total", total)
}

// measureFullSync runs BenchmarkXDSFullSync10k's measurement rounds times
// with services × 10 endpoints; with a *testing.B, only the wait for the
// state is timed.
func measureFullSync(tb testing.TB, n, rounds int) (client, total []time.Duration) {
	b, _ := tb.(*testing.B)
	for range rounds {
		if b != nil {
			b.StopTimer()
		}
		cp := startControlPlaneProcess(tb, n, true)
		dp := node(tb)
		app := newTimedApplier(dp, n)
		runClient(tb, cp.addr, app)
		time.Sleep(100 * time.Millisecond) // connected, nothing sent yet
		if b != nil {
			b.StartTimer()
		}
		start := time.Now()
		cp.send("set")
		var at time.Time
		select {
		case at = <-app.applied:
		case <-time.After(60 * time.Second):
			tb.Fatal("the full state was not applied")
		}
		if b != nil {
			b.StopTimer()
		}
		waitServices(tb, dp, n)
		total = append(total, at.Sub(start))
		client = append(client, at.Sub(<-cp.sent))
	}
	return client, total
}

// xdsServerEnv makes the test binary a control plane process for
// BenchmarkXDSEndpointChange10k (see runXDSServerProcess).
const xdsServerEnv = "SLUICE_BENCH_XDS_SERVER"

// runXDSServerProcess serves a mesh of as many services as the variable
// says (from the start, or on the line "set" on stdin if the variable with
// suffix _EMPTY is set). It prints its address, then for every line
// "change K" changes one endpoint weight of service K, and prints
// "sent <unix ns>" when it hands a Delta response to the stream. Running
// it as its own process keeps its garbage collection off the client's heap,
// and its work (go-control-plane re-hashes every resource of a new
// snapshot) in its own process, as in a deployment; it still shares this
// machine's two cores with the client.
func runXDSServerProcess() int {
	var n int
	fmt.Sscan(os.Getenv(xdsServerEnv), &n)
	res := bigMesh(n, 10).Resources()
	cache := cachev3.NewSnapshotCache(true, meshHash{}, nil)
	if os.Getenv(xdsServerEnv+"_EMPTY") == "" {
		if err := cache.SetSnapshot(context.Background(), "mesh", snapshotOf("0", res)); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var out sync.Mutex
	cb := serverv3.CallbackFuncs{StreamDeltaResponseFunc: func(_ int64, req *discoverygrpc.DeltaDiscoveryRequest, resp *discoverygrpc.DeltaDiscoveryResponse) {
		out.Lock()
		fmt.Printf("sent %d\n", time.Now().UnixNano())
		out.Unlock()
		if benchVerbose() {
			fmt.Fprintf(os.Stderr, "CP %s resp %s n=%d\n", time.Now().Format("15:04:05.000"), req.GetTypeUrl(), len(resp.GetResources()))
		}
	}, StreamDeltaRequestFunc: func(_ int64, req *discoverygrpc.DeltaDiscoveryRequest) error {
		if benchVerbose() {
			fmt.Fprintf(os.Stderr, "CP %s req %s sub=%d nonce=%s\n", time.Now().Format("15:04:05.000"), req.GetTypeUrl(), len(req.GetResourceNamesSubscribe()), req.GetResponseNonce())
		}
		return nil
	}}
	srv := grpc.NewServer()
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(srv, serverv3.NewServer(context.Background(), cache, cb))
	go srv.Serve(lis)
	out.Lock()
	fmt.Printf("addr %s\n", lis.Addr())
	out.Unlock()
	sc := bufio.NewScanner(os.Stdin)
	for v := 1; sc.Scan(); v++ {
		var k int
		if _, err := fmt.Sscanf(sc.Text(), "change %d", &k); err == nil {
			res.Endpoints[k] = flipWeight(res.Endpoints[k])
		} else if sc.Text() != "set" {
			continue
		}
		if err := cache.SetSnapshot(context.Background(), "mesh", snapshotOf(strconv.Itoa(v), res)); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	return 0
}

// BenchmarkXDSEndpointChange10k: with 10,000 services × 10 endpoints in
// force, one endpoint's weight changes per iteration. The control plane runs
// as its own process. Reported, p50 and p99, to the change being in force in
// the kernel maps: from the control plane handing the Delta response to the
// stream (client: what a control plane sees of the agent), from the client
// having the response (received: Sluice's own work), and from asking the
// control plane for the change (total: includes go-control-plane building
// and hashing the new snapshot).
func BenchmarkXDSEndpointChange10k(b *testing.B) {
	testenv.RequirePrivileged(b)
	client, received, total := measureEndpointChanges(b, 10000, b.N)
	report(b, "client", client)
	report(b, "received", received)
	report(b, "total", total)
}

// measureEndpointChanges makes BenchmarkXDSEndpointChange10k's changes
// with n services × 10 endpoints in force; with a *testing.B, only the
// changes are timed.
func measureEndpointChanges(tb testing.TB, n, changes int) (client, received, total []time.Duration) {
	cp := startControlPlaneProcess(tb, n, false)
	dp := node(tb)
	app := newTimedApplier(dp, n)
	var rc receiveClock
	runClient(tb, cp.addr, app, grpc.WithStatsHandler(&rc))
	waitServices(tb, dp, n)
	time.Sleep(200 * time.Millisecond) // the initial responses have all been sent
	drain(app.applied)
	cp.drainSent()

	if b, ok := tb.(*testing.B); ok {
		b.ResetTimer()
		defer b.StopTimer()
	}
	for i := range changes {
		start := time.Now()
		cp.send(fmt.Sprintf("change %d", i%n))
		var at time.Time
		select {
		case at = <-app.applied:
		case <-time.After(30 * time.Second):
			tb.Fatalf("change %d not applied", i)
		}
		total = append(total, at.Sub(start))
		client = append(client, at.Sub(<-cp.sent))
		received = append(received, at.Sub(time.Unix(0, rc.last.Load())))
	}
	return client, received, total
}

// controlPlaneProcess is runXDSServerProcess running as a child process.
type controlPlaneProcess struct {
	addr  string
	stdin io.WriteCloser
	sent  chan time.Time
}

func startControlPlaneProcess(tb testing.TB, services int, empty bool) *controlPlaneProcess {
	srv := exec.Command(os.Args[0])
	srv.Env = append(os.Environ(), fmt.Sprintf("%s=%d", xdsServerEnv, services))
	if empty {
		srv.Env = append(srv.Env, xdsServerEnv+"_EMPTY=1")
	}
	srv.Stderr = os.Stderr
	stdin, _ := srv.StdinPipe()
	stdout, _ := srv.StdoutPipe()
	if err := srv.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { stdin.Close(); _ = srv.Wait() })
	lines := bufio.NewScanner(stdout)
	if !lines.Scan() || !strings.HasPrefix(lines.Text(), "addr ") {
		tb.Fatalf("control plane process: %q", lines.Text())
	}
	cp := &controlPlaneProcess{addr: strings.TrimPrefix(lines.Text(), "addr "), stdin: stdin, sent: make(chan time.Time, 1024)}
	go func() {
		for lines.Scan() {
			var ns int64
			if _, err := fmt.Sscanf(lines.Text(), "sent %d", &ns); err == nil {
				cp.sent <- time.Unix(0, ns)
			}
		}
	}()
	return cp
}

func (cp *controlPlaneProcess) send(cmd string) { fmt.Fprintln(cp.stdin, cmd) }

func (cp *controlPlaneProcess) drainSent() {
	for len(cp.sent) > 0 {
		<-cp.sent
	}
}

func drain(c chan time.Time) {
	for {
		select {
		case <-c:
		default:
			return
		}
	}
}

func report(b *testing.B, name string, d []time.Duration) {
	slices.Sort(d)
	q := func(p float64) float64 { return float64(d[int(p*float64(len(d)-1))].Microseconds()) / 1000 }
	b.ReportMetric(q(0.5), name+"-p50-ms")
	b.ReportMetric(q(0.99), name+"-p99-ms")
	if benchVerbose() {
		fmt.Fprintln(os.Stderr, name, "tail", d[max(0, len(d)-12):])
	}
}

// BenchmarkAgentRSS measures the resident memory of the real agent binary
// holding 10,000 services × 10 endpoints from an external control plane.
func BenchmarkAgentRSS10k(b *testing.B) {
	testenv.RequirePrivileged(b)
	bin := buildSluice(b)
	for range b.N {
		m := measureAgentMemory(b, bin, 10000)
		b.ReportMetric(m.RSS, "rss-MiB")
		b.ReportMetric(m.Peak, "peak-rss-MiB")
		b.ReportMetric(m.Anon, "anon-rss-MiB")
		b.ReportMetric(m.Binary, "binary-rss-MiB")
		b.ReportMetric(m.MappedMaps, "mapped-maps-rss-MiB")
		b.ReportMetric(m.Churn, "churn-rss-MiB")
		b.ReportMetric(m.Settled, "settled-rss-MiB")
		b.ReportMetric(m.Maps, "bpf-maps-MiB")
	}
}

// agentHeap names a file for the heap profile of the agent measureAgentMemory
// runs, taken once its state is in force (go tool pprof reads it).
var agentHeap = flag.String("agent.heap-profile", "", "write the heap profile of the agent the memory measurement runs, once its state is in force, to this file")

// agentMemory is what measureAgentMemory found, in MiB.
type agentMemory struct {
	RSS, Peak, Anon float64 // once the state is in force
	// Where RSS's pages are, then: the Go heap's arenas and the other
	// private pages (anonymous), the sluice executable's pages (shared
	// with every process running it, reclaimable), BPF maps mapped into
	// the process (the flow ring buffer, whose data pages are mapped
	// twice; kernel memory Maps counts already), and the rest (libc,
	// the vdso).
	Binary, MappedMaps, Other float64
	Churn                     float64 // right after a burst of endpoint changes
	Settled                   float64 // two quiet seconds later
	Maps                      float64 // kernel memory of the agent's BPF maps (memlock)
}

// measureAgentMemory runs the real agent binary fed n services × 10
// endpoints by a control plane in this process, and reads its memory.
func measureAgentMemory(tb testing.TB, bin string, n int) agentMemory {
	srv := startXDSServer(tb)
	res := bigMesh(n, 10).Resources()
	srv.set(tb, snapshotOf("0", res))
	cg := testenv.Cgroup(tb, "", testenv.UniqueName("sluice-bench-"))
	pin := testenv.PinDir(tb)
	sock := filepath.Join(tb.TempDir(), "agent.sock")
	agent := exec.Command(bin, "agent", "--xds", srv.addr, "--cgroup", cg, "--pin-dir", pin, "--node-id", "rss", "--log-level", "warn",
		"--socket", sock, "--metrics-addr", "")
	agent.Stderr = os.Stderr
	if err := agent.Start(); err != nil {
		tb.Fatal(err)
	}
	// In force when both generations of the pinned service map hold the state.
	deadline := time.Now().Add(60 * time.Second)
	for pinnedServices(pin) != 2*n {
		if time.Now().After(deadline) {
			tb.Fatalf("agent did not apply the state (%d entries)", pinnedServices(pin))
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(time.Second) // let the agent settle (GC) before reading its memory
	var m agentMemory
	m.RSS, m.Peak, m.Anon = procMemory(tb, agent.Process.Pid)
	var err error
	if m.Binary, m.MappedMaps, m.Other, err = rssByMapping(agent.Process.Pid, bin); err != nil {
		tb.Fatal(err)
	}
	m.Maps = pinnedMapMemory(tb, pin)
	if *agentHeap != "" {
		if err := saveHeapProfile(sock, *agentHeap); err != nil {
			tb.Fatal(err)
		}
	}
	// Then churn: one endpoint weight changes at a time, as fast as
	// the control plane makes snapshots (a few per second).
	// Memory is read right after the last change (churn), and after
	// two quiet seconds (settled).
	for k := range churnChanges {
		res.Endpoints[k] = flipWeight(res.Endpoints[k])
		srv.set(tb, snapshotOf(strconv.Itoa(k+1), res))
	}
	time.Sleep(100 * time.Millisecond) // applied
	m.Churn, _, _ = procMemory(tb, agent.Process.Pid)
	time.Sleep(2 * time.Second)
	m.Settled, _, _ = procMemory(tb, agent.Process.Pid)
	_ = agent.Process.Signal(os.Interrupt)
	_ = agent.Wait()
	if err := dataplane.Teardown(pin); err != nil {
		tb.Fatal(err)
	}
	return m
}

// pinnedMapMemory adds up the kernel memory (memlock) of the maps pinned
// in pin, in MiB.
func pinnedMapMemory(tb testing.TB, pin string) float64 {
	entries, err := os.ReadDir(pin)
	if err != nil {
		tb.Fatal(err)
	}
	var total uint64
	for _, e := range entries {
		m, err := ebpf.LoadPinnedMap(filepath.Join(pin, e.Name()), nil)
		if err != nil {
			continue // a pinned link or program
		}
		info, err := m.Info()
		m.Close()
		if err != nil {
			tb.Fatalf("map %s: %v", e.Name(), err)
		}
		if n, ok := info.Memlock(); ok {
			total += n
		}
	}
	return float64(total) / (1 << 20)
}

func pinnedServices(pin string) int {
	m, err := ebpf.LoadPinnedMap(filepath.Join(pin, "sl_services"), nil)
	if err != nil {
		return 0
	}
	defer m.Close()
	var k, v []byte
	n := 0
	it := m.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	return n
}

// rssByMapping splits the resident pages of process pid that are not
// anonymous, in MiB: those of executable exe, those of BPF maps, and the
// others.
func rssByMapping(pid int, exe string) (binary, maps, other float64, err error) {
	exe, err = filepath.EvalSymlinks(exe)
	if err != nil {
		return 0, 0, 0, err
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return 0, 0, 0, err
	}
	var name string
	var rss, anon float64
	flush := func() {
		switch shared := (rss - anon) / 1024; {
		case name == exe:
			binary += shared
		case name == "anon_inode:bpf-map":
			maps += shared
		default:
			other += shared
		}
		rss, anon = 0, 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) == 0:
		case strings.Contains(f[0], "-") && !strings.HasSuffix(f[0], ":"): // a mapping's first line
			flush()
			name = ""
			if len(f) >= 6 {
				name = strings.Join(f[5:], " ")
			}
		case f[0] == "Rss:" && len(f) >= 2:
			rss, _ = strconv.ParseFloat(f[1], 64)
		case f[0] == "Anonymous:" && len(f) >= 2:
			anon, _ = strconv.ParseFloat(f[1], 64)
		}
	}
	flush()
	return binary, maps, other, nil
}

// procMemory returns VmRSS, VmHWM and RssAnon (RSS less the pages of
// the executable and other files) of a process in MiB.
func procMemory(tb testing.TB, pid int) (rss, hwm, anon float64) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		tb.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "VmRSS:":
			rss = kb / 1024
		case "VmHWM:":
			hwm = kb / 1024
		case "RssAnon:":
			anon = kb / 1024
		}
	}
	return rss, hwm, anon
}

// benchVerbose reports whether SLUICE_BENCH_LOG is set: the client then
// logs at debug level, the control plane process logs each request and
// response with the time, and the latency benchmarks print their slowest
// samples. All of it goes to stderr.
func benchVerbose() bool { return os.Getenv("SLUICE_BENCH_LOG") != "" }

func benchLogger() *slog.Logger {
	if !benchVerbose() {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// churnChanges is how many one-endpoint changes BenchmarkAgentRSS10k makes
// before reading the agent's memory again.
const churnChanges = 40

// flipWeight returns a copy of cla with the weight of its first endpoint
// changed (it alternates between 1 and 2).
func flipWeight(cla *endpointv3.ClusterLoadAssignment) *endpointv3.ClusterLoadAssignment {
	cla = proto.Clone(cla).(*endpointv3.ClusterLoadAssignment)
	w := cla.Endpoints[0].LbEndpoints[0].LoadBalancingWeight
	w.Value = 3 - w.Value
	return cla
}

// receiveClock is a gRPC stats handler that keeps the time the client last
// had a whole message (received and decoded).
type receiveClock struct{ last atomic.Int64 }

func (r *receiveClock) HandleRPC(_ context.Context, s stats.RPCStats) {
	if in, ok := s.(*stats.InPayload); ok {
		r.last.Store(in.RecvTime.UnixNano())
	}
}

func (r *receiveClock) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context {
	return ctx
}

func (r *receiveClock) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return ctx
}

func (r *receiveClock) HandleConn(context.Context, stats.ConnStats) {}

// buildSluice builds the sluice binary into a temporary directory.
func buildSluice(tb testing.TB) string {
	tb.Helper()
	bin := filepath.Join(tb.TempDir(), "sluice")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/sluice-mesh/sluice/cmd/sluice").CombinedOutput(); err != nil {
		tb.Fatalf("build: %v\n%s", err, out)
	}
	return bin
}

// saveHeapProfile writes the heap profile of the agent whose local API is
// at socket to path.
func saveHeapProfile(socket, path string) error {
	c, err := observe.Dial(socket)
	if err != nil {
		return err
	}
	defer c.Close()
	data, err := c.Profile(context.Background(), "heap")
	if err != nil {
		return err
	}
	return os.WriteFile(path, data, 0o644)
}
