package identity

import (
	"errors"
	"fmt"
	"net/netip"
	"path"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/sluice-mesh/sluice/identity/yamlfile"
)

// Workload is a workload running on this node.
type Workload struct {
	Name, Namespace, ServiceAccount string
	// SPIFFEID is spiffe://<td>/ns/<ns>/sa/<sa>; ParseWorkloads derives it
	// from the file's trust domain, Namespace and ServiceAccount when the
	// file gives none.
	SPIFFEID string
	// Cgroup is the workload's cgroup v2 path, relative to the cgroup2
	// mount ("sluice/node-1/pod-a") or absolute under it; clean, never the
	// root cgroup. Resolving it to a cgroup id is the caller's I/O.
	Cgroup string
	Labels map[string]string // nil if none
	Addrs  []netip.Addr      // its IP addresses, at most one per family
	// Node is the node the workload runs on; "" if the file does not say
	// (a workloads file describes one node; a mesh file's workload without
	// a node is on every node that runs an agent with that mesh file).
	Node string
	// FastPath puts the workload's connections with other local workloads
	// on the same-node fast path: true, false, or nil for the node's
	// default (docs/fastpath.md).
	FastPath *bool
}

// OnNode reports whether w runs on the node named node.
func (w *Workload) OnNode(node string) bool { return w.Node == "" || w.Node == node }

// DefaultTrustDomain is the trust domain of a workloads file that names
// none, as in Kubernetes clusters.
const DefaultTrustDomain = "cluster.local"

// ErrInvalidWorkloads is the class of every error ParseWorkloads returns:
// the file is not a valid workloads file. Test for it with errors.Is.
var ErrInvalidWorkloads = errors.New("invalid workloads file")

// FileError is a problem found in a workloads file. It names the place in
// the file so that the file's author can find it; File is the file name
// given to ParseWorkloads, Field a path such as "workloads[0].ips[1]", and
// Class is ErrInvalidWorkloads, making errors.Is(err, ErrInvalidWorkloads)
// true.
type FileError = yamlfile.Error

// ParseWorkloads reads and validates a workloads file (the agent's
// --workloads), the local workloads of a node outside Kubernetes. file
// names the input in errors ("<workloads>" if empty). The error, if any, is
// the first problem found, a *FileError matching ErrInvalidWorkloads.
// ParseWorkloads never panics, whatever data holds. An empty file is valid
// and has no workloads. Every workload returned has its SPIFFEID set.
func ParseWorkloads(file string, data []byte) ([]Workload, error) {
	if file == "" {
		file = "<workloads>"
	}
	p := &workloadsParser{
		File:    yamlfile.File{Name: file, Kind: "workloads file", Class: ErrInvalidWorkloads},
		names:   map[string]string{},
		cgroups: map[string][]cgroupUse{},
		addrs:   map[netip.Addr]string{},
	}
	root, err := p.Decode(data)
	if err != nil {
		return nil, err
	}
	return p.root(root)
}

// workloadsParser walks a decoded workloads file. The maps hold what is
// needed to refuse a workload that clashes with one before it; their
// values name that earlier workload ("workloads[0] (shop/frontend)").
type workloadsParser struct {
	yamlfile.File
	trustDomain string
	names       map[string]string      // "namespace/name"
	cgroups     map[string][]cgroupUse // by cgroup path
	addrs       map[netip.Addr]string  // IP address
}

// cgroupUse is a workload's use of a cgroup path.
type cgroupUse struct{ node, owner string }

func (p *workloadsParser) root(root *yaml.Node) ([]Workload, error) {
	p.trustDomain = DefaultTrustDomain
	root = yamlfile.Resolve(root)
	if root == nil {
		return nil, nil
	}
	f, err := p.Fields(root, "", "trustDomain", "workloads")
	if err != nil {
		return nil, err
	}
	if p.trustDomain, err = f.Name("trustDomain", DefaultTrustDomain, yamlfile.CheckTrustDomain); err != nil {
		return nil, err
	}
	n := f.Get("workloads")
	if n == nil {
		return nil, nil
	}
	return p.list(n, "workloads")
}

// ParseWorkloadList reads a list of workloads that is part of another
// file: the workloads section of a mesh file. f is that file, n the list's
// node, at its field path ("workloads"), trustDomain the file's. The
// workloads are checked as ParseWorkloads checks them; the errors are of
// f's class.
func ParseWorkloadList(f yamlfile.File, n *yaml.Node, at, trustDomain string) ([]Workload, error) {
	p := &workloadsParser{
		File:        f,
		trustDomain: trustDomain,
		names:       map[string]string{},
		cgroups:     map[string][]cgroupUse{},
		addrs:       map[netip.Addr]string{},
	}
	return p.list(n, at)
}

func (p *workloadsParser) list(n *yaml.Node, at string) ([]Workload, error) {
	items, err := p.Seq(n, at)
	if err != nil {
		return nil, err
	}
	var out []Workload
	for i, item := range items {
		w, err := p.workload(item, fmt.Sprintf("%s[%d]", at, i))
		if err != nil {
			return nil, err
		}
		out = append(out, w)
	}
	return out, nil
}

func (p *workloadsParser) workload(n *yaml.Node, at string) (Workload, error) {
	var w Workload
	f, err := p.Fields(n, at, "name", "namespace", "serviceAccount", "spiffeId", "node", "cgroup", "ips", "labels", "fastPath")
	if err != nil {
		return w, err
	}
	if w.Name, err = f.Name("name", "", checkSubdomain); err != nil {
		return w, err
	}
	if w.Namespace, err = f.Name("namespace", "", yamlfile.CheckLabel); err != nil {
		return w, err
	}
	if w.ServiceAccount, err = f.Name("serviceAccount", "", checkSubdomain); err != nil {
		return w, err
	}
	key := w.Namespace + "/" + w.Name
	self := fmt.Sprintf("%s (%s)", at, key)
	if first, ok := p.names[key]; ok {
		return w, p.Errorf(f.Get("name"), f.Path("name"), "workload %s is already %s", key, first)
	}
	p.names[key] = self

	if err := p.spiffeID(f, &w); err != nil {
		return w, err
	}

	if f.Get("node") != nil {
		if w.Node, err = f.Name("node", "", checkSubdomain); err != nil {
			return w, err
		}
	}
	cn := f.Get("cgroup")
	if cn == nil {
		return w, f.Missing("cgroup")
	}
	if w.Cgroup, err = p.Str(cn, f.Path("cgroup")); err != nil {
		return w, err
	}
	if reason := checkCgroup(w.Cgroup); reason != "" {
		return w, p.Errorf(cn, f.Path("cgroup"), "%q %s", w.Cgroup, reason)
	}
	if first := p.cgroupOwner(w.Node, w.Cgroup); first != "" {
		return w, p.Errorf(cn, f.Path("cgroup"), "%s is already the cgroup of %s", w.Cgroup, first)
	}
	p.cgroups[w.Cgroup] = append(p.cgroups[w.Cgroup], cgroupUse{node: w.Node, owner: self})

	if n := f.Get("ips"); n != nil {
		if w.Addrs, err = p.ips(n, f.Path("ips"), self); err != nil {
			return w, err
		}
	}
	if n := f.Get("labels"); n != nil {
		if w.Labels, err = p.labels(n, f.Path("labels")); err != nil {
			return w, err
		}
	}
	if n := f.Get("fastPath"); n != nil {
		on, err := p.Bool(n, f.Path("fastPath"))
		if err != nil {
			return w, err
		}
		if on && len(w.Addrs) == 0 {
			return w, p.Errorf(n, f.Path("fastPath"), "needs the workload's ips: the fast path finds workloads by address")
		}
		w.FastPath = &on
	}
	return w, nil
}

// spiffeID sets w.SPIFFEID from the spiffeId field, which must agree with
// the workload's namespace and service account, or derives it from them.
// A given ID may name another trust domain than the file's.
func (p *workloadsParser) spiffeID(f yamlfile.Fields, w *Workload) error {
	n := f.Get("spiffeId")
	if n == nil {
		// The trust domain and names are checked to be valid in a SPIFFE ID.
		w.SPIFFEID = WorkloadID{TrustDomain: p.trustDomain, Namespace: w.Namespace, ServiceAccount: w.ServiceAccount}.String()
		return nil
	}
	s, err := p.Str(n, f.Path("spiffeId"))
	if err != nil {
		return err
	}
	id, err := ParseWorkloadID(s)
	if err != nil {
		return p.Errorf(n, f.Path("spiffeId"), "%s", strings.TrimPrefix(err.Error(), "identity: "))
	}
	if id.Namespace != w.Namespace || id.ServiceAccount != w.ServiceAccount {
		return p.Errorf(n, f.Path("spiffeId"), "%s names namespace %q and service account %q, but the workload has namespace %q and service account %q",
			s, id.Namespace, id.ServiceAccount, w.Namespace, w.ServiceAccount)
	}
	w.SPIFFEID = s
	return nil
}

// cgroupOwner returns the workload before that has cgroup cg on node, or
// "". Nodes have their own cgroups, so the same path on two nodes is two
// cgroups; a workload without a node is on every node.
func (p *workloadsParser) cgroupOwner(node, cg string) string {
	for _, u := range p.cgroups[cg] {
		if u.node == node || u.node == "" || node == "" {
			return u.owner
		}
	}
	return ""
}

func (p *workloadsParser) ips(n *yaml.Node, at, self string) ([]netip.Addr, error) {
	items, err := p.Seq(n, at)
	if err != nil {
		return nil, err
	}
	var addrs []netip.Addr
	for i, item := range items {
		field := fmt.Sprintf("%s[%d]", at, i)
		s, err := p.Str(item, field)
		if err != nil {
			return nil, err
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, p.Errorf(item, field, "%q is not an IP address", s)
		}
		if reason := checkWorkloadAddr(a); reason != "" {
			return nil, p.Errorf(item, field, "%s %s", a, reason)
		}
		for j, b := range addrs {
			if a.Is4() == b.Is4() {
				return nil, p.Errorf(item, field, "%s is a second %s address after %s[%d]; a workload has at most one per address family",
					a, family(a), at, j)
			}
		}
		if first, ok := p.addrs[a]; ok {
			return nil, p.Errorf(item, field, "%s is already an address of %s", a, first)
		}
		p.addrs[a] = self
		addrs = append(addrs, a)
	}
	return addrs, nil
}

// labels reads a mapping of label keys to values. A value is the text of
// any scalar (version: 1 is "1"); a null value is "".
func (p *workloadsParser) labels(n *yaml.Node, at string) (map[string]string, error) {
	if n.Kind != yaml.MappingNode {
		return nil, p.Errorf(n, at, "must be a mapping, not %s", yamlfile.Describe(n))
	}
	out := map[string]string{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := yamlfile.Resolve(n.Content[i]), yamlfile.Resolve(n.Content[i+1])
		if k.Kind != yaml.ScalarNode || k.Tag == "!!merge" {
			return nil, p.Errorf(k, at, "keys must be label names, not %s", yamlfile.Describe(k))
		}
		field := at + "." + k.Value
		if reason := checkLabelKey(k.Value); reason != "" {
			return nil, p.Errorf(k, field, "%q %s", k.Value, reason)
		}
		if _, dup := out[k.Value]; dup {
			return nil, p.Errorf(k, field, "label given twice")
		}
		var val string
		switch {
		case v.Kind != yaml.ScalarNode:
			return nil, p.Errorf(v, field, "must be a string, not %s", yamlfile.Describe(v))
		case !yamlfile.IsNull(v):
			val = v.Value
		}
		if reason := checkLabelValue(val); reason != "" {
			return nil, p.Errorf(v, field, "%q %s", val, reason)
		}
		out[k.Value] = val
	}
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}

func family(a netip.Addr) string {
	if a.Is4() {
		return "IPv4"
	}
	return "IPv6"
}

// checkWorkloadAddr returns why a cannot be a workload's own address, or "".
// Loopback is refused because every process of the node shares it, so it
// cannot name one workload.
func checkWorkloadAddr(a netip.Addr) string {
	switch {
	case a.Zone() != "":
		return "has a zone; a workload address cannot"
	case a.Is4In6():
		return "is an IPv4-mapped IPv6 address; write the IPv4 address"
	case a.IsUnspecified():
		return "is the unspecified address; a workload address must be a unicast address"
	case a.IsLoopback():
		return "is a loopback address, shared by every process of the node; give the workload's own address"
	case a.IsMulticast(), a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return "is a multicast or broadcast address; a workload address must be a unicast address"
	}
	return ""
}

// checkCgroup returns why s cannot be a workload's cgroup path, or "".
func checkCgroup(s string) string {
	switch {
	case s == "":
		return "is empty; give the workload's cgroup path"
	case strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		return "contains control characters"
	case s == "/" || s == ".":
		return "is the root cgroup, which holds every process of the node; give the workload's own cgroup"
	case slices.Contains(strings.Split(s, "/"), ".."):
		return "contains \"..\"; give the path from the cgroup2 mount down"
	case path.Clean(s) != s:
		return fmt.Sprintf("is not a clean path; write %q", path.Clean(s))
	}
	return ""
}

// checkSubdomain is yamlfile.CheckSubdomain that also limits each label to
// 63 characters, as DNS does.
func checkSubdomain(s string) string {
	for _, l := range strings.Split(s, ".") {
		if len(l) > 63 {
			return yamlfile.SubdomainReason
		}
	}
	return yamlfile.CheckSubdomain(s)
}

// checkLabelKey returns why s is not a Kubernetes label key ([prefix/]name),
// or "".
func checkLabelKey(s string) string {
	name := s
	if i := strings.LastIndexByte(s, '/'); i >= 0 {
		if checkSubdomain(s[:i]) != "" {
			return "is not a label key: its prefix before '/' must be a DNS-1123 subdomain"
		}
		name = s[i+1:]
	}
	if name == "" || !isLabelValue(name) {
		return "is not a label key: [prefix/]name, the name of letters, digits, '-', '_' and '.', starting and ending with a letter or digit, at most 63 characters"
	}
	return ""
}

// checkLabelValue returns why s is not a Kubernetes label value, or "".
func checkLabelValue(s string) string {
	if s != "" && !isLabelValue(s) {
		return "is not a label value: letters, digits, '-', '_' and '.', starting and ending with a letter or digit, at most 63 characters"
	}
	return ""
}

func isLabelValue(s string) bool {
	if s == "" || len(s) > 63 || !isAlnum(s[0]) || !isAlnum(s[len(s)-1]) {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !isAlnum(c) && c != '-' && c != '_' && c != '.' {
			return false
		}
	}
	return true
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}
