package identity_test

import (
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/sluice-mesh/sluice/identity"
)

// lines joins YAML lines, so that a test can see the line number of every
// line: the i-th argument is line i+1.
func lines(l ...string) []byte { return []byte(strings.Join(l, "\n") + "\n") }

// A valid workload to build invalid files around.
var frontend = []string{
	"workloads:",                         // 1
	"  - name: frontend",                 // 2
	"    namespace: shop",                // 3
	"    serviceAccount: frontend",       // 4
	"    cgroup: sluice/node-1/frontend", // 5
	"    ips: [10.244.1.5]",              // 6
}

func with(extra ...string) []byte { return lines(append(append([]string{}, frontend...), extra...)...) }

func TestParseWorkloads(t *testing.T) {
	data := lines(
		"# the workloads of node-1",
		"trustDomain: example.org",
		"workloads:",
		"  - name: frontend",
		"    namespace: shop",
		"    serviceAccount: frontend",
		"    cgroup: sluice/node-1/frontend",
		"    ips: [10.244.1.5, 'fd00:10:244:1::5']",
		"    labels: {app: frontend, app.kubernetes.io/version: 1.2, canary: ~}",
		"  - name: frontend", // the same name in another namespace
		"    namespace: admin",
		"    serviceAccount: web.admin",
		"    spiffeId: spiffe://other.example/ns/admin/sa/web.admin",
		"    cgroup: /sys/fs/cgroup/sluice/node-1/admin",
		"  - name: batch",
		"    namespace: shop",
		"    serviceAccount: default",
		"    cgroup: batch",
		"    ips: []",
		"    labels: {}",
	)
	got, err := identity.ParseWorkloads("node-1.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	want := []identity.Workload{
		{
			Name: "frontend", Namespace: "shop", ServiceAccount: "frontend",
			SPIFFEID: "spiffe://example.org/ns/shop/sa/frontend",
			Cgroup:   "sluice/node-1/frontend",
			Labels:   map[string]string{"app": "frontend", "app.kubernetes.io/version": "1.2", "canary": ""},
			Addrs:    []netip.Addr{netip.MustParseAddr("10.244.1.5"), netip.MustParseAddr("fd00:10:244:1::5")},
		},
		{
			Name: "frontend", Namespace: "admin", ServiceAccount: "web.admin",
			SPIFFEID: "spiffe://other.example/ns/admin/sa/web.admin",
			Cgroup:   "/sys/fs/cgroup/sluice/node-1/admin",
		},
		{
			Name: "batch", Namespace: "shop", ServiceAccount: "default",
			SPIFFEID: "spiffe://example.org/ns/shop/sa/default",
			Cgroup:   "batch",
		},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got\n%+v\nwant\n%+v", got, want)
	}
}

func TestParseWorkloadsDefaults(t *testing.T) {
	got, err := identity.ParseWorkloads("", with())
	if err != nil {
		t.Fatal(err)
	}
	want := []identity.Workload{{
		Name: "frontend", Namespace: "shop", ServiceAccount: "frontend",
		SPIFFEID: "spiffe://cluster.local/ns/shop/sa/frontend",
		Cgroup:   "sluice/node-1/frontend",
		Addrs:    []netip.Addr{netip.MustParseAddr("10.244.1.5")},
	}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v, want %+v", got, want)
	}
}

func TestParseWorkloadsFastPath(t *testing.T) {
	for _, tc := range []struct {
		line string
		want *bool
	}{{"", nil}, {"    fastPath: true", ptr(true)}, {"    fastPath: false", ptr(false)}} {
		extra := []string{}
		if tc.line != "" {
			extra = append(extra, tc.line)
		}
		got, err := identity.ParseWorkloads("", with(extra...))
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got[0].FastPath, tc.want) {
			t.Errorf("%q: fast path %v, want %v", tc.line, got[0].FastPath, tc.want)
		}
	}
}

func ptr[T any](v T) *T { return &v }

func TestParseWorkloadsEmpty(t *testing.T) {
	for _, data := range []string{"", "# nothing yet\n", "---\n", "workloads: []\n", "workloads:\n", "trustDomain: example.org\n", "~\n"} {
		got, err := identity.ParseWorkloads("w.yaml", []byte(data))
		if err != nil || got != nil {
			t.Errorf("%q: got %v, %v; want no workloads", data, got, err)
		}
	}
}

func TestParseWorkloadsErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		yaml   []byte
		line   int
		field  string
		reason string // a substring of Reason
	}{
		// The file as a whole.
		{"yaml syntax", lines("workloads: ["), 1, "", "invalid YAML"},
		{"yaml syntax later line", lines("workloads:", "  - name: x", "  - ["), 3, "", "invalid YAML"},
		{"two documents", lines("workloads: []", "---", "workloads: []"), 2, "", "second YAML document"},
		{"root not a mapping", lines("- frontend"), 1, "", "must be a mapping"},
		{"unknown top-level field", lines("trustDomain: example.org", "workload: []"), 2, "workload", "unknown field; known fields are trustDomain, workloads"},
		{"bad trust domain", lines("trustDomain: Example.org"), 1, "trustDomain", `"Example.org" is not a SPIFFE trust domain`},
		{"trust domain as a URI", lines("trustDomain: spiffe://example.org"), 1, "trustDomain", "is not a SPIFFE trust domain"},
		{"workloads not a list", lines("workloads: {name: frontend}"), 1, "workloads", "must be a list, not a mapping"},
		{"workload not a mapping", lines("workloads:", "  - frontend"), 2, "workloads[0]", `must be a mapping, not "frontend"`},
		{"empty list item", lines("workloads:", "  -"), 2, "workloads[0]", "empty list item"},

		// Fields of a workload.
		{"unknown workload field", with("    ip: 10.244.1.6"), 7, "workloads[0].ip", "unknown field; known fields are name, namespace, serviceAccount, spiffeId, node, cgroup, ips, labels, fastPath"},
		{"fast path not a boolean", with("    fastPath: yes"), 7, "workloads[0].fastPath", `must be true or false, not "yes"`},
		{"fast path without ips", lines("workloads:", "  - {name: a, namespace: shop, serviceAccount: a, cgroup: a, fastPath: true}"), 2, "workloads[0].fastPath", "needs the workload's ips"},
		{"field twice", with("    cgroup: other"), 7, "workloads[0].cgroup", "field given twice"},
		{"merge key", lines("workloads:", "  - <<: {name: frontend}"), 2, "workloads[0].<<", "merge keys"},
		{"missing name", lines("workloads:", "  - namespace: shop", "    serviceAccount: a", "    cgroup: a"), 2, "workloads[0].name", "required field is missing"},
		{"missing namespace", lines("workloads:", "  - name: a", "    serviceAccount: a", "    cgroup: a"), 2, "workloads[0].namespace", "required field is missing"},
		{"missing service account", lines("workloads:", "  - name: a", "    namespace: shop", "    cgroup: a"), 2, "workloads[0].serviceAccount", "required field is missing"},
		{"missing cgroup", lines("workloads:", "  - name: a", "    namespace: shop", "    serviceAccount: a"), 2, "workloads[0].cgroup", "required field is missing"},
		{"null name is missing", lines("workloads:", "  - name: ~", "    namespace: shop"), 2, "workloads[0].name", "required field is missing"},
		{"bad name", lines("workloads:", "  - name: Frontend"), 2, "workloads[0].name", `"Frontend" is not a DNS-1123 subdomain`},
		{"name is a list", lines("workloads:", "  - name: [frontend]"), 2, "workloads[0].name", "must be a string, not a list"},
		{"namespace with a dot", lines("workloads:", "  - name: a", "    namespace: shop.eu"), 3, "workloads[0].namespace", `"shop.eu" is not a DNS-1123 label`},
		{"namespace too long", lines("workloads:", "  - name: a", "    namespace: "+strings.Repeat("n", 64)), 3, "workloads[0].namespace", "is not a DNS-1123 label"},
		{"service account label too long", lines("workloads:", "  - name: a", "    namespace: shop", "    serviceAccount: web."+strings.Repeat("a", 64)), 4, "workloads[0].serviceAccount", "is not a DNS-1123 subdomain"},
		{"bad service account", lines("workloads:", "  - name: a", "    namespace: shop", "    serviceAccount: web_admin"), 4, "workloads[0].serviceAccount", `"web_admin" is not a DNS-1123 subdomain`},
		{"duplicate name in namespace", with("  - name: frontend", "    namespace: shop", "    serviceAccount: a", "    cgroup: b"), 7, "workloads[1].name", "workload shop/frontend is already workloads[0] (shop/frontend)"},

		// spiffeId.
		{"spiffeId not a SPIFFE ID", with("    spiffeId: https://example.org/ns/shop/sa/frontend"), 7, "workloads[0].spiffeId", "is not a SPIFFE ID"},
		{"spiffeId not a workload ID", with("    spiffeId: spiffe://example.org/frontend"), 7, "workloads[0].spiffeId", "is not a workload SPIFFE ID"},
		{"spiffeId other namespace", with("    spiffeId: spiffe://cluster.local/ns/admin/sa/frontend"), 7, "workloads[0].spiffeId",
			`names namespace "admin" and service account "frontend", but the workload has namespace "shop" and service account "frontend"`},
		{"spiffeId other service account", with("    spiffeId: spiffe://cluster.local/ns/shop/sa/default"), 7, "workloads[0].spiffeId", `service account "default", but the workload has`},
		{"spiffeId a number", with("    spiffeId: [1]"), 7, "workloads[0].spiffeId", "must be a string, not a list"},

		// cgroup.
		{"empty cgroup", lines("workloads:", "  - name: a", "    namespace: shop", "    serviceAccount: a", `    cgroup: ""`), 5, "workloads[0].cgroup", `"" is empty`},
		{"cgroup with ..", lines("workloads:", "  - name: a", "    namespace: shop", "    serviceAccount: a", "    cgroup: sluice/../system.slice"), 5, "workloads[0].cgroup", `contains ".."`},
		{"cgroup leading ..", lines("workloads:", "  - name: a", "    namespace: shop", "    serviceAccount: a", "    cgroup: ../a"), 5, "workloads[0].cgroup", `contains ".."`},
		{"cgroup not clean", lines("workloads:", "  - name: a", "    namespace: shop", "    serviceAccount: a", "    cgroup: sluice//a/"), 5, "workloads[0].cgroup", `is not a clean path; write "sluice/a"`},
		{"cgroup with .", lines("workloads:", "  - name: a", "    namespace: shop", "    serviceAccount: a", "    cgroup: ./a"), 5, "workloads[0].cgroup", `is not a clean path; write "a"`},
		{"root cgroup", lines("workloads:", "  - name: a", "    namespace: shop", "    serviceAccount: a", "    cgroup: /"), 5, "workloads[0].cgroup", "is the root cgroup"},
		{"cgroup control character", lines("workloads:", "  - name: a", "    namespace: shop", "    serviceAccount: a", `    cgroup: "a\tb"`), 5, "workloads[0].cgroup", "control characters"},
		{"cgroup a mapping", lines("workloads:", "  - name: a", "    namespace: shop", "    serviceAccount: a", "    cgroup: {path: a}"), 5, "workloads[0].cgroup", "must be a string, not a mapping"},
		{"duplicate cgroup", with("  - name: backend", "    namespace: shop", "    serviceAccount: backend", "    cgroup: sluice/node-1/frontend"), 10, "workloads[1].cgroup",
			"sluice/node-1/frontend is already the cgroup of workloads[0] (shop/frontend)"},
		{"same cgroup on one node", lines("workloads:",
			"  - {name: a, namespace: shop, serviceAccount: a, node: node-1, cgroup: web}",
			"  - {name: b, namespace: shop, serviceAccount: b, node: node-1, cgroup: web}"), 3, "workloads[1].cgroup",
			"web is already the cgroup of workloads[0] (shop/a)"},
		{"same cgroup as a workload of every node", lines("workloads:",
			"  - {name: a, namespace: shop, serviceAccount: a, cgroup: web}",
			"  - {name: b, namespace: shop, serviceAccount: b, node: node-2, cgroup: web}"), 3, "workloads[1].cgroup",
			"web is already the cgroup of workloads[0] (shop/a)"},
		{"bad node", with("    node: Node_1"), 7, "workloads[0].node", `"Node_1" is not a DNS-1123 subdomain`},

		// ips.
		{"ips not a list", lines("workloads:", "  - name: a", "    namespace: shop", "    serviceAccount: a", "    cgroup: a", "    ips: 10.0.0.1"), 6, "workloads[0].ips", `must be a list, not "10.0.0.1"`},
		{"bad IP", lines("workloads:", "  - name: a", "    namespace: shop", "    serviceAccount: a", "    cgroup: a", "    ips: [10.0.0.300]"), 6, "workloads[0].ips[0]", `"10.0.0.300" is not an IP address`},
		{"IP a number", lines("workloads:", "  - name: a", "    namespace: shop", "    serviceAccount: a", "    cgroup: a", "    ips: [[1]]"), 6, "workloads[0].ips[0]", "must be a string, not a list"},
		{"IP with zone", lines("workloads:", "  - name: a", "    namespace: shop", "    serviceAccount: a", "    cgroup: a", "    ips: ['fe80::1%eth0']"), 6, "workloads[0].ips[0]", "has a zone"},
		{"IPv4-mapped", lines("workloads:", "  - name: a", "    namespace: shop", "    serviceAccount: a", "    cgroup: a", "    ips: ['::ffff:10.0.0.1']"), 6, "workloads[0].ips[0]", "write the IPv4 address"},
		{"unspecified IP", lines("workloads:", "  - name: a", "    namespace: shop", "    serviceAccount: a", "    cgroup: a", "    ips: [0.0.0.0]"), 6, "workloads[0].ips[0]", "unspecified"},
		{"loopback IP", lines("workloads:", "  - name: a", "    namespace: shop", "    serviceAccount: a", "    cgroup: a", "    ips: ['::1']"), 6, "workloads[0].ips[0]", "loopback"},
		{"multicast IP", lines("workloads:", "  - name: a", "    namespace: shop", "    serviceAccount: a", "    cgroup: a", "    ips: [224.0.0.1]"), 6, "workloads[0].ips[0]", "multicast"},
		{"two IPv4", with("    labels: {}", "  - name: a", "    namespace: shop", "    serviceAccount: a", "    cgroup: a", "    ips:", "      - 10.0.0.1", "      - 10.0.0.2"), 14, "workloads[1].ips[1]",
			"10.0.0.2 is a second IPv4 address after workloads[1].ips[0]; a workload has at most one per address family"},
		{"two IPv6", lines("workloads:", "  - name: a", "    namespace: shop", "    serviceAccount: a", "    cgroup: a", "    ips: [10.0.0.1, 'fd00::1', 'fd00::2']"), 6, "workloads[0].ips[2]", "second IPv6 address"},
		{"same IP twice", lines("workloads:", "  - name: a", "    namespace: shop", "    serviceAccount: a", "    cgroup: a", "    ips: [10.0.0.1, 10.0.0.1]"), 6, "workloads[0].ips[1]", "second IPv4 address"},
		{"IP of two workloads", with("  - name: backend", "    namespace: shop", "    serviceAccount: backend", "    cgroup: sluice/node-1/backend", "    ips: ['fd00::6', 10.244.1.5]"), 11, "workloads[1].ips[1]",
			"10.244.1.5 is already an address of workloads[0] (shop/frontend)"},

		// labels.
		{"labels a list", with("    labels: [app]"), 7, "workloads[0].labels", "must be a mapping, not a list"},
		{"bad label key", with("    labels: {-app: x}"), 7, "workloads[0].labels.-app", `"-app" is not a label key`},
		{"bad label key prefix", with("    labels: {Example.com/app: x}"), 7, "workloads[0].labels.Example.com/app", "prefix before '/'"},
		{"empty label name", with("    labels: {example.com/: x}"), 7, "workloads[0].labels.example.com/", "is not a label key"},
		{"bad label value", with("    labels:", "      app: front end"), 8, "workloads[0].labels.app", `"front end" is not a label value`},
		{"label value too long", with("    labels:", "      app: "+strings.Repeat("v", 64)), 8, "workloads[0].labels.app", "is not a label value"},
		{"label value a list", with("    labels:", "      app: [a]"), 8, "workloads[0].labels.app", "must be a string, not a list"},
		{"label twice", with("    labels:", "      app: a", "      app: b"), 9, "workloads[0].labels.app", "label given twice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := identity.ParseWorkloads("node.yaml", tc.yaml)
			if err == nil {
				t.Fatalf("no error; got %+v", got)
			}
			var e *identity.FileError
			if !errors.As(err, &e) || !errors.Is(err, identity.ErrInvalidWorkloads) {
				t.Fatalf("error %v (%T) is not a *identity.FileError", err, err)
			}
			if e.File != "node.yaml" || e.Line != tc.line || e.Field != tc.field || !strings.Contains(e.Reason, tc.reason) {
				t.Errorf("got %q (line %d, field %q)\nwant line %d, field %q, reason containing %q", err, e.Line, e.Field, tc.line, tc.field, tc.reason)
			}
			prefix := fmt.Sprintf("node.yaml:%d: ", tc.line)
			if tc.field != "" {
				prefix += tc.field + ": "
			}
			if !strings.HasPrefix(err.Error(), prefix) {
				t.Errorf("error %q does not start with %q", err, prefix)
			}
		})
	}
}

// TestWorkloadNodes checks that each node has its own cgroups, and which
// workloads a node runs.
func TestWorkloadNodes(t *testing.T) {
	ws, err := identity.ParseWorkloads("mesh.yaml", lines("workloads:",
		"  - {name: a, namespace: shop, serviceAccount: a, node: node-1, cgroup: web}",
		"  - {name: b, namespace: shop, serviceAccount: b, node: node-2, cgroup: web}",
		"  - {name: c, namespace: shop, serviceAccount: c, cgroup: tools}"))
	if err != nil {
		t.Fatal(err)
	}
	var on1 []string
	for _, w := range ws {
		if w.OnNode("node-1") {
			on1 = append(on1, w.Name)
		}
	}
	if strings.Join(on1, ",") != "a,c" || ws[1].Node != "node-2" {
		t.Errorf("node-1 runs %v (nodes %q %q %q), want a and c", on1, ws[0].Node, ws[1].Node, ws[2].Node)
	}
}

func TestParseWorkloadsAliases(t *testing.T) {
	// An anchor repeats a block; an error inside it is at the anchor.
	data := lines(
		"labels: &labels {app: shop}", // not a field: refused first
	)
	if _, err := identity.ParseWorkloads("a.yaml", data); err == nil || !strings.Contains(err.Error(), "a.yaml:1: labels: unknown field") {
		t.Errorf("got %v", err)
	}
	data = lines(
		"workloads:",
		"  - name: a",
		"    namespace: shop",
		"    serviceAccount: a",
		"    cgroup: a",
		"    labels: &labels {app: shop, tier: back end}",
		"  - name: b",
		"    namespace: shop",
		"    serviceAccount: b",
		"    cgroup: b",
		"    labels: *labels",
	)
	if _, err := identity.ParseWorkloads("a.yaml", data); err == nil || !strings.Contains(err.Error(), "a.yaml:6: workloads[0].labels.tier") {
		t.Errorf("got %v", err)
	}
}

func FuzzParseWorkloads(f *testing.F) {
	f.Add(with())
	f.Add(with("    labels: {app: frontend, a.b/c: ~}", "    spiffeId: spiffe://cluster.local/ns/shop/sa/frontend"))
	f.Add(lines("trustDomain: example.org", "workloads:", "  - {name: a, namespace: b, serviceAccount: c, cgroup: /d, ips: ['fd00::1', 10.0.0.1]}"))
	f.Add([]byte("x: &a [*a, *a]\n"))
	f.Add([]byte("workloads: &w [*w]\n"))
	f.Add([]byte("---\n---\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		ws, err := identity.ParseWorkloads("fuzz.yaml", data)
		if err != nil {
			var e *identity.FileError
			if !errors.As(err, &e) || !errors.Is(err, identity.ErrInvalidWorkloads) {
				t.Fatalf("error %v (%T) is not a *identity.FileError", err, err)
			}
			return
		}
		// Whatever the file accepts, Build accepts.
		locals := make([]identity.Local, len(ws))
		for i, w := range ws {
			id, err := identity.ParseWorkloadID(w.SPIFFEID)
			if err != nil {
				t.Fatalf("workload %d: %v", i, err)
			}
			if id.Namespace != w.Namespace || id.ServiceAccount != w.ServiceAccount {
				t.Fatalf("workload %d: SPIFFE ID %s, namespace %s, service account %s", i, w.SPIFFEID, w.Namespace, w.ServiceAccount)
			}
			locals[i] = identity.Local{Workload: w, CgroupID: uint64(i + 1)}
		}
		ids, stats, err := identity.Build(nil, locals)
		if err != nil {
			t.Fatalf("Build: %v", err)
		}
		if len(stats.AmbiguousAddrs) != 0 || len(ids.Cgroups) != len(ws) {
			t.Fatalf("Build: %+v, %+v", ids, stats)
		}
	})
}
