package identity

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"path"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
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
}

// DefaultTrustDomain is the trust domain of a workloads file that names
// none, as in Kubernetes clusters.
const DefaultTrustDomain = "cluster.local"

// ErrInvalidWorkloads is the class of every error ParseWorkloads returns:
// the file is not a valid workloads file. Test for it with errors.Is.
var ErrInvalidWorkloads = errors.New("invalid workloads file")

// FileError is a problem found in a workloads file. It names the place in
// the file so that the file's author can find it.
type FileError struct {
	File   string // the file name given to ParseWorkloads
	Line   int    // 1-based; 0 when the problem is not at one line
	Field  string // path of the field, e.g. "workloads[0].ips[1]"; empty for the whole file
	Reason string
}

// Error formats e as "file:line: field: reason", leaving out what is unknown.
func (e *FileError) Error() string {
	s := e.File
	if e.Line > 0 {
		s += ":" + strconv.Itoa(e.Line)
	}
	if e.Field != "" {
		s += ": " + e.Field
	}
	return s + ": " + e.Reason
}

// Unwrap makes errors.Is(err, ErrInvalidWorkloads) true.
func (e *FileError) Unwrap() error { return ErrInvalidWorkloads }

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
		file:    file,
		names:   map[string]string{},
		cgroups: map[string]string{},
		addrs:   map[netip.Addr]string{},
	}
	root, err := p.decode(data)
	if err != nil {
		return nil, err
	}
	return p.root(root)
}

// workloadsParser walks a decoded workloads file. The maps hold what is
// needed to refuse a workload that clashes with one before it; their
// values name that earlier workload ("workloads[0] (shop/frontend)").
type workloadsParser struct {
	file        string
	trustDomain string
	names       map[string]string     // "namespace/name"
	cgroups     map[string]string     // cgroup path
	addrs       map[netip.Addr]string // IP address
}

var yamlLine = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// decode parses data as one YAML document and returns its root node, nil
// for an empty document. Empty documents around it are ignored.
func (p *workloadsParser) decode(data []byte) (root *yaml.Node, err error) {
	// yaml.v3 reports syntax errors by panicking internally and
	// recovering; should one of its bugs let a panic escape on hostile
	// input, it is a syntax error rather than a crashed agent.
	defer func() {
		if r := recover(); r != nil {
			root, err = nil, &FileError{File: p.file, Reason: fmt.Sprintf("invalid YAML: %v", r)}
		}
	}()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var doc yaml.Node
		if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
			return root, nil
		} else if err != nil {
			msg := err.Error()
			if m := yamlLine.FindStringSubmatch(msg); m != nil {
				line, _ := strconv.Atoi(m[1])
				return nil, &FileError{File: p.file, Line: line, Reason: "invalid YAML: " + m[2]}
			}
			return nil, &FileError{File: p.file, Reason: "invalid YAML: " + strings.TrimPrefix(msg, "yaml: ")}
		}
		if len(doc.Content) == 0 || isNull(resolve(doc.Content[0])) {
			continue
		}
		if root != nil {
			return nil, &FileError{File: p.file, Line: doc.Line, Reason: "a second YAML document; a workloads file holds one"}
		}
		root = doc.Content[0]
	}
}

func (p *workloadsParser) errorf(n *yaml.Node, field, format string, args ...any) error {
	return &FileError{File: p.file, Line: n.Line, Field: field, Reason: fmt.Sprintf(format, args...)}
}

func (p *workloadsParser) root(root *yaml.Node) ([]Workload, error) {
	p.trustDomain = DefaultTrustDomain
	root = resolve(root)
	if root == nil {
		return nil, nil
	}
	f, err := p.fields(root, "", "trustDomain", "workloads")
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
		p.trustDomain = td
	}
	n := f.get("workloads")
	if n == nil {
		return nil, nil
	}
	items, err := p.seq(n, "workloads")
	if err != nil {
		return nil, err
	}
	var out []Workload
	for i, item := range items {
		w, err := p.workload(item, fmt.Sprintf("workloads[%d]", i))
		if err != nil {
			return nil, err
		}
		out = append(out, w)
	}
	return out, nil
}

func (p *workloadsParser) workload(n *yaml.Node, at string) (Workload, error) {
	var w Workload
	f, err := p.fields(n, at, "name", "namespace", "serviceAccount", "spiffeId", "cgroup", "ips", "labels")
	if err != nil {
		return w, err
	}
	if w.Name, err = p.name(f, "name", checkSubdomain); err != nil {
		return w, err
	}
	if w.Namespace, err = p.name(f, "namespace", checkLabel); err != nil {
		return w, err
	}
	if w.ServiceAccount, err = p.name(f, "serviceAccount", checkSubdomain); err != nil {
		return w, err
	}
	key := w.Namespace + "/" + w.Name
	self := fmt.Sprintf("%s (%s)", at, key)
	if first, ok := p.names[key]; ok {
		return w, p.errorf(f.get("name"), f.path("name"), "workload %s is already %s", key, first)
	}
	p.names[key] = self

	if err := p.spiffeID(f, &w); err != nil {
		return w, err
	}

	cn := f.get("cgroup")
	if cn == nil {
		return w, f.missing("cgroup")
	}
	if w.Cgroup, err = p.str(cn, f.path("cgroup")); err != nil {
		return w, err
	}
	if reason := checkCgroup(w.Cgroup); reason != "" {
		return w, p.errorf(cn, f.path("cgroup"), "%q %s", w.Cgroup, reason)
	}
	if first, ok := p.cgroups[w.Cgroup]; ok {
		return w, p.errorf(cn, f.path("cgroup"), "%s is already the cgroup of %s", w.Cgroup, first)
	}
	p.cgroups[w.Cgroup] = self

	if n := f.get("ips"); n != nil {
		if w.Addrs, err = p.ips(n, f.path("ips"), self); err != nil {
			return w, err
		}
	}
	if n := f.get("labels"); n != nil {
		if w.Labels, err = p.labels(n, f.path("labels")); err != nil {
			return w, err
		}
	}
	return w, nil
}

// spiffeID sets w.SPIFFEID from the spiffeId field, which must agree with
// the workload's namespace and service account, or derives it from them.
// A given ID may name another trust domain than the file's.
func (p *workloadsParser) spiffeID(f fields, w *Workload) error {
	n := f.get("spiffeId")
	if n == nil {
		// The trust domain and names are checked to be valid in a SPIFFE ID.
		w.SPIFFEID = WorkloadID{TrustDomain: p.trustDomain, Namespace: w.Namespace, ServiceAccount: w.ServiceAccount}.String()
		return nil
	}
	s, err := p.str(n, f.path("spiffeId"))
	if err != nil {
		return err
	}
	id, err := ParseWorkloadID(s)
	if err != nil {
		return p.errorf(n, f.path("spiffeId"), "%s", strings.TrimPrefix(err.Error(), "identity: "))
	}
	if id.Namespace != w.Namespace || id.ServiceAccount != w.ServiceAccount {
		return p.errorf(n, f.path("spiffeId"), "%s names namespace %q and service account %q, but the workload has namespace %q and service account %q",
			s, id.Namespace, id.ServiceAccount, w.Namespace, w.ServiceAccount)
	}
	w.SPIFFEID = s
	return nil
}

func (p *workloadsParser) ips(n *yaml.Node, at, self string) ([]netip.Addr, error) {
	items, err := p.seq(n, at)
	if err != nil {
		return nil, err
	}
	var addrs []netip.Addr
	for i, item := range items {
		field := fmt.Sprintf("%s[%d]", at, i)
		s, err := p.str(item, field)
		if err != nil {
			return nil, err
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, p.errorf(item, field, "%q is not an IP address", s)
		}
		if reason := checkWorkloadAddr(a); reason != "" {
			return nil, p.errorf(item, field, "%s %s", a, reason)
		}
		for j, b := range addrs {
			if a.Is4() == b.Is4() {
				return nil, p.errorf(item, field, "%s is a second %s address after %s[%d]; a workload has at most one per address family",
					a, family(a), at, j)
			}
		}
		if first, ok := p.addrs[a]; ok {
			return nil, p.errorf(item, field, "%s is already an address of %s", a, first)
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
		return nil, p.errorf(n, at, "must be a mapping, not %s", describe(n))
	}
	out := map[string]string{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := resolve(n.Content[i]), resolve(n.Content[i+1])
		if k.Kind != yaml.ScalarNode || k.Tag == "!!merge" {
			return nil, p.errorf(k, at, "keys must be label names, not %s", describe(k))
		}
		field := at + "." + k.Value
		if reason := checkLabelKey(k.Value); reason != "" {
			return nil, p.errorf(k, field, "%q %s", k.Value, reason)
		}
		if _, dup := out[k.Value]; dup {
			return nil, p.errorf(k, field, "label given twice")
		}
		var val string
		switch {
		case v.Kind != yaml.ScalarNode:
			return nil, p.errorf(v, field, "must be a string, not %s", describe(v))
		case !isNull(v):
			val = v.Value
		}
		if reason := checkLabelValue(val); reason != "" {
			return nil, p.errorf(v, field, "%q %s", val, reason)
		}
		out[k.Value] = val
	}
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}

// fields is a YAML mapping whose keys have been checked against the fields
// its place in the file allows.
type fields struct {
	p    *workloadsParser
	node *yaml.Node
	at   string // field path of the mapping
	vals map[string]*yaml.Node
}

// fields checks that n is a mapping holding only known keys, each once, and
// returns its values. A null value counts as absent, as in Kubernetes.
func (p *workloadsParser) fields(n *yaml.Node, at string, known ...string) (fields, error) {
	f := fields{p: p, node: n, at: at, vals: map[string]*yaml.Node{}}
	if n.Kind != yaml.MappingNode {
		return f, p.errorf(n, at, "must be a mapping, not %s", describe(n))
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := resolve(n.Content[i]), resolve(n.Content[i+1])
		if k.Kind != yaml.ScalarNode {
			return f, p.errorf(k, at, "keys must be field names, not %s", describe(k))
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
		if isNull(v) {
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

// name returns a required name field that check accepts.
func (p *workloadsParser) name(f fields, key string, check func(string) string) (string, error) {
	n := f.get(key)
	if n == nil {
		return "", f.missing(key)
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

func (p *workloadsParser) seq(n *yaml.Node, at string) ([]*yaml.Node, error) {
	if n.Kind != yaml.SequenceNode {
		return nil, p.errorf(n, at, "must be a list, not %s", describe(n))
	}
	items := make([]*yaml.Node, len(n.Content))
	for i, c := range n.Content {
		items[i] = resolve(c)
		if isNull(items[i]) {
			return nil, p.errorf(items[i], fmt.Sprintf("%s[%d]", at, i), "empty list item")
		}
	}
	return items, nil
}

func (p *workloadsParser) str(n *yaml.Node, at string) (string, error) {
	if n.Kind != yaml.ScalarNode {
		return "", p.errorf(n, at, "must be a string, not %s", describe(n))
	}
	return n.Value, nil
}

// resolve follows an alias to the node it names. Errors inside an aliased
// node report the line of the anchor.
func resolve(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	return n
}

// isNull reports whether n is absent or a YAML null.
func isNull(n *yaml.Node) bool {
	return n == nil || n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
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
	case contains(strings.Split(s, "/"), ".."):
		return "contains \"..\"; give the path from the cgroup2 mount down"
	case path.Clean(s) != s:
		return fmt.Sprintf("is not a clean path; write %q", path.Clean(s))
	}
	return ""
}

// checkLabel returns why s is not a DNS-1123 label (Kubernetes namespaces),
// or "".
func checkLabel(s string) string {
	if len(s) > 63 || !isLabel(s) {
		return "is not a DNS-1123 label: lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters"
	}
	return ""
}

// checkSubdomain returns why s is not a DNS-1123 subdomain (Kubernetes pod
// and service account names), or "".
func checkSubdomain(s string) string {
	const reason = "is not a DNS-1123 subdomain: labels of lowercase letters, digits and '-' separated by '.', at most 253 characters"
	if len(s) > 253 {
		return reason
	}
	for _, l := range strings.Split(s, ".") {
		if len(l) > 63 || !isLabel(l) {
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
