package mesh

import (
	"fmt"
	"math"
	"net/netip"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/sluice-mesh/sluice/dataplane/model"
	"github.com/sluice-mesh/sluice/identity"
	"github.com/sluice-mesh/sluice/identity/yamlfile"
)

// sourceFields are the fields of a rule's source, in the order errors list
// them.
var sourceFields = []string{
	"principals", "namespaces", "serviceAccounts", "ipBlocks",
	"notPrincipals", "notNamespaces", "notServiceAccounts", "notIpBlocks",
}

// policies parses the policies of s, whose ports have been parsed.
func (p *parser) policies(n *yaml.Node, path string, s *Service) error {
	items, err := p.Seq(n, path)
	if err != nil {
		return err
	}
	if len(items) == 0 {
		return nil
	}
	tcp := map[uint16]bool{}
	for _, port := range s.Ports {
		if port.Protocol == model.TCP {
			tcp[port.Port] = true
		}
	}
	if len(tcp) == 0 {
		return p.Errorf(n, path, "service %s/%s has no TCP port; policies apply to TCP ports only", s.Namespace, s.Name)
	}
	names := map[string]string{}
	for i, item := range items {
		pol, err := p.policy(item, fmt.Sprintf("%s[%d]", path, i), s, tcp, names)
		if err != nil {
			return err
		}
		s.Policies = append(s.Policies, pol)
	}
	return nil
}

// policy parses one policy of s; names maps the names of the policies
// before it to their field paths.
func (p *parser) policy(n *yaml.Node, path string, s *Service, tcp map[uint16]bool, names map[string]string) (Policy, error) {
	var pol Policy
	f, err := p.Fields(n, path, "name", "action", "dryRun", "continuous", "rules")
	if err != nil {
		return pol, err
	}
	if pol.Name, err = p.uniqueLabel(f, names, "policy %q is already %s; policies of a service are counted by name"); err != nil {
		return pol, err
	}
	if n := f.Get("action"); n != nil {
		a, err := p.Str(n, f.Path("action"))
		if err != nil {
			return pol, err
		}
		switch a {
		case "ALLOW":
		case "DENY":
			pol.Action = ActionDeny
		case "AUDIT":
			pol.Action = ActionAudit
		default:
			return pol, p.Errorf(n, f.Path("action"), "%q is not an action; use ALLOW, DENY or AUDIT", a)
		}
	}
	for _, x := range []struct {
		key string
		dst *bool
	}{{"dryRun", &pol.DryRun}, {"continuous", &pol.Continuous}} {
		n := f.Get(x.key)
		if n == nil {
			continue
		}
		if *x.dst, err = p.boolean(n, f.Path(x.key)); err != nil {
			return pol, err
		}
		// An audit policy never blocks: a dry run of it, or terminating
		// the connections it denies, would mean nothing.
		if *x.dst && pol.Action == ActionAudit {
			return pol, p.Errorf(n, f.Path(x.key), "an AUDIT policy only records, never blocks; drop %s or use ALLOW or DENY", x.key)
		}
	}
	if n := f.Get("rules"); n != nil {
		items, err := p.Seq(n, f.Path("rules"))
		if err != nil {
			return pol, err
		}
		names := map[string]string{}
		for i, item := range items {
			r, err := p.rule(item, fmt.Sprintf("%s[%d]", f.Path("rules"), i), s, tcp, names)
			if err != nil {
				return pol, err
			}
			pol.Rules = append(pol.Rules, r)
		}
	}
	return pol, nil
}

// rule parses one rule of a policy of s; names maps the names of the rules
// before it to their field paths.
func (p *parser) rule(n *yaml.Node, path string, s *Service, tcp map[uint16]bool, names map[string]string) (Rule, error) {
	var r Rule
	f, err := p.Fields(n, path, "name", "from", "ports")
	if err != nil {
		return r, err
	}
	if r.Name, err = p.uniqueLabel(f, names, "rule %q is already %s; rules of a policy are counted by name"); err != nil {
		return r, err
	}
	if n := f.Get("from"); n != nil {
		items, err := p.nonEmptySeq(n, f.Path("from"), "leave from out to match every source")
		if err != nil {
			return r, err
		}
		for i, item := range items {
			src, err := p.source(item, fmt.Sprintf("%s[%d]", f.Path("from"), i), s.Namespace)
			if err != nil {
				return r, err
			}
			r.From = append(r.From, src)
		}
	}
	if n := f.Get("ports"); n != nil {
		items, err := p.nonEmptySeq(n, f.Path("ports"), "leave ports out to cover every TCP port of the service")
		if err != nil {
			return r, err
		}
		seen := map[uint16]int{}
		for i, item := range items {
			ipath := fmt.Sprintf("%s[%d]", f.Path("ports"), i)
			v, err := p.integer(item, ipath, 1, math.MaxUint16)
			if err != nil {
				return r, err
			}
			port := uint16(v)
			if !tcp[port] {
				if hasPort(s, port) {
					return r, p.Errorf(item, ipath, "port %d of service %s/%s is UDP; policies apply to TCP ports only", port, s.Namespace, s.Name)
				}
				return r, p.Errorf(item, ipath, "service %s/%s has no port %d; list ports clients dial (port, not targetPort)", s.Namespace, s.Name, port)
			}
			if j, ok := seen[port]; ok {
				return r, p.Errorf(item, ipath, "port %d is already ports[%d]", port, j)
			}
			seen[port] = i
			r.Ports = append(r.Ports, port)
		}
	}
	return r, nil
}

// uniqueLabel returns the required DNS-1123 label field "name" of f, which
// must not be a key of names, and adds it. format, given the name and the
// path of the first, says why it must be unique.
func (p *parser) uniqueLabel(f yamlfile.Fields, names map[string]string, format string) (string, error) {
	name, err := p.label(f, "name", "")
	if err != nil {
		return "", err
	}
	if first, ok := names[name]; ok {
		return "", p.Errorf(f.Get("name"), f.Path("name"), format, name, first)
	}
	names[name] = f.At()
	return name, nil
}

func hasPort(s *Service, port uint16) bool {
	for _, p := range s.Ports {
		if p.Port == port {
			return true
		}
	}
	return false
}

// source parses one entry of a rule's from; namespace is the service's, the
// namespace of a service account written without one.
func (p *parser) source(n *yaml.Node, path, namespace string) (Source, error) {
	var src Source
	f, err := p.Fields(n, path, sourceFields...)
	if err != nil {
		return src, err
	}
	if f.Len() == 0 {
		return src, p.Errorf(n, path, "empty source; set at least one of %s, or leave from out to match every source",
			strings.Join(sourceFields, ", "))
	}
	serviceAccount := func(n *yaml.Node, path string) (ServiceAccount, error) {
		return p.serviceAccount(n, path, namespace)
	}
	if src.Principals, err = values(p, f, "principals", p.principal); err != nil {
		return src, err
	}
	if src.Namespaces, err = values(p, f, "namespaces", p.namespace); err != nil {
		return src, err
	}
	if src.ServiceAccounts, err = values(p, f, "serviceAccounts", serviceAccount); err != nil {
		return src, err
	}
	if src.IPBlocks, err = values(p, f, "ipBlocks", p.ipBlock); err != nil {
		return src, err
	}
	if src.NotPrincipals, err = values(p, f, "notPrincipals", p.principal); err != nil {
		return src, err
	}
	if src.NotNamespaces, err = values(p, f, "notNamespaces", p.namespace); err != nil {
		return src, err
	}
	if src.NotServiceAccounts, err = values(p, f, "notServiceAccounts", serviceAccount); err != nil {
		return src, err
	}
	if src.NotIPBlocks, err = values(p, f, "notIpBlocks", p.ipBlock); err != nil {
		return src, err
	}
	return src, nil
}

// values parses the list field key of f, nil if absent, with parse. The
// list may not be empty nor hold a value twice.
func values[T comparable](p *parser, f yamlfile.Fields, key string, parse func(*yaml.Node, string) (T, error)) ([]T, error) {
	n := f.Get(key)
	if n == nil {
		return nil, nil
	}
	items, err := p.nonEmptySeq(n, f.Path(key), "list at least one value or leave "+key+" out")
	if err != nil {
		return nil, err
	}
	out := make([]T, 0, len(items))
	seen := map[T]int{}
	for i, item := range items {
		path := fmt.Sprintf("%s[%d]", f.Path(key), i)
		v, err := parse(item, path)
		if err != nil {
			return nil, err
		}
		if j, ok := seen[v]; ok {
			return nil, p.Errorf(item, path, "%v is already %s[%d]", v, key, j)
		}
		seen[v] = i
		out = append(out, v)
	}
	return out, nil
}

// nonEmptySeq is Seq refusing an empty list, which is most likely a
// mistake: hint says what to write instead.
func (p *parser) nonEmptySeq(n *yaml.Node, path, hint string) ([]*yaml.Node, error) {
	items, err := p.Seq(n, path)
	if err != nil {
		return nil, err
	}
	if len(items) == 0 {
		return nil, p.Errorf(n, path, "empty list; %s", hint)
	}
	return items, nil
}

// principal parses a workload SPIFFE ID, of any trust domain (a local
// workload's may differ from the mesh's), or AnyPrincipal.
func (p *parser) principal(n *yaml.Node, path string) (string, error) {
	s, err := p.Str(n, path)
	if err != nil {
		return "", err
	}
	if s == AnyPrincipal {
		return s, nil
	}
	const form = "spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>"
	id, err := identity.ParseWorkloadID(s)
	if err != nil {
		return "", p.Errorf(n, path, "%q is not a workload SPIFFE ID (%s); use namespaces to match a whole namespace", s, form)
	}
	if reason := yamlfile.CheckTrustDomain(id.TrustDomain); reason != "" {
		return "", p.Errorf(n, path, "%q: trust domain %q %s", s, id.TrustDomain, reason)
	}
	if reason := yamlfile.CheckLabel(id.Namespace); reason != "" {
		return "", p.Errorf(n, path, "%q: namespace %q %s", s, id.Namespace, reason)
	}
	if reason := yamlfile.CheckSubdomain(id.ServiceAccount); reason != "" {
		return "", p.Errorf(n, path, "%q: service account %q %s", s, id.ServiceAccount, reason)
	}
	return s, nil
}

func (p *parser) namespace(n *yaml.Node, path string) (string, error) {
	s, err := p.Str(n, path)
	if err != nil {
		return "", err
	}
	if s == AnyPrincipal {
		return "", p.Errorf(n, path, `"*" is not a namespace; to match every mesh workload, use principals: ["*"]`)
	}
	if reason := yamlfile.CheckLabel(s); reason != "" {
		return "", p.Errorf(n, path, "%q %s", s, reason)
	}
	return s, nil
}

// serviceAccount parses "<namespace>/<name>", or "<name>" in namespace.
func (p *parser) serviceAccount(n *yaml.Node, path, namespace string) (ServiceAccount, error) {
	s, err := p.Str(n, path)
	if err != nil {
		return ServiceAccount{}, err
	}
	sa := ServiceAccount{Namespace: namespace, Name: s}
	if ns, name, ok := strings.Cut(s, "/"); ok {
		sa = ServiceAccount{Namespace: ns, Name: name}
		if reason := yamlfile.CheckLabel(ns); reason != "" {
			return sa, p.Errorf(n, path, "%q: namespace %q %s", s, ns, reason)
		}
	}
	if sa.Name == AnyPrincipal {
		return sa, p.Errorf(n, path, `%q: "*" is not a service account; to match a whole namespace, use namespaces`, s)
	}
	if reason := yamlfile.CheckSubdomain(sa.Name); reason != "" {
		return sa, p.Errorf(n, path, "%q: service account %q %s", s, sa.Name, reason)
	}
	return sa, nil
}

// ipBlock parses a CIDR range, or an IP address as the range of that one
// address.
func (p *parser) ipBlock(n *yaml.Node, path string) (netip.Prefix, error) {
	s, err := p.Str(n, path)
	if err != nil {
		return netip.Prefix{}, err
	}
	pfx, err := netip.ParsePrefix(s)
	if err != nil {
		a, aerr := netip.ParseAddr(s)
		if aerr != nil {
			return netip.Prefix{}, p.Errorf(n, path, "%q is not a CIDR range (10.244.0.0/16) or an IP address", s)
		}
		if a.Zone() != "" {
			return netip.Prefix{}, p.Errorf(n, path, "%s has a zone; a source address block cannot", a)
		}
		pfx = netip.PrefixFrom(a, a.BitLen())
	}
	if pfx.Addr().Is4In6() {
		return netip.Prefix{}, p.Errorf(n, path, "%s is IPv4-mapped IPv6; write the IPv4 range", s)
	}
	if m := pfx.Masked(); m != pfx {
		return netip.Prefix{}, p.Errorf(n, path, "%s has bits set past the /%d prefix; write %s", s, pfx.Bits(), m)
	}
	return pfx, nil
}

func (p *parser) boolean(n *yaml.Node, path string) (bool, error) {
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!bool" {
		return false, p.Errorf(n, path, "%s is not a boolean; use true or false", yamlfile.Describe(n))
	}
	var v bool
	if err := n.Decode(&v); err != nil {
		return false, p.Errorf(n, path, "%s is not a boolean; use true or false", yamlfile.Describe(n))
	}
	return v, nil
}
