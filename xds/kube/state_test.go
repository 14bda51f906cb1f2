package kube_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sluice-mesh/sluice/xds/kube"
	"github.com/sluice-mesh/sluice/xds/mesh"
	"github.com/sluice-mesh/sluice/xds/translate"
)

// world fills a State with n Services of one TCP port each, every one with
// an EndpointSlice of two endpoints referring to two pods.
func world(t testing.TB, n int) *kube.State {
	t.Helper()
	s := kube.NewState("cluster.local")
	for i := range n {
		name := fmt.Sprintf("svc-%d", i)
		s.SetService(service(name, func(svc *corev1.Service) {
			ip := fmt.Sprintf("10.96.%d.%d", i/250, i%250+1)
			svc.Spec.ClusterIP, svc.Spec.ClusterIPs = ip, []string{ip}
		}))
		s.SetEndpointSlice(slice(name, name+"-x", discoveryv1.AddressTypeIPv4, httpPort(8080),
			fmt.Sprintf("10.244.%d.%d", i/250, i%250+1), fmt.Sprintf("10.245.%d.%d", i/250, i%250+1)))
		s.SetPod(pod(name+"-0", "sa", "node-a"))
		s.SetPod(pod(name+"-1", "sa", "node-a"))
	}
	return s
}

// TestStateIncremental checks that a change re-renders the Services it
// affects and no other, and serves only what changed.
func TestStateIncremental(t *testing.T) {
	const n = 200
	s := world(t, n)
	c := s.Flush()
	if got := s.Renders(); got != n {
		t.Fatalf("initial flush rendered %d services, want %d", got, n)
	}
	if len(c.Listeners.Set) != n || len(c.Clusters.Set) != n || len(c.Endpoints.Set) != n {
		t.Fatalf("initial flush set %d listeners, %d clusters, %d assignments; want %d each",
			len(c.Listeners.Set), len(c.Clusters.Set), len(c.Endpoints.Set), n)
	}

	// One endpoint of one service becomes unready.
	sl := slice("svc-7", "svc-7-x", discoveryv1.AddressTypeIPv4, httpPort(8080), "10.244.0.8", "10.245.0.8")
	sl.Endpoints[1].Conditions.Ready = ptr(false)
	s.SetEndpointSlice(sl)
	before := s.Renders()
	c = s.Flush()
	if got := s.Renders() - before; got != 1 {
		t.Fatalf("an EndpointSlice change re-rendered %d services, want 1", got)
	}
	if len(c.Listeners.Set) != 0 || len(c.Clusters.Set) != 0 || len(c.Endpoints.Set) != 1 || c.Endpoints.Set["demo/svc-7:80"] == nil {
		t.Fatalf("served changes: %d listeners, %d clusters, assignments %v; want the assignment demo/svc-7:80 alone",
			len(c.Listeners.Set), len(c.Clusters.Set), keys(c.Endpoints.Set))
	}
	cla := c.Endpoints.Set["demo/svc-7:80"].(*endpointv3.ClusterLoadAssignment)
	if h := cla.Endpoints[0].LbEndpoints[1].GetHealthStatus().String(); h != "UNHEALTHY" {
		t.Errorf("second endpoint health %s, want UNHEALTHY", h)
	}

	// A pod's service account changes: the Services referring to it.
	before = s.Renders()
	s.SetPod(pod("svc-9-1", "other", "node-a"))
	s.SetPod(pod("unrelated", "other", "node-a"))
	c = s.Flush()
	if got := s.Renders() - before; got != 1 || len(c.Endpoints.Set) != 1 || c.Endpoints.Set["demo/svc-9:80"] == nil {
		t.Fatalf("a pod change re-rendered %d services, assignments %v; want demo/svc-9:80 alone", got, keys(c.Endpoints.Set))
	}
	// A pod status change (not kept by the state) re-renders nothing.
	before = s.Renders()
	s.SetPod(pod("svc-9-1", "other", "node-a"))
	if s.Flush(); s.Renders() != before {
		t.Errorf("an unchanged pod re-rendered %d services", s.Renders()-before)
	}

	// A policy selecting one Service: that Service alone.
	pol, err := kube.ValidatePolicy("demo", "lock", 1, &kube.MeshPolicySpec{Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "svc-3"}}})
	if err != nil {
		t.Fatal(err)
	}
	before = s.Renders()
	s.SetPolicy("demo", "lock", 1, pol, nil)
	c = s.Flush()
	if got := s.Renders() - before; got != 1 || len(c.Listeners.Set) != 1 || c.Listeners.Set["demo/svc-3:80"] == nil {
		t.Fatalf("a policy re-rendered %d services, listeners %v; want demo/svc-3:80 alone", got, keys(c.Listeners.Set))
	}
	if len(c.Statuses) != 1 || !c.Statuses[0].Accepted || !slices.Equal(c.Statuses[0].Covered, []string{"demo/svc-3"}) {
		t.Fatalf("statuses %+v, want lock accepted covering demo/svc-3", c.Statuses)
	}
	if !hasRBAC(c.Listeners.Set["demo/svc-3:80"].(*listenerv3.Listener), "lock") {
		t.Error("listener of demo/svc-3 lacks the RBAC filter of the policy")
	}

	// An invalid edit keeps the served version: nothing re-rendered, and
	// the status says so.
	before = s.Renders()
	s.SetPolicy("demo", "lock", 2, nil, fmt.Errorf(`spec.rules[0].from[0].ipBlocks[0]: "x" is not an address or CIDR`))
	c = s.Flush()
	if got := s.Renders() - before; got != 0 || !c.Empty() {
		t.Errorf("an invalid edit re-rendered %d services, changed resources %v", got, !c.Empty())
	}
	if len(c.Statuses) != 1 || c.Statuses[0].Accepted || c.Statuses[0].Generation != 2 ||
		!strings.Contains(c.Statuses[0].Message, "ipBlocks[0]") || !strings.Contains(c.Statuses[0].Message, "still serving generation 1") ||
		!slices.Equal(c.Statuses[0].Covered, []string{"demo/svc-3"}) {
		t.Errorf("status after an invalid edit: %+v", c.Statuses)
	}

	// Deleting the Service removes its resources, listener included, and
	// updates the coverage of the policy.
	s.DeleteService("demo", "svc-3")
	c = s.Flush()
	if !slices.Equal(c.Listeners.Delete, []string{"demo/svc-3:80"}) || !slices.Equal(c.Clusters.Delete, []string{"demo/svc-3:80"}) ||
		!slices.Equal(c.Endpoints.Delete, []string{"demo/svc-3:80"}) {
		t.Errorf("deletes after the Service went: %v %v %v", c.Listeners.Delete, c.Clusters.Delete, c.Endpoints.Delete)
	}
	if len(c.Statuses) != 1 || len(c.Statuses[0].Covered) != 0 {
		t.Errorf("statuses after the covered Service went: %+v, want lock covering nothing", c.Statuses)
	}
	if got := len(s.Resources()["listener"]); got != n-1 {
		t.Errorf("%d listeners served, want %d", got, n-1)
	}
}

// TestStateNewInvalidPolicy checks that a policy invalid from the start is
// not served and says so.
func TestStateNewInvalidPolicy(t *testing.T) {
	s := world(t, 3)
	s.Flush()
	s.SetPolicy("demo", "bad", 1, nil, fmt.Errorf("spec.action: %q is not an action", "X"))
	c := s.Flush()
	if !c.Empty() {
		t.Error("an invalid policy changed the served resources")
	}
	if len(c.Statuses) != 1 || c.Statuses[0].Accepted || !strings.HasSuffix(c.Statuses[0].Message, "; not served") || len(c.Statuses[0].Covered) != 0 {
		t.Errorf("status %+v, want not accepted, not served, covering nothing", c.Statuses)
	}
}

// TestStateSkipReport checks that an unsupported Service is reported once
// per change, not on every flush.
func TestStateSkipReport(t *testing.T) {
	s := kube.NewState("cluster.local")
	headless := service("db", func(svc *corev1.Service) { svc.Spec.ClusterIP, svc.Spec.ClusterIPs = "None", []string{"None"} })
	s.SetService(headless)
	c := s.Flush()
	if len(c.Reports) != 1 || !c.Reports[0].Skipped || !strings.Contains(c.Reports[0].Reason, "headless") || !c.Empty() {
		t.Fatalf("reports %+v, resources changed %v; want one skip report, nothing served", c.Reports, !c.Empty())
	}
	s.SetService(headless)
	if c := s.Flush(); len(c.Reports) != 0 {
		t.Errorf("the same headless Service reported again: %+v", c.Reports)
	}
	s.SetService(service("db"))
	if c := s.Flush(); len(c.Reports) != 1 || c.Reports[0].Reason != "" || len(c.Listeners.Set) != 1 {
		t.Errorf("reports %+v, listeners %v after the Service got a cluster IP; want it served and reported fine", c.Reports, keys(c.Listeners.Set))
	}
}

func hasRBAC(l *listenerv3.Listener, policy string) bool {
	for _, f := range l.GetFilterChains()[0].GetFilters() {
		if f.GetName() == mesh.RBACFilter && strings.Contains(string(f.GetTypedConfig().GetValue()), policy) {
			return true
		}
	}
	return false
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// TestStateDirectory checks the workload directories: every pod with an
// address is listed (host-network and finished pods are not) in the
// directory of its shard, agents make peers of them, and only a change
// of what a directory lists changes it.
func TestStateDirectory(t *testing.T) {
	s := world(t, 3) // pods without addresses yet: no directory
	if c := s.Flush(); len(c.Clusters.Set) != 3 {
		t.Fatalf("clusters %v, want the 3 services' alone", keys(c.Clusters.Set))
	}
	running := func(name, ns, sa string, ips ...string) *corev1.Pod {
		p := pod(name, sa, "node-b")
		p.Namespace, p.Status.Phase = ns, corev1.PodRunning
		for _, ip := range ips {
			p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
		}
		if len(ips) > 0 {
			p.Status.PodIP = ips[0]
		}
		return p
	}
	hostNet := running("agent", "jobs", "agent", "192.168.0.2")
	hostNet.Spec.HostNetwork = true
	done := running("old", "jobs", "batch", "10.244.7.9")
	done.Status.Phase = corev1.PodSucceeded
	listed := []*corev1.Pod{
		running("cron-0", "jobs", "", "10.244.7.2", "fd00:244::7:2"), running("batch-0", "jobs", "batch", "10.244.7.1"),
		running("client", "demo", "client", "10.244.8.1"),
	}
	for _, p := range append(slices.Clone(listed), hostNet, done) {
		s.SetPod(p)
	}
	c := s.Flush()
	var dirs []string
	for _, p := range listed {
		dirs = append(dirs, kube.DirectoryOf(p.Namespace, p.Name))
	}
	slices.Sort(dirs)
	dirs = slices.Compact(dirs)
	if !slices.Equal(keys(c.Clusters.Set), dirs) || !slices.Equal(keys(c.Endpoints.Set), dirs) {
		t.Fatalf("set clusters %v, assignments %v; want the directories %v", keys(c.Clusters.Set), keys(c.Endpoints.Set), dirs)
	}
	for _, d := range dirs {
		if !translate.IsDirectory(d) {
			t.Errorf("%s is not a directory name to agents", d)
		}
	}

	// What an agent makes of what is served: the peers.
	r := translate.Resources{Listeners: map[string]*listenerv3.Listener{}, Clusters: map[string]*clusterv3.Cluster{}, Endpoints: map[string]*endpointv3.ClusterLoadAssignment{}}
	for name, res := range s.Resources()["cluster"] {
		r.Clusters[name] = res.(*clusterv3.Cluster)
	}
	for name, res := range s.Resources()["endpoint"] {
		r.Endpoints[name] = res.(*endpointv3.ClusterLoadAssignment)
	}
	for name, res := range s.Resources()["listener"] {
		r.Listeners[name] = res.(*listenerv3.Listener)
	}
	res, err := translate.Translate(r)
	if err != nil {
		t.Fatalf("an agent refuses what is served: %v", err)
	}
	var got []string
	for _, p := range res.State.Peers {
		got = append(got, fmt.Sprintf("%s %s/%s %s %s", p.Addr, p.Workload.Namespace, p.Workload.Name, p.Workload.SPIFFEID, p.Workload.Node))
	}
	slices.Sort(got)
	want := []string{
		"10.244.7.1 jobs/batch-0 spiffe://cluster.local/ns/jobs/sa/batch node-b",
		"10.244.7.2 jobs/cron-0 spiffe://cluster.local/ns/jobs/sa/default node-b",
		"10.244.8.1 demo/client spiffe://cluster.local/ns/demo/sa/client node-b",
		"fd00:244::7:2 jobs/cron-0 spiffe://cluster.local/ns/jobs/sa/default node-b",
	}
	if !slices.Equal(got, want) {
		t.Errorf("peers\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if len(res.State.Services) != 3 {
		t.Errorf("%d services, want 3", len(res.State.Services))
	}

	// A pod's status changes, its address does not: nothing changes.
	again := running("batch-0", "jobs", "batch", "10.244.7.1")
	again.ResourceVersion = "2"
	s.SetPod(again)
	if c := s.Flush(); !c.Empty() {
		t.Errorf("an unchanged address changed clusters %v, assignments %v", keys(c.Clusters.Set), keys(c.Endpoints.Set))
	}
	// A new address changes the pod's directory alone.
	s.SetPod(running("batch-0", "jobs", "batch", "10.244.7.3"))
	dir := kube.DirectoryOf("jobs", "batch-0")
	if c := s.Flush(); len(c.Clusters.Set) != 0 || !slices.Equal(keys(c.Endpoints.Set), []string{dir}) {
		t.Errorf("a new address changed clusters %v, assignments %v; want %s alone", keys(c.Clusters.Set), keys(c.Endpoints.Set), dir)
	}
	// The listed pods go, and with them the directories.
	for _, p := range listed {
		s.DeletePod(p.Namespace, p.Name)
	}
	c = s.Flush()
	slices.Sort(c.Clusters.Delete)
	slices.Sort(c.Endpoints.Delete)
	if !slices.Equal(c.Clusters.Delete, dirs) || !slices.Equal(c.Endpoints.Delete, dirs) {
		t.Errorf("deleted clusters %v, assignments %v; want %v", c.Clusters.Delete, c.Endpoints.Delete, dirs)
	}
	if n := len(s.Resources()["cluster"]); n != 3 {
		t.Errorf("%d clusters served, want the 3 services'", n)
	}
}
