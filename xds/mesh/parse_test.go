package mesh_test

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/sluice-mesh/sluice/dataplane/model"
	"github.com/sluice-mesh/sluice/xds/mesh"
)

// lines joins YAML lines, so that a test can see the line number of every
// line: the i-th argument is line i+1.
func lines(l ...string) []byte { return []byte(strings.Join(l, "\n") + "\n") }

// A valid service to build invalid files around.
var web = []string{
	"services:",                    // 1
	"  - name: web",                // 2
	"    namespace: demo",          // 3
	"    vips: [10.96.0.10]",       // 4
	"    ports:",                   // 5
	"      - port: 80",             // 6
	"        targetPort: 8080",     // 7
	"    endpoints:",               // 8
	"      - address: 10.244.0.11", // 9
}

func with(extra ...string) []byte { return lines(append(append([]string{}, web...), extra...)...) }

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		yaml   []byte
		line   int
		field  string
		reason string // a substring of Reason
	}{
		{"yaml syntax", lines("services: ["), 1, "", "invalid YAML"},
		{"yaml syntax later line", lines("services:", "  - name: x", "  - ["), 3, "", "invalid YAML"},
		{"two documents", lines("services: []", "---", "services: []"), 2, "", "second YAML document"},
		{"two documents after an empty one", lines("---", "trustDomain: a", "---", "---", "trustDomain: b"), 4, "", "second YAML document"},
		{"root not a mapping", lines("- web"), 1, "", "must be a mapping"},
		{"unknown top-level field", lines("trustDomain: example.org", "service: []"), 2, "service", "unknown field"},
		{"bad trust domain", lines("trustDomain: Example.org"), 1, "trustDomain", "not a SPIFFE trust domain"},
		{"services not a list", lines("services: {name: web}"), 1, "services", "must be a list"},
		{"service not a mapping", lines("services:", "  - web"), 2, "services[0]", `must be a mapping, not "web"`},
		{"empty list item", lines("services:", "  -"), 2, "services[0]", "empty list item"},
		{"unknown service field", with("    vip: 10.96.0.11"), 10, "services[0].vip", "unknown field; known fields are name, namespace, vips, ports, endpoints"},
		{"fast path not a boolean", with("    fastPath: sometimes"), 10, "services[0].fastPath", `must be true or false, not "sometimes"`},
		{"field twice", with("    vips: [10.96.0.11]"), 10, "services[0].vips", "field given twice"},
		{"merge key", lines("services:", "  - <<: {name: web}"), 2, "services[0].<<", "merge keys"},
		{"missing name", lines("services:", "  - vips: [10.96.0.10]", "    ports: [{port: 80}]"), 2, "services[0].name", "required field is missing"},
		{"bad name", lines("services:", "  - name: Web"), 2, "services[0].name", `"Web" is not a DNS-1123 label`},
		{"name too long", lines("services:", "  - name: "+strings.Repeat("a", 64)), 2, "services[0].name", "is not a DNS-1123 label"},
		{"name is a list", lines("services:", "  - name: [web]"), 2, "services[0].name", "must be a string, not a list"},
		{"bad namespace", lines("services:", "  - name: web", "    namespace: demo_ns"), 3, "services[0].namespace", "not a DNS-1123 label"},
		{"duplicate service", with(
			"  - name: web",
			"    namespace: demo",
			"    vips: [10.96.0.11]",
			"    ports: [{port: 80}]"), 10, "services[1].name", "service demo/web is already defined by services[0]"},
		{"missing vips", lines("services:", "  - name: web", "    ports: [{port: 80}]"), 2, "services[0].vips", "required field is missing"},
		{"no vips", lines("services:", "  - name: web", "    vips: []"), 3, "services[0].vips", "at least one VIP"},
		{"three vips", lines("services:", "  - name: web", "    vips:", "      - 10.96.0.10", "      - fd00::10", "      - 10.96.0.11"),
			6, "services[0].vips[2]", "at most two VIPs"},
		{"vip not an ip", lines("services:", "  - name: web", "    vips: [10.96.0.300]"), 3, "services[0].vips[0]", `"10.96.0.300" is not an IP address`},
		{"vip loopback", lines("services:", "  - name: web", "    vips: [127.0.0.1]"), 3, "services[0].vips[0]", "loopback"},
		{"vip loopback v6", lines("services:", "  - name: web", "    vips: ['::1']"), 3, "services[0].vips[0]", "loopback"},
		{"vip unspecified", lines("services:", "  - name: web", "    vips: [0.0.0.0]"), 3, "services[0].vips[0]", "unspecified"},
		{"vip multicast", lines("services:", "  - name: web", "    vips: [ff02::1]"), 3, "services[0].vips[0]", "multicast"},
		{"vip broadcast", lines("services:", "  - name: web", "    vips: [255.255.255.255]"), 3, "services[0].vips[0]", "broadcast"},
		{"vip v4-mapped", lines("services:", "  - name: web", "    vips: ['::ffff:10.96.0.10']"), 3, "services[0].vips[0]", "IPv4-mapped"},
		{"vip zone", lines("services:", "  - name: web", "    vips: ['fe80::1%eth0']"), 3, "services[0].vips[0]", "zone"},
		{"two ipv4 vips", lines("services:", "  - name: web", "    vips: [10.96.0.10,", "      10.96.0.11]"), 4, "services[0].vips[1]", "second IPv4 VIP"},
		{"missing ports", lines("services:", "  - name: web", "    vips: [10.96.0.10]"), 2, "services[0].ports", "required field is missing"},
		{"no ports", lines("services:", "  - name: web", "    vips: [10.96.0.10]", "    ports: []"), 4, "services[0].ports", "at least one port"},
		{"port missing", lines("services:", "  - name: web", "    vips: [10.96.0.10]", "    ports:", "      - protocol: TCP"), 5, "services[0].ports[0].port", "required field is missing"},
		{"port zero", lines("services:", "  - name: web", "    vips: [10.96.0.10]", "    ports: [{port: 0}]"), 4, "services[0].ports[0].port", "0 is out of range 1..65535"},
		{"port too big", lines("services:", "  - name: web", "    vips: [10.96.0.10]", "    ports: [{port: 65536}]"), 4, "services[0].ports[0].port", "65536 is out of range 1..65535"},
		{"port huge", lines("services:", "  - name: web", "    vips: [10.96.0.10]", "    ports: [{port: 99999999999999999999999}]"), 4, "services[0].ports[0].port", "out of range"},
		{"port a string", lines("services:", "  - name: web", "    vips: [10.96.0.10]", "    ports: [{port: '80'}]"), 4, "services[0].ports[0].port", `"80" is not an integer`},
		{"port a float", lines("services:", "  - name: web", "    vips: [10.96.0.10]", "    ports: [{port: 80.5}]"), 4, "services[0].ports[0].port", "80.5 is not an integer"},
		{"protocol lowercase", lines("services:", "  - name: web", "    vips: [10.96.0.10]", "    ports:", "      - port: 80", "        protocol: tcp"),
			6, "services[0].ports[0].protocol", `"tcp" is not a protocol; use TCP or UDP`},
		{"target port zero", lines("services:", "  - name: web", "    vips: [10.96.0.10]", "    ports:", "      - port: 80", "        targetPort: 0"),
			6, "services[0].ports[0].targetPort", "out of range"},
		{"port twice", lines("services:", "  - name: web", "    vips: [10.96.0.10]", "    ports:", "      - port: 80", "      - port: 80", "        targetPort: 81"),
			6, "services[0].ports[1]", "port 80/TCP is already ports[0]"},
		{"vip:port of another service", with(
			"  - name: web2",
			"    namespace: demo",
			"    vips: [10.96.0.10]",
			"    ports:",
			"      - port: 80"), 14, "services[1].ports[0]", "10.96.0.10:80/TCP is already used by services[0] (demo/web)"},
		{"endpoint address missing", with("      - weight: 2"), 10, "services[0].endpoints[1].address", "required field is missing"},
		{"endpoint address not an ip", with("      - address: 10.244.0.300"), 10, "services[0].endpoints[1].address", `"10.244.0.300" is not an IP address`},
		{"endpoint wrong family", with("      - address: fd00::11"), 10, "services[0].endpoints[1].address", "fd00::11 is IPv6 but the service has no IPv6 VIP"},
		{"endpoint unspecified", with("      - address: 0.0.0.0"), 10, "services[0].endpoints[1].address", "unspecified"},
		{"endpoint multicast", with("      - address: 224.0.0.1"), 10, "services[0].endpoints[1].address", "multicast"},
		{"endpoint twice", with("      - address: 10.244.0.12", "      - address: 10.244.0.11"), 11, "services[0].endpoints[2].address", "10.244.0.11 is already endpoints[0]"},
		{"weight zero", with("        weight: 0"), 10, "services[0].endpoints[0].weight", "0 is out of range 1..1000000"},
		{"weight too big", with("        weight: 1000001"), 10, "services[0].endpoints[0].weight", "out of range 1..1000000"},
		{"bad health", with("        health: ok"), 10, "services[0].endpoints[0].health", `"ok" is not a health status`},
		{"negative priority", with("        priority: -1"), 10, "services[0].endpoints[0].priority", "-1 is out of range"},
		{"locality unknown field", with("        locality: {region: r1, zone: z1, subzone: s1}"), 10, "services[0].endpoints[0].locality.subzone", "unknown field"},
		{"locality control character", with(`        locality: {region: "r\t1"}`), 10, "services[0].endpoints[0].locality.region", "control characters"},
		{"workload not a mapping", with("        workload: web-1"), 10, "services[0].endpoints[0].workload", "must be a mapping"},
		{"workload name missing", with("        workload:", "          serviceAccount: web"), 11, "services[0].endpoints[0].workload.name", "required field is missing"},
		{"workload bad service account", with("        workload:", "          name: web-1", "          serviceAccount: Web"), 12, "services[0].endpoints[0].workload.serviceAccount", "not a DNS-1123 subdomain"},
		{"workload bad node", with("        workload: {name: web-1, node: node_1}"), 10, "services[0].endpoints[0].workload.node", "not a DNS-1123 subdomain"},
		{"identity zero", with("        workload: {name: web-1, identity: 0}"), 10, "services[0].endpoints[0].workload.identity", "0 is not an identity"},
		{"identity too big", with("        workload: {name: web-1, identity: 2147483648}"), 10, "services[0].endpoints[0].workload.identity", "out of range 0..2147483647"},
		{"identity of two spiffe ids", with(
			"        workload: {name: web-1, serviceAccount: web, identity: 7}",
			"      - address: 10.244.0.12",
			"        workload: {name: db-1, serviceAccount: db, identity: 7}"), 12, "services[0].endpoints[1].workload.identity",
			"identity 7 is already spiffe://cluster.local/ns/demo/sa/web at services[0].endpoints[0].workload"},
		{"two identities of one spiffe id", with(
			"        workload: {name: web-1, serviceAccount: web, identity: 7}",
			"      - address: 10.244.0.12",
			"        workload: {name: web-2, serviceAccount: web, identity: 8}"), 12, "services[0].endpoints[1].workload.identity",
			"spiffe://cluster.local/ns/demo/sa/web has identity 7 at services[0].endpoints[0].workload"},
		{"identity missing for one workload", with(
			"        workload: {name: web-1, serviceAccount: web, identity: 7}",
			"      - address: 10.244.0.12",
			"        workload:",
			"          name: web-2",
			"          serviceAccount: web"), 13, "services[0].endpoints[1].workload",
			"has identity 7 at services[0].endpoints[0].workload"},
		{"identity set only for the second", with(
			"        workload: {name: web-1, serviceAccount: web}",
			"      - address: 10.244.0.12",
			"        workload: {name: web-2, serviceAccount: web, identity: 7}"), 12, "services[0].endpoints[1].workload.identity",
			"has no identity at services[0].endpoints[0].workload"},
	} {
		t.Run(tc.name, func(t *testing.T) { wantError(t, tc.yaml, tc.line, tc.field, tc.reason) })
	}
}

// wantError checks that Parse refuses data with a *mesh.Error at line and
// field whose reason contains reason.
func wantError(t *testing.T, data []byte, line int, field, reason string) {
	t.Helper()
	m, err := mesh.Parse("mesh.yaml", data)
	if err == nil {
		t.Fatalf("Parse succeeded: %+v", m)
	}
	if !errors.Is(err, mesh.ErrInvalid) {
		t.Errorf("errors.Is(%v, ErrInvalid) = false", err)
	}
	var e *mesh.Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v is a %T, not a *mesh.Error", err, err)
	}
	if e.File != "mesh.yaml" || e.Line != line || e.Field != field || !strings.Contains(e.Reason, reason) {
		t.Errorf("error %q\n got file %q line %d field %q reason %q\nwant file %q line %d field %q reason containing %q",
			err, e.File, e.Line, e.Field, e.Reason, "mesh.yaml", line, field, reason)
	}
}

func TestErrorString(t *testing.T) {
	y := lines(
		"# line 1",
		"services:",
		"  - name: web",
		"    namespace: demo",
		"    vips: [10.96.0.10]",
		"    ports:",
		"      - port: 80",
		"        targetPort: 8080",
		"    endpoints:",
		"      - address: 10.244.0.11",
		"        weight: 3",
		"      - address: 10.244.0.300", // line 12
	)
	_, err := mesh.Parse("mesh.yaml", y)
	const want = `mesh.yaml:12: services[0].endpoints[1].address: "10.244.0.300" is not an IP address`
	if err == nil || err.Error() != want {
		t.Errorf("Parse error = %v, want %s", err, want)
	}
}

func TestParseDefaults(t *testing.T) {
	m, err := mesh.Parse("mesh.yaml", lines(
		"services:",
		"  - name: web",
		"    vips: [10.96.0.10]",
		"    ports:",
		"      - port: 80",
		"    endpoints:",
		"      - address: 10.244.0.11",
		"        workload: {name: web-1}",
	))
	if err != nil {
		t.Fatal(err)
	}
	want := &mesh.Mesh{
		TrustDomain: "cluster.local",
		Services: []mesh.Service{{
			Name:      "web",
			Namespace: "default",
			VIPs:      []netip.Addr{netip.MustParseAddr("10.96.0.10")},
			Ports:     []mesh.Port{{Port: 80, Protocol: model.TCP, TargetPort: 80}},
			Endpoints: []mesh.Endpoint{{
				Address: netip.MustParseAddr("10.244.0.11"),
				Weight:  1,
				Health:  model.HealthHealthy,
				Workload: &model.Workload{
					Name:           "web-1",
					Namespace:      "default",
					ServiceAccount: "default",
					SPIFFEID:       "spiffe://cluster.local/ns/default/sa/default",
				},
			}},
		}},
	}
	if !reflect.DeepEqual(m, want) {
		t.Errorf("Parse =\n%+v\nwant\n%+v", m, want)
	}
}

func TestParseFull(t *testing.T) {
	m, err := mesh.Parse("mesh.yaml", lines(
		"trustDomain: example.org",
		"services:",
		"  - name: web",
		"    namespace: demo",
		`    vips: [10.96.0.10, "fd00:96::10"]`,
		"    ports:",
		"      - {port: 80, protocol: TCP, targetPort: 8080}",
		"      - {port: 80, protocol: UDP}",
		"    endpoints:",
		"      - address: fd00:244::11",
		"        weight: 1000000",
		"        health: draining",
		"        priority: 2",
		"        locality: {region: r1, zone: z1, subZone: s1}",
		"        workload:",
		"          name: web-7d9f",
		"          namespace: other",
		"          serviceAccount: web.sa",
		"          node: node-1.example",
		"          identity: 2147483647",
		"      - address: 10.244.0.11",
		"        health: unknown",
		"      - address: 10.244.0.12",
		"        health: unhealthy",
		"        locality: {zone: z2}",
		"      - address: 127.0.0.1 # loopback endpoints are a backend on the same host",
		"        health: healthy",
		"  - name: web", // same name, other namespace, same port on another VIP
		"    namespace: prod",
		"    vips: [10.96.0.11]",
		"    ports: [{port: 80}]",
	))
	if err != nil {
		t.Fatal(err)
	}
	want := &mesh.Mesh{
		TrustDomain: "example.org",
		Services: []mesh.Service{{
			Name:      "web",
			Namespace: "demo",
			VIPs:      []netip.Addr{netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("fd00:96::10")},
			Ports: []mesh.Port{
				{Port: 80, Protocol: model.TCP, TargetPort: 8080},
				{Port: 80, Protocol: model.UDP, TargetPort: 80},
			},
			Endpoints: []mesh.Endpoint{{
				Address:  netip.MustParseAddr("fd00:244::11"),
				Weight:   1000000,
				Health:   model.HealthDraining,
				Priority: 2,
				Locality: model.Locality{Region: "r1", Zone: "z1", SubZone: "s1"},
				Workload: &model.Workload{
					Name:           "web-7d9f",
					Namespace:      "other",
					ServiceAccount: "web.sa",
					Node:           "node-1.example",
					SPIFFEID:       "spiffe://example.org/ns/other/sa/web.sa",
					Identity:       2147483647,
				},
			}, {
				Address: netip.MustParseAddr("10.244.0.11"),
				Weight:  1,
				Health:  model.HealthUnknown,
			}, {
				Address:  netip.MustParseAddr("10.244.0.12"),
				Weight:   1,
				Health:   model.HealthUnhealthy,
				Locality: model.Locality{Zone: "z2"},
			}, {
				Address: netip.MustParseAddr("127.0.0.1"),
				Weight:  1,
				Health:  model.HealthHealthy,
			}},
		}, {
			Name:      "web",
			Namespace: "prod",
			VIPs:      []netip.Addr{netip.MustParseAddr("10.96.0.11")},
			Ports:     []mesh.Port{{Port: 80, Protocol: model.TCP, TargetPort: 80}},
		}},
	}
	if !reflect.DeepEqual(m, want) {
		t.Errorf("Parse =\n%+v\nwant\n%+v", m, want)
	}
}

func TestParseEmpty(t *testing.T) {
	for _, tc := range []struct {
		name string
		yaml string
	}{
		{"empty", ""},
		{"comments only", "# nothing yet\n"},
		{"null document", "~\n"},
		{"null services", "services:\n"},
		{"no services", "services: []\n"},
		{"empty documents", "---\n---\nservices: []\n---\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := mesh.Parse("mesh.yaml", []byte(tc.yaml))
			if err != nil {
				t.Fatal(err)
			}
			if m.TrustDomain != mesh.DefaultTrustDomain || len(m.Services) != 0 {
				t.Errorf("Parse = %+v, want an empty mesh", m)
			}
		})
	}
}

// Anchors and aliases let a file share blocks, e.g. one workload behind
// two services.
func TestParseAliases(t *testing.T) {
	m, err := mesh.Parse("mesh.yaml", lines(
		"services:",
		"  - name: web",
		"    vips: [10.96.0.10]",
		"    ports: &http [{port: 80, targetPort: 8080}]",
		"    endpoints:",
		"      - address: 10.244.0.11",
		"        workload: &a {name: backend-a, serviceAccount: web}",
		"  - name: web2",
		"    vips: [10.96.0.11]",
		"    ports: *http",
		"    endpoints:",
		"      - address: 10.244.0.11",
		"        workload: *a",
	))
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Services[1].Ports[0].TargetPort; got != 8080 {
		t.Errorf("aliased port's targetPort = %d, want 8080", got)
	}
	if got := m.Services[1].Endpoints[0].Workload.SPIFFEID; got != "spiffe://cluster.local/ns/default/sa/web" {
		t.Errorf("aliased workload's SPIFFE ID = %q", got)
	}
}

func TestSPIFFEID(t *testing.T) {
	if got, want := mesh.SPIFFEID("cluster.local", "demo", "web"), "spiffe://cluster.local/ns/demo/sa/web"; got != want {
		t.Errorf("SPIFFEID = %q, want %q", got, want)
	}
}

func TestExampleParses(t *testing.T) {
	path := filepath.Join("..", "..", "examples", "mesh.yaml")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	m, err := mesh.Parse(path, data)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for i := range m.Services {
		s := &m.Services[i]
		for _, p := range s.Ports {
			names = append(names, s.ResourceName(p))
		}
	}
	if want := []string{"demo/web:80", "demo/dns:53/udp"}; !reflect.DeepEqual(names, want) {
		t.Errorf("example services = %q, want %q", names, want)
	}
	web := m.Services[0]
	if len(web.Endpoints) != 3 || web.Endpoints[1].Weight != 3 || web.Endpoints[2].Health != model.HealthUnhealthy {
		t.Errorf("example web endpoints = %+v", web.Endpoints)
	}
	if r := m.Resources(); len(r.Listeners) != 2 || len(r.Clusters) != 2 || len(r.Endpoints) != 2 {
		t.Errorf("example renders %d listeners, %d clusters, %d assignments; want 2 of each",
			len(r.Listeners), len(r.Clusters), len(r.Endpoints))
	}
}

// FuzzParse checks that no input makes Parse panic, that every error is a
// *mesh.Error, and that Sluice's translator accepts every mesh Parse does.
func FuzzParse(f *testing.F) {
	f.Add(with())
	f.Add(with("        workload: {name: a, identity: 1}", "        locality: {region: r}"))
	f.Add([]byte("services: [{name: a, vips: [\"fd00::1\"], ports: [{port: 1, protocol: UDP}]}]"))
	f.Add([]byte("x: &a [*a, *a]\n"))
	f.Add([]byte("---\n---\n"))
	f.Add(policyFile)
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := mesh.Parse("fuzz.yaml", data)
		if err != nil {
			var e *mesh.Error
			if !errors.As(err, &e) || !errors.Is(err, mesh.ErrInvalid) {
				t.Fatalf("error %v (%T) is not a *mesh.Error", err, err)
			}
			return
		}
		// Whatever Parse accepts renders to resources Sluice accepts.
		translated(t, m)
	})
}
