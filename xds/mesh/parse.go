package mesh

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"net/netip"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/sluice-mesh/sluice/dataplane/model"
	"github.com/sluice-mesh/sluice/identity"
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
	p := &parser{file: file}
	root, err := p.decode(data)
	if err != nil {
		return nil, err
	}
	return p.mesh(root)
}

// parser walks a decoded YAML tree. It holds what is needed to validate a
// field against the fields before it (duplicates across services, identity
// consistency).
type parser struct {
	file        string
	trustDomain string
	services    map[string]string          // "namespace/name" → field path of the service defining it
	addrs       map[model.ServiceKey]owner // every VIP:port/protocol → the service using it
	identities  map[uint32]seenIdentity    // numeric identity → first workload using it
	spiffeIDs   map[string]seenIdentity    // SPIFFE ID → first workload using it
}

// owner names the service that uses a service address.
type owner struct{ path, name string }

type seenIdentity struct {
	path     string // field path of the workload
	spiffeID string
	identity uint32 // 0 if not set
}

var (
	yamlLine = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)
	// decimal matches integers too large for YAML's !!int, which resolve
	// as floats.
	decimal = regexp.MustCompile(`^[-+]?[0-9]+$`)
)

// decode parses data as one YAML document and returns its root node, nil for
// an empty document. Empty documents around it (a stray "---") are ignored.
func (p *parser) decode(data []byte) (root *yaml.Node, err error) {
	// yaml.v3 reports syntax errors by panicking internally and recovering;
	// should one of its bugs let a panic escape on hostile input, it is
	// reported as a syntax error instead of taking the control plane down.
	defer func() {
		if r := recover(); r != nil {
			root, err = nil, &Error{File: p.file, Reason: fmt.Sprintf("invalid YAML: %v", r)}
		}
	}()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var doc yaml.Node
		if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
			return root, nil
		} else if err != nil {
			return nil, p.syntaxError(err)
		}
		if len(doc.Content) == 0 || isNull(resolve(doc.Content[0])) {
			continue
		}
		if root != nil {
			return nil, &Error{File: p.file, Line: doc.Line, Reason: "a second YAML document; a mesh file holds one"}
		}
		root = doc.Content[0]
	}
}

func (p *parser) syntaxError(err error) error {
	msg := err.Error()
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		return &Error{File: p.file, Line: line, Reason: "invalid YAML: " + m[2]}
	}
	return &Error{File: p.file, Reason: "invalid YAML: " + strings.TrimPrefix(msg, "yaml: ")}
}

func (p *parser) errorf(n *yaml.Node, field, format string, args ...any) error {
	return &Error{File: p.file, Line: n.Line, Field: field, Reason: fmt.Sprintf(format, args...)}
}

func (p *parser) mesh(root *yaml.Node) (*Mesh, error) {
	p.services = map[string]string{}
	p.addrs = map[model.ServiceKey]owner{}
	p.identities = map[uint32]seenIdentity{}
	p.spiffeIDs = map[string]seenIdentity{}
	m := &Mesh{TrustDomain: DefaultTrustDomain}
	root = resolve(root)
	if root == nil || isNull(root) {
		return m, nil
	}
	f, err := p.fields(root, "", "trustDomain", "services")
	if err != nil {
		return nil, err
	}
	if n := f.get("trustDomain"); n != nil {
		td, err := p.str(n, "trustDomain")
		if err != nil {
			return nil, err
		}
		if reason := checkTrustDomain(td); reason != "" {
			return nil, p.errorf(n, "trustDomain", "%q %s", td, reason)
		}
		m.TrustDomain = td
	}
	p.trustDomain = m.TrustDomain
	if n := f.get("services"); n != nil {
		items, err := p.seq(n, "services")
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
	return m, nil
}

func (p *parser) service(n *yaml.Node, path string) (Service, error) {
	var s Service
	f, err := p.fields(n, path, "name", "namespace", "vips", "ports", "endpoints", "policies")
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
		return s, p.errorf(f.get("name"), f.path("name"), "service %s is already defined by %s", id, first)
	}
	p.services[id] = path

	if err := p.vips(f, &s); err != nil {
		return s, err
	}
	if err := p.ports(f, &s, id); err != nil {
		return s, err
	}
	if n := f.get("endpoints"); n != nil {
		items, err := p.seq(n, f.path("endpoints"))
		if err != nil {
			return s, err
		}
		seen := map[netip.Addr]int{}
		for i, item := range items {
			ep, err := p.endpoint(item, fmt.Sprintf("%s[%d]", f.path("endpoints"), i), &s)
			if err != nil {
				return s, err
			}
			if j, ok := seen[ep.Address]; ok {
				a := mapValue(item, "address")
				return s, p.errorf(a, fmt.Sprintf("%s[%d].address", f.path("endpoints"), i),
					"%s is already endpoints[%d]", ep.Address, j)
			}
			seen[ep.Address] = i
			s.Endpoints = append(s.Endpoints, ep)
		}
	}
	if n := f.get("policies"); n != nil {
		if err := p.policies(n, f.path("policies"), &s); err != nil {
			return s, err
		}
	}
	return s, nil
}

func (p *parser) vips(f fields, s *Service) error {
	n := f.get("vips")
	if n == nil {
		return f.missing("vips")
	}
	items, err := p.seq(n, f.path("vips"))
	if err != nil {
		return err
	}
	switch len(items) {
	case 0:
		return p.errorf(n, f.path("vips"), "at least one VIP is required")
	case 1, 2:
	default:
		return p.errorf(items[2], fmt.Sprintf("%s[2]", f.path("vips")),
			"a service has at most two VIPs, one IPv4 and one IPv6")
	}
	for i, item := range items {
		path := fmt.Sprintf("%s[%d]", f.path("vips"), i)
		a, err := p.addr(item, path)
		if err != nil {
			return err
		}
		if reason := checkVIP(a); reason != "" {
			return p.errorf(item, path, "%s %s", a, reason)
		}
		for _, other := range s.VIPs {
			if other.Is4() == a.Is4() {
				return p.errorf(item, path, "%s is a second %s VIP; a service has at most one per address family", a, family(a))
			}
		}
		s.VIPs = append(s.VIPs, a)
	}
	return nil
}

func (p *parser) ports(f fields, s *Service, id string) error {
	n := f.get("ports")
	if n == nil {
		return f.missing("ports")
	}
	items, err := p.seq(n, f.path("ports"))
	if err != nil {
		return err
	}
	if len(items) == 0 {
		return p.errorf(n, f.path("ports"), "at least one port is required")
	}
	seen := map[Port]int{}
	for i, item := range items {
		path := fmt.Sprintf("%s[%d]", f.path("ports"), i)
		pf, err := p.fields(item, path, "port", "protocol", "targetPort")
		if err != nil {
			return err
		}
		var port Port
		pn := pf.get("port")
		if pn == nil {
			return pf.missing("port")
		}
		v, err := p.integer(pn, pf.path("port"), 1, math.MaxUint16)
		if err != nil {
			return err
		}
		port.Port = uint16(v)
		port.TargetPort = port.Port
		port.Protocol = model.TCP
		if n := pf.get("protocol"); n != nil {
			proto, err := p.str(n, pf.path("protocol"))
			if err != nil {
				return err
			}
			switch proto {
			case "TCP":
			case "UDP":
				port.Protocol = model.UDP
			default:
				return p.errorf(n, pf.path("protocol"), "%q is not a protocol; use TCP or UDP", proto)
			}
		}
		if n := pf.get("targetPort"); n != nil {
			v, err := p.integer(n, pf.path("targetPort"), 1, math.MaxUint16)
			if err != nil {
				return err
			}
			port.TargetPort = uint16(v)
		}
		key := Port{Port: port.Port, Protocol: port.Protocol}
		if j, ok := seen[key]; ok {
			return p.errorf(item, path, "port %d/%s is already ports[%d]", port.Port, port.Protocol, j)
		}
		seen[key] = i
		for _, vip := range s.VIPs {
			k := model.ServiceKey{VIP: vip, Port: port.Port, Protocol: port.Protocol}
			if other, ok := p.addrs[k]; ok {
				return p.errorf(item, path, "%s is already used by %s (%s)", k, other.path, other.name)
			}
			p.addrs[k] = owner{path: f.at, name: id}
		}
		s.Ports = append(s.Ports, port)
	}
	return nil
}

func (p *parser) endpoint(n *yaml.Node, path string, s *Service) (Endpoint, error) {
	ep := Endpoint{Weight: 1, Health: model.HealthHealthy}
	f, err := p.fields(n, path, "address", "weight", "health", "priority", "locality", "workload")
	if err != nil {
		return ep, err
	}
	an := f.get("address")
	if an == nil {
		return ep, f.missing("address")
	}
	if ep.Address, err = p.addr(an, f.path("address")); err != nil {
		return ep, err
	}
	if reason := checkEndpointAddr(ep.Address); reason != "" {
		return ep, p.errorf(an, f.path("address"), "%s %s", ep.Address, reason)
	}
	sameFamily := false
	for _, vip := range s.VIPs {
		sameFamily = sameFamily || vip.Is4() == ep.Address.Is4()
	}
	if !sameFamily {
		return ep, p.errorf(an, f.path("address"), "%s is %s but the service has no %s VIP",
			ep.Address, family(ep.Address), family(ep.Address))
	}
	if n := f.get("weight"); n != nil {
		v, err := p.integer(n, f.path("weight"), 1, maxWeight)
		if err != nil {
			return ep, err
		}
		ep.Weight = uint32(v)
	}
	if n := f.get("health"); n != nil {
		h, err := p.str(n, f.path("health"))
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
			return ep, p.errorf(n, f.path("health"),
				"%q is not a health status; use healthy, unhealthy, draining or unknown", h)
		}
	}
	if n := f.get("priority"); n != nil {
		v, err := p.integer(n, f.path("priority"), 0, math.MaxUint32)
		if err != nil {
			return ep, err
		}
		ep.Priority = uint32(v)
	}
	if n := f.get("locality"); n != nil {
		lf, err := p.fields(n, f.path("locality"), "region", "zone", "subZone")
		if err != nil {
			return ep, err
		}
		for _, x := range []struct {
			key string
			dst *string
		}{{"region", &ep.Locality.Region}, {"zone", &ep.Locality.Zone}, {"subZone", &ep.Locality.SubZone}} {
			if n := lf.get(x.key); n != nil {
				if *x.dst, err = p.text(n, lf.path(x.key)); err != nil {
					return ep, err
				}
			}
		}
	}
	if n := f.get("workload"); n != nil {
		if ep.Workload, err = p.workload(n, f.path("workload"), s.Namespace); err != nil {
			return ep, err
		}
	}
	return ep, nil
}

func (p *parser) workload(n *yaml.Node, path, namespace string) (*model.Workload, error) {
	f, err := p.fields(n, path, "name", "namespace", "serviceAccount", "node", "identity")
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
	if f.get("node") != nil {
		if w.Node, err = p.subdomain(f, "node", ""); err != nil {
			return nil, err
		}
	}
	idNode := f.get("identity")
	if idNode != nil {
		v, err := p.integer(idNode, f.path("identity"), 0, maxIdentity)
		if err != nil {
			return nil, err
		}
		if v == 0 {
			// Sluice's model reads identity 0 as "none".
			return nil, p.errorf(idNode, f.path("identity"), "0 is not an identity; use 1..%d or leave identity out", uint32(maxIdentity))
		}
		w.Identity = uint32(v)
	}
	w.SPIFFEID = SPIFFEID(p.trustDomain, w.Namespace, w.ServiceAccount)

	// A numeric identity must mean the same workload identity on every node
	// and in every connection's TCP option, so one SPIFFE ID has one number
	// (or none, everywhere) and one number has one SPIFFE ID.
	where, field := n, path
	if idNode != nil {
		where, field = idNode, f.path("identity")
	}
	if first, ok := p.spiffeIDs[w.SPIFFEID]; ok && first.identity != w.Identity {
		if first.identity == 0 {
			return nil, p.errorf(where, field, "%s has no identity at %s; give all its workloads the same identity or none",
				w.SPIFFEID, first.path)
		}
		return nil, p.errorf(where, field, "%s has identity %d at %s; give all its workloads the same identity or none",
			w.SPIFFEID, first.identity, first.path)
	}
	if w.Identity != 0 {
		if first, ok := p.identities[w.Identity]; ok && first.spiffeID != w.SPIFFEID {
			return nil, p.errorf(where, field, "identity %d is already %s at %s", w.Identity, first.spiffeID, first.path)
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

// fields is a YAML mapping whose keys have been checked against the fields
// its place in the file allows.
type fields struct {
	p    *parser
	node *yaml.Node
	at   string // field path of the mapping
	vals map[string]*yaml.Node
}

// fields checks that n is a mapping holding only known keys, each once, and
// returns its values. A null value counts as absent, as in Kubernetes.
func (p *parser) fields(n *yaml.Node, path string, known ...string) (fields, error) {
	f := fields{p: p, node: n, at: path, vals: map[string]*yaml.Node{}}
	if n.Kind != yaml.MappingNode {
		return f, p.errorf(n, path, "must be a mapping, not %s", describe(n))
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := resolve(n.Content[i]), resolve(n.Content[i+1])
		if k.Kind != yaml.ScalarNode {
			return f, p.errorf(k, path, "keys must be field names, not %s", describe(k))
		}
		if k.Tag == "!!merge" {
			return f, p.errorf(k, f.path(k.Value), "merge keys (<<) are not supported; repeat the fields")
		}
		if !contains(known, k.Value) {
			return f, p.errorf(k, f.path(k.Value), "unknown field; known fields are %s", strings.Join(known, ", "))
		}
		if seen[k.Value] {
			return f, p.errorf(k, f.path(k.Value), "field given twice")
		}
		seen[k.Value] = true
		if v == nil || isNull(v) {
			continue
		}
		f.vals[k.Value] = v
	}
	return f, nil
}

func (f fields) get(key string) *yaml.Node { return f.vals[key] }

func (f fields) path(key string) string {
	if f.at == "" {
		return key
	}
	return f.at + "." + key
}

func (f fields) missing(key string) error {
	return f.p.errorf(f.node, f.path(key), "required field is missing")
}

// label returns a DNS-1123 label field, def if absent (required if def is "").
func (p *parser) label(f fields, key, def string) (string, error) {
	return p.name(f, key, def, checkLabel)
}

// subdomain returns a DNS-1123 subdomain field, def if absent (required if
// def is "").
func (p *parser) subdomain(f fields, key, def string) (string, error) {
	return p.name(f, key, def, checkSubdomain)
}

func (p *parser) name(f fields, key, def string, check func(string) string) (string, error) {
	n := f.get(key)
	if n == nil {
		if def == "" {
			return "", f.missing(key)
		}
		return def, nil
	}
	s, err := p.str(n, f.path(key))
	if err != nil {
		return "", err
	}
	if reason := check(s); reason != "" {
		return "", p.errorf(n, f.path(key), "%q %s", s, reason)
	}
	return s, nil
}

func (p *parser) seq(n *yaml.Node, path string) ([]*yaml.Node, error) {
	if n.Kind != yaml.SequenceNode {
		return nil, p.errorf(n, path, "must be a list, not %s", describe(n))
	}
	items := make([]*yaml.Node, len(n.Content))
	for i, c := range n.Content {
		items[i] = resolve(c)
		if isNull(items[i]) {
			return nil, p.errorf(items[i], fmt.Sprintf("%s[%d]", path, i), "empty list item")
		}
	}
	return items, nil
}

func (p *parser) str(n *yaml.Node, path string) (string, error) {
	if n.Kind != yaml.ScalarNode {
		return "", p.errorf(n, path, "must be a string, not %s", describe(n))
	}
	return n.Value, nil
}

// text returns a free-form string field: any text without control
// characters, which would garble logs and flow records.
func (p *parser) text(n *yaml.Node, path string) (string, error) {
	s, err := p.str(n, path)
	if err != nil {
		return "", err
	}
	if len(s) > 253 {
		return "", p.errorf(n, path, "is longer than 253 characters")
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return "", p.errorf(n, path, "%q contains control characters", s)
		}
	}
	return s, nil
}

// integer returns an integer field within [lo, hi].
func (p *parser) integer(n *yaml.Node, path string, lo, hi int64) (int64, error) {
	tag := n.ShortTag()
	if n.Kind != yaml.ScalarNode || tag != "!!int" && !(tag == "!!float" && decimal.MatchString(n.Value)) {
		return 0, p.errorf(n, path, "%s is not an integer", describe(n))
	}
	var v int64
	if err := n.Decode(&v); err != nil || v < lo || v > hi {
		return 0, p.errorf(n, path, "%s is out of range %d..%d", n.Value, lo, hi)
	}
	return v, nil
}

func (p *parser) addr(n *yaml.Node, path string) (netip.Addr, error) {
	s, err := p.str(n, path)
	if err != nil {
		return netip.Addr{}, err
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, p.errorf(n, path, "%q is not an IP address", s)
	}
	return a, nil
}

// resolve follows an alias to the node it names. Errors inside an aliased
// node report the line of the anchor.
func resolve(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// describe names what n is, for errors.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		if n.ShortTag() == "!!str" {
			return strconv.Quote(n.Value)
		}
		return n.Value
	}
	return "an unexpected YAML node"
}

// mapValue returns the value of key in mapping n; n has been checked by
// fields.
func mapValue(n *yaml.Node, key string) *yaml.Node {
	for i := 0; i+1 < len(n.Content); i += 2 {
		if resolve(n.Content[i]).Value == key {
			return resolve(n.Content[i+1])
		}
	}
	return n
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
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

// checkLabel returns why s is not a DNS-1123 label (Kubernetes names and
// namespaces), or "".
func checkLabel(s string) string {
	if len(s) > 63 || !isLabel(s) {
		return "is not a DNS-1123 label: lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters"
	}
	return ""
}

// checkSubdomain returns why s is not a DNS-1123 subdomain (Kubernetes pod,
// service account and node names), or "".
func checkSubdomain(s string) string {
	const reason = "is not a DNS-1123 subdomain: labels of lowercase letters, digits and '-' separated by '.', at most 253 characters"
	if len(s) > 253 {
		return reason
	}
	for _, l := range strings.Split(s, ".") {
		if !isLabel(l) {
			return reason
		}
	}
	return ""
}

func isLabel(s string) bool {
	if s == "" || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// checkTrustDomain returns why s is not a SPIFFE trust domain name, or "".
func checkTrustDomain(s string) string {
	if s == "" || len(s) > 255 {
		return "is not a SPIFFE trust domain: 1 to 255 characters"
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			return "is not a SPIFFE trust domain: lowercase letters, digits, '.', '-' and '_' only"
		}
	}
	return ""
}
