package kube

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/sluice-mesh/sluice/identity"
	"github.com/sluice-mesh/sluice/identity/yamlfile"
	"github.com/sluice-mesh/sluice/xds/mesh"
)

// MeshPolicyResource is the MeshPolicy custom resource
// (manifests/meshpolicy-crd.yaml).
var MeshPolicyResource = schema.GroupVersionResource{Group: "sluice.io", Version: "v1alpha1", Resource: "meshpolicies"}

// MeshPolicySpec is the spec of a MeshPolicy, as the API server stores it.
type MeshPolicySpec struct {
	Selector   *metav1.LabelSelector `json:"selector,omitempty"`
	Action     string                `json:"action,omitempty"`
	DryRun     bool                  `json:"dryRun,omitempty"`
	Continuous bool                  `json:"continuous,omitempty"`
	Rules      []MeshPolicyRule      `json:"rules,omitempty"`
}

// MeshPolicyRule is one rule of a MeshPolicy.
type MeshPolicyRule struct {
	Name  string             `json:"name,omitempty"`
	From  []MeshPolicySource `json:"from,omitempty"`
	Ports []int64            `json:"ports,omitempty"`
}

// MeshPolicySource is one source of a MeshPolicy rule.
type MeshPolicySource struct {
	Principals         []string `json:"principals,omitempty"`
	Namespaces         []string `json:"namespaces,omitempty"`
	ServiceAccounts    []string `json:"serviceAccounts,omitempty"`
	IPBlocks           []string `json:"ipBlocks,omitempty"`
	NotPrincipals      []string `json:"notPrincipals,omitempty"`
	NotNamespaces      []string `json:"notNamespaces,omitempty"`
	NotServiceAccounts []string `json:"notServiceAccounts,omitempty"`
	NotIPBlocks        []string `json:"notIPBlocks,omitempty"`
}

// Policy is a valid MeshPolicy, ready to apply to the Services it covers.
// It is not modified once built.
type Policy struct {
	Namespace, Name string
	Generation      int64
	selector        labels.Selector // nil: every Service of the namespace
	action          mesh.Action
	dryRun          bool
	continuous      bool
	rules           []policyRule
}

// policyRule is a rule whose ports are still the pods' ports: which ports
// of a Service they are depends on the Service.
type policyRule struct {
	name        string
	from        []mesh.Source
	targetPorts []uint16 // nil: every TCP port
}

// DecodePolicy reads a MeshPolicy object as the dynamic client returns it
// and validates it. The error names the field at fault, as in
// `spec.rules[0].from[1].ipBlocks[0]: "10.0.0.0/33" is not an address or CIDR`.
func DecodePolicy(u *unstructured.Unstructured) (*Policy, error) {
	var spec MeshPolicySpec
	raw, _, err := unstructured.NestedMap(u.Object, "spec")
	if err != nil {
		return nil, fmt.Errorf("spec: %v", err)
	}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(raw, &spec); err != nil {
		return nil, fmt.Errorf("spec: %v", err)
	}
	return ValidatePolicy(u.GetNamespace(), u.GetName(), u.GetGeneration(), &spec)
}

// ValidatePolicy validates the spec of MeshPolicy namespace/name and
// compiles it. The error names the field at fault.
func ValidatePolicy(namespace, name string, generation int64, spec *MeshPolicySpec) (*Policy, error) {
	p := &Policy{Namespace: namespace, Name: name, Generation: generation, dryRun: spec.DryRun, continuous: spec.Continuous}
	if spec.Selector != nil && (len(spec.Selector.MatchLabels) > 0 || len(spec.Selector.MatchExpressions) > 0) {
		sel, err := metav1.LabelSelectorAsSelector(spec.Selector)
		if err != nil {
			return nil, fmt.Errorf("spec.selector: %v", err)
		}
		p.selector = sel
	}
	switch spec.Action {
	case "", "ALLOW":
		p.action = mesh.ActionAllow
	case "DENY":
		p.action = mesh.ActionDeny
	case "AUDIT":
		p.action = mesh.ActionAudit
	default:
		return nil, fmt.Errorf("spec.action: %q is not an action; use ALLOW, DENY or AUDIT", spec.Action)
	}
	if p.action == mesh.ActionAudit {
		if spec.DryRun {
			return nil, fmt.Errorf("spec.dryRun: an AUDIT policy only records, never blocks; drop dryRun or use ALLOW or DENY")
		}
		if spec.Continuous {
			return nil, fmt.Errorf("spec.continuous: an AUDIT policy only records, never blocks; drop continuous or use ALLOW or DENY")
		}
	}
	names := map[string]int{}
	for i, r := range spec.Rules {
		path := fmt.Sprintf("spec.rules[%d]", i)
		pr := policyRule{name: r.Name}
		if pr.name == "" {
			pr.name = fmt.Sprintf("rule-%d", i)
		} else if reason := yamlfile.CheckLabel(r.Name); reason != "" {
			return nil, fmt.Errorf("%s.name: %q %s", path, r.Name, reason)
		}
		if j, ok := names[pr.name]; ok {
			return nil, fmt.Errorf("%s.name: rule %q is already spec.rules[%d]; rules of a policy are counted by name", path, pr.name, j)
		}
		names[pr.name] = i
		for j := range r.From {
			src, err := source(&r.From[j], fmt.Sprintf("%s.from[%d]", path, j), namespace)
			if err != nil {
				return nil, err
			}
			pr.from = append(pr.from, src)
		}
		seen := map[int64]int{}
		for j, port := range r.Ports {
			if port < 1 || port > 65535 {
				return nil, fmt.Errorf("%s.ports[%d]: %d is not a port (1..65535)", path, j, port)
			}
			if k, ok := seen[port]; ok {
				return nil, fmt.Errorf("%s.ports[%d]: port %d is already ports[%d]", path, j, port, k)
			}
			seen[port] = j
			pr.targetPorts = append(pr.targetPorts, uint16(port))
		}
		p.rules = append(p.rules, pr)
	}
	return p, nil
}

// source validates one source of a rule; namespace is the policy's, that of
// a service account written without one.
func source(s *MeshPolicySource, path, namespace string) (mesh.Source, error) {
	var src mesh.Source
	var err error
	empty := true
	for _, l := range [][]string{s.Principals, s.Namespaces, s.ServiceAccounts, s.IPBlocks,
		s.NotPrincipals, s.NotNamespaces, s.NotServiceAccounts, s.NotIPBlocks} {
		empty = empty && len(l) == 0
	}
	if empty {
		return src, fmt.Errorf("%s: empty source; set at least one of principals, namespaces, serviceAccounts, ipBlocks or their not* forms, or leave from out to match every source", path)
	}
	if src.Principals, err = each(s.Principals, path+".principals", principal); err != nil {
		return src, err
	}
	if src.Namespaces, err = each(s.Namespaces, path+".namespaces", checkNamespace); err != nil {
		return src, err
	}
	sa := func(v string) (mesh.ServiceAccount, error) { return serviceAccount(v, namespace) }
	if src.ServiceAccounts, err = each(s.ServiceAccounts, path+".serviceAccounts", sa); err != nil {
		return src, err
	}
	if src.IPBlocks, err = each(s.IPBlocks, path+".ipBlocks", ipBlock); err != nil {
		return src, err
	}
	if src.NotPrincipals, err = each(s.NotPrincipals, path+".notPrincipals", principal); err != nil {
		return src, err
	}
	if src.NotNamespaces, err = each(s.NotNamespaces, path+".notNamespaces", checkNamespace); err != nil {
		return src, err
	}
	if src.NotServiceAccounts, err = each(s.NotServiceAccounts, path+".notServiceAccounts", sa); err != nil {
		return src, err
	}
	if src.NotIPBlocks, err = each(s.NotIPBlocks, path+".notIPBlocks", ipBlock); err != nil {
		return src, err
	}
	return src, nil
}

// each parses every value of a list field with parse; duplicates are
// refused, as in the mesh file.
func each[T comparable](in []string, path string, parse func(string) (T, error)) ([]T, error) {
	if len(in) == 0 {
		return nil, nil
	}
	out := make([]T, 0, len(in))
	seen := map[T]int{}
	for i, s := range in {
		v, err := parse(s)
		if err != nil {
			return nil, fmt.Errorf("%s[%d]: %v", path, i, err)
		}
		if j, ok := seen[v]; ok {
			return nil, fmt.Errorf("%s[%d]: %q is already %s[%d]", path, i, s, path[strings.LastIndex(path, ".")+1:], j)
		}
		seen[v] = i
		out = append(out, v)
	}
	return out, nil
}

func principal(s string) (string, error) {
	if s == mesh.AnyPrincipal {
		return s, nil
	}
	id, err := identity.ParseWorkloadID(s)
	if err != nil {
		return "", fmt.Errorf("%q is not a workload SPIFFE ID (spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>) nor \"*\"", s)
	}
	if reason := yamlfile.CheckTrustDomain(id.TrustDomain); reason != "" {
		return "", fmt.Errorf("%q: trust domain %q %s", s, id.TrustDomain, reason)
	}
	if reason := yamlfile.CheckLabel(id.Namespace); reason != "" {
		return "", fmt.Errorf("%q: namespace %q %s", s, id.Namespace, reason)
	}
	if reason := yamlfile.CheckSubdomain(id.ServiceAccount); reason != "" {
		return "", fmt.Errorf("%q: service account %q %s", s, id.ServiceAccount, reason)
	}
	return s, nil
}

func checkNamespace(s string) (string, error) {
	if reason := yamlfile.CheckLabel(s); reason != "" {
		return "", fmt.Errorf("%q %s", s, reason)
	}
	return s, nil
}

// serviceAccount parses "<namespace>/<name>", or "<name>" in namespace.
func serviceAccount(s, namespace string) (mesh.ServiceAccount, error) {
	sa := mesh.ServiceAccount{Namespace: namespace, Name: s}
	if ns, name, ok := strings.Cut(s, "/"); ok {
		sa = mesh.ServiceAccount{Namespace: ns, Name: name}
		if reason := yamlfile.CheckLabel(ns); reason != "" {
			return sa, fmt.Errorf("%q: namespace %q %s", s, ns, reason)
		}
	}
	if reason := yamlfile.CheckSubdomain(sa.Name); reason != "" {
		return sa, fmt.Errorf("%q: service account %q %s", s, sa.Name, reason)
	}
	return sa, nil
}

// ipBlock parses a CIDR range, or an address as the range of that one
// address.
func ipBlock(s string) (netip.Prefix, error) {
	pfx, err := netip.ParsePrefix(s)
	if err != nil {
		a, aerr := netip.ParseAddr(s)
		if aerr != nil || a.Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("%q is not an address or CIDR", s)
		}
		pfx = netip.PrefixFrom(a, a.BitLen())
	}
	if pfx.Addr().Is4In6() {
		return netip.Prefix{}, fmt.Errorf("%q is IPv4-mapped IPv6; write the IPv4 range", s)
	}
	if m := pfx.Masked(); m != pfx {
		return netip.Prefix{}, fmt.Errorf("%q has bits set past the /%d prefix; write %s", s, pfx.Bits(), m)
	}
	return pfx, nil
}

// Covers reports whether p applies to a Service of its namespace whose
// spec.selector is podSelector: every Service if p has no selector, else
// the Services with a non-empty selector that p's selector matches, taken
// as a pod's labels.
func (p *Policy) Covers(namespace string, podSelector map[string]string) bool {
	if namespace != p.Namespace {
		return false
	}
	if p.selector == nil {
		return true
	}
	return len(podSelector) > 0 && p.selector.Matches(labels.Set(podSelector))
}

// apply renders p for service s, whose ports are translated: a rule's pod
// ports become the TCP ports of s whose TargetPort they list; a rule none of
// whose ports s has is left out.
func (p *Policy) apply(s *mesh.Service) mesh.Policy {
	out := mesh.Policy{Name: p.Name, Action: p.action, DryRun: p.dryRun, Continuous: p.continuous}
	for _, r := range p.rules {
		mr := mesh.Rule{Name: r.name, From: r.from}
		if r.targetPorts != nil {
			for _, port := range s.Ports {
				if port.Protocol == tcp && port.TargetPort != 0 && slices.Contains(r.targetPorts, port.TargetPort) {
					mr.Ports = append(mr.Ports, port.Port)
				}
			}
			if mr.Ports == nil {
				continue
			}
		}
		out.Rules = append(out.Rules, mr)
	}
	return out
}
