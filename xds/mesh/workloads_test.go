package mesh_test

import (
	"net/netip"
	"testing"

	"github.com/sluice-mesh/sluice/xds/mesh"
)

// The workloads section of a mesh file: db-0 on node-1 at 10.244.1.20.
var dbWorkload = []string{
	"workloads:", // 1
	"  - {name: db-0, namespace: shop, serviceAccount: db, node: node-1, cgroup: sluice/db-0, ips: [10.244.1.20]}", // 2
	"services:",                 // 3
	"  - name: db",              // 4
	"    namespace: shop",       // 5
	"    vips: [10.96.1.10]",    // 6
	"    ports: [{port: 5432}]", // 7
	"    endpoints:",            // 8
}

func withWorkload(extra ...string) []byte {
	return lines(append(append([]string{}, dbWorkload...), extra...)...)
}

func TestParseWorkloadsSection(t *testing.T) {
	m, err := mesh.Parse("mesh.yaml", withWorkload(
		"      - address: 10.244.1.20", // its workload is taken from the section
		"  - name: db-replica",
		"    namespace: shop",
		"    vips: [10.96.1.11]",
		"    ports: [{port: 5432}]",
		"    endpoints:",
		"      - address: 10.244.1.20",
		"        workload: {name: db-0, serviceAccount: db, identity: 42}",
	))
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Workloads) != 1 {
		t.Fatalf("workloads %+v, want db-0", m.Workloads)
	}
	w := m.Workloads[0]
	if w.Name != "db-0" || w.Node != "node-1" || w.Cgroup != "sluice/db-0" || w.SPIFFEID != "spiffe://cluster.local/ns/shop/sa/db" ||
		len(w.Addrs) != 1 || w.Addrs[0] != netip.MustParseAddr("10.244.1.20") {
		t.Errorf("workload %+v", w)
	}
	implicit := m.Services[0].Endpoints[0].Workload
	if implicit == nil || implicit.Name != "db-0" || implicit.Node != "node-1" || implicit.SPIFFEID != w.SPIFFEID {
		t.Fatalf("endpoint without workload got %+v, want db-0 from the section", implicit)
	}
	// The number given to the SPIFFE ID elsewhere in the file.
	if implicit.Identity != 42 {
		t.Errorf("implicit workload identity %d, want 42", implicit.Identity)
	}
	// The section's node completes an endpoint's workload that names none.
	if got := m.Services[1].Endpoints[0].Workload.Node; got != "node-1" {
		t.Errorf("endpoint workload node %q, want node-1", got)
	}
}

func TestParseWorkloadsSectionErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		yaml   []byte
		line   int
		field  string
		reason string
	}{
		{"section error in mesh terms", lines("workloads:", "  - {name: a, namespace: shop, serviceAccount: a, cgroup: /}"), 2, "workloads[0].cgroup", "is the root cgroup"},
		{"another workload's address", withWorkload("      - address: 10.244.1.20", "        workload: {name: db-1, serviceAccount: db}"), 10, "services[0].endpoints[0].workload",
			"workload shop/db-1 at 10.244.1.20, but 10.244.1.20 is workloads[0] (shop/db-0)'s address"},
		{"other service account", withWorkload("      - address: 10.244.1.20", "        workload: {name: db-0, serviceAccount: admin}"), 10, "services[0].endpoints[0].workload",
			"workload shop/db-0 is spiffe://cluster.local/ns/shop/sa/admin here but spiffe://cluster.local/ns/shop/sa/db at workloads[0] (shop/db-0)"},
		{"other node", withWorkload("      - address: 10.244.1.20", "        workload: {name: db-0, serviceAccount: db, node: node-2}"), 10, "services[0].endpoints[0].workload",
			"workload shop/db-0 is on node node-2 here but on node node-1 at workloads[0] (shop/db-0)"},
		{"address not listed", withWorkload("      - address: 10.244.1.21", "        workload: {name: db-0, serviceAccount: db}"), 10, "services[0].endpoints[0].workload",
			"workload shop/db-0 at 10.244.1.21, but workloads[0] (shop/db-0) lists its addresses without 10.244.1.21"},
	} {
		t.Run(tc.name, func(t *testing.T) { wantError(t, tc.yaml, tc.line, tc.field, tc.reason) })
	}
}
