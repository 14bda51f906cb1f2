package dataplane_test

import (
	"bufio"
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/dataplane"
	"github.com/sluice-mesh/sluice/dataplane/model"
	"github.com/sluice-mesh/sluice/e2e/cluster"
	"github.com/sluice-mesh/sluice/e2e/probe"
	"github.com/sluice-mesh/sluice/e2e/testenv"
)

// mesh is a simulated cluster for the policy tests: nodes with their own
// dataplanes (and one without), pods, and servers whose applications
// report every byte they receive.
type mesh struct {
	t       testing.TB
	c       *cluster.Cluster
	nodes   map[string]*meshNode
	pods    map[string]*cluster.Pod
	servers map[string]*server
	names   map[uint32]string
}

type meshNode struct {
	n      *cluster.Node
	dp     *dataplane.Dataplane // nil on a node without Sluice
	pods   []*cluster.Pod
	events chan dataplane.Event
	flows  atomic.Uint64 // flow events (open, close) read, none dropped
	// hold, while locked, stops the enforcement loop at its next event.
	hold sync.Mutex
}

// Identities of the tests, as a control plane would number them.
const (
	idFrontend uint32 = 10
	idBatch    uint32 = 11
	idDB       uint32 = 12
)

var testNames = map[uint32]string{
	idFrontend: "spiffe://cluster.local/ns/shop/sa/frontend",
	idBatch:    "spiffe://cluster.local/ns/jobs/sa/batch",
	idDB:       "spiffe://cluster.local/ns/shop/sa/db",
}

func newMesh(t testing.TB) *mesh {
	testenv.RequirePrivileged(t)
	c, err := cluster.New()
	if err != nil {
		t.Fatalf("cluster: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("cluster close: %v", err)
		}
	})
	return &mesh{t: t, c: c, nodes: map[string]*meshNode{}, pods: map[string]*cluster.Pod{},
		servers: map[string]*server{}, names: testNames}
}

// node adds a node; with sluice, it gets a dataplane and an enforcement
// loop, as the agent runs them.
func (m *mesh) node(name string, sluice bool, caps ...dataplane.Capacity) *meshNode {
	m.t.Helper()
	n, err := m.c.AddNode(name)
	if err != nil {
		m.t.Fatal(err)
	}
	mn := &meshNode{n: n, events: make(chan dataplane.Event, 8192)}
	m.nodes[name] = mn
	if !sluice {
		return mn
	}
	var c dataplane.Capacity
	if len(caps) > 0 {
		c = caps[0]
	}
	dp, err := dataplane.Open(dataplane.Options{PinDir: n.PinDir, Cgroup: n.Cgroup, Capacity: c})
	if err != nil {
		m.t.Fatalf("open dataplane of %s: %v", name, err)
	}
	mn.dp = dp
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		netns := func() []string {
			out, err := dataplane.NetnsInCgroup(n.Cgroup)
			if err != nil {
				m.t.Errorf("network namespaces of %s: %v", name, err)
			}
			return out
		}
		_ = dp.Enforce(ctx, netns, func(e dataplane.Event) {
			mn.hold.Lock()
			mn.hold.Unlock() // an empty critical section: it waits while held
			if e.Kind == dataplane.EventOpen || e.Kind == dataplane.EventClose {
				mn.flows.Add(1)
			}
			select {
			case mn.events <- e:
			default:
			}
		})
	}()
	m.t.Cleanup(func() {
		cancel()
		<-done
		dp.Close()
	})
	return mn
}

func (m *mesh) pod(node, name, addr string) *cluster.Pod {
	m.t.Helper()
	mn := m.nodes[node]
	p, err := mn.n.AddPod(name, netip.MustParseAddr(addr))
	if err != nil {
		m.t.Fatal(err)
	}
	mn.pods = append(mn.pods, p)
	m.pods[name] = p
	return p
}

// server runs the server role in a pod and collects its reports.
type server struct {
	mu    sync.Mutex
	conns []string // "remote local bytes"
}

func (m *mesh) serve(pod string, ports ...string) {
	m.t.Helper()
	p := m.pods[pod]
	var listen []string
	for _, port := range ports {
		listen = append(listen, "0.0.0.0:"+port)
	}
	cmd := p.Command(context.Background(), os.Args[0])
	cmd.Env = append(os.Environ(), probe.RoleEnv+"=server", probe.ListenEnv+"="+strings.Join(listen, ","), probe.NameEnv+"="+pod)
	out, err := cmd.StdoutPipe()
	if err != nil {
		m.t.Fatal(err)
	}
	if err := p.Start(cmd); err != nil {
		m.t.Fatal(err)
	}
	s := &server{}
	m.servers[pod] = s
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			line := sc.Text()
			if line == "ready" {
				close(ready)
				continue
			}
			s.mu.Lock()
			s.conns = append(s.conns, strings.TrimPrefix(line, "conn "))
			s.mu.Unlock()
		}
	}()
	select {
	case <-ready:
	case <-time.After(10 * time.Second):
		m.t.Fatalf("server in %s did not start", pod)
	}
}

// received returns the bytes the server's application received on its
// connections from the given pod, once they ended, waiting up to a while
// for n reports.
func (m *mesh) received(server, from string, n int) []string {
	s := m.servers[server]
	prefix := m.pods[from].IP.String() + ":"
	deadline := time.Now().Add(12 * time.Second)
	for {
		var got []string
		s.mu.Lock()
		for _, c := range s.conns {
			if strings.HasPrefix(c, prefix) {
				f := strings.Fields(c)
				got = append(got, f[len(f)-1])
			}
		}
		s.mu.Unlock()
		if len(got) >= n || time.Now().After(deadline) {
			return got
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// dial runs the client role in a pod against addr.
func (m *mesh) dial(pod, addr string) probe.Result {
	return m.dialAs("client", pod, addr)
}

func (m *mesh) dialAs(role, pod, addr string) probe.Result {
	m.t.Helper()
	r, err := probe.DialAs(m.pods[pod], role, addr)
	if err != nil {
		m.t.Fatal(err)
	}
	return r
}

// hold opens a connection from pod to addr and keeps it; the returned
// function waits for it to end and says how.
func (m *mesh) hold(pod, addr string) func() probe.Result {
	m.t.Helper()
	p := m.pods[pod]
	cmd := p.Command(context.Background(), os.Args[0])
	cmd.Env = append(os.Environ(), probe.RoleEnv+"=hold", probe.DialEnv+"="+addr)
	out, err := cmd.StdoutPipe()
	if err != nil {
		m.t.Fatal(err)
	}
	if err := p.Start(cmd); err != nil {
		m.t.Fatal(err)
	}
	r := bufio.NewReader(out)
	if line, err := r.ReadString('\n'); err != nil || line != "open\n" {
		m.t.Fatalf("held connection from %s did not open: %q %v", pod, line, err)
	}
	return func() probe.Result {
		var pr probe.Result
		if err := json.NewDecoder(r).Decode(&pr); err != nil {
			m.t.Fatalf("held connection from %s: %v", pod, err)
		}
		_ = cmd.Wait()
		return pr
	}
}

// expect dials and checks the result. Events from before are dropped, so
// that waitEvent sees this dial's.
func (m *mesh) expect(pod, addr, want string) probe.Result {
	m.t.Helper()
	return m.expectAs("client", pod, addr, want)
}

func (m *mesh) expectAs(role, pod, addr, want string) probe.Result {
	m.t.Helper()
	for _, n := range m.nodes {
	drain:
		for {
			select {
			case <-n.events:
			default:
				break drain
			}
		}
	}
	pr := m.dialAs(role, pod, addr)
	m.t.Logf("%s %s → %s: %s in %.2f ms", role, pod, addr, pr.Result, pr.MS)
	if pr.Result != want {
		m.t.Errorf("%s → %s: %s (%s, reply %q, %.1f ms), want %s", pod, addr, pr.Result, pr.Err, pr.Reply, pr.MS, want)
	}
	return pr
}

// identities returns the identities every node is given: all workloads'
// addresses, and the cgroups of the node's own pods.
func (m *mesh) identities(node string, local map[string]uint32, addrs map[string]uint32) model.Identities {
	m.t.Helper()
	ids := model.Identities{Names: m.names}
	for pod, id := range addrs {
		ids.Addrs = append(ids.Addrs, model.AddrIdentity{Addr: m.pods[pod].IP, Identity: id})
	}
	for pod, id := range local {
		p := m.pods[pod]
		if p.Node != m.nodes[node].n {
			continue
		}
		cg, err := dataplane.CgroupID(p.Cgroup)
		if err != nil {
			m.t.Fatal(err)
		}
		ids.Cgroups = append(ids.Cgroups, model.CgroupIdentity{CgroupID: cg, Path: p.Cgroup, Identity: id, Addrs: []netip.Addr{p.IP}})
	}
	return ids
}

func (m *mesh) apply(node string, s model.State) {
	m.t.Helper()
	if err := m.nodes[node].dp.Apply(s); err != nil {
		m.t.Fatalf("apply on %s: %v", node, err)
	}
}

func (m *mesh) stats(node string) dataplane.Stats {
	m.t.Helper()
	st, err := m.nodes[node].dp.Stats()
	if err != nil {
		m.t.Fatal(err)
	}
	return st
}

func (m *mesh) waitEvent(node string, kind dataplane.EventKind) dataplane.Event {
	m.t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case e := <-m.nodes[node].events:
			if e.Kind == kind {
				return e
			}
		case <-deadline:
			m.t.Fatalf("no %s event on %s", kind, node)
			return dataplane.Event{}
		}
	}
}

func authenticated(id string) model.Principal {
	return model.Principal{Kind: model.PrincipalAuthenticated, Name: model.StringMatch{Kind: model.MatchExact, Value: id}}
}

func anyPermission() []model.Permission { return []model.Permission{{Kind: model.PermissionAny}} }

func allowFrom(name string, principals ...model.Principal) model.Policy {
	return model.Policy{Name: name, Rules: &model.RuleSet{Action: model.Allow, Rules: []model.Rule{
		{Name: "allowed", Principals: principals, Permissions: anyPermission()},
	}}}
}

func tcpService(name, vip string, port uint16, backend *cluster.Pod, targetPort uint16, policies ...model.Policy) model.Service {
	return model.Service{
		Name: name, VIP: netip.MustParseAddr(vip), Port: port, Protocol: model.TCP,
		Endpoints: []model.Endpoint{{Addr: backend.IP, Port: targetPort}},
		Policies:  policies,
	}
}

// TestPolicyAcrossNodes runs the allow/deny matrix on two simulated nodes
// with Sluice, one without, and one whose dataplane forges identities.
func TestPolicyAcrossNodes(t *testing.T) {
	m := newMesh(t)
	m.node("a", true)
	m.node("b", true)
	m.node("c", false) // no Sluice: its clients carry no tag
	m.node("r", true)  // a rogue dataplane that claims to run frontend
	m.pod("a", "frontend", "10.244.1.10")
	m.pod("a", "batch", "10.244.1.11")
	m.pod("b", "db", "10.244.2.10")
	m.pod("b", "frontend-b", "10.244.2.11")
	m.pod("c", "outsider", "10.244.3.10")
	m.pod("r", "rogue", "10.244.4.10")
	m.serve("db", "5432", "6379", "7000")

	locals := map[string]uint32{"frontend": idFrontend, "batch": idBatch, "db": idDB, "frontend-b": idFrontend}
	addrs := map[string]uint32{"frontend": idFrontend, "batch": idBatch, "db": idDB, "frontend-b": idFrontend}
	db := m.pods["db"]
	// db: only frontend. cache: any mesh identity or the 10.244.3.0/24
	// range, except namespace jobs (DENY beats ALLOW).
	dbPolicy := allowFrom("db-allow", authenticated(testNames[idFrontend]))
	cachePolicies := []model.Policy{
		{Name: "cache-deny", Rules: &model.RuleSet{Action: model.Deny, Rules: []model.Rule{{
			Name:        "no-jobs",
			Principals:  []model.Principal{{Kind: model.PrincipalAuthenticated, Name: model.StringMatch{Kind: model.MatchPrefix, Value: "spiffe://cluster.local/ns/jobs/"}}},
			Permissions: anyPermission(),
		}}}},
		allowFrom("cache-allow",
			model.Principal{Kind: model.PrincipalAuthenticated},
			model.Principal{Kind: model.PrincipalSourceIP, CIDR: netip.MustParsePrefix("10.244.3.0/24")}),
	}
	// admin: frontend on the service's port; a rule for another port
	// never matches.
	port := func(p uint16) []model.Permission {
		return []model.Permission{{Kind: model.PermissionPort, Port: p, PortEnd: p}}
	}
	adminPolicy := model.Policy{Name: "admin-allow", Rules: &model.RuleSet{Action: model.Allow, Rules: []model.Rule{
		{Name: "anyone-on-7001", Principals: []model.Principal{{Kind: model.PrincipalAny}}, Permissions: port(7001)},
		{Name: "frontend-on-7000", Principals: []model.Principal{authenticated(testNames[idFrontend])}, Permissions: port(7000)},
	}}}
	services := []model.Service{
		tcpService("db", "10.96.0.20", 5432, db, 5432, dbPolicy),
		tcpService("cache", "10.96.0.21", 6379, db, 6379, cachePolicies...),
		tcpService("admin", "10.96.0.22", 7000, db, 7000, adminPolicy),
	}
	for _, node := range []string{"a", "b"} {
		m.apply(node, model.State{Services: services, Identities: m.identities(node, locals, addrs)})
	}
	// The rogue node routes the same services and claims its pod runs
	// frontend, without any policy of its own.
	rogueCg, err := dataplane.CgroupID(m.pods["rogue"].Cgroup)
	if err != nil {
		t.Fatal(err)
	}
	m.apply("r", model.State{
		Services: []model.Service{tcpService("db", "10.96.0.20", 5432, db, 5432), tcpService("cache", "10.96.0.21", 6379, db, 6379)},
		Identities: model.Identities{Names: testNames, Cgroups: []model.CgroupIdentity{
			{CgroupID: rogueCg, Identity: idFrontend, Addrs: []netip.Addr{m.pods["rogue"].IP}},
		}},
	})

	t.Run("in-mesh allowed across nodes", func(t *testing.T) {
		before := m.stats("b")
		pr := m.expect("frontend", "10.96.0.20:5432", "ok")
		if pr.Reply != "db" {
			t.Errorf("reply %q, want db", pr.Reply)
		}
		after := m.stats("b")
		if after.TagTrusted != before.TagTrusted+1 {
			t.Errorf("trusted tags at the destination went %d → %d, want +1", before.TagTrusted, after.TagTrusted)
		}
	})
	t.Run("in-mesh allowed on the same node", func(t *testing.T) {
		m.expect("frontend-b", "10.96.0.20:5432", "ok")
	})
	t.Run("in-mesh denied at connect", func(t *testing.T) {
		beforeB := m.stats("b")
		pr := m.expect("batch", "10.96.0.20:5432", "eperm")
		if pr.MS > 500 {
			t.Errorf("EPERM took %.1f ms", pr.MS)
		}
		e := m.waitEvent("a", dataplane.EventDenyConnect)
		if e.Identity != idBatch || e.SPIFFEID != testNames[idBatch] || e.Rule.Policy != "db-allow" || !e.Rule.Default {
			t.Errorf("deny event %+v: want identity %d, policy db-allow's default rule", e, idBatch)
		}
		// No packet left: the destination saw no connection at all.
		if after := m.stats("b"); after.Untagged != beforeB.Untagged || after.TagTrusted != beforeB.TagTrusted {
			t.Errorf("the destination saw a connection from a client denied at connect")
		}
	})
	t.Run("direct pod address is authorized too", func(t *testing.T) {
		m.expect("batch", "10.244.2.10:5432", "eperm")
		m.expect("frontend", "10.244.2.10:5432", "ok")
	})
	t.Run("untagged client denied at the destination", func(t *testing.T) {
		pr := m.expect("outsider", "10.244.2.10:5432", "reset")
		if pr.MS > 1000 {
			t.Errorf("reset took %.1f ms, want under a second", pr.MS)
		}
		e := m.waitEvent("b", dataplane.EventDenyIngress)
		if e.Identity != 0 || e.Source.Addr() != m.pods["outsider"].IP {
			t.Errorf("deny event %+v: want unknown identity from the outsider", e)
		}
		if got := m.received("db", "outsider", 1); len(got) != 1 || got[0] != "0" {
			t.Errorf("server application received %v bytes from the denied client, want one connection with 0", got)
		}
	})
	t.Run("payload on the handshake's last ACK", func(t *testing.T) {
		// The client sends its first bytes with the ACK that completes
		// the handshake: they reach the server before the connection
		// exists to be decided, unless they are stopped at the listener.
		before := m.stats("b")
		pr := m.expectAs("piggyback", "outsider", "10.244.2.10:5432", "reset")
		if pr.MS > 1000 {
			t.Errorf("reset took %.1f ms, want under a second", pr.MS)
		}
		if got := m.received("db", "outsider", 2); len(got) != 2 || got[1] != "0" {
			t.Errorf("server application received %v bytes from the denied clients, want 0 from the second", got)
		}
		// The client did send its payload on the handshake's last ACK,
		// and it was stopped at the listener.
		if after := m.stats("b"); after.EarlyData == before.EarlyData {
			t.Errorf("no payload dropped at the listener: the client did not send it with the handshake")
		}
		// Allowed clients that do the same are neither dropped nor
		// slowed: an allowed mesh identity (judged by its SYN's tag),
		// and an unknown source that a CIDR allows.
		before = m.stats("b")
		for _, c := range []struct{ pod, addr string }{{"frontend", "10.244.2.10:5432"}, {"outsider", "10.244.2.10:6379"}} {
			if pr := m.expectAs("piggyback", c.pod, c.addr, "ok"); pr.MS > 150 {
				t.Errorf("%s → %s took %.1f ms: its first segment was dropped", c.pod, c.addr, pr.MS)
			}
		}
		if after := m.stats("b"); after.EarlyData != before.EarlyData {
			t.Errorf("payload of allowed clients dropped at the listener: %d → %d", before.EarlyData, after.EarlyData)
		}
	})
	t.Run("forged tag is unknown", func(t *testing.T) {
		before := m.stats("b")
		m.expect("rogue", "10.96.0.20:5432", "reset")
		after := m.stats("b")
		if after.TagRejected != before.TagRejected+1 {
			t.Errorf("rejected tags %d → %d, want +1", before.TagRejected, after.TagRejected)
		}
		if sent := m.stats("r").TagSent; sent == 0 {
			t.Errorf("the rogue node sent no tag: the test does not test a forged tag")
		}
		if got := m.received("db", "rogue", 1); len(got) != 1 || got[0] != "0" {
			t.Errorf("server application received %v bytes from the forged client", got)
		}
	})
	t.Run("DENY beats ALLOW", func(t *testing.T) {
		m.expect("frontend", "10.96.0.21:6379", "ok")
		m.expect("batch", "10.96.0.21:6379", "eperm")
		e := m.waitEvent("a", dataplane.EventDenyConnect)
		if e.Rule.Policy != "cache-deny" || e.Rule.Rule != "no-jobs" {
			t.Errorf("deny decided by %+v, want cache-deny/no-jobs", e.Rule)
		}
	})
	t.Run("destination port", func(t *testing.T) {
		m.expect("frontend", "10.96.0.22:7000", "ok")
		m.expect("batch", "10.96.0.22:7000", "eperm")
		m.expect("outsider", "10.244.2.10:7000", "reset")
	})
	t.Run("source CIDR", func(t *testing.T) {
		m.expect("outsider", "10.244.2.10:6379", "ok")
		m.expect("rogue", "10.244.2.10:6379", "reset") // neither mesh nor in the range
	})
	t.Run("counters per rule", func(t *testing.T) {
		stats, err := m.nodes["a"].dp.RuleStats()
		if err != nil {
			t.Fatal(err)
		}
		var noJobs, dbAllowed *dataplane.RuleStat
		for i := range stats {
			switch r := stats[i].Rule; {
			case r.Policy == "cache-deny" && r.Rule == "no-jobs":
				noJobs = &stats[i]
			case r.Policy == "db-allow" && r.Rule == "allowed":
				dbAllowed = &stats[i]
			}
		}
		if noJobs == nil || noJobs.DenyConnect != 1 {
			t.Errorf("no-jobs counters %+v, want 1 deny at connect", noJobs)
		}
		if dbAllowed == nil || dbAllowed.AllowConnect < 2 {
			t.Errorf("db-allow counters %+v, want ≥2 allows at connect", dbAllowed)
		}
	})
}

// TestPolicyDryRunAndUpdate checks that shadow rules never block, that a
// policy change applies to new connections at once, that a continuous
// policy terminates the connections it comes to deny, and that a rejected
// state leaves the policy in force.
func TestPolicyDryRunAndUpdate(t *testing.T) {
	m := newMesh(t)
	m.node("a", true)
	m.node("b", true)
	m.pod("a", "frontend", "10.244.1.10")
	m.pod("a", "batch", "10.244.1.11")
	m.pod("b", "db", "10.244.2.10")
	m.serve("db", "5432")
	locals := map[string]uint32{"frontend": idFrontend, "batch": idBatch, "db": idDB}
	db := m.pods["db"]
	apply := func(p ...model.Policy) {
		for _, node := range []string{"a", "b"} {
			m.apply(node, model.State{
				Services:   []model.Service{tcpService("db", "10.96.0.20", 5432, db, 5432, p...)},
				Identities: m.identities(node, locals, locals),
			})
		}
	}

	// Dry run: deny everyone, shadow only.
	apply(model.Policy{Name: "audit", Shadow: &model.RuleSet{Action: model.Deny, Rules: []model.Rule{{
		Name: "everyone", Principals: []model.Principal{{Kind: model.PrincipalAny}}, Permissions: anyPermission(),
	}}}})
	m.expect("batch", "10.96.0.20:5432", "ok")
	if e := m.waitEvent("a", dataplane.EventShadowDenyConnect); e.ShadowRule.Rule != "everyone" || e.Deny {
		t.Errorf("shadow event %+v: want would-deny by rule everyone, not enforced", e)
	}

	// Mid-traffic update: only frontend, continuously enforced. batch
	// holds a connection open while the policy changes.
	apply(allowFrom("open", model.Principal{Kind: model.PrincipalAny}))
	held := m.hold("batch", "10.96.0.20:5432")
	strict := allowFrom("strict", authenticated(testNames[idFrontend]))
	strict.Continuous = true
	apply(strict)
	if pr := held(); pr.Result != "reset" || pr.MS > 2000 {
		t.Errorf("connection held across the change to a continuous policy that denies it: %+v, want a reset within 2 s", pr)
	}
	if n := m.stats("a").Terminated + m.stats("b").Terminated; n < 1 {
		t.Errorf("terminated %d connections, want at least the held one", n)
	}
	m.expect("batch", "10.96.0.20:5432", "eperm")
	m.expect("frontend", "10.96.0.20:5432", "ok")

	// A rejected state changes nothing.
	bad := allowFrom("bad", model.Principal{Kind: model.PrincipalNot})
	err := m.nodes["a"].dp.Apply(model.State{
		Services:   []model.Service{tcpService("db", "10.96.0.20", 5432, db, 5432, bad)},
		Identities: m.identities("a", locals, locals),
	})
	if err == nil {
		t.Fatal("a policy with an empty not_id was accepted")
	}
	m.expect("batch", "10.96.0.20:5432", "eperm")
	m.expect("frontend", "10.96.0.20:5432", "ok")
}
