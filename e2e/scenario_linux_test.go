package e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/e2e/cluster"
	"github.com/sluice-mesh/sluice/e2e/testenv"
	"github.com/sluice-mesh/sluice/sockops/flow"
)

// The scenarios run real clients (curl, wrk, fortio) in the pods of a
// two-node simulated cluster against real backends (fortio's HTTP echo
// server), through agents fed from a mesh file the test edits as it goes.
// `make e2e` runs them: go test -run '^TestScenario' ./e2e/

const (
	simWebVIP     = "10.96.0.10"
	simAPIVIP     = "10.96.0.20"
	simWebURL     = "http://" + simWebVIP + "/echo"
	simAPIURL     = "http://" + simAPIVIP + "/echo"
	simTargetPort = 8080
	simTrust      = "spiffe://cluster.local/ns/"
)

// simPod places a pod: its node, name and address, the namespace and
// service account it runs as, and whether it runs an HTTP backend.
type simPod struct {
	node, name, ip, namespace, sa string
	backend                       bool
}

// sim is a simulated cluster with its agents, the pods' backends and the
// client tools.
type sim struct {
	t         *testing.T
	c         *cluster.Cluster
	bin       string
	mesh      *cluster.MeshFile
	nodes     map[string]*cluster.Node
	pods      map[string]*cluster.Pod
	agents    map[string]*cluster.Agent
	server    map[string]*exec.Cmd // the backend running in each backend pod
	serverLog map[string]*syncBuffer
	curl      string
	fortio    string
}

// newSim builds the sluice binary, the nodes and pods, starts the
// backends, and writes the mesh file: the pods as its workloads, and the
// services that services returns once the pods exist. At the end of the
// test it closes the cluster and fails the test if anything of it is left
// on the host; if the test failed, it logs the agents' logs first.
func newSim(t *testing.T, pods []simPod, services func(*sim) []cluster.Service) *sim {
	t.Helper()
	testenv.RequirePrivileged(t)
	s := &sim{
		t:     t,
		nodes: map[string]*cluster.Node{}, pods: map[string]*cluster.Pod{},
		agents: map[string]*cluster.Agent{}, server: map[string]*exec.Cmd{}, serverLog: map[string]*syncBuffer{},
		curl: testenv.Tool(t, "curl"), fortio: testenv.Tool(t, "fortio"),
	}
	s.bin = buildSluice(t)
	c, err := cluster.New()
	if err != nil {
		t.Fatal(err)
	}
	s.c = c
	t.Logf("simulated cluster %s", c.ID)
	t.Cleanup(func() {
		if t.Failed() {
			for name, a := range s.agents {
				t.Logf("--- agent %s log:\n%s", name, a.Log())
			}
		}
		if err := c.Close(); err != nil {
			t.Errorf("close cluster %s: %v", c.ID, err)
		}
		left, err := cluster.Leftovers(c.ID)
		if err != nil {
			t.Errorf("look for leftovers of cluster %s: %v", c.ID, err)
		}
		if len(left) > 0 {
			t.Errorf("cluster %s left behind: %v", c.ID, left)
		}
	})

	var m cluster.Mesh
	for _, p := range pods {
		if s.nodes[p.node] == nil {
			if s.nodes[p.node], err = c.AddNode(p.node); err != nil {
				t.Fatal(err)
			}
		}
		pod, err := s.nodes[p.node].AddPod(p.name, netip.MustParseAddr(p.ip))
		if err != nil {
			t.Fatal(err)
		}
		s.pods[p.name] = pod
		m.Workloads = append(m.Workloads, pod.Workload(p.namespace, p.sa))
		if p.backend {
			s.startBackend(pod)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, p := range pods {
		if p.backend {
			pod := s.pods[p.name]
			if err := pod.WaitListening(ctx, simBackendAddr(pod).String()); err != nil {
				t.Fatalf("%v; its log:\n%s", err, s.serverLog[p.name])
			}
		}
	}
	m.Services = services(s)
	if s.mesh, err = cluster.WriteMesh(filepath.Join(c.Dir, "mesh.yaml"), m); err != nil {
		t.Fatal(err)
	}
	return s
}

// startBackend runs fortio's HTTP echo server in pod on port 8080; every
// answer carries the header X-Backend with the pod's name.
func (s *sim) startBackend(pod *cluster.Pod) {
	s.t.Helper()
	cmd := pod.Command(context.Background(), s.fortio, "server",
		"-http-port", simBackendAddr(pod).String(),
		"-grpc-port", "disabled", "-redirect-port", "disabled", "-tcp-port", "disabled", "-udp-port", "disabled",
		"-ui-path", "", "-loglevel", "warning",
		"-echo-server-default-params", "header=X-Backend:"+pod.Name)
	cmd.Dir = s.c.Dir
	log := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = log, log
	if err := pod.Start(cmd); err != nil {
		s.t.Fatal(err)
	}
	s.server[pod.Name] = cmd
	s.serverLog[pod.Name] = log
}

func simBackendAddr(pod *cluster.Pod) netip.AddrPort {
	return netip.AddrPortFrom(pod.IP, simTargetPort)
}

// startAgents starts the agent of every node with cfg and waits until all
// are ready.
func (s *sim) startAgents(cfg cluster.AgentConfig) {
	s.t.Helper()
	start := time.Now()
	for name, n := range s.nodes {
		a, err := n.StartAgent(cfg)
		if err != nil {
			s.t.Fatal(err)
		}
		s.agents[name] = a
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, a := range s.agents {
		if err := a.Ready(ctx); err != nil {
			s.t.Fatal(err)
		}
	}
	s.t.Logf("%d agents ready %v after start", len(s.agents), time.Since(start).Round(time.Millisecond))
}

// service returns a TCP service of namespace shop on port 80 (target port
// 8080) with the pods as its endpoints.
func (s *sim) service(name, vip string, pods ...string) cluster.Service {
	svc := cluster.Service{
		Name: name, Namespace: "shop",
		VIPs:  []netip.Addr{netip.MustParseAddr(vip)},
		Ports: []cluster.Port{{Port: 80, TargetPort: simTargetPort}},
	}
	for _, p := range pods {
		svc.Endpoints = append(svc.Endpoints, cluster.Endpoint{Address: s.pods[p].IP})
	}
	return svc
}

// simAnswer is what curl reports of one request.
type simAnswer struct {
	start    time.Time // when the curl that made it started
	backend  string    // the X-Backend header: who served it
	code     int       // HTTP status; 0 if the request failed
	local    netip.AddrPort
	remote   netip.AddrPort // the peer as curl saw it
	connects int            // new connections it took
}

const simCurlFormat = "backend=%header{x-backend} code=%{http_code} local=%{local_ip}:%{local_port} " +
	"remote=%{remote_ip}:%{remote_port} connects=%{num_connects}\n"

// curlN makes n requests to url from pod with one curl process, each on a
// new connection, and returns what curl reported of each, failed requests
// included.
func (s *sim) curlN(pod, url string, n int) ([]simAnswer, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	args := []string{"-sS", "--max-time", "5", "-H", "Connection: close", "-o", "/dev/null", "-w", simCurlFormat}
	for range n {
		args = append(args, url)
	}
	p := s.pods[pod]
	start := time.Now()
	out, err := p.Output(p.Command(ctx, s.curl, args...))
	lines := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
	if len(lines) != n {
		return nil, fmt.Errorf("curl from %s made %d requests, want %d: %v\n%s", pod, len(lines), n, err, out)
	}
	answers := make([]simAnswer, n)
	for i, line := range lines {
		a := simAnswer{start: start}
		for _, field := range strings.Fields(line) {
			k, v, _ := strings.Cut(field, "=")
			switch k {
			case "backend":
				a.backend = v
			case "code":
				a.code, _ = strconv.Atoi(v)
			case "local":
				a.local, _ = netip.ParseAddrPort(v)
			case "remote":
				a.remote, _ = netip.ParseAddrPort(v)
			case "connects":
				a.connects, _ = strconv.Atoi(v)
			}
		}
		answers[i] = a
	}
	return answers, nil
}

// denied makes one request to url from pod and reports whether the
// connection was refused with EPERM, as policy refuses it. Any other
// outcome is returned as an error.
func (s *sim) denied(pod, url string) (bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p := s.pods[pod]
	cmd := p.Command(ctx, s.curl, "-sS", "-v", "--max-time", "5", "-o", "/dev/null", url)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := p.Start(cmd); err != nil {
		return false, err
	}
	err := cmd.Wait()
	switch {
	case err == nil:
		return false, nil
	case strings.Contains(stderr.String(), "Operation not permitted"):
		return true, nil
	}
	return false, fmt.Errorf("curl %s from %s: %v:\n%s", url, pod, err, stderr.String())
}

// simWait polls ok every 100 ms for up to 30 s and fails the test if it
// never holds.
func simWait(t *testing.T, what string, ok func() bool) {
	t.Helper()
	if !simPoll(ok) {
		t.Fatalf("gave up waiting: %s", what)
	}
}

// simPoll polls ok every 100 ms for up to 30 s and reports whether it held.
func simPoll(ok func() bool) bool {
	deadline := time.Now().Add(30 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(100 * time.Millisecond)
	}
	return true
}

// recordsOf returns, for each answer, the close record of its connection
// that node's agent reported as reporter, among the flows the observe
// filter args select. A connection is known by the client's address and
// port and the address of the backend that answered: a client port can be
// used again for a connection to another backend. It waits for the
// records; one that does not come fails the test, with the records of the
// same client port.
func (s *sim) recordsOf(t *testing.T, node string, reporter flow.Reporter, answers []simAnswer, args ...string) []flow.Flow {
	t.Helper()
	type conn struct{ src, dst netip.AddrPort }
	want := make([]conn, len(answers))
	for i, a := range answers {
		backend, ok := s.pods[a.backend]
		if !ok {
			t.Fatalf("answer from %q, not a pod: %+v", a.backend, a)
		}
		want[i] = conn{a.local, simBackendAddr(backend)}
	}
	var all []flow.Flow
	byConn := map[conn]flow.Flow{}
	complete := simPoll(func() bool {
		all = s.observe(t, node, args...)
		for _, f := range all {
			if f.Event == flow.EventClose && f.Reporter == reporter {
				byConn[conn{f.Source.Address, f.Destination.Address}] = f
			}
		}
		for _, c := range want {
			if _, ok := byConn[c]; !ok {
				return false
			}
		}
		return true
	})
	records := make([]flow.Flow, len(answers))
	for i, c := range want {
		f, ok := byConn[c]
		if !ok {
			var same []string
			for _, f := range all {
				if f.Source.Address == c.src {
					same = append(same, simFlow(f))
				}
			}
			t.Errorf("node %s has no %s close record of %s → %s (%s); its records from %s: %v",
				node, reporter, c.src, c.dst, answers[i].backend, c.src, same)
		}
		records[i] = f
	}
	if !complete {
		t.FailNow()
	}
	return records
}

// observe runs `sluice observe -o json --last 100000` with args on node's
// agent.
func (s *sim) observe(t *testing.T, node string, args ...string) []flow.Flow {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	flows, err := s.agents[node].Observe(ctx, append([]string{"--last", "100000"}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	return flows
}

// sourceCloses returns the close records node's agent reported as the
// source's node, among flows matching the observe filter args.
func (s *sim) sourceCloses(t *testing.T, node string, args ...string) []flow.Flow {
	t.Helper()
	var closes []flow.Flow
	for _, f := range s.observe(t, node, args...) {
		if f.Event == flow.EventClose && f.Reporter == flow.ReporterSource {
			closes = append(closes, f)
		}
	}
	return closes
}

// waitBackends waits until every agent reports want usable endpoints over
// all services (sluice_backends): an edit is in force on every node. It
// returns the time it saw that.
func (s *sim) waitBackends(t *testing.T, want int) time.Time {
	t.Helper()
	start := time.Now()
	simWait(t, fmt.Sprintf("every agent reports %d usable endpoints", want), func() bool {
		for _, a := range s.agents {
			page, err := a.Metrics(context.Background())
			if err != nil {
				return false
			}
			if v, err := cluster.MetricSum(page, "sluice_backends"); err != nil || v != float64(want) {
				return false
			}
		}
		return true
	})
	t.Logf("edit in force on every node within %v", time.Since(start).Round(time.Millisecond))
	return time.Now()
}

// scenarioPods: on each node a client (shop/frontend), a batch job
// (jobs/batch), a load generator (shop/load) and web backends; on node b
// also the api backend and web-b3, not an endpoint at first.
var scenarioPods = []simPod{
	{"a", "client-a", "10.244.1.10", "shop", "frontend", false},
	{"a", "batch-a", "10.244.1.11", "jobs", "batch", false},
	{"a", "load-a", "10.244.1.12", "shop", "load", false},
	{"a", "web-a1", "10.244.1.20", "shop", "web", true},
	{"a", "web-a2", "10.244.1.21", "shop", "web", true},
	{"b", "client-b", "10.244.2.10", "shop", "frontend", false},
	{"b", "batch-b", "10.244.2.11", "jobs", "batch", false},
	{"b", "load-b", "10.244.2.12", "shop", "load", false},
	{"b", "web-b1", "10.244.2.20", "shop", "web", true},
	{"b", "web-b2", "10.244.2.21", "shop", "web", true},
	{"b", "web-b3", "10.244.2.22", "shop", "web", true},
	{"b", "api-b", "10.244.2.30", "shop", "api", true},
}

// TestScenarioMesh runs the scenarios on one two-node cluster whose agents
// serve the mesh file themselves (--mesh): service routing from both
// nodes to backends on both, wrk and fortio load through a VIP, a policy
// that admits one service account, the flows `sluice observe` shows of all
// that, and endpoint changes under traffic. The subtests run in order and
// build on each other.
func TestScenarioMesh(t *testing.T) {
	testenv.RequirePrivileged(t)
	wrk := testenv.Tool(t, "wrk")
	s := newSim(t, scenarioPods, func(s *sim) []cluster.Service {
		api := s.service("api", simAPIVIP, "api-b")
		api.Policies = []cluster.Policy{{Name: "only-frontend", Rules: []cluster.Rule{
			{Name: "frontend", From: []cluster.Source{{ServiceAccounts: []string{"frontend"}}}},
		}}}
		return []cluster.Service{s.service("web", simWebVIP, "web-a1", "web-a2", "web-b1", "web-b2"), api}
	})
	s.startAgents(cluster.AgentConfig{Binary: s.bin, Mesh: s.mesh})
	s.waitBackends(t, 5)

	routed := map[string][]simAnswer{} // client → its answers, for the flows
	t.Run("routing", func(t *testing.T) {
		for _, client := range []string{"client-a", "client-b"} {
			answers, err := s.curlN(client, simWebURL, 24)
			if err != nil {
				t.Fatal(err)
			}
			routed[client] = answers
			byBackend := map[string]int{}
			sameNode, otherNode := 0, 0
			for _, a := range answers {
				if a.code != 200 || a.remote.String() != simWebVIP+":80" || a.connects != 1 || a.local.Addr() != s.pods[client].IP {
					t.Errorf("%s: %+v, want 200 from %s:80 on a new connection from %s", client, a, simWebVIP, s.pods[client].IP)
					continue
				}
				backend, ok := s.pods[a.backend]
				if !ok || !strings.HasPrefix(a.backend, "web-") {
					t.Errorf("%s: answered by %q, not a web backend", client, a.backend)
					continue
				}
				byBackend[a.backend]++
				if backend.Node == s.pods[client].Node {
					sameNode++
				} else {
					otherNode++
				}
			}
			t.Logf("%s → %s: %v", client, simWebVIP, byBackend)
			if sameNode == 0 || otherNode == 0 {
				t.Errorf("%s: %d answers from its node's backends, %d from the other node's; want both", client, sameNode, otherNode)
			}
			if byBackend["web-b3"] != 0 {
				t.Errorf("%s: web-b3, no endpoint, answered %d requests", client, byBackend["web-b3"])
			}
		}
	})

	t.Run("wrk", func(t *testing.T) {
		const conns = 12
		load := s.pods["load-a"]
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		out, err := load.Output(load.Command(ctx, wrk, "-t", "2", "-c", strconv.Itoa(conns), "-d", "3s", simWebURL))
		if err != nil {
			t.Fatalf("wrk: %v\n%s", err, out)
		}
		t.Logf("wrk from load-a:\n%s", out)
		m := regexp.MustCompile(`(\d+) requests in`).FindSubmatch(out)
		if m == nil {
			t.Fatalf("no request count in wrk's report")
		}
		if n, _ := strconv.Atoi(string(m[1])); n == 0 {
			t.Error("wrk made no requests")
		}
		for _, bad := range []string{"Socket errors", "Non-2xx or 3xx responses"} {
			if strings.Contains(string(out), bad) {
				t.Errorf("wrk reports %s", bad)
			}
		}
		// wrk keeps its connections open until it ends: their close
		// records show where they went. Before it starts, wrk makes one
		// more connection, without a request, to check the address.
		var used, probes []flow.Flow
		simWait(t, fmt.Sprintf("%d close records of wrk's connections on node a", conns), func() bool {
			used, probes = nil, nil
			for _, f := range s.sourceCloses(t, "a", "--from-workload", "shop/load-a", "--to-service", "shop/web") {
				if f.BytesSent == 0 && f.BytesRecv == 0 {
					probes = append(probes, f)
				} else {
					used = append(used, f)
				}
			}
			return len(used) >= conns
		})
		byBackend := map[string]int{}
		for _, f := range used {
			byBackend[f.Destination.Workload]++
			if f.BytesSent == 0 || f.BytesRecv == 0 || f.Source.Identity != simTrust+"shop/sa/load" || !strings.HasPrefix(f.Destination.Workload, "web-") {
				t.Errorf("record of a wrk connection: %s", simFlow(f))
			}
		}
		t.Logf("wrk's connections by backend: %v, and %d without a request", byBackend, len(probes))
		if len(used) != conns || len(probes) > 1 {
			t.Errorf("%d close records of wrk's connections with requests, and %d without; want %d, and at most 1", len(used), len(probes), conns)
		}
		if len(byBackend) < 2 {
			t.Errorf("wrk's %d connections all went to %v", conns, byBackend)
		}
	})

	t.Run("fortio", func(t *testing.T) {
		load := s.pods["load-b"]
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		result := filepath.Join(s.c.Dir, "fortio.json")
		out, err := load.Output(load.Command(ctx, s.fortio, "load", "-qps", "0", "-c", "4", "-t", "3s",
			"-loglevel", "warning", "-json", result, simWebURL))
		if err != nil {
			t.Fatalf("fortio load: %v\n%s", err, out)
		}
		r := readFortio(t, result)
		t.Logf("fortio from load-b: %d requests, %.0f/s, codes %v, %d sockets", r.DurationHistogram.Count, r.ActualQPS, r.RetCodes, r.SocketCount)
		if r.DurationHistogram.Count == 0 || r.RetCodes["200"] != r.DurationHistogram.Count || len(r.RetCodes) != 1 {
			t.Errorf("fortio: %d requests, codes %v; want all 200", r.DurationHistogram.Count, r.RetCodes)
		}
		if r.ErrorsDurationHistogram.Count != 0 {
			t.Errorf("fortio: %d errors", r.ErrorsDurationHistogram.Count)
		}
		var closes []flow.Flow
		simWait(t, "close records of fortio's connections on node b", func() bool {
			closes = s.sourceCloses(t, "b", "--from-workload", "shop/load-b", "--to-service", "shop/web")
			return len(closes) >= r.SocketCount
		})
		byBackend := map[string]int{}
		for _, f := range closes {
			byBackend[f.Destination.Workload]++
		}
		t.Logf("fortio's connections by backend: %v", byBackend)
		if len(closes) != r.SocketCount {
			t.Errorf("%d close records of fortio's connections, fortio used %d sockets", len(closes), r.SocketCount)
		}
	})

	deniedCalls := map[string]int{} // batch pod → calls refused with EPERM
	t.Run("policy", func(t *testing.T) {
		check := func(pod string, wantDenied bool) error {
			if !wantDenied {
				answers, err := s.curlN(pod, simAPIURL, 1)
				if err != nil {
					return err
				}
				if a := answers[0]; a.code != 200 || a.backend != "api-b" {
					return fmt.Errorf("%s → api: %+v, want 200 from api-b", pod, a)
				}
				return nil
			}
			denied, err := s.denied(pod, simAPIURL)
			if err != nil {
				return err
			}
			if !denied {
				return fmt.Errorf("%s → api was let through, want EPERM", pod)
			}
			deniedCalls[pod]++
			return nil
		}
		// client-a and batch-a reach api-b across nodes, client-b and
		// batch-b on its node.
		matrix := []struct {
			pod    string
			denied bool
		}{{"client-a", false}, {"batch-a", true}, {"client-b", false}, {"batch-b", true}}
		for _, c := range matrix {
			if err := check(c.pod, c.denied); err != nil {
				t.Error(err)
				continue
			}
			t.Logf("%s → api-b on node b: denied %v, as it should be", c.pod, c.denied)
		}
		// The policy concerns api only: batch reaches web.
		for _, pod := range []string{"batch-a", "batch-b"} {
			if answers, err := s.curlN(pod, simWebURL, 1); err != nil || answers[0].code != 200 {
				t.Errorf("%s → web: %+v, %v; want 200", pod, answers, err)
			}
		}
	})

	t.Run("flows", func(t *testing.T) {
		if len(routed) != 2 || len(deniedCalls) != 2 {
			t.Fatal("the flows checked are those of the routing and policy subtests: run them too")
		}
		for client, answers := range routed {
			node := s.pods[client].Node.Name
			records := s.recordsOf(t, node, flow.ReporterSource, answers, "--from-workload", "shop/"+client, "--to-service", "shop/web")
			for i, a := range answers {
				f := records[i]
				if f.Node != node || f.Verdict != flow.VerdictAllowed || f.Service == nil || f.Service.Name != "shop/web" ||
					f.Service.VIP.String() != simWebVIP+":80" ||
					f.Source.Workload != client || f.Source.Namespace != "shop" || f.Source.Identity != simTrust+"shop/sa/frontend" ||
					f.Destination.Workload != a.backend || f.Destination.Identity != simTrust+"shop/sa/web" ||
					f.BytesSent == 0 || f.BytesRecv == 0 {
					t.Errorf("request from %s answered by %s: record %s", a.local, a.backend, simFlow(f))
				}
			}
		}
		// The other end: node b saw client-a's requests that web-b* served,
		// knowing who sent them.
		var crossed []simAnswer
		for _, a := range routed["client-a"] {
			if s.pods[a.backend].Node.Name == "b" {
				crossed = append(crossed, a)
			}
		}
		records := s.recordsOf(t, "b", flow.ReporterDestination, crossed, "--from-workload", "shop/client-a")
		for i, a := range crossed {
			if f := records[i]; f.Source.Identity != simTrust+"shop/sa/frontend" || f.Destination.Workload != a.backend || f.Node != "b" {
				t.Errorf("node b's record of %s → %s: %s", a.local, a.backend, simFlow(f))
			}
		}

		// Every call refused is recorded, with the policy, on the
		// client's node, and counted in its metrics.
		for pod, node := range map[string]string{"batch-a": "a", "batch-b": "b"} {
			var denies []flow.Flow
			for _, f := range s.observe(t, node, "--from-workload", "jobs/"+pod, "--verdict", "denied") {
				denies = append(denies, f)
				if f.Event != flow.EventDeny || f.Reporter != flow.ReporterSource || f.Reason != "policy" ||
					!strings.HasPrefix(f.Policy, "only-frontend#") || f.Service == nil || f.Service.Name != "shop/api" ||
					f.Source.Identity != simTrust+"jobs/sa/batch" || f.Destination.Workload != "api-b" {
					t.Errorf("deny record of %s: %s", pod, simFlow(f))
				}
			}
			if len(denies) != deniedCalls[pod] {
				t.Errorf("node %s has %d deny records of %s, which was refused %d times", node, len(denies), pod, deniedCalls[pod])
			}
			page, err := s.agents[node].Metrics(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			n, err := cluster.MetricSum(page, "sluice_tcp_connections_denied_total", "source_workload", pod, "destination_service", "shop/api")
			if err != nil || n != float64(deniedCalls[pod]) {
				t.Errorf("node %s counts %v denied connections of %s (%v), want %d", node, n, pod, err, deniedCalls[pod])
			}
		}
	})

	t.Run("endpoint changes", func(t *testing.T) {
		// Clients on both nodes keep making requests, each on a new
		// connection, while the endpoints change; a fortio client keeps
		// four connections open throughout.
		loops := []*simLoop{s.startLoop("client-a"), s.startLoop("client-b")}
		defer func() {
			for _, l := range loops {
				l.stop()
			}
		}()
		load := s.pods["load-b"]
		result := filepath.Join(s.c.Dir, "fortio-changes.json")
		keep := load.Command(context.Background(), s.fortio, "load", "-qps", "40", "-c", "4", "-t", "0",
			"-loglevel", "warning", "-json", result, simWebURL)
		var keepOut strings.Builder
		keep.Stdout, keep.Stderr = &keepOut, &keepOut
		if err := load.Start(keep); err != nil {
			t.Fatal(err)
		}

		// expect waits until every loop has made 30 requests that started
		// after since, and checks that those were served by want alone.
		expect := func(what string, since time.Time, want ...string) {
			t.Helper()
			for _, l := range loops {
				simWait(t, l.client+": 30 requests after the edit", func() bool { return len(l.since(since)) >= 30 })
				got := map[string]int{}
				for _, a := range l.since(since) {
					got[a.backend]++
				}
				for b, n := range got {
					if b != "" && !slices.Contains(want, b) {
						t.Errorf("%s: %s served %d of %s's requests, want only %v", what, b, n, l.client, want)
					}
				}
				t.Logf("%s: %s → %v", what, l.client, got)
			}
		}
		edit := func(what string, change func(web *cluster.Service) error) {
			t.Helper()
			if err := s.mesh.Update(func(m *cluster.Mesh) error { return change(m.Service("shop", "web")) }); err != nil {
				t.Fatalf("%s: %v", what, err)
			}
		}

		edit("remove web-b2", func(web *cluster.Service) error { return web.RemoveEndpoint(s.pods["web-b2"].IP) })
		since := s.waitBackends(t, 4)
		expect("web-b2 removed", since, "web-a1", "web-a2", "web-b1")

		edit("web-a2 unhealthy", func(web *cluster.Service) error {
			web.Endpoint(s.pods["web-a2"].IP).Health = "unhealthy"
			return nil
		})
		since = s.waitBackends(t, 3)
		expect("web-a2 unhealthy", since, "web-a1", "web-b1")

		edit("add web-b3", func(web *cluster.Service) error {
			web.Endpoints = append(web.Endpoints, cluster.Endpoint{Address: s.pods["web-b3"].IP})
			return nil
		})
		since = s.waitBackends(t, 4)
		for _, l := range loops {
			simWait(t, l.client+" reaches web-b3", func() bool {
				return slices.ContainsFunc(l.since(since), func(a simAnswer) bool { return a.backend == "web-b3" })
			})
		}
		expect("web-b3 added", since, "web-a1", "web-b1", "web-b3")

		// The connections fortio opened at the start, to endpoints
		// removed, made unhealthy or kept, all served every request:
		// routing happens at connect only.
		if err := keep.Process.Signal(os.Interrupt); err != nil {
			t.Fatal(err)
		}
		if err := keep.Wait(); err != nil {
			t.Fatalf("fortio load: %v\n%s", err, keepOut.String())
		}
		r := readFortio(t, result)
		t.Logf("fortio during the edits: %d requests, codes %v, %d sockets", r.DurationHistogram.Count, r.RetCodes, r.SocketCount)
		if r.DurationHistogram.Count == 0 || r.RetCodes["200"] != r.DurationHistogram.Count || r.ErrorsDurationHistogram.Count != 0 {
			t.Errorf("fortio during the edits: %d requests, codes %v, %d errors; want all 200", r.DurationHistogram.Count, r.RetCodes, r.ErrorsDurationHistogram.Count)
		}
		if r.SocketCount != 4 {
			t.Errorf("fortio used %d sockets, want its 4 connections kept throughout", r.SocketCount)
		}

		// web-b2 is gone for good: were it still chosen, requests would
		// now fail.
		if err := s.server["web-b2"].Process.Kill(); err != nil {
			t.Fatal(err)
		}
		_ = s.server["web-b2"].Wait()
		since = time.Now()
		expect("web-b2 stopped", since, "web-a1", "web-b1", "web-b3")

		for _, l := range loops {
			l.stop()
			total, failed := l.results()
			t.Logf("%s made %d requests during the edits", l.client, total)
			for _, f := range failed {
				t.Errorf("%s: failed request %+v", l.client, f)
			}
		}
	})
}

// simLoop makes requests to the web service from a client, five per curl,
// until stopped.
type simLoop struct {
	client string
	done   chan struct{}
	quit   chan struct{}
	once   sync.Once

	mu       sync.Mutex // guards the fields below
	answers  []simAnswer
	failures []simAnswer
	err      error // curl could not run
}

func (s *sim) startLoop(client string) *simLoop {
	l := &simLoop{client: client, done: make(chan struct{}), quit: make(chan struct{})}
	go func() {
		defer close(l.done)
		for {
			select {
			case <-l.quit:
				return
			default:
			}
			answers, err := s.curlN(client, simWebURL, 5)
			l.mu.Lock()
			if err != nil {
				l.err = err
				l.mu.Unlock()
				return
			}
			for _, a := range answers {
				if a.code != 200 {
					l.failures = append(l.failures, a)
				}
			}
			l.answers = append(l.answers, answers...)
			l.mu.Unlock()
		}
	}()
	return l
}

// since returns the answers to requests started after t.
func (l *simLoop) since(t time.Time) []simAnswer {
	l.mu.Lock()
	defer l.mu.Unlock()
	i, _ := slices.BinarySearchFunc(l.answers, t, func(a simAnswer, t time.Time) int { return a.start.Compare(t) })
	for i < len(l.answers) && !l.answers[i].start.After(t) {
		i++
	}
	return slices.Clone(l.answers[i:])
}

func (l *simLoop) stop() {
	l.once.Do(func() { close(l.quit) })
	<-l.done
}

// results returns how many requests the loop made and the failed ones;
// curl failing to run counts as a failure.
func (l *simLoop) results() (int, []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var failed []string
	for _, a := range l.failures {
		failed = append(failed, fmt.Sprintf("%+v", a))
	}
	if l.err != nil {
		failed = append(failed, l.err.Error())
	}
	return len(l.answers), failed
}

// simFlow shows a flow record as `sluice observe -o json` prints it.
func simFlow(f flow.Flow) string {
	b, err := json.Marshal(f)
	if err != nil {
		return fmt.Sprintf("%+v", f)
	}
	return string(b)
}

// fortioResult is the part of `fortio load -json` the scenarios read.
type fortioResult struct {
	ActualQPS         float64
	DurationHistogram struct {
		Count int64
	}
	ErrorsDurationHistogram struct {
		Count int64
	}
	RetCodes    map[string]int64
	SocketCount int
}

func readFortio(t *testing.T, path string) fortioResult {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("fortio's result: %v", err)
	}
	var r fortioResult
	if err := json.Unmarshal(data, &r); err != nil {
		t.Fatalf("fortio's result %s: %v", path, err)
	}
	return r
}

// TestScenarioControlPlane runs agents fed by a separate `sluice
// controlplane` (--xds) serving the mesh file: routing from both nodes to
// backends on both, an endpoint made unhealthy, and the flows naming both
// ends (the client from the agent's workloads file, the backend from the
// endpoint's metadata).
func TestScenarioControlPlane(t *testing.T) {
	s := newSim(t, []simPod{
		{"a", "client-a", "10.244.1.10", "shop", "frontend", false},
		{"a", "web-a1", "10.244.1.20", "shop", "web", true},
		{"b", "client-b", "10.244.2.10", "shop", "frontend", false},
		{"b", "web-b1", "10.244.2.20", "shop", "web", true},
	}, func(s *sim) []cluster.Service {
		return []cluster.Service{s.service("web", simWebVIP, "web-a1", "web-b1")}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cp, err := s.c.StartControlPlane(ctx, s.bin, s.mesh)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("--- control plane log:\n%s", cp.Log())
		}
	})
	s.startAgents(cluster.AgentConfig{Binary: s.bin, ControlPlane: cp})
	s.waitBackends(t, 2)

	routed := map[string][]simAnswer{}
	for _, client := range []string{"client-a", "client-b"} {
		answers, err := s.curlN(client, simWebURL, 24)
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]int{}
		for _, a := range answers {
			if a.code != 200 {
				t.Errorf("%s: %+v", client, a)
			}
			got[a.backend]++
		}
		t.Logf("%s → %s: %v", client, simWebVIP, got)
		if got["web-a1"] == 0 || got["web-b1"] == 0 {
			t.Errorf("%s: answers %v, want both backends", client, got)
		}
		routed[client] = answers
	}

	for client, node := range map[string]string{"client-a": "a", "client-b": "b"} {
		records := s.recordsOf(t, node, flow.ReporterSource, routed[client], "--to-service", "shop/web")
		for i, a := range routed[client] {
			if f := records[i]; f.Source.Workload != client || f.Source.Identity != simTrust+"shop/sa/frontend" ||
				f.Destination.Workload != a.backend || f.Destination.Identity != simTrust+"shop/sa/web" {
				t.Errorf("%s's request answered by %s: record %s", client, a.backend, simFlow(f))
			}
		}
	}

	if err := s.mesh.Update(func(m *cluster.Mesh) error {
		m.Service("shop", "web").Endpoint(s.pods["web-b1"].IP).Health = "unhealthy"
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	s.waitBackends(t, 1)
	for _, client := range []string{"client-a", "client-b"} {
		answers, err := s.curlN(client, simWebURL, 10)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range answers {
			if a.code != 200 || a.backend != "web-a1" {
				t.Errorf("%s after web-b1 became unhealthy: %+v, want web-a1", client, a)
			}
		}
	}
}
