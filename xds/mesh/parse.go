package mesh

import (
	"fmt"
	"math"
	"net/netip"
	"regexp"

	"gopkg.in/yaml.v3"

	"github.com/sluice-mesh/sluice/dataplane/model"
	"github.com/sluice-mesh/sluice/identity"
	"github.com/sluice-mesh/sluice/identity/yamlfile"
)

// Limits of the file's numeric fields.
const (
	maxWeight   = 1_000_000
	maxIdentity = int64(identity.FirstDerived - 1) // larger ones are derived from SPIFFE IDs
)

// Parse reads a mesh file, validates it and applies defaults. file names the
// input in errors ("<mesh>" if empty). The error, if any, is the first
// problem found in the file, an *Error matching ErrInvalid. Parse never
// panics, whatever data holds. An empty file is a valid mesh with no
// services.
func Parse(file string, data []byte) (*Mesh, error) {
	if file == "" {
		file = "<mesh>"
	}
	p := &parser{File: yamlfile.File{Name: file, Kind: "mesh file", Class: ErrInvalid}}
	root, err := p.Decode(data)
	if err != nil {
		return nil, err
	}
	return p.mesh(root)
}

// parser walks a decoded YAML tree. It holds what is needed to validate a
// field against the fields before it (duplicates across services, identity
// consistency).
type parser struct {
	yamlfile.File
	trustDomain string
	services    map[string]string          // "namespace/name" → field path of the service defining it
	addrs       map[model.ServiceKey]owner // every VIP:port/protocol → the service using it
	identities  map[uint32]seenIdentity    // numeric identity → first workload using it
	spiffeIDs   map[string]seenIdentity    // SPIFFE ID → first workload using it
	// The workloads section, by "namespace/name" and by address, and the
	// endpoints whose workload is taken from it.
	listed   map[string]listedWorkload
	listedAt map[netip.Addr]listedWorkload
	implicit []*model.Workload
}

// listedWorkload is a workload of the workloads section.
type listedWorkload struct {
	w    *identity.Workload
	path string // "workloads[i] (namespace/name)"
}

// owner names the service that uses a service address.
type owner struct{ path, name string }

type seenIdentity struct {
	path     string // field path of the workload
	spiffeID string
	identity uint32 // 0 if not set
}

// decimal matches integers too large for YAML's !!int, which resolve as
// floats.
var decimal = regexp.MustCompile(`^[-+]?[0-9]+$`)

func (p *parser) mesh(root *yaml.Node) (*Mesh, error) {
	p.services = map[string]string{}
	p.addrs = map[model.ServiceKey]owner{}
	p.identities = map[uint32]seenIdentity{}
	p.spiffeIDs = map[string]seenIdentity{}
	m := &Mesh{TrustDomain: DefaultTrustDomain}
	root = yamlfile.Resolve(root)
	if root == nil || yamlfile.IsNull(root) {
		return m, nil
	}
	f, err := p.Fields(root, "", "trustDomain", "workloads", "services")
	if err != nil {
		return nil, err
	}
	if m.TrustDomain, err = f.Name("trustDomain", DefaultTrustDomain, yamlfile.CheckTrustDomain); err != nil {
		return nil, err
	}
	p.trustDomain = m.TrustDomain
	p.listed = map[string]listedWorkload{}
	p.listedAt = map[netip.Addr]listedWorkload{}
	if n := f.Get("workloads"); n != nil {
		if m.Workloads, err = identity.ParseWorkloadList(p.File, n, "workloads", p.trustDomain); err != nil {
			return nil, err
		}
		for i := range m.Workloads {
			w := &m.Workloads[i]
			lw := listedWorkload{w: w, path: fmt.Sprintf("workloads[%d] (%s/%s)", i, w.Namespace, w.Name)}
			p.listed[w.Namespace+"/"+w.Name] = lw
			for _, a := range w.Addrs {
				p.listedAt[a] = lw
			}
		}
	}
	if n := f.Get("services"); n != nil {
		items, err := p.Seq(n, "services")
		if err != nil {
			return nil, err
		}
		for i, item := range items {
			s, err := p.service(item, fmt.Sprintf("services[%d]", i))
			if err != nil {
				return nil, err
			}
			m.Services = append(m.Services, s)
		}
	}
	// An endpoint whose workload comes from the workloads section has the
	// numeric identity other endpoints give its SPIFFE ID, if any.
	for _, w := range p.implicit {
		w.Identity = p.spiffeIDs[w.SPIFFEID].identity
	}
	return m, nil
}

func (p *parser) service(n *yaml.Node, path string) (Service, error) {
	var s Service
	f, err := p.Fields(n, path, "name", "namespace", "vips", "ports", "endpoints", "policies", "fastPath")
	if err != nil {
		return s, err
	}
	if s.Name, err = p.label(f, "name", ""); err != nil {
		return s, err
	}
	if s.Namespace, err = p.label(f, "namespace", DefaultNamespace); err != nil {
		return s, err
	}
	id := s.Namespace + "/" + s.Name
	if first, ok := p.services[id]; ok {
		return s, p.Errorf(f.Get("name"), f.Path("name"), "service %s is already defined by %s", id, first)
	}
	p.services[id] = path

	if err := p.vips(f, &s); err != nil {
		return s, err
	}
	if err := p.ports(f, &s, id); err != nil {
		return s, err
	}
	if n := f.Get("endpoints"); n != nil {
		items, err := p.Seq(n, f.Path("endpoints"))
		if err != nil {
			return s, err
		}
		seen := map[netip.Addr]int{}
		for i, item := range items {
			ep, err := p.endpoint(item, fmt.Sprintf("%s[%d]", f.Path("endpoints"), i), &s)
			if err != nil {
				return s, err
			}
			if j, ok := seen[ep.Address]; ok {
				a := mapValue(item, "address")
				return s, p.Errorf(a, fmt.Sprintf("%s[%d].address", f.Path("endpoints"), i),
					"%s is already endpoints[%d]", ep.Address, j)
			}
			seen[ep.Address] = i
			s.Endpoints = append(s.Endpoints, ep)
		}
	}
	if n := f.Get("policies"); n != nil {
		if err := p.policies(n, f.Path("policies"), &s); err != nil {
			return s, err
		}
	}
	if n := f.Get("fastPath"); n != nil {
		on, err := p.Bool(n, f.Path("fastPath"))
		if err != nil {
			return s, err
		}
		s.FastPath = model.FastPathOff
		if on {
			s.FastPath = model.FastPathOn
		}
	}
	return s, nil
}

func (p *parser) vips(f yamlfile.Fields, s *Service) error {
	n := f.Get("vips")
	if n == nil {
		return f.Missing("vips")
	}
	items, err := p.Seq(n, f.Path("vips"))
	if err != nil {
		return err
	}
	switch len(items) {
	case 0:
		return p.Errorf(n, f.Path("vips"), "at least one VIP is required")
	case 1, 2:
	default:
		return p.Errorf(items[2], fmt.Sprintf("%s[2]", f.Path("vips")),
			"a service has at most two VIPs, one IPv4 and one IPv6")
	}
	for i, item := range items {
		path := fmt.Sprintf("%s[%d]", f.Path("vips"), i)
		a, err := p.addr(item, path)
		if err != nil {
			return err
		}
		if reason := checkVIP(a); reason != "" {
			return p.Errorf(item, path, "%s %s", a, reason)
		}
		for _, other := range s.VIPs {
			if other.Is4() == a.Is4() {
				return p.Errorf(item, path, "%s is a second %s VIP; a service has at most one per address family", a, family(a))
			}
		}
		s.VIPs = append(s.VIPs, a)
	}
	return nil
}

func (p *parser) ports(f yamlfile.Fields, s *Service, id string) error {
	n := f.Get("ports")
	if n == nil {
		return f.Missing("ports")
	}
	items, err := p.Seq(n, f.Path("ports"))
	if err != nil {
		return err
	}
	if len(items) == 0 {
		return p.Errorf(n, f.Path("ports"), "at least one port is required")
	}
	seen := map[Port]int{}
	for i, item := range items {
		path := fmt.Sprintf("%s[%d]", f.Path("ports"), i)
		pf, err := p.Fields(item, path, "port", "protocol", "targetPort")
		if err != nil {
			return err
		}
		var port Port
		pn := pf.Get("port")
		if pn == nil {
			return pf.Missing("port")
		}
		v, err := p.integer(pn, pf.Path("port"), 1, math.MaxUint16)
		if err != nil {
			return err
		}
		port.Port = uint16(v)
		port.TargetPort = port.Port
		port.Protocol = model.TCP
		if n := pf.Get("protocol"); n != nil {
			proto, err := p.Str(n, pf.Path("protocol"))
			if err != nil {
				return err
			}
			switch proto {
			case "TCP":
			case "UDP":
				port.Protocol = model.UDP
			default:
				return p.Errorf(n, pf.Path("protocol"), "%q is not a protocol; use TCP or UDP", proto)
			}
		}
		if n := pf.Get("targetPort"); n != nil {
			v, err := p.integer(n, pf.Path("targetPort"), 1, math.MaxUint16)
			if err != nil {
				return err
			}
			port.TargetPort = uint16(v)
		}
		key := Port{Port: port.Port, Protocol: port.Protocol}
		if j, ok := seen[key]; ok {
			return p.Errorf(item, path, "port %d/%s is already ports[%d]", port.Port, port.Protocol, j)
		}
		seen[key] = i
		for _, vip := range s.VIPs {
			k := model.ServiceKey{VIP: vip, Port: port.Port, Protocol: port.Protocol}
			if other, ok := p.addrs[k]; ok {
				return p.Errorf(item, path, "%s is already used by %s (%s)", k, other.path, other.name)
			}
			p.addrs[k] = owner{path: f.At(), name: id}
		}
		s.Ports = append(s.Ports, port)
	}
	return nil
}

func (p *parser) endpoint(n *yaml.Node, path string, s *Service) (Endpoint, error) {
	ep := Endpoint{Weight: 1, Health: model.HealthHealthy}
	f, err := p.Fields(n, path, "address", "weight", "health", "priority", "locality", "workload")
	if err != nil {
		return ep, err
	}
	an := f.Get("address")
	if an == nil {
		return ep, f.Missing("address")
	}
	if ep.Address, err = p.addr(an, f.Path("address")); err != nil {
		return ep, err
	}
	if reason := checkEndpointAddr(ep.Address); reason != "" {
		return ep, p.Errorf(an, f.Path("address"), "%s %s", ep.Address, reason)
	}
	sameFamily := false
	for _, vip := range s.VIPs {
		sameFamily = sameFamily || vip.Is4() == ep.Address.Is4()
	}
	if !sameFamily {
		return ep, p.Errorf(an, f.Path("address"), "%s is %s but the service has no %s VIP",
			ep.Address, family(ep.Address), family(ep.Address))
	}
	if n := f.Get("weight"); n != nil {
		v, err := p.integer(n, f.Path("weight"), 1, maxWeight)
		if err != nil {
			return ep, err
		}
		ep.Weight = uint32(v)
	}
	if n := f.Get("health"); n != nil {
		h, err := p.Str(n, f.Path("health"))
		if err != nil {
			return ep, err
		}
		switch h {
		case "healthy":
			ep.Health = model.HealthHealthy
		case "unhealthy":
			ep.Health = model.HealthUnhealthy
		case "draining":
			ep.Health = model.HealthDraining
		case "unknown":
			ep.Health = model.HealthUnknown
		default:
			return ep, p.Errorf(n, f.Path("health"),
				"%q is not a health status; use healthy, unhealthy, draining or unknown", h)
		}
	}
	if n := f.Get("priority"); n != nil {
		v, err := p.integer(n, f.Path("priority"), 0, math.MaxUint32)
		if err != nil {
			return ep, err
		}
		ep.Priority = uint32(v)
	}
	if n := f.Get("locality"); n != nil {
		lf, err := p.Fields(n, f.Path("locality"), "region", "zone", "subZone")
		if err != nil {
			return ep, err
		}
		for _, x := range []struct {
			key string
			dst *string
		}{{"region", &ep.Locality.Region}, {"zone", &ep.Locality.Zone}, {"subZone", &ep.Locality.SubZone}} {
			if n := lf.Get(x.key); n != nil {
				if *x.dst, err = p.text(n, lf.Path(x.key)); err != nil {
					return ep, err
				}
			}
		}
	}
	listed, isListed := p.listedAt[ep.Address]
	if n := f.Get("workload"); n != nil {
		if ep.Workload, err = p.workload(n, f.Path("workload"), s.Namespace); err != nil {
			return ep, err
		}
		if err := p.agrees(n, f.Path("workload"), ep, listed, isListed); err != nil {
			return ep, err
		}
	} else if isListed {
		// The workload section says who runs at this address.
		lw := listed.w
		ep.Workload = &model.Workload{Name: lw.Name, Namespace: lw.Namespace, ServiceAccount: lw.ServiceAccount,
			Node: lw.Node, SPIFFEID: lw.SPIFFEID}
		p.implicit = append(p.implicit, ep.Workload)
	}
	return ep, nil
}

// agrees checks an endpoint's workload against the workloads section: the
// workload the section lists at the endpoint's address, and the one it
// lists under the same name, must be the endpoint's workload as described.
func (p *parser) agrees(n *yaml.Node, path string, ep Endpoint, atAddr listedWorkload, isListed bool) error {
	w := ep.Workload
	key := w.Namespace + "/" + w.Name
	if isListed && atAddr.w.Namespace+"/"+atAddr.w.Name != key {
		return p.Errorf(n, path, "workload %s at %s, but %s is %s's address", key, ep.Address, ep.Address, atAddr.path)
	}
	lw, ok := p.listed[key]
	if !ok {
		return nil
	}
	switch {
	case lw.w.SPIFFEID != w.SPIFFEID:
		return p.Errorf(n, path, "workload %s is %s here but %s at %s", key, w.SPIFFEID, lw.w.SPIFFEID, lw.path)
	case lw.w.Node != "" && w.Node != "" && lw.w.Node != w.Node:
		return p.Errorf(n, path, "workload %s is on node %s here but on node %s at %s", key, w.Node, lw.w.Node, lw.path)
	case len(lw.w.Addrs) > 0 && !isListed:
		return p.Errorf(n, path, "workload %s at %s, but %s lists its addresses without %s", key, ep.Address, lw.path, ep.Address)
	}
	if w.Node == "" {
		w.Node = lw.w.Node
	}
	return nil
}

func (p *parser) workload(n *yaml.Node, path, namespace string) (*model.Workload, error) {
	f, err := p.Fields(n, path, "name", "namespace", "serviceAccount", "node", "identity")
	if err != nil {
		return nil, err
	}
	w := &model.Workload{}
	if w.Name, err = p.subdomain(f, "name", ""); err != nil {
		return nil, err
	}
	if w.Namespace, err = p.label(f, "namespace", namespace); err != nil {
		return nil, err
	}
	if w.ServiceAccount, err = p.subdomain(f, "serviceAccount", DefaultServiceAccount); err != nil {
		return nil, err
	}
	if f.Get("node") != nil {
		if w.Node, err = p.subdomain(f, "node", ""); err != nil {
			return nil, err
		}
	}
	idNode := f.Get("identity")
	if idNode != nil {
		v, err := p.integer(idNode, f.Path("identity"), 0, maxIdentity)
		if err != nil {
			return nil, err
		}
		if v == 0 {
			// Sluice's model reads identity 0 as "none".
			return nil, p.Errorf(idNode, f.Path("identity"), "0 is not an identity; use 1..%d or leave identity out", uint32(maxIdentity))
		}
		w.Identity = uint32(v)
	}
	w.SPIFFEID = SPIFFEID(p.trustDomain, w.Namespace, w.ServiceAccount)

	// A numeric identity must mean the same workload identity on every node
	// and in every connection's TCP option, so one SPIFFE ID has one number
	// (or none, everywhere) and one number has one SPIFFE ID.
	where, field := n, path
	if idNode != nil {
		where, field = idNode, f.Path("identity")
	}
	if first, ok := p.spiffeIDs[w.SPIFFEID]; ok && first.identity != w.Identity {
		if first.identity == 0 {
			return nil, p.Errorf(where, field, "%s has no identity at %s; give all its workloads the same identity or none",
				w.SPIFFEID, first.path)
		}
		return nil, p.Errorf(where, field, "%s has identity %d at %s; give all its workloads the same identity or none",
			w.SPIFFEID, first.identity, first.path)
	}
	if w.Identity != 0 {
		if first, ok := p.identities[w.Identity]; ok && first.spiffeID != w.SPIFFEID {
			return nil, p.Errorf(where, field, "identity %d is already %s at %s", w.Identity, first.spiffeID, first.path)
		}
		if _, ok := p.identities[w.Identity]; !ok {
			p.identities[w.Identity] = seenIdentity{path: path, spiffeID: w.SPIFFEID, identity: w.Identity}
		}
	}
	if _, ok := p.spiffeIDs[w.SPIFFEID]; !ok {
		p.spiffeIDs[w.SPIFFEID] = seenIdentity{path: path, spiffeID: w.SPIFFEID, identity: w.Identity}
	}
	return w, nil
}

// label returns a DNS-1123 label field, def if absent (required if def is "").
func (p *parser) label(f yamlfile.Fields, key, def string) (string, error) {
	return f.Name(key, def, yamlfile.CheckLabel)
}

// subdomain returns a DNS-1123 subdomain field, def if absent (required if
// def is "").
func (p *parser) subdomain(f yamlfile.Fields, key, def string) (string, error) {
	return f.Name(key, def, yamlfile.CheckSubdomain)
}

// text returns a free-form string field: any text without control
// characters, which would garble logs and flow records.
func (p *parser) text(n *yaml.Node, path string) (string, error) {
	s, err := p.Str(n, path)
	if err != nil {
		return "", err
	}
	if len(s) > 253 {
		return "", p.Errorf(n, path, "is longer than 253 characters")
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return "", p.Errorf(n, path, "%q contains control characters", s)
		}
	}
	return s, nil
}

// integer returns an integer field within [lo, hi].
func (p *parser) integer(n *yaml.Node, path string, lo, hi int64) (int64, error) {
	tag := n.ShortTag()
	if n.Kind != yaml.ScalarNode || tag != "!!int" && !(tag == "!!float" && decimal.MatchString(n.Value)) {
		return 0, p.Errorf(n, path, "%s is not an integer", yamlfile.Describe(n))
	}
	var v int64
	if err := n.Decode(&v); err != nil || v < lo || v > hi {
		return 0, p.Errorf(n, path, "%s is out of range %d..%d", n.Value, lo, hi)
	}
	return v, nil
}

func (p *parser) addr(n *yaml.Node, path string) (netip.Addr, error) {
	s, err := p.Str(n, path)
	if err != nil {
		return netip.Addr{}, err
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, p.Errorf(n, path, "%q is not an IP address", s)
	}
	return a, nil
}

// mapValue returns the value of key in mapping n; n has been checked by
// Fields.
func mapValue(n *yaml.Node, key string) *yaml.Node {
	for i := 0; i+1 < len(n.Content); i += 2 {
		if yamlfile.Resolve(n.Content[i]).Value == key {
			return yamlfile.Resolve(n.Content[i+1])
		}
	}
	return n
}

func family(a netip.Addr) string {
	if a.Is4() {
		return "IPv4"
	}
	return "IPv6"
}

// checkVIP returns why a cannot be a service VIP, or "".
func checkVIP(a netip.Addr) string {
	switch {
	case a.Zone() != "":
		return "has a zone; a VIP cannot"
	case a.Is4In6():
		return "is an IPv4-mapped IPv6 address; write the IPv4 address"
	case a.IsUnspecified():
		return "is the unspecified address; a VIP must be a unicast address"
	case a.IsLoopback():
		return "is a loopback address; a VIP must not be reachable as a local address"
	case a.IsMulticast(), a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return "is a multicast or broadcast address; a VIP must be a unicast address"
	}
	return ""
}

// checkEndpointAddr returns why a cannot be an endpoint address, or "".
// Loopback endpoints are allowed: on a single host they are a backend on the
// same machine.
func checkEndpointAddr(a netip.Addr) string {
	switch {
	case a.Zone() != "":
		return "has a zone; an endpoint address cannot"
	case a.Is4In6():
		return "is an IPv4-mapped IPv6 address; write the IPv4 address"
	case a.IsUnspecified():
		return "is the unspecified address; an endpoint must be a unicast address"
	case a.IsMulticast(), a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return "is a multicast or broadcast address; an endpoint must be a unicast address"
	}
	return ""
}
