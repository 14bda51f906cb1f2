package kube_test

import (
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/sluice-mesh/sluice/xds/kube"
)

func TestValidatePolicy(t *testing.T) {
	src := func(s kube.MeshPolicySource) kube.MeshPolicySpec {
		return kube.MeshPolicySpec{Rules: []kube.MeshPolicyRule{{Name: "r", From: []kube.MeshPolicySource{{Namespaces: []string{"ok"}}, s}}}}
	}
	for _, c := range []struct {
		name string
		spec kube.MeshPolicySpec
		err  string // "" if valid; else the start of the error
	}{
		{"empty", kube.MeshPolicySpec{}, ""},
		{"full", kube.MeshPolicySpec{Action: "DENY", DryRun: true, Continuous: true, Rules: []kube.MeshPolicyRule{
			{Name: "a", From: []kube.MeshPolicySource{{
				Principals: []string{"*", "spiffe://cluster.local/ns/demo/sa/web"}, Namespaces: []string{"demo"},
				ServiceAccounts: []string{"web", "other/api"}, IPBlocks: []string{"10.0.0.0/8", "fd00::1"},
				NotPrincipals: []string{"spiffe://x.org/ns/a/sa/b"}, NotNamespaces: []string{"kube-system"},
				NotServiceAccounts: []string{"bad"}, NotIPBlocks: []string{"10.1.0.0/16"},
			}}, Ports: []int64{8080, 9090}},
			{}, // named rule-1
		}}, ""},
		{"action", kube.MeshPolicySpec{Action: "REJECT"}, `spec.action: "REJECT" is not an action`},
		{"audit dry run", kube.MeshPolicySpec{Action: "AUDIT", DryRun: true}, "spec.dryRun: an AUDIT policy"},
		{"audit continuous", kube.MeshPolicySpec{Action: "AUDIT", Continuous: true}, "spec.continuous: an AUDIT policy"},
		{"selector", kube.MeshPolicySpec{Selector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "app", Operator: "Near"}}}}, "spec.selector:"},
		{"rule name", kube.MeshPolicySpec{Rules: []kube.MeshPolicyRule{{Name: "Bad_Name"}}}, `spec.rules[0].name: "Bad_Name" is not a DNS-1123 label`},
		{"rule name twice", kube.MeshPolicySpec{Rules: []kube.MeshPolicyRule{{Name: "a"}, {Name: "a"}}}, `spec.rules[1].name: rule "a" is already spec.rules[0]`},
		{"default name taken", kube.MeshPolicySpec{Rules: []kube.MeshPolicyRule{{Name: "rule-1"}, {}}}, `spec.rules[1].name: rule "rule-1" is already spec.rules[0]`},
		{"empty source", src(kube.MeshPolicySource{}), "spec.rules[0].from[1]: empty source"},
		{"principal", src(kube.MeshPolicySource{Principals: []string{"web"}}), `spec.rules[0].from[1].principals[0]: "web" is not a workload SPIFFE ID`},
		{"namespace", src(kube.MeshPolicySource{NotNamespaces: []string{"Demo"}}), `spec.rules[0].from[1].notNamespaces[0]: "Demo" is not a DNS-1123 label`},
		{"service account", src(kube.MeshPolicySource{ServiceAccounts: []string{"a/b/c"}}), `spec.rules[0].from[1].serviceAccounts[0]: "a/b/c": service account "b/c"`},
		{"service account namespace", src(kube.MeshPolicySource{NotServiceAccounts: []string{"A/b"}}), `spec.rules[0].from[1].notServiceAccounts[0]: "A/b": namespace "A"`},
		{"ip block", src(kube.MeshPolicySource{IPBlocks: []string{"10.0.0.0/8", "10.0.0.0/33"}}), `spec.rules[0].from[1].ipBlocks[1]: "10.0.0.0/33" is not an address or CIDR`},
		{"ip block bits", src(kube.MeshPolicySource{NotIPBlocks: []string{"10.0.0.1/8"}}), `spec.rules[0].from[1].notIPBlocks[0]: "10.0.0.1/8" has bits set past the /8 prefix`},
		{"duplicate", src(kube.MeshPolicySource{Namespaces: []string{"a", "a"}}), `spec.rules[0].from[1].namespaces[1]: "a" is already namespaces[0]`},
		{"port", kube.MeshPolicySpec{Rules: []kube.MeshPolicyRule{{Ports: []int64{80, 0}}}}, "spec.rules[0].ports[1]: 0 is not a port"},
		{"port too large", kube.MeshPolicySpec{Rules: []kube.MeshPolicyRule{{Ports: []int64{65536}}}}, "spec.rules[0].ports[0]: 65536 is not a port"},
		{"port twice", kube.MeshPolicySpec{Rules: []kube.MeshPolicyRule{{Ports: []int64{80, 80}}}}, "spec.rules[0].ports[1]: port 80 is already ports[0]"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := kube.ValidatePolicy("demo", "p", 1, &c.spec)
			switch {
			case c.err == "" && err != nil:
				t.Errorf("error %v, want valid", err)
			case c.err != "" && (err == nil || !strings.HasPrefix(err.Error(), c.err)):
				t.Errorf("error %v, want one starting %q", err, c.err)
			}
		})
	}
}

func TestDecodePolicy(t *testing.T) {
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "sluice.io/v1alpha1", "kind": "MeshPolicy",
		"metadata": map[string]any{"name": "p", "namespace": "demo", "generation": int64(3)},
		"spec": map[string]any{
			"selector": map[string]any{"matchLabels": map[string]any{"app": "web"}},
			"action":   "DENY",
			"rules":    []any{map[string]any{"name": "r", "from": []any{map[string]any{"notIPBlocks": []any{"10.0.0.0/8"}}}, "ports": []any{int64(8080)}}},
		},
	}}
	p, err := kube.DecodePolicy(u)
	if err != nil {
		t.Fatal(err)
	}
	if p.Namespace != "demo" || p.Name != "p" || p.Generation != 3 {
		t.Errorf("decoded %s/%s generation %d", p.Namespace, p.Name, p.Generation)
	}
	if !p.Covers("demo", map[string]string{"app": "web", "tier": "x"}) || p.Covers("demo", map[string]string{"app": "db"}) ||
		p.Covers("demo", nil) || p.Covers("other", map[string]string{"app": "web"}) {
		t.Error("selector app=web: covers the wrong Services")
	}
	u.Object["spec"].(map[string]any)["rules"] = []any{map[string]any{"from": []any{map[string]any{"ipBlocks": []any{"nope"}}}}}
	if _, err := kube.DecodePolicy(u); err == nil || !strings.HasPrefix(err.Error(), `spec.rules[0].from[0].ipBlocks[0]: "nope"`) {
		t.Errorf("decode of a bad ipBlock: %v", err)
	}
	all, err := kube.ValidatePolicy("demo", "all", 1, &kube.MeshPolicySpec{Selector: &metav1.LabelSelector{}})
	if err != nil {
		t.Fatal(err)
	}
	if !all.Covers("demo", nil) || !all.Covers("demo", map[string]string{"a": "b"}) {
		t.Error("empty selector: does not cover every Service of the namespace")
	}
}
