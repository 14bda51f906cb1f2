package e2e_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbaccfgv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	httpupstreamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sluice-mesh/sluice/dataplane/model"
	"github.com/sluice-mesh/sluice/e2e/cluster"
	"github.com/sluice-mesh/sluice/e2e/probe"
	"github.com/sluice-mesh/sluice/e2e/testenv"
	"github.com/sluice-mesh/sluice/sockops/flow"
	"github.com/sluice-mesh/sluice/xds/mesh"
)

// l7VIP is the L7 service of the L7 tests.
var l7VIP = netip.MustParseAddr("10.96.50.1")

// l7Mesh is the simulated cluster of the L7 tests: two routed nodes, each
// with its agent and L7 proxy, fed by a control plane in the test.
type l7Mesh struct {
	t       *testing.T
	bin     string
	c       *cluster.Cluster
	nodes   map[string]*cluster.Node
	pods    map[string]*cluster.Pod
	agents  map[string]*cluster.Agent
	proxies map[string]*cluster.Proxy
	xds     *xdsServer
	mf      *cluster.MeshFile
	res     mesh.Resources
}

func newL7Mesh(t *testing.T) *l7Mesh {
	testenv.RequirePrivileged(t)
	m := &l7Mesh{t: t, bin: buildSluice(t), nodes: map[string]*cluster.Node{}, pods: map[string]*cluster.Pod{},
		agents: map[string]*cluster.Agent{}, proxies: map[string]*cluster.Proxy{}}
	c, err := cluster.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("cluster close: %v", err)
		}
	})
	m.c = c
	for _, n := range []string{"n1", "n2"} {
		if m.nodes[n], err = c.AddRoutedNode(n); err != nil {
			t.Fatal(err)
		}
	}
	pods := []struct{ node, name, addr string }{
		{"n1", "frontend", "10.244.1.10"}, {"n1", "batch", "10.244.1.11"},
		{"n1", "web-v1", "10.244.1.20"}, {"n2", "web-v2", "10.244.2.20"}, {"n2", "web-flap", "10.244.2.21"},
	}
	var ws []cluster.Workload
	for _, p := range pods {
		pod, err := m.nodes[p.node].AddPod(p.name, netip.MustParseAddr(p.addr))
		if err != nil {
			t.Fatal(err)
		}
		m.pods[p.name] = pod
		ws = append(ws, pod.Workload("shop", p.name))
	}
	// The pools the routes send to are services of their own (L4), so
	// that the control plane sends their clusters; web-v2's admits the
	// frontend only, at its endpoint, whoever dials it.
	svc := func(name, vip string, policies ...cluster.Policy) cluster.Service {
		return cluster.Service{Name: name, Namespace: "shop", VIPs: []netip.Addr{netip.MustParseAddr(vip)},
			Ports: []cluster.Port{{Port: 80, TargetPort: 8080}}, Endpoints: []cluster.Endpoint{{Address: m.pods[name].IP}}, Policies: policies}
	}
	onlyFrontend := cluster.Policy{Name: "only-frontend", Rules: []cluster.Rule{{Name: "frontend",
		From: []cluster.Source{{ServiceAccounts: []string{"frontend"}}}}}}
	msh := cluster.Mesh{Workloads: ws, Services: []cluster.Service{
		svc("web-v1", "10.96.51.1"), svc("web-v2", "10.96.51.2", onlyFrontend), svc("web-flap", "10.96.51.3"),
	}}
	if m.mf, err = cluster.WriteMesh(c.Dir+"/mesh.yaml", msh); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(m.mf.Path)
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := mesh.Parse(m.mf.Path, data)
	if err != nil {
		t.Fatal(err)
	}
	m.res = parsed.Resources()
	m.xds = startXDSServer(t)
	m.publish("1", l7Routes())

	m.serve("web-v1", false)
	m.serve("web-v2", false)
	m.serve("web-flap", true)
	for _, n := range []string{"n1", "n2"} {
		m.startAgent(n)
		p, err := m.nodes[n].StartProxy(context.Background(), m.bin)
		if err != nil {
			t.Fatal(err)
		}
		m.proxies[n] = p
	}
	t.Cleanup(func() {
		if t.Failed() {
			for n, p := range m.proxies {
				t.Logf("proxy %s log:\n%s", n, p.Log())
			}
		}
	})
	return m
}

func (m *l7Mesh) startAgent(node string) {
	m.t.Helper()
	n := m.nodes[node]
	a, err := n.StartAgent(cluster.AgentConfig{Binary: m.bin, ControlPlane: &cluster.ControlPlane{Addr: m.xds.addr, Mesh: m.mf},
		Args: []string{"--l7-proxy", n.ProxyAddr().String()}})
	if err != nil {
		m.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := a.Ready(ctx); err != nil {
		m.t.Fatalf("agent %s: %v\n%s", node, err, a.Log())
	}
	m.agents[node] = a
}

// serve runs the http role in a pod, on port 8080.
func (m *l7Mesh) serve(pod string, flap bool) {
	m.t.Helper()
	p := m.pods[pod]
	cmd := p.Command(context.Background(), os.Args[0])
	cmd.Env = append(os.Environ(), probe.RoleEnv+"=http", probe.ListenEnv+"=0.0.0.0:8080", probe.NameEnv+"="+pod)
	if flap {
		cmd.Env = append(cmd.Env, probe.FlapEnv+"=1")
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		m.t.Fatal(err)
	}
	if err := p.Start(cmd); err != nil {
		m.t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "ready\n" {
		m.t.Fatalf("http server in %s: %q %v", pod, line, err)
	}
}

// clusterOf returns the cluster of the L4 service at vip.
func (m *l7Mesh) clusterOf(vip string) string {
	m.t.Helper()
	for _, l := range m.res.Listeners {
		if l.GetAddress().GetSocketAddress().GetAddress() == vip {
			for _, c := range m.res.Clusters {
				if c.Name == l.Name {
					return c.Name
				}
			}
		}
	}
	m.t.Fatalf("no cluster for the service at %s", vip)
	return ""
}

// l7Route is one route of the test's route configuration.
type l7Route struct {
	prefix  string
	header  [2]string // name, exact value; "" for none
	split   map[string]uint32
	cluster string
	retry   bool
	timeout time.Duration
}

// l7Routes are the routes of the tests, by service VIP of their pools.
func l7Routes() []l7Route {
	return []l7Route{
		{prefix: "/", header: [2]string{"x-version", "v2"}, cluster: "10.96.51.2"},
		{prefix: "/split", split: map[string]uint32{"10.96.51.1": 80, "10.96.51.2": 20}},
		{prefix: "/flap-retry", cluster: "10.96.51.3", retry: true},
		{prefix: "/flap", cluster: "10.96.51.3"},
		{prefix: "/slow", cluster: "10.96.51.1", timeout: 300 * time.Millisecond},
		{prefix: "/", cluster: "10.96.51.1"},
	}
}

// publish serves the mesh's L4 resources plus the L7 service web at
// l7VIP:80, whose RDS route configuration "web" holds routes.
func (m *l7Mesh) publish(version string, routes []l7Route) {
	m.t.Helper()
	vh := &routev3.VirtualHost{Name: "web", Domains: []string{"*"}}
	for i, r := range routes {
		rt := &routev3.Route{Name: fmt.Sprintf("r%d", i),
			Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: r.prefix}}}
		if r.header[0] != "" {
			rt.Match.Headers = []*routev3.HeaderMatcher{{Name: r.header[0], HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{
				StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: r.header[1]}}}}}
		}
		act := &routev3.RouteAction{}
		if r.split != nil {
			wc := &routev3.WeightedCluster{}
			for vip, w := range r.split {
				wc.Clusters = append(wc.Clusters, &routev3.WeightedCluster_ClusterWeight{Name: m.clusterOf(vip), Weight: wrapperspb.UInt32(w)})
			}
			act.ClusterSpecifier = &routev3.RouteAction_WeightedClusters{WeightedClusters: wc}
		} else {
			act.ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: m.clusterOf(r.cluster)}
		}
		if r.retry {
			act.RetryPolicy = &routev3.RetryPolicy{RetryOn: "5xx", NumRetries: wrapperspb.UInt32(3)}
		}
		if r.timeout > 0 {
			act.Timeout = durationpb.New(r.timeout)
		}
		rt.Action = &routev3.Route_Route{Route: act}
		vh.Routes = append(vh.Routes, rt)
	}
	rc := &routev3.RouteConfiguration{Name: "web", VirtualHosts: []*routev3.VirtualHost{vh}}
	router, _ := anypb.New(&routerv3.Router{})
	// HTTP RBAC: batch may not reach /admin; everyone else may.
	exact := func(v string) *matcherv3.StringMatcher {
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: v}}
	}
	rbac, err := anypb.New(&rbacv3.RBAC{Rules: &rbaccfgv3.RBAC{Action: rbaccfgv3.RBAC_DENY, Policies: map[string]*rbaccfgv3.Policy{
		"batch-no-admin": {
			Permissions: []*rbaccfgv3.Permission{{Rule: &rbaccfgv3.Permission_UrlPath{UrlPath: &matcherv3.PathMatcher{
				Rule: &matcherv3.PathMatcher_Path{Path: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: "/admin"}}}}}}},
			Principals: []*rbaccfgv3.Principal{{Identifier: &rbaccfgv3.Principal_Authenticated_{Authenticated: &rbaccfgv3.Principal_Authenticated{
				PrincipalName: exact("spiffe://cluster.local/ns/shop/sa/batch")}}}},
		},
	}}})
	if err != nil {
		m.t.Fatal(err)
	}
	hcm, err := anypb.New(&hcmv3.HttpConnectionManager{
		StatPrefix: "web",
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{RouteConfigName: "web",
			ConfigSource: &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
				ResourceApiVersion: corev3.ApiVersion_V3}}},
		HttpFilters: []*hcmv3.HttpFilter{
			{Name: "envoy.filters.http.rbac", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: rbac}},
			{Name: "envoy.filters.http.router", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: router}},
		},
	})
	if err != nil {
		m.t.Fatal(err)
	}
	l := &listenerv3.Listener{Name: "shop/web:80",
		Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: l7VIP.String(), PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 80}}}},
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{Name: "envoy.filters.network.http_connection_manager",
			ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: hcm}}}}}}
	// The clients back no service: a workload directory tells every node
	// who they are (docs/xds.md).
	var peers []model.Peer
	for _, name := range []string{"frontend", "batch"} {
		p := m.pods[name]
		peers = append(peers, model.Peer{Addr: p.IP, Workload: &model.Workload{Name: name, Namespace: "shop", ServiceAccount: name,
			Node: p.Node.Name, SPIFFEID: "spiffe://cluster.local/ns/shop/sa/" + name}})
	}
	// So do the nodes' L7 proxies, which other nodes must trust to speak
	// for their clients.
	for name, n := range m.nodes {
		peers = append(peers, model.Peer{Addr: n.ProxyAddr().Addr(), Workload: &model.Workload{Node: name, L7Proxy: true,
			SPIFFEID: "spiffe://cluster.local/ns/sluice-system/sa/sluice-agent"}})
	}
	dc, dla := mesh.Directory("sluice.io/workloads", peers)
	res := map[resourcev3.Type][]types.Resource{resourcev3.ListenerType: {l}, resourcev3.RouteType: {rc},
		resourcev3.ClusterType: {dc}, resourcev3.EndpointType: {dla}}
	for _, l := range m.res.Listeners {
		res[resourcev3.ListenerType] = append(res[resourcev3.ListenerType], l)
	}
	// web-v1's cluster speaks the client's protocol upstream (gRPC needs
	// HTTP/2); the others say nothing, so HTTP/1.1, as in Envoy.
	downstream, err := anypb.New(&httpupstreamv3.HttpProtocolOptions{
		UpstreamProtocolOptions: &httpupstreamv3.HttpProtocolOptions_UseDownstreamProtocolConfig{
			UseDownstreamProtocolConfig: &httpupstreamv3.HttpProtocolOptions_UseDownstreamHttpConfig{
				HttpProtocolOptions: &corev3.Http1ProtocolOptions{}, Http2ProtocolOptions: &corev3.Http2ProtocolOptions{}}}})
	if err != nil {
		m.t.Fatal(err)
	}
	for _, c := range m.res.Clusters {
		if c.Name == m.clusterOf("10.96.51.1") {
			c = proto.Clone(c).(*clusterv3.Cluster)
			c.TypedExtensionProtocolOptions = map[string]*anypb.Any{"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": downstream}
		}
		res[resourcev3.ClusterType] = append(res[resourcev3.ClusterType], c)
	}
	for _, e := range m.res.Endpoints {
		res[resourcev3.EndpointType] = append(res[resourcev3.EndpointType], e)
	}
	snap, err := cachev3.NewSnapshot(version, res)
	if err != nil {
		m.t.Fatal(err)
	}
	m.xds.set(m.t, snap)
}

// curl runs curl in a pod with args and returns its output.
func (m *l7Mesh) curl(pod string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := m.pods[pod].Command(ctx, "curl", append([]string{"-sS", "--max-time", "20"}, args...)...)
	out, err := m.pods[pod].Output(cmd)
	return string(out), err
}

// answers decodes the http role's answers in out (one per request), with
// the status code curl wrote after each ("%{http_code}\n").
type l7Answer struct {
	probe.HTTPAnswer
	Code int
}

func answers(t *testing.T, out string) []l7Answer {
	t.Helper()
	var got []l7Answer
	dec := json.NewDecoder(strings.NewReader(out))
	for {
		var a l7Answer
		if err := dec.Decode(&a.HTTPAnswer); err != nil {
			if err != io.EOF {
				t.Fatalf("decode answers: %v in %q", err, out)
			}
			return got
		}
		if err := dec.Decode(&a.Code); err != nil {
			t.Fatalf("decode the status code after an answer: %v in %q", err, out)
		}
		got = append(got, a)
	}
}

// get requests url n times on one connection (keep-alive) from pod.
func (m *l7Mesh) get(t *testing.T, pod, url string, n int, args ...string) []l7Answer {
	t.Helper()
	all := append([]string{"-w", "\n%{http_code}\n"}, args...)
	for range n {
		all = append(all, url)
	}
	out, err := m.curl(pod, all...)
	if err != nil {
		t.Fatalf("curl %s from %s: %v\n%s", url, pod, err, out)
	}
	got := answers(t, out)
	if len(got) != n {
		t.Fatalf("curl %s from %s: %d answers, want %d:\n%s", url, pod, len(got), n, out)
	}
	return got
}

func names(as []l7Answer) map[string]int {
	out := map[string]int{}
	for _, a := range as {
		out[fmt.Sprintf("%s %d", a.Name, a.Code)]++
	}
	return out
}

// TestL7 serves an L7 service through the nodes' L7 proxies: requests from
// pods are routed by path, header and weight to pools on both nodes, over
// HTTP/1.1 and HTTP/2; HTTP RBAC answers 403 by the client's identity;
// retries, timeouts and the client's identity upstream hold; killing an
// agent under load drops nothing.
func TestL7(t *testing.T) {
	m := newL7Mesh(t)
	base := "http://" + l7VIP.String()

	t.Run("HTTP1", func(t *testing.T) {
		got := m.get(t, "frontend", base+"/hello", 3)
		for _, a := range got {
			if a.Code != 200 || a.Name != "web-v1" || a.Proto != "HTTP/1.1" || a.Path != "/hello" || a.Host != l7VIP.String() {
				t.Errorf("GET /hello: %+v, want 200 from web-v1 over HTTP/1.1, path /hello, host %s", a, l7VIP)
			}
		}
	})
	t.Run("HTTP2", func(t *testing.T) {
		// One request per curl: curl 7.88 (Debian 12) fails a second
		// request on a reused prior-knowledge connection whatever the
		// server (curl issue 10634); the gRPC subtest reuses HTTP/2
		// connections.
		for range 3 {
			for _, a := range m.get(t, "frontend", base+"/hello", 1, "--http2-prior-knowledge") {
				if a.Code != 200 || a.Name != "web-v1" || a.Path != "/hello" || a.Proto != "HTTP/2.0" {
					t.Errorf("GET /hello over HTTP/2: %+v, want 200 from web-v1 over HTTP/2.0 (its cluster speaks the client's protocol)", a)
				}
			}
		}
		// web-v2's cluster has no protocol options: HTTP/1.1 upstream.
		for _, a := range m.get(t, "frontend", base+"/", 1, "--http2-prior-knowledge", "-H", "x-version: v2") {
			if a.Code != 200 || a.Name != "web-v2" || a.Proto != "HTTP/1.1" {
				t.Errorf("GET / over HTTP/2 to web-v2: %+v, want 200 from web-v2 over HTTP/1.1", a)
			}
		}
	})
	t.Run("GRPC", func(t *testing.T) {
		// grpc-go both ends: unary calls, a bidirectional stream and a
		// server stream over one connection through the proxy, trailers
		// and error statuses intact.
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		since := time.Now().UTC().Format(time.RFC3339Nano)
		cmd := m.pods["frontend"].Command(ctx, os.Args[0])
		cmd.Env = append(os.Environ(), probe.RoleEnv+"=grpc-client", probe.DialEnv+"="+l7VIP.String()+":80")
		out, err := m.pods["frontend"].Output(cmd)
		if err != nil {
			t.Fatalf("grpc client: %v\n%s", err, out)
		}
		var got probe.GRPCResult
		if err := json.Unmarshal(out, &got); err != nil {
			t.Fatalf("grpc client output %q: %v", out, err)
		}
		want := probe.GRPCResult{Server: "web-v1", Unary: 5, Duplex: 10, Streamed: 5, Trailer: "done",
			Status: "NotFound: no such item", FailedTr: "failed"}
		if got != want {
			t.Errorf("gRPC through the proxy: %+v, want %+v", got, want)
		}
		// Each call is a request flow with the grpc-status its client
		// got: 7 OK (5 unary, the two streams) and the NotFound (5).
		statuses := map[string]int{}
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			fs, err := m.agents["n1"].Observe(ctx, "--event", "request", "--since", since)
			if err != nil {
				t.Fatal(err)
			}
			clear(statuses)
			for _, f := range fs {
				if f.Protocol == "grpc" && f.HTTP != nil {
					statuses[f.HTTP.GRPCStatus]++
				}
			}
			if statuses["0"]+statuses["5"] >= 8 || time.Now().After(deadline) {
				break
			}
		}
		if len(statuses) != 2 || statuses["0"] != 7 || statuses["5"] != 1 {
			t.Errorf("gRPC request flows by grpc-status: %v, want 7 × 0 and 1 × 5", statuses)
		}
	})
	t.Run("HTTPPolicy", func(t *testing.T) {
		// batch is denied /admin and served / on the same connection;
		// the frontend is served /admin.
		out, err := m.curl("batch", "-w", "%{http_code} %{num_connects}\n",
			"-o", "/dev/null", base+"/admin/x", "-o", "/dev/null", base+"/", "-o", "/dev/null", base+"/admin/y")
		if err != nil || out != "403 1\n200 0\n403 0\n" {
			t.Errorf("batch: GET /admin/x, /, /admin/y on one connection: %q (%v), want 403, 200, 403 with one connect", out, err)
		}
		for _, a := range m.get(t, "frontend", base+"/admin/x", 1) {
			if a.Code != 200 || a.Name != "web-v1" {
				t.Errorf("frontend: GET /admin/x: %+v, want 200 from web-v1", a)
			}
		}
	})
	t.Run("FlowsAndMetrics", func(t *testing.T) {
		// Each request is a flow record at the client's node, with no
		// query string, and counts in the request metrics; a denied one
		// says which policy denied it.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		agent := m.agents["n1"]
		labels := []string{`source_workload="frontend"`, `destination_workload="web-v1"`, `response_code="200"`}
		// The records of earlier subtests' requests land within ~100 ms:
		// wait for the count to hold still.
		before := requestCount(t, ctx, agent, labels...)
		for range 50 {
			time.Sleep(300 * time.Millisecond)
			n := requestCount(t, ctx, agent, labels...)
			if n == before {
				break
			}
			before = n
		}
		since := time.Now().UTC().Format(time.RFC3339Nano)
		m.get(t, "frontend", base+"/flows?token=secret", 3)
		if out, err := m.curl("batch", "-o", "/dev/null", "-w", "%{http_code}", base+"/admin/flows"); err != nil || out != "403" {
			t.Fatalf("batch GET /admin/flows: %q %v, want 403", out, err)
		}
		var served, denied []flow.Flow
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			fs, err := agent.Observe(ctx, "--event", "request", "--since", since)
			if err != nil {
				t.Fatal(err)
			}
			served, denied = nil, nil
			for _, f := range fs {
				switch {
				case f.HTTP != nil && f.HTTP.Path == "/flows":
					served = append(served, f)
				case f.HTTP != nil && f.HTTP.Path == "/admin/flows":
					denied = append(denied, f)
				}
			}
			if len(served) >= 3 && len(denied) >= 1 || time.Now().After(deadline) {
				break
			}
		}
		if len(served) != 3 || len(denied) != 1 {
			t.Fatalf("request flows at n1: %d for /flows (want 3), %d for /admin/flows (want 1)", len(served), len(denied))
		}
		for _, f := range served {
			if f.Event != "request" || f.Source.Workload != "frontend" || f.Destination.Workload != "web-v1" ||
				f.Service == nil || f.Service.VIP != netip.AddrPortFrom(l7VIP, 80) ||
				f.HTTP.Method != "GET" || f.HTTP.Code != 200 || f.Verdict != flow.VerdictAllowed || f.Duration <= 0 {
				t.Errorf("flow of GET /flows: %+v %+v, want frontend → %s → web-v1, GET, 200, allowed", f, *f.HTTP, l7VIP)
			}
		}
		if f := denied[0]; f.Source.Workload != "batch" || f.Verdict != flow.VerdictDenied || f.HTTP.Code != 403 ||
			!strings.Contains(f.Policy, "batch-no-admin") {
			t.Errorf("flow of the denied request: %+v %+v, want batch, denied by batch-no-admin, 403", f, *f.HTTP)
		}
		if after := requestCount(t, ctx, agent, labels...); after-before != 3 {
			t.Errorf("sluice_requests_total{frontend → web-v1, 200} rose by %v, want 3", after-before)
		}
	})
	t.Run("HeaderRouteAcrossNodes", func(t *testing.T) {
		for _, a := range m.get(t, "frontend", base+"/", 3, "-H", "x-version: v2") {
			if a.Code != 200 || a.Name != "web-v2" {
				t.Errorf("GET / with x-version: v2: %+v, want 200 from web-v2 (on n2)", a)
			}
		}
	})
	t.Run("WeightedSplit", func(t *testing.T) {
		const n = 400
		got := names(m.get(t, "frontend", base+"/split", n))
		v1 := got["web-v1 200"]
		// Binomial(n, 0.8): within 5 standard deviations.
		sd := math.Sqrt(n * 0.8 * 0.2)
		if got["web-v1 200"]+got["web-v2 200"] != n || math.Abs(float64(v1)-0.8*n) > 5*sd {
			t.Errorf("80/20 split over %d requests: %v, want web-v1 within %.0f±%.0f", n, got, 0.8*n, 5*sd)
		}
		t.Logf("80/20 split: %v", got)
	})
	t.Run("Retries", func(t *testing.T) {
		without := names(m.get(t, "frontend", base+"/flap", 20))
		if without["web-flap 503"] == 0 {
			t.Errorf("without retries: %v, want some 503s from the flapping backend", without)
		}
		with := names(m.get(t, "frontend", base+"/flap-retry", 20))
		if with["web-flap 200"] != 20 {
			t.Errorf("with retry_on 5xx: %v, want 20 × 200", with)
		}
	})
	t.Run("Timeout", func(t *testing.T) {
		out, err := m.curl("frontend", "-o", "/dev/null", "-w", "%{http_code}", base+"/slow?sleep=3s")
		if err != nil || out != "504" {
			t.Errorf("GET /slow?sleep=3s with a 300ms route timeout: %q %v, want 504", out, err)
		}
		if out, err := m.curl("frontend", "-o", "/dev/null", "-w", "%{http_code}", base+"/slow?sleep=10ms"); err != nil || out != "200" {
			t.Errorf("GET /slow?sleep=10ms: %q %v, want 200", out, err)
		}
	})
	t.Run("IdentityUpstream", func(t *testing.T) {
		// web-v2 admits the frontend only: through the proxy, the
		// frontend still gets in and batch does not.
		if got := names(m.get(t, "frontend", base+"/", 2, "-H", "x-version: v2")); got["web-v2 200"] != 2 {
			t.Errorf("frontend → web-v2 through the proxy: %v, want 2 × 200", got)
		}
		out, err := m.curl("batch", "-o", "/dev/null", "-w", "%{http_code}", "-H", "x-version: v2", base+"/")
		if err != nil || !strings.HasPrefix(out, "5") {
			t.Errorf("batch → web-v2 through the proxy: %q %v, want a 5xx: web-v2's policy refuses batch's identity upstream", out, err)
		}
		if got := names(m.get(t, "batch", base+"/", 1)); got["web-v1 200"] != 1 {
			t.Errorf("batch → web-v1 (no policy): %v, want 200", got)
		}
	})
	t.Run("ConfigChangeInFlight", func(t *testing.T) {
		// A request in flight when the routes change finishes where it
		// started; the requests after the change take the new routes.
		type result struct {
			out string
			err error
		}
		inFlight := make(chan result, 1)
		go func() {
			out, err := m.curl("frontend", "-w", "\n%{http_code}\n", base+"/hello?sleep=2s")
			inFlight <- result{out, err}
		}()
		time.Sleep(500 * time.Millisecond)
		moved := append([]l7Route{{prefix: "/hello", cluster: "10.96.51.2"}}, l7Routes()...)
		m.publish("moved", moved)
		defer m.publish("restored", l7Routes())
		deadline := time.Now().Add(10 * time.Second)
		for {
			if a := m.get(t, "frontend", base+"/hello", 1); a[0].Name == "web-v2" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the new route did not apply within 10 s")
			}
			time.Sleep(50 * time.Millisecond)
		}
		r := <-inFlight
		if r.err != nil {
			t.Fatalf("request in flight across the change: %v\n%s", r.err, r.out)
		}
		a := answers(t, r.out)
		if len(a) != 1 || a[0].Code != 200 || a[0].Name != "web-v1" {
			t.Errorf("request in flight across the change: %+v, want 200 from web-v1 (the route it started on)", a)
		}
	})
	t.Run("AgentKilledUnderLoad", func(t *testing.T) {
		// Requests keep flowing on one connection while n1's agent is
		// killed; none fails, and the proxy still serves after it is back.
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		args := []string{"-sS", "--max-time", "50", "-w", "\n%{http_code}\n"}
		const n = 150
		for range n {
			args = append(args, base+"/load?sleep=20ms")
		}
		cmd := m.pods["frontend"].Command(ctx, "curl", args...)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := m.pods["frontend"].Start(cmd); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		a := m.agents["n1"]
		if err := syscall.Kill(a.Pid(), syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(out)
		if err := cmd.Wait(); err != nil {
			t.Errorf("curl under load while the agent was killed: %v", err)
		}
		got := names(answers(t, string(data)))
		if got["web-v1 200"] != n {
			t.Errorf("%d requests while n1's agent was killed: %v, want all 200 from web-v1", n, got)
		}
		_ = a.Stop()
		m.startAgent("n1")
		if got := names(m.get(t, "frontend", base+"/after", 2)); got["web-v1 200"] != 2 {
			t.Errorf("after the agent's restart: %v, want 2 × 200", got)
		}
	})
}

// requestCount sums the agent's sluice_requests_total series whose labels
// include every one of labels, and checks that the request-duration
// histogram counted as many.
func requestCount(t *testing.T, ctx context.Context, a *cluster.Agent, labels ...string) float64 {
	t.Helper()
	page, err := a.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sum := func(metric string) float64 {
		total := 0.0
		for _, line := range strings.Split(page, "\n") {
			rest, ok := strings.CutPrefix(line, metric+"{")
			if !ok {
				continue
			}
			matched := true
			for _, l := range labels {
				matched = matched && strings.Contains(rest, l)
			}
			if !matched {
				continue
			}
			var v float64
			if _, err := fmt.Sscan(rest[strings.LastIndexByte(rest, ' ')+1:], &v); err != nil {
				t.Fatalf("metric line %q: %v", line, err)
			}
			total += v
		}
		return total
	}
	n := sum("sluice_requests_total")
	if h := sum("sluice_request_duration_seconds_count"); h != n {
		t.Errorf("sluice_request_duration_seconds_count %v, sluice_requests_total %v for %v: want equal", h, n, labels)
	}
	return n
}
