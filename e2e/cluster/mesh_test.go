package cluster_test

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluice-mesh/sluice/dataplane/model"
	"github.com/sluice-mesh/sluice/e2e/cluster"
	"github.com/sluice-mesh/sluice/xds/mesh"
)

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

// shop is a mesh with every kind of field the scenarios use.
func shop() cluster.Mesh {
	no := false
	return cluster.Mesh{
		TrustDomain: "example.org",
		Workloads: []cluster.Workload{
			{Name: "client", Namespace: "shop", ServiceAccount: "frontend", Node: "a", Cgroup: "/sys/fs/cgroup/sim/a/client", IPs: []netip.Addr{addr("10.244.1.10")}},
			{Name: "web-1", Namespace: "shop", ServiceAccount: "web", Node: "b", Cgroup: "/sys/fs/cgroup/sim/b/web-1", IPs: []netip.Addr{addr("10.244.2.20")}, FastPath: &no},
		},
		Services: []cluster.Service{{
			Name: "web", Namespace: "shop",
			VIPs:      []netip.Addr{addr("10.96.0.10")},
			Ports:     []cluster.Port{{Port: 80, TargetPort: 8080}, {Port: 53, Protocol: "UDP"}},
			Endpoints: []cluster.Endpoint{{Address: addr("10.244.2.20"), Weight: 3}, {Address: addr("10.244.2.21"), Health: "draining", Priority: 1}},
			Policies: []cluster.Policy{{Name: "only-frontend", Continuous: true, Rules: []cluster.Rule{
				{Name: "frontend", From: []cluster.Source{{ServiceAccounts: []string{"frontend"}, NotIPBlocks: []string{"10.244.9.0/24"}}}, Ports: []uint16{80}},
			}}},
		}},
	}
}

// The rendered file means what the Mesh says, as the control plane reads
// it.
func TestMeshMarshal(t *testing.T) {
	m := shop()
	data, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := mesh.Parse("rendered", data)
	if err != nil {
		t.Fatalf("%v\n%s", err, data)
	}
	if got.TrustDomain != "example.org" || len(got.Services) != 1 || len(got.Workloads) != 2 {
		t.Fatalf("parsed %+v from\n%s", got, data)
	}
	s := got.Services[0]
	if s.Namespace != "shop" || s.Name != "web" || len(s.Ports) != 2 || s.Ports[0].TargetPort != 8080 ||
		s.Ports[1].Protocol != model.UDP || s.Ports[1].TargetPort != 53 {
		t.Errorf("service %+v", s)
	}
	if len(s.Endpoints) != 2 || s.Endpoints[0].Weight != 3 || s.Endpoints[1].Health != model.HealthDraining ||
		s.Endpoints[1].Priority != 1 || s.Endpoints[1].Weight != 1 {
		t.Errorf("endpoints %+v", s.Endpoints)
	}
	if s.Endpoints[0].Workload == nil || s.Endpoints[0].Workload.Name != "web-1" {
		t.Errorf("endpoint 10.244.2.20 did not get its workload from the workloads section: %+v", s.Endpoints[0].Workload)
	}
	if len(s.Policies) != 1 || !s.Policies[0].Continuous || s.Policies[0].Action != mesh.ActionAllow ||
		len(s.Policies[0].Rules) != 1 || len(s.Policies[0].Rules[0].From[0].ServiceAccounts) != 1 ||
		s.Policies[0].Rules[0].From[0].ServiceAccounts[0].String() != "shop/frontend" ||
		len(s.Policies[0].Rules[0].From[0].NotIPBlocks) != 1 {
		t.Errorf("policies %+v", s.Policies)
	}
	w := got.Workloads[1]
	if w.Name != "web-1" || w.Namespace != "shop" || w.ServiceAccount != "web" || w.Cgroup != "/sys/fs/cgroup/sim/b/web-1" ||
		len(w.Addrs) != 1 || w.Addrs[0] != addr("10.244.2.20") || w.FastPath == nil || *w.FastPath || w.Node != "b" {
		t.Errorf("workload %+v", w)
	}
}

// Update rewrites the file with the edit; an edit that fails, or that
// makes the mesh invalid, leaves the file and the MeshFile as they were.
func TestMeshFileUpdate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mesh.yaml")
	f, err := cluster.WriteMesh(path, shop())
	if err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(path)

	err = f.Update(func(m *cluster.Mesh) error {
		web := m.Service("shop", "web")
		web.Endpoints = append(web.Endpoints, cluster.Endpoint{Address: addr("10.244.2.20")}) // a duplicate
		return nil
	})
	if !errors.Is(err, mesh.ErrInvalid) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "endpoints[2]") {
		t.Errorf("a duplicate endpoint: %v, want an invalid-mesh error naming %s and the endpoint", err, path)
	}
	failed := errors.New("no such thing")
	if err := f.Update(func(m *cluster.Mesh) error {
		m.Services = nil
		return failed
	}); !errors.Is(err, failed) {
		t.Errorf("a failing edit: %v", err)
	}
	if err := f.Update(func(m *cluster.Mesh) error { return m.Service("shop", "web").RemoveEndpoint(addr("10.244.2.99")) }); err == nil ||
		!strings.Contains(err.Error(), "10.244.2.99") {
		t.Errorf("removing an endpoint the service lacks: %v", err)
	}
	if after, _ := os.ReadFile(path); string(after) != string(before) {
		t.Fatalf("failed edits changed the file:\n%s\nwas:\n%s", after, before)
	}

	if err := f.Update(func(m *cluster.Mesh) error {
		web := m.Service("shop", "web")
		web.Endpoint(addr("10.244.2.21")).Health = "unhealthy"
		return web.RemoveEndpoint(addr("10.244.2.20"))
	}); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(path)
	got, err := mesh.Parse(path, data)
	if err != nil {
		t.Fatal(err)
	}
	if eps := got.Services[0].Endpoints; len(eps) != 1 || eps[0].Address != addr("10.244.2.21") || eps[0].Health != model.HealthUnhealthy {
		t.Errorf("after the edit the file has endpoints %+v", eps)
	}
	m, err := f.Mesh()
	if err != nil {
		t.Fatal(err)
	}
	if eps := m.Service("shop", "web").Endpoints; len(eps) != 1 {
		t.Errorf("Mesh() after the edit: endpoints %+v", eps)
	}
	// Mesh returns a copy: changing it changes neither the file nor f.
	m.Services = nil
	if again, _ := f.Mesh(); len(again.Services) != 1 {
		t.Error("changing the copy Mesh returned changed the MeshFile")
	}
	if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 1 {
		t.Errorf("temporary files left beside the mesh file: %v", entries)
	}
}

func TestMetricSum(t *testing.T) {
	page := `# HELP sluice_tcp_connections_denied_total x
# TYPE sluice_tcp_connections_denied_total counter
sluice_tcp_connections_denied_total{destination_service="shop/api",source_workload="batch-a"} 2
sluice_tcp_connections_denied_total{destination_service="shop/api",source_workload="batch-b"} 3
sluice_tcp_connections_denied_total_extra{source_workload="batch-a"} 100
sluice_backends 5
`
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"sluice_tcp_connections_denied_total", nil, 5},
		{"sluice_tcp_connections_denied_total", []string{"source_workload", "batch-a"}, 2},
		{"sluice_tcp_connections_denied_total", []string{"destination_service", "shop/api", "source_workload", "batch-b"}, 3},
		{"sluice_backends", nil, 5},
	} {
		if got, err := cluster.MetricSum(page, c.name, c.labels...); err != nil || got != c.want {
			t.Errorf("MetricSum(%s, %v) = %v, %v; want %v", c.name, c.labels, got, err, c.want)
		}
	}
	for _, labels := range [][]string{{"workload", "batch-a"}, {"source_workload", "batch-c"}, {"source_workload"}} {
		if got, err := cluster.MetricSum(page, "sluice_tcp_connections_denied_total", labels...); err == nil {
			t.Errorf("MetricSum with %v = %v, want an error", labels, got)
		}
	}
}
