package e2e_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacconfigv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/sluice-mesh/sluice/e2e/cluster"
	"github.com/sluice-mesh/sluice/e2e/probe"
	"github.com/sluice-mesh/sluice/e2e/testenv"
	"github.com/sluice-mesh/sluice/xds/mesh"
)

// policyMesh: frontend and batch on node a (each behind its own service,
// so that every node learns their addresses), db on node b.
const policyMesh = `
trustDomain: cluster.local
services:
  - name: db
    namespace: shop
    vips: [10.96.0.20]
    ports: [{port: 5432, protocol: TCP, targetPort: 5432}]
    endpoints:
      - address: 10.244.2.10
        workload: {name: db, serviceAccount: db, node: b}
  - name: frontend
    namespace: shop
    vips: [10.96.0.30]
    ports: [{port: 80, protocol: TCP, targetPort: 8080}]
    endpoints:
      - address: 10.244.1.10
        workload: {name: frontend, serviceAccount: frontend, node: a}
  - name: batch
    namespace: jobs
    vips: [10.96.0.31]
    ports: [{port: 80, protocol: TCP, targetPort: 8080}]
    endpoints:
      - address: 10.244.1.11
        workload: {name: batch, serviceAccount: batch, node: a}
`

// withRBAC returns the mesh's resources with an RBAC filter that allows
// only principal on the db listener.
func withRBAC(t *testing.T, principal *matcherv3.StringMatcher) mesh.Resources {
	t.Helper()
	m, err := mesh.Parse("policy", []byte(policyMesh))
	if err != nil {
		t.Fatal(err)
	}
	r := m.Resources()
	cfg, err := anypb.New(&rbacv3.RBAC{StatPrefix: "db-allow", Rules: &rbacconfigv3.RBAC{
		Action: rbacconfigv3.RBAC_ALLOW,
		Policies: map[string]*rbacconfigv3.Policy{"frontend": {
			Principals: []*rbacconfigv3.Principal{{Identifier: &rbacconfigv3.Principal_Authenticated_{
				Authenticated: &rbacconfigv3.Principal_Authenticated{PrincipalName: principal},
			}}},
			Permissions: []*rbacconfigv3.Permission{{Rule: &rbacconfigv3.Permission_Any{Any: true}}},
		}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range r.Listeners {
		if !strings.HasPrefix(l.Name, "shop/db:") {
			continue
		}
		l = proto.Clone(l).(*listenerv3.Listener)
		chain := l.FilterChains[0]
		chain.Filters = append([]*listenerv3.Filter{{Name: "rbac", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: cfg}}}, chain.Filters...)
		r.Listeners[i] = l
	}
	return r
}

func exact(s string) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: s}}
}

// The agent binary enforces RBAC from an external control plane across two
// nodes: an allowed client connects, a denied one gets EPERM, and a client
// on a node without Sluice is reset at the destination. An RBAC the agent
// cannot enforce is NACKed and the policy in force stays.
func TestAgentPolicy(t *testing.T) {
	testenv.RequirePrivileged(t)
	bin := buildSluice(t)
	nodes, pods := policyCluster(t, []podSpec{
		{"a", "frontend", "10.244.1.10"}, {"a", "batch", "10.244.1.11"},
		{"b", "db", "10.244.2.10"}, {"c", "outsider", "10.244.3.10"},
	})
	// The server listens before the agents attach: its listener must be
	// made to keep SYNs (for tags) after the fact.
	serveDB(t, pods["db"])
	srv := startXDSServer(t)
	srv.set(t, snapshotOf("1", withRBAC(t, exact("spiffe://cluster.local/ns/shop/sa/frontend"))))

	workloads := map[string]string{
		"a": fmt.Sprintf(`workloads:
  - {name: frontend, namespace: shop, serviceAccount: frontend, cgroup: %s, ips: [10.244.1.10]}
  - {name: batch, namespace: jobs, serviceAccount: batch, cgroup: %s, ips: [10.244.1.11]}
`, pods["frontend"].Cgroup, pods["batch"].Cgroup),
		"b": fmt.Sprintf(`workloads:
  - {name: db, namespace: shop, serviceAccount: db, cgroup: %s, ips: [10.244.2.10]}
`, pods["db"].Cgroup),
	}
	logs := map[string]*syncBuffer{}
	for _, n := range []string{"a", "b"} {
		file := filepath.Join(t.TempDir(), "workloads.yaml")
		if err := os.WriteFile(file, []byte(workloads[n]), 0o600); err != nil {
			t.Fatal(err)
		}
		logs[n] = startAgent(t, bin, nodes[n], n, "--xds", srv.addr, "--workloads", file)
	}

	dial := func(pod, addr string) probe.Result {
		t.Helper()
		r, err := probe.Dial(pods[pod], addr)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	// Wait until both agents enforce: batch is refused at connect, and
	// frontend gets through (its tag is trusted at node b).
	eventually := func(what string, ok func() bool) { t.Helper(); waitFor(t, logs, what, ok) }
	matrix := func(phase string) {
		t.Helper()
		if r := dial("frontend", "10.96.0.20:5432"); r.Result != "ok" || r.Reply != "db" {
			t.Errorf("%s: frontend → db: %+v, want ok", phase, r)
		}
		if r := dial("batch", "10.96.0.20:5432"); r.Result != "eperm" {
			t.Errorf("%s: batch → db: %+v, want eperm", phase, r)
		}
		if r := dial("outsider", "10.244.2.10:5432"); r.Result != "reset" || r.MS > 1000 {
			t.Errorf("%s: outsider → db: %+v, want a reset within a second", phase, r)
		}
	}
	var last [2]probe.Result
	eventually("the agents never enforced the policy", func() bool {
		last = [2]probe.Result{dial("batch", "10.96.0.20:5432"), dial("frontend", "10.96.0.20:5432")}
		return last[0].Result == "eperm" && last[1].Result == "ok"
	})
	matrix("enforced")

	// A regular expression cannot be enforced: NACKed, the policy stays.
	srv.set(t, snapshotOf("2", withRBAC(t, &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{
		SafeRegex: &matcherv3.RegexMatcher{Regex: ".*"},
	}})))
	eventually("the agents did not NACK the regular expression", func() bool {
		return strings.Contains(logs["a"].String(), "safe_regex") && strings.Contains(logs["b"].String(), "safe_regex")
	})
	matrix("after the NACK")
}

// TestAgentMeshFileWorkloads runs two agents in standalone mode, each fed
// from the same mesh file, whose workloads section places the workloads on
// nodes. A client that is no service's endpoint is known at the other
// node by its listed address; a workload whose cgroup appears after the
// agent started, and an edit of the workloads section alone (no resource
// changes), take effect without a restart.
func TestAgentMeshFileWorkloads(t *testing.T) {
	testenv.RequirePrivileged(t)
	bin := buildSluice(t)
	nodes, pods := policyCluster(t, []podSpec{
		{"a", "frontend", "10.244.1.10"}, {"a", "batch", "10.244.1.11"}, {"b", "db", "10.244.2.10"},
	})
	serveDB(t, pods["db"])

	// late's cgroup does not exist yet: the pod is added below.
	lateCgroup := filepath.Join(nodes["a"].Cgroup, "late")
	meshFile := filepath.Join(t.TempDir(), "mesh.yaml")
	write := func(batchNamespace, batchAccount string) {
		t.Helper()
		data := fmt.Sprintf(`workloads:
  - {name: frontend, namespace: shop, serviceAccount: frontend, node: a, cgroup: %s, ips: [10.244.1.10]}
  - {name: batch, namespace: %s, serviceAccount: %s, node: a, cgroup: %s, ips: [10.244.1.11]}
  - {name: late, namespace: shop, serviceAccount: frontend, node: a, cgroup: %s, ips: [10.244.1.12]}
  - {name: db, namespace: shop, serviceAccount: db, node: b, cgroup: %s, ips: [10.244.2.10]}
services:
  - name: db
    namespace: shop
    vips: [10.96.0.20]
    ports: [{port: 5432}]
    endpoints: [{address: 10.244.2.10}]
    policies:
      - name: only-frontend
        action: ALLOW
        rules: [{name: frontend, from: [{serviceAccounts: [frontend]}]}]
`, pods["frontend"].Cgroup, batchNamespace, batchAccount, pods["batch"].Cgroup, lateCgroup, pods["db"].Cgroup)
		// Replaced by a rename, as editors do.
		tmp := meshFile + ".tmp"
		if err := os.WriteFile(tmp, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, meshFile); err != nil {
			t.Fatal(err)
		}
	}
	write("jobs", "batch")

	logs := map[string]*syncBuffer{}
	for _, n := range []string{"a", "b"} {
		logs[n] = startAgent(t, bin, nodes[n], n, "--mesh", meshFile, "--config-poll", "200ms")
	}
	dial := func(pod string) probe.Result {
		t.Helper()
		r, err := probe.Dial(pods[pod], "10.96.0.20:5432")
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	eventually := func(what string, ok func() bool) { t.Helper(); waitFor(t, logs, what, ok) }
	// frontend is no endpoint: node b trusts its tag because the mesh
	// file lists its address.
	eventually("frontend was never let through, batch never refused", func() bool {
		return dial("batch").Result == "eperm" && dial("frontend").Result == "ok"
	})

	// late's cgroup appears: its connections carry its identity.
	late, err := nodes["a"].AddPod("late", netip.MustParseAddr("10.244.1.12"))
	if err != nil {
		t.Fatal(err)
	}
	pods["late"] = late
	if late.Cgroup != lateCgroup {
		t.Fatalf("late's cgroup is %s, want %s", late.Cgroup, lateCgroup)
	}
	start := time.Now()
	eventually("late's connections were never identified", func() bool { return dial("late").Result == "ok" })
	t.Logf("a workload whose cgroup appeared was identified within %v", time.Since(start).Round(10*time.Millisecond))

	// batch becomes a frontend: only the workloads section changes.
	write("shop", "frontend")
	start = time.Now()
	eventually("the edit of the workloads section never took effect", func() bool { return dial("batch").Result == "ok" })
	t.Logf("an edit of the workloads section took effect within %v", time.Since(start).Round(10*time.Millisecond))
	if r := dial("frontend"); r.Result != "ok" {
		t.Errorf("frontend after the edit: %+v", r)
	}
}

// podSpec places a pod: its node, name and address.
type podSpec struct{ node, name, addr string }

// policyCluster makes a simulated cluster with the nodes and pods given,
// removed when the test ends.
func policyCluster(t *testing.T, specs []podSpec) (map[string]*cluster.Node, map[string]*cluster.Pod) {
	t.Helper()
	c, err := cluster.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Error(err)
		}
	})
	nodes, pods := map[string]*cluster.Node{}, map[string]*cluster.Pod{}
	for _, p := range specs {
		if nodes[p.node] == nil {
			if nodes[p.node], err = c.AddNode(p.node); err != nil {
				t.Fatal(err)
			}
		}
		if pods[p.name], err = nodes[p.node].AddPod(p.name, netip.MustParseAddr(p.addr)); err != nil {
			t.Fatal(err)
		}
	}
	return nodes, pods
}

// serveDB runs the probe server in pod, answering "db" on port 5432.
func serveDB(t *testing.T, pod *cluster.Pod) {
	t.Helper()
	server := pod.Command(context.Background(), os.Args[0])
	server.Env = append(os.Environ(), probe.RoleEnv+"=server", probe.ListenEnv+"=0.0.0.0:5432", probe.NameEnv+"=db")
	if err := pod.Start(server); err != nil {
		t.Fatal(err)
	}
}

// startAgent runs an agent for node, named name, with args added; it is
// stopped when the test ends. It returns the agent's log.
func startAgent(t *testing.T, bin string, node *cluster.Node, name string, args ...string) *syncBuffer {
	t.Helper()
	agent := exec.Command(bin, append([]string{"agent", "--cgroup", node.Cgroup, "--pin-dir", node.PinDir,
		"--node-id", name, "--node-name", name, "--log-level", "debug",
		"--socket", filepath.Join(t.TempDir(), "agent.sock"), "--metrics-addr", ""}, args...)...)
	log := &syncBuffer{}
	agent.Stderr = log
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = agent.Process.Signal(os.Interrupt)
		_ = agent.Wait()
	})
	return log
}

// waitFor polls ok for up to 30 s, and fails the test with the agents'
// logs if it never holds.
func waitFor(t *testing.T, logs map[string]*syncBuffer, what string, ok func() bool) {
	t.Helper()
	waitForWhat(t, logs, func() string { return what }, ok)
}

// waitForWhat is waitFor with a failure message made when it fails, so
// that it can say what ok saw last.
func waitForWhat(t *testing.T, logs map[string]*syncBuffer, what func() string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			var b strings.Builder
			for name, l := range logs {
				fmt.Fprintf(&b, "\n--- %s:\n%s", name, l)
			}
			t.Fatalf("%s; agent logs:%s", what(), b.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}
