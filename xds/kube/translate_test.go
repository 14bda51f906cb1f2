package kube_test

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/sluice-mesh/sluice/dataplane/model"
	"github.com/sluice-mesh/sluice/xds/kube"
	"github.com/sluice-mesh/sluice/xds/mesh"
)

func ptr[T any](v T) *T { return &v }

func service(name string, mutate ...func(*corev1.Service)) *corev1.Service {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "demo"},
		Spec: corev1.ServiceSpec{
			Type:       corev1.ServiceTypeClusterIP,
			ClusterIP:  "10.96.0.10",
			ClusterIPs: []string{"10.96.0.10"},
			Selector:   map[string]string{"app": name},
			Ports:      []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(8080)}},
		},
	}
	for _, m := range mutate {
		m(s)
	}
	return s
}

// slice returns an EndpointSlice of service svc with one endpoint per
// address, each referring to pod "<svc>-<i>" on node-a in zone-a.
func slice(svc, name string, family discoveryv1.AddressType, ports []discoveryv1.EndpointPort, addrs ...string) *discoveryv1.EndpointSlice {
	sl := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: name, Namespace: "demo", Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: family,
		Ports:       ports,
	}
	for i, a := range addrs {
		sl.Endpoints = append(sl.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{a},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr(true), Serving: ptr(true), Terminating: ptr(false)},
			Zone:       ptr("zone-a"),
			NodeName:   ptr("node-a"),
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: "demo", Name: svc + "-" + string(rune('0'+i))},
		})
	}
	return sl
}

func httpPort(n int32) []discoveryv1.EndpointPort {
	return []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr(n), Protocol: ptr(corev1.ProtocolTCP)}}
}

func pods(ps ...*corev1.Pod) kube.PodLookup {
	return func(ns, name string) *corev1.Pod {
		for _, p := range ps {
			if p.Namespace == ns && p.Name == name {
				return p
			}
		}
		return nil
	}
}

func pod(name, sa, node string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "demo"},
		Spec:       corev1.PodSpec{ServiceAccountName: sa, NodeName: node},
	}
}

func TestTranslateClusterIP(t *testing.T) {
	svc := service("web", func(s *corev1.Service) {
		s.Spec.ClusterIPs = []string{"10.96.0.10", "fd00:10:96::10"}
		s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP, TargetPort: intstr.FromInt32(5353)})
	})
	v4 := slice("web", "web-v4", discoveryv1.AddressTypeIPv4, httpPort(8080), "10.244.0.11", "10.244.0.12", "10.244.0.13")
	v4.Endpoints[1].Conditions = discoveryv1.EndpointConditions{Ready: ptr(false), Serving: ptr(true), Terminating: ptr(true)}
	v4.Endpoints[2].Conditions = discoveryv1.EndpointConditions{Ready: ptr(false), Serving: ptr(false), Terminating: ptr(false)}
	v6 := slice("web", "web-v6", discoveryv1.AddressTypeIPv6, httpPort(8080), "fd00:10:244::11")
	v6.Endpoints[0].TargetRef.Name = "web-0"
	lookup := pods(pod("web-0", "frontend", "node-b"), pod("web-1", "", "node-a"))

	tr := kube.Translate(svc, []*discoveryv1.EndpointSlice{v4, v6}, lookup, nil, "example.org")
	if tr.Service == nil {
		t.Fatalf("skipped: %s", tr.Skipped)
	}
	if tr.Reason() != "" {
		t.Errorf("reason %q, want nothing to report", tr.Reason())
	}
	s := tr.Service
	wantVIPs := []netip.Addr{netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("fd00:10:96::10")}
	if !slices.Equal(s.VIPs, wantVIPs) {
		t.Errorf("VIPs %v, want %v", s.VIPs, wantVIPs)
	}
	wantPorts := []mesh.Port{{Port: 80, Protocol: model.TCP, TargetPort: 8080}, {Port: 53, Protocol: model.UDP, TargetPort: 5353}}
	if !slices.Equal(s.Ports, wantPorts) {
		t.Errorf("ports %+v, want %+v", s.Ports, wantPorts)
	}
	health := map[string]model.Health{}
	for _, ep := range s.Endpoints {
		health[ep.Address.String()] = ep.Health
		if ep.Locality.Zone != "zone-a" {
			t.Errorf("endpoint %s zone %q, want zone-a", ep.Address, ep.Locality.Zone)
		}
	}
	want := map[string]model.Health{
		"10.244.0.11": model.HealthHealthy, "10.244.0.12": model.HealthDraining,
		"10.244.0.13": model.HealthUnhealthy, "fd00:10:244::11": model.HealthHealthy,
	}
	if len(health) != len(want) {
		t.Fatalf("endpoints %v, want %v", health, want)
	}
	for a, h := range want {
		if health[a] != h {
			t.Errorf("endpoint %s health %v, want %v", a, health[a], h)
		}
	}
	byAddr := func(a string) *mesh.Endpoint {
		for i := range s.Endpoints {
			if s.Endpoints[i].Address.String() == a {
				return &s.Endpoints[i]
			}
		}
		t.Fatalf("no endpoint %s", a)
		return nil
	}
	w := byAddr("10.244.0.11").Workload
	wantW := model.Workload{Name: "web-0", Namespace: "demo", ServiceAccount: "frontend", Node: "node-b", SPIFFEID: "spiffe://example.org/ns/demo/sa/frontend"}
	if w == nil || *w != wantW {
		t.Errorf("workload of 10.244.0.11: %+v, want %+v", w, wantW)
	}
	if w := byAddr("10.244.0.12").Workload; w == nil || w.ServiceAccount != "default" || w.SPIFFEID != "spiffe://example.org/ns/demo/sa/default" {
		t.Errorf("workload of a pod without a service account: %+v, want service account default", w)
	}
	if w := byAddr("10.244.0.13").Workload; w != nil {
		t.Errorf("workload of an endpoint whose pod is unknown: %+v, want none", w)
	}
	if !slices.Equal(tr.Pods, []string{"demo/web-0", "demo/web-1", "demo/web-2"}) {
		t.Errorf("pods referred to: %v", tr.Pods)
	}
}

func TestTranslateNamedTargetPort(t *testing.T) {
	named := func(s *corev1.Service) { s.Spec.Ports[0].TargetPort = intstr.FromString("web") }
	svc := service("web", named)
	tr := kube.Translate(svc, []*discoveryv1.EndpointSlice{slice("web", "a", discoveryv1.AddressTypeIPv4, httpPort(9090), "10.244.0.11")}, nil, nil, "cluster.local")
	if tr.Service == nil || tr.Service.Ports[0].TargetPort != 9090 {
		t.Fatalf("named targetPort: %+v (skipped %q), want resolved to 9090", tr.Service, tr.Skipped)
	}

	// No endpoint yet: the port cannot be resolved, and there is nothing
	// to send to; the listener is still served.
	tr = kube.Translate(svc, nil, nil, nil, "cluster.local")
	if tr.Service == nil || len(tr.Service.Endpoints) != 0 {
		t.Fatalf("named targetPort without endpoints: %+v (skipped %q), want served without endpoints", tr.Service, tr.Skipped)
	}

	// Pods naming different ports alike: one port cannot serve them.
	tr = kube.Translate(svc, []*discoveryv1.EndpointSlice{
		slice("web", "a", discoveryv1.AddressTypeIPv4, httpPort(9090), "10.244.0.11"),
		slice("web", "b", discoveryv1.AddressTypeIPv4, httpPort(9091), "10.244.0.12"),
	}, nil, nil, "cluster.local")
	if tr.Service != nil || !strings.Contains(tr.Skipped, "spec.ports[0].targetPort") || !strings.Contains(tr.Skipped, "9091") {
		t.Errorf("named port resolving to two numbers: served %v, skipped %q; want skipped naming the field and both ports", tr.Service != nil, tr.Skipped)
	}
}

func TestTranslateSkipped(t *testing.T) {
	for _, c := range []struct {
		name    string
		mutate  func(*corev1.Service)
		skipped string // part of Skipped; "" if served
		notes   string // part of Reason when served
	}{
		{"headless", func(s *corev1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = "None", []string{"None"} }, "headless", ""},
		{"external name", func(s *corev1.Service) {
			s.Spec.Type, s.Spec.ClusterIP, s.Spec.ClusterIPs, s.Spec.ExternalName = corev1.ServiceTypeExternalName, "", nil, "db.example.org"
		}, "ExternalName", ""},
		{"no cluster IP", func(s *corev1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = "", nil }, "no cluster IP", ""},
		{"bad cluster IP", func(s *corev1.Service) { s.Spec.ClusterIPs = []string{"10.96.0.300"} }, "spec.clusterIPs[0]", ""},
		{"only SCTP", func(s *corev1.Service) { s.Spec.Ports[0].Protocol = corev1.ProtocolSCTP }, "no TCP or UDP port", ""},
		{"node port", func(s *corev1.Service) { s.Spec.Type = corev1.ServiceTypeNodePort; s.Spec.Ports[0].NodePort = 30080 }, "", "NodePort"},
		{"load balancer", func(s *corev1.Service) { s.Spec.Type = corev1.ServiceTypeLoadBalancer }, "", "LoadBalancer"},
		{"SCTP port among others", func(s *corev1.Service) {
			s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{Name: "sctp", Port: 9, Protocol: corev1.ProtocolSCTP})
		}, "", "spec.ports[1]: protocol SCTP"},
	} {
		t.Run(c.name, func(t *testing.T) {
			tr := kube.Translate(service("web", c.mutate), nil, nil, nil, "cluster.local")
			if c.skipped != "" {
				if tr.Service != nil || !strings.Contains(tr.Skipped, c.skipped) {
					t.Errorf("served %v, skipped %q; want skipped with %q", tr.Service != nil, tr.Skipped, c.skipped)
				}
				return
			}
			if tr.Service == nil {
				t.Fatalf("skipped %q, want served", tr.Skipped)
			}
			if !strings.Contains(tr.Reason(), c.notes) {
				t.Errorf("reason %q, want it to mention %q", tr.Reason(), c.notes)
			}
			if c.name == "SCTP port among others" && len(tr.Service.Ports) != 1 {
				t.Errorf("ports %+v, want the TCP port alone", tr.Service.Ports)
			}
		})
	}
}

func TestTranslatePolicies(t *testing.T) {
	svc := service("web", func(s *corev1.Service) {
		s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{Name: "admin", Port: 81, TargetPort: intstr.FromInt32(9090)})
	})
	pol, err := kube.ValidatePolicy("demo", "only-admin", 1, &kube.MeshPolicySpec{Rules: []kube.MeshPolicyRule{
		{Name: "admin", From: []kube.MeshPolicySource{{ServiceAccounts: []string{"ops"}}}, Ports: []int64{9090}},
		{Name: "elsewhere", Ports: []int64{7777}},
		{Name: "any-port", From: []kube.MeshPolicySource{{IPBlocks: []string{"10.0.0.1"}}}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	tr := kube.Translate(svc, nil, nil, []*kube.Policy{pol}, "cluster.local")
	if tr.Service == nil || len(tr.Service.Policies) != 1 {
		t.Fatalf("translation %+v, want the policy applied", tr)
	}
	got := tr.Service.Policies[0]
	if got.Name != "only-admin" || got.Action != mesh.ActionAllow || len(got.Rules) != 2 {
		t.Fatalf("policy %+v, want only-admin ALLOW with rules admin and any-port", got)
	}
	if r := got.Rules[0]; r.Name != "admin" || !slices.Equal(r.Ports, []uint16{81}) ||
		r.From[0].ServiceAccounts[0] != (mesh.ServiceAccount{Namespace: "demo", Name: "ops"}) {
		t.Errorf("rule admin %+v, want service port 81 (target 9090), from demo/ops", r)
	}
	if r := got.Rules[1]; r.Name != "any-port" || r.Ports != nil {
		t.Errorf("rule %+v, want any-port on every port", r)
	}
}
