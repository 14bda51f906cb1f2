package demo

import (
	"os"
	"strings"
	"testing"

	"github.com/sluice-mesh/sluice/xds/mesh"
)

// The example file is the demo's cast; edits that take away what the
// story needs are refused with an error naming it.
func TestCastOf(t *testing.T) {
	const path = "../../examples/mesh.yaml"
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	example := string(data)
	c, err := readCast(path)
	if err != nil {
		t.Fatalf("the example: %v", err)
	}
	if got := strings.Join(c.nodes, " "); got != "node-1 node-2" {
		t.Errorf("nodes %q, want node-1 node-2", got)
	}
	if c.webVIP.String() != "10.96.0.10:80" || c.dnsVIP.String() != "10.96.0.53:53" {
		t.Errorf("VIPs %s and %s", c.webVIP, c.dnsVIP)
	}
	if a := c.pod("backend-a"); a == nil || a.http != 8080 || a.udp != 5353 || a.node != "node-1" {
		t.Errorf("backend-a: %+v", a)
	}
	if f := c.pod("frontend"); f == nil || f.http != 0 || f.udp != 0 || f.serviceAccount != "frontend" {
		t.Errorf("frontend: %+v", f)
	}

	for _, tc := range []struct{ name, from, to, want string }{
		{"no batch", "name: batch,", "name: cron,", "no workload batch"},
		{"clients apart", "name: batch, namespace: demo, serviceAccount: batch, node: node-1", "name: batch, namespace: demo, serviceAccount: batch, node: node-2", "on different nodes"},
		{"no node", "serviceAccount: frontend, node: node-1,", "serviceAccount: frontend,", "workload frontend has no node"},
		{"no web", "name: web\n", "name: www\n", "no service demo/web"},
		{"no policy", "    policies:\n      - name: only-frontend\n        rules:\n          - name: frontend\n            from:\n              - serviceAccounts: [frontend] # demo/frontend\n", "", "has no policy"},
		{"endpoint without pod", "      - address: 10.244.2.21 # backend-c", "      - address: 10.244.2.99 # backend-c", "endpoint 10.244.2.99 of demo/web is no workload's address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			edited := strings.Replace(example, tc.from, tc.to, 1)
			if edited == example {
				t.Fatalf("the example has no %q", tc.from)
			}
			m, err := mesh.Parse("edited.yaml", []byte(edited))
			if err != nil {
				t.Fatalf("the edit makes the file invalid: %v", err)
			}
			if _, err := castOf(m); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("castOf: %v, want an error with %q", err, tc.want)
			}
		})
	}
}

func TestParseMetrics(t *testing.T) {
	body := `# HELP sluice_services service VIP:port entries in force
# TYPE sluice_services gauge
sluice_services 2
sluice_tcp_connections_opened_total{destination_workload="backend-a",reporter="source",source_workload="front\"end\\"} 12
sluice_tcp_connections_opened_total{destination_workload="backend-b",reporter="source",source_workload="frontend"} 30
`
	samples, err := parseMetrics(body)
	if err != nil {
		t.Fatal(err)
	}
	if len(samples) != 3 {
		t.Fatalf("%d samples, want 3: %+v", len(samples), samples)
	}
	if got := samples[1].label("source_workload"); got != `front"end\` {
		t.Errorf("escaped label value %q", got)
	}
	if v, ok := sum(samples, "sluice_tcp_connections_opened_total", "reporter", "source"); !ok || v != 42 {
		t.Errorf("sum %v %v, want 42", v, ok)
	}
	if _, ok := sum(samples, "sluice_tcp_connections_opened_total", "reporter", "destination"); ok {
		t.Error("sum found samples that do not match")
	}
	if got, want := samples[2].abridged("destination_workload"), `sluice_tcp_connections_opened_total{destination_workload="backend-b"} 30`; got != want {
		t.Errorf("abridged %q, want %q", got, want)
	}
	if got := samples[0].abridged(); got != "sluice_services 2" {
		t.Errorf("abridged %q", got)
	}
	for _, bad := range []string{"{a=\"b\"} 1", "x{a=\"b} 1", "x{a} 1", "x"} {
		if _, err := parseMetrics(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}
