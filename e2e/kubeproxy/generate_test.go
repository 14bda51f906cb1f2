package kubeproxy_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/sluice-mesh/sluice/e2e/kubeproxy"
)

var podCIDR = netip.MustParsePrefix("10.244.0.0/16")

// addrAt returns base plus off.
func addrAt(base string, off int) netip.Addr {
	b := netip.MustParseAddr(base).As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v += uint32(off)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// fillers returns n TCP services with two endpoints each, VIPs from
// 10.100.0.1 and endpoints from 10.128.0.1, none of which exist.
func fillers(n int) []kubeproxy.Service {
	svcs := make([]kubeproxy.Service, n)
	for i := range svcs {
		svcs[i] = kubeproxy.Service{
			Namespace: "filler-" + strconv.Itoa(i/100),
			Name:      "svc-" + strconv.Itoa(i),
			VIP:       addrAt("10.100.0.1", i),
			Port:      80,
			Protocol:  "tcp",
			Endpoints: []netip.AddrPort{
				netip.AddrPortFrom(addrAt("10.128.0.1", 2*i), 8080),
				netip.AddrPortFrom(addrAt("10.128.0.1", 2*i+1), 8080),
			},
		}
	}
	return svcs
}

func endpoints(base string, n int, port uint16) []netip.AddrPort {
	var eps []netip.AddrPort
	for i := range n {
		eps = append(eps, netip.AddrPortFrom(addrAt(base, i), port))
	}
	return eps
}

// sample has services with 1, 3 and 5 endpoints, one without, and a TCP
// and a UDP service on the same VIP and port.
func sample() []kubeproxy.Service {
	vip := netip.MustParseAddr("10.96.0.10")
	return []kubeproxy.Service{
		{Namespace: "default", Name: "one", VIP: netip.MustParseAddr("10.96.0.1"), Port: 443, Protocol: "tcp", Endpoints: endpoints("10.244.1.1", 1, 6443)},
		{Namespace: "default", Name: "three", VIP: vip, Port: 80, Protocol: "tcp", Endpoints: endpoints("10.244.2.1", 3, 8080)},
		{Namespace: "default", Name: "three", VIP: vip, Port: 80, Protocol: "udp", Endpoints: endpoints("10.244.3.1", 3, 8080)},
		{Namespace: "kube-system", Name: "five", VIP: netip.MustParseAddr("10.96.0.53"), Port: 53, Protocol: "udp", Endpoints: endpoints("10.244.4.1", 5, 53)},
		{Namespace: "default", Name: "empty", VIP: netip.MustParseAddr("10.96.0.99"), Port: 8443, Protocol: "tcp"},
	}
}

// iptRule is one -A line of iptables-restore input.
type iptRule struct {
	chain string
	args  []string
}

// opt returns the value after flag, and whether it is there and negated
// ("! flag value").
func (r iptRule) opt(flag string) (value string, negated, ok bool) {
	for i, a := range r.args {
		if a == flag && i+1 < len(r.args) {
			return r.args[i+1], i > 0 && r.args[i-1] == "!", true
		}
	}
	return "", false, false
}

type iptTable struct {
	chains    map[string]bool
	rules     []iptRule
	committed bool
}

// parseIPTables reads iptables-restore input into its tables.
func parseIPTables(t *testing.T, text string) map[string]*iptTable {
	t.Helper()
	tables := map[string]*iptTable{}
	var cur *iptTable
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "*"):
			cur = &iptTable{chains: map[string]bool{}}
			tables[line[1:]] = cur
		case cur == nil:
			t.Fatalf("line outside a table: %q", line)
		case strings.HasPrefix(line, ":"):
			name, _, _ := strings.Cut(line[1:], " ")
			if cur.chains[name] {
				t.Errorf("chain %s declared twice", name)
			}
			cur.chains[name] = true
		case strings.HasPrefix(line, "-A "):
			words := splitQuoted(t, line)
			cur.rules = append(cur.rules, iptRule{chain: words[1], args: words[2:]})
		case line == "COMMIT":
			cur.committed = true
			cur = nil
		default:
			t.Fatalf("unexpected line %q", line)
		}
	}
	return tables
}

// splitQuoted splits line at spaces, keeping double-quoted words whole.
func splitQuoted(t *testing.T, line string) []string {
	var words []string
	for line = strings.TrimSpace(line); line != ""; line = strings.TrimSpace(line) {
		if line[0] == '"' {
			end := strings.IndexByte(line[1:], '"')
			if end < 0 {
				t.Fatalf("unterminated quote in %q", line)
			}
			words = append(words, line[1:end+1])
			line = line[end+2:]
			continue
		}
		word, rest, _ := strings.Cut(line, " ")
		words = append(words, word)
		line = rest
	}
	return words
}

func (tb *iptTable) chainRules(chain string) []iptRule {
	var rs []iptRule
	for _, r := range tb.rules {
		if r.chain == chain {
			rs = append(rs, r)
		}
	}
	return rs
}

func writeIPTables(t *testing.T, svcs []kubeproxy.Service) map[string]*iptTable {
	t.Helper()
	var buf bytes.Buffer
	if err := kubeproxy.WriteIPTables(&buf, svcs, podCIDR); err != nil {
		t.Fatal(err)
	}
	return parseIPTables(t, buf.String())
}

// Each service gets its own chain, reached from KUBE-SERVICES only for its
// VIP, protocol and port, which picks every endpoint with the same chance.
func TestIPTablesServiceChains(t *testing.T) {
	svcs := sample()
	tables := writeIPTables(t, svcs)
	nat, filter := tables["nat"], tables["filter"]
	if nat == nil || filter == nil || !nat.committed || !filter.committed {
		t.Fatalf("want committed nat and filter tables, got %v", tables)
	}
	for _, hook := range []string{"PREROUTING", "OUTPUT"} {
		if !jumpsTo(nat.chainRules(hook), "KUBE-SERVICES") {
			t.Errorf("nat %s does not jump to KUBE-SERVICES", hook)
		}
	}
	if !jumpsTo(nat.chainRules("POSTROUTING"), "KUBE-POSTROUTING") || !jumpsTo(nat.chainRules("KUBE-POSTROUTING"), "MASQUERADE") {
		t.Error("nat POSTROUTING does not reach a MASQUERADE through KUBE-POSTROUTING")
	}
	for _, tb := range tables {
		for _, r := range tb.rules {
			if !tb.chains[r.chain] {
				t.Errorf("rule in undeclared chain %s", r.chain)
			}
			if target, _, _ := r.opt("-j"); strings.HasPrefix(target, "KUBE-") && !tb.chains[target] {
				t.Errorf("rule in %s jumps to undeclared chain %s", r.chain, target)
			}
		}
	}

	svcChains := map[string]bool{}
	for _, s := range svcs {
		var entries []iptRule
		for _, r := range nat.chainRules("KUBE-SERVICES") {
			if d, _, _ := r.opt("-d"); d == s.VIP.String()+"/32" {
				entries = append(entries, r)
			}
		}
		var mine []iptRule
		for _, r := range entries {
			p, _, _ := r.opt("-p")
			dport, _, _ := r.opt("--dport")
			if p == s.Protocol && dport == strconv.Itoa(int(s.Port)) {
				mine = append(mine, r)
			}
		}
		if len(s.Endpoints) == 0 {
			if len(mine) != 0 {
				t.Errorf("%s has no endpoints but nat KUBE-SERVICES has %v", s.String(), mine)
			}
			continue
		}
		if len(mine) != 1 {
			t.Errorf("%s: %d nat KUBE-SERVICES rules for its VIP, protocol and port, want 1: %v", s.String(), len(mine), entries)
			continue
		}
		svcChain, _, _ := mine[0].opt("-j")
		if !strings.HasPrefix(svcChain, "KUBE-SVC-") || len(svcChain) > 28 || svcChains[svcChain] {
			t.Errorf("%s jumps to %q: want a KUBE-SVC- chain of its own, at most 28 characters", s.String(), svcChain)
			continue
		}
		svcChains[svcChain] = true
		checkSVCChain(t, nat, s, svcChain)
	}
	// The TCP and UDP services on one VIP and port, and every other one,
	// each have their own chain; nothing else jumps to them.
	if want := 4; len(svcChains) != want {
		t.Errorf("%d service chains, want %d", len(svcChains), want)
	}
	for _, r := range nat.rules {
		if target, _, _ := r.opt("-j"); strings.HasPrefix(target, "KUBE-SVC-") && r.chain != "KUBE-SERVICES" {
			t.Errorf("%s jumps to %s; only KUBE-SERVICES should", r.chain, target)
		}
	}

	empty := svcs[4]
	var rejects int
	for _, r := range filter.chainRules("KUBE-SERVICES") {
		d, _, _ := r.opt("-d")
		dport, _, _ := r.opt("--dport")
		if target, _, _ := r.opt("-j"); target == "REJECT" && d == empty.VIP.String()+"/32" && dport == strconv.Itoa(int(empty.Port)) {
			rejects++
		}
	}
	if rejects != 1 || len(filter.chainRules("KUBE-SERVICES")) != 1 {
		t.Errorf("filter KUBE-SERVICES: want exactly one REJECT, for %s: %v", empty.String(), filter.chainRules("KUBE-SERVICES"))
	}
	if !jumpsTo(filter.chainRules("OUTPUT"), "KUBE-SERVICES") || !jumpsTo(filter.chainRules("FORWARD"), "KUBE-FORWARD") {
		t.Error("filter OUTPUT must jump to KUBE-SERVICES and FORWARD to KUBE-FORWARD")
	}
	var accepts []string
	for _, r := range filter.chainRules("KUBE-FORWARD") {
		if target, _, _ := r.opt("-j"); target == "ACCEPT" {
			state, _, _ := r.opt("--ctstate")
			mark, _, _ := r.opt("--mark")
			accepts = append(accepts, state+mark)
		}
	}
	if !slices.Contains(accepts, "RELATED,ESTABLISHED") || !slices.Contains(accepts, "0x4000/0x4000") {
		t.Errorf("KUBE-FORWARD accepts %q, want established and marked packets", accepts)
	}
}

func jumpsTo(rules []iptRule, target string) bool {
	for _, r := range rules {
		if j, _, _ := r.opt("-j"); j == target {
			return true
		}
	}
	return false
}

// checkSVCChain checks a service chain: masquerade for clients outside the
// pod network, then endpoint i of n taken with probability 1/(n-i), each
// endpoint chain DNATing to a different endpoint.
func checkSVCChain(t *testing.T, nat *iptTable, s kubeproxy.Service, chain string) {
	t.Helper()
	rules := nat.chainRules(chain)
	n := len(s.Endpoints)
	if len(rules) != n+1 {
		t.Errorf("%s: %d rules in %s, want %d", s.String(), len(rules), chain, n+1)
		return
	}
	src, negated, _ := rules[0].opt("-s")
	if target, _, _ := rules[0].opt("-j"); target != "KUBE-MARK-MASQ" || src != podCIDR.String() || !negated {
		t.Errorf("%s: first rule %v, want ! -s %s -j KUBE-MARK-MASQ", s.String(), rules[0].args, podCIDR)
	}
	remaining := 1.0 // chance a packet gets this far
	var dnats []netip.AddrPort
	for i, r := range rules[1:] {
		prob := 1.0
		if p, _, ok := r.opt("--probability"); ok {
			var err error
			if prob, err = strconv.ParseFloat(p, 64); err != nil {
				t.Fatal(err)
			}
		}
		want := 1 / float64(n-i)
		if math.Abs(prob-want) > 1e-9 {
			t.Errorf("%s: endpoint %d of %d taken with probability %v, want %v", s.String(), i, n, prob, want)
		}
		if _, _, ok := r.opt("--probability"); ok == (i == n-1) {
			t.Errorf("%s: rule %d: %v; only the last jump is unconditional", s.String(), i, r.args)
		}
		if overall := remaining * prob; math.Abs(overall-1/float64(n)) > 1e-9 {
			t.Errorf("%s: endpoint %d chosen with overall probability %v, want 1/%d", s.String(), i, overall, n)
		}
		remaining *= 1 - prob
		sep, _, _ := r.opt("-j")
		sepRules := nat.chainRules(sep)
		if !strings.HasPrefix(sep, "KUBE-SEP-") || len(sep) > 28 || len(sepRules) != 2 {
			t.Errorf("%s: endpoint chain %q has %d rules, want a KUBE-SEP- chain with 2", s.String(), sep, len(sepRules))
			continue
		}
		to, _, _ := sepRules[1].opt("--to-destination")
		ep, err := netip.ParseAddrPort(to)
		if err != nil {
			t.Errorf("%s: %s DNATs to %q: %v", s.String(), sep, to, err)
			continue
		}
		dnats = append(dnats, ep)
		hairpin, _, _ := sepRules[0].opt("-s")
		if target, _, _ := sepRules[0].opt("-j"); target != "KUBE-MARK-MASQ" || hairpin != ep.Addr().String()+"/32" {
			t.Errorf("%s: %s does not mark traffic from its endpoint %s for masquerade: %v", s.String(), sep, ep, sepRules[0].args)
		}
		if p, _, _ := sepRules[1].opt("-p"); p != s.Protocol {
			t.Errorf("%s: %s DNATs protocol %q", s.String(), sep, p)
		}
	}
	slices.SortFunc(dnats, netip.AddrPort.Compare)
	want := slices.Clone(s.Endpoints)
	slices.SortFunc(want, netip.AddrPort.Compare)
	if !slices.Equal(dnats, want) {
		t.Errorf("%s: endpoint chains DNAT to %v, want each of %v once", s.String(), dnats, want)
	}
}

// nftScript is an `nft -f` script in WriteNFTables' flat form.
type nftScript struct {
	commands []string            // first lines of commands, in order
	chains   map[string]bool     // added chains
	rules    map[string][]string // chain → rule bodies
	elements map[string][]string // map → elements
}

func parseNFTables(t *testing.T, text string) *nftScript {
	t.Helper()
	s := &nftScript{chains: map[string]bool{}, rules: map[string][]string{}, elements: map[string][]string{}}
	const prefix = "ip kube-proxy "
	inMap := ""
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if inMap != "" {
			if line == "}" {
				inMap = ""
				continue
			}
			s.elements[inMap] = append(s.elements[inMap], strings.TrimSuffix(strings.TrimSpace(line), ","))
			continue
		}
		s.commands = append(s.commands, line)
		verb, rest, _ := strings.Cut(line, " ")
		kind, rest, _ := strings.Cut(rest, " ")
		if kind == "table" {
			continue
		}
		rest, ok := strings.CutPrefix(rest, prefix)
		if !ok {
			t.Fatalf("command outside table ip kube-proxy: %q", line)
		}
		name, body, _ := strings.Cut(rest, " ")
		switch verb + " " + kind {
		case "add chain":
			if s.chains[name] {
				t.Errorf("chain %s added twice", name)
			}
			s.chains[name] = true
		case "add rule":
			if !s.chains[name] {
				t.Errorf("rule added to chain %s before the chain", name)
			}
			s.rules[name] = append(s.rules[name], body)
		case "add element":
			if body != "{" {
				t.Fatalf("unexpected element command %q", line)
			}
			inMap = name
		case "add map":
		default:
			t.Fatalf("unexpected command %q", line)
		}
	}
	return s
}

// gotoTarget returns the chain of "... : goto CHAIN".
func gotoTarget(element string) (key, chain string) {
	key, chain, _ = strings.Cut(element, " : goto ")
	return key, chain
}

// The VIP map has one element per service, leading to the service's chain,
// which picks one of its endpoint chains with numgen modulo their number
// (or goes to the only one).
func TestNFTablesServiceChains(t *testing.T) {
	svcs := sample()
	var buf bytes.Buffer
	if err := kubeproxy.WriteNFTables(&buf, svcs, podCIDR); err != nil {
		t.Fatal(err)
	}
	script := parseNFTables(t, buf.String())
	if len(script.commands) < 3 || !slices.Equal(script.commands[:3], []string{"add table ip kube-proxy", "delete table ip kube-proxy", "add table ip kube-proxy"}) {
		t.Errorf("script does not start by replacing the table: %q", script.commands[:min(3, len(script.commands))])
	}
	for _, hook := range []string{"nat-prerouting", "nat-output"} {
		if !slices.Contains(script.rules[hook], "jump services") {
			t.Errorf("%s does not jump to services: %q", hook, script.rules[hook])
		}
	}
	if got := script.rules["services"]; len(got) != 1 || !strings.HasSuffix(got[0], "vmap @service-ips") {
		t.Errorf("services chain %q, want one lookup in @service-ips", got)
	}

	elements := map[string]string{} // VIP . proto . port → chain
	for _, e := range script.elements["service-ips"] {
		key, chain := gotoTarget(e)
		if _, dup := elements[key]; dup {
			t.Errorf("service-ips has %s twice", key)
		}
		elements[key] = chain
	}
	withEndpoints := 0
	for _, s := range svcs {
		key := fmt.Sprintf("%s . %s . %d", s.VIP, s.Protocol, s.Port)
		chain, ok := elements[key]
		if len(s.Endpoints) == 0 {
			if ok {
				t.Errorf("%s has no endpoints but is in service-ips", s.String())
			}
			if !slices.Contains(script.elements["no-endpoint-services"], key+" : goto reject-chain") {
				t.Errorf("%s has no endpoints but no-endpoint-services lacks it: %q", s.String(), script.elements["no-endpoint-services"])
			}
			continue
		}
		withEndpoints++
		if !ok || !script.chains[chain] {
			t.Errorf("%s: service-ips element %q leads to chain %q, which does not exist", s.String(), key, chain)
			continue
		}
		checkNFTServiceChain(t, script, s, chain)
	}
	if len(script.elements["service-ips"]) != withEndpoints {
		t.Errorf("service-ips has %d elements, want one per service with endpoints (%d)", len(script.elements["service-ips"]), withEndpoints)
	}
	if len(script.elements["no-endpoint-services"]) != len(svcs)-withEndpoints {
		t.Errorf("no-endpoint-services has %q", script.elements["no-endpoint-services"])
	}
	for chain := range script.chains {
		if !nftIdentifier(chain) {
			t.Errorf("chain name %q is not a bare nft identifier", chain)
		}
	}
}

// nftIdentifier reports whether nft reads name as one unquoted identifier:
// a letter, then letters, digits and / \ _ . - (nft's scanner).
func nftIdentifier(name string) bool {
	if name == "" || len(name) > 255 {
		return false
	}
	for i, c := range []byte(name) {
		letter := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
		if !letter && (i == 0 || !(c >= '0' && c <= '9' || strings.IndexByte(`/\_.-`, c) >= 0)) {
			return false
		}
	}
	return true
}

func checkNFTServiceChain(t *testing.T, script *nftScript, s kubeproxy.Service, chain string) {
	t.Helper()
	rules := script.rules[chain]
	n := len(s.Endpoints)
	if len(rules) != 2 || rules[0] != "ip saddr != "+podCIDR.String()+" jump mark-for-masquerade" {
		t.Errorf("%s: chain %s has %q, want a masquerade mark for clients outside %s, then the endpoint choice", s.String(), chain, rules, podCIDR)
		return
	}
	var elems string
	if n == 1 {
		// One endpoint needs no choice.
		chain, ok := strings.CutPrefix(rules[1], "goto ")
		if !ok {
			t.Errorf("%s: one endpoint, but its chain ends with %q, want a goto", s.String(), rules[1])
			return
		}
		elems = "0 : goto " + chain
	} else {
		var mod int
		if _, err := fmt.Sscanf(rules[1], "numgen random mod %d vmap {", &mod); err != nil {
			t.Errorf("%s: %q is not a numgen choice: %v", s.String(), rules[1], err)
			return
		}
		if mod != n {
			t.Errorf("%s: numgen modulo %d, want its %d endpoints", s.String(), mod, n)
		}
		_, elems, _ = strings.Cut(rules[1], "{ ")
		elems = strings.TrimSuffix(elems, " }")
	}
	indices := map[int]string{}
	targets := map[string]bool{}
	var dnats []netip.AddrPort
	for _, e := range strings.Split(elems, ", ") {
		key, ep := gotoTarget(e)
		i, err := strconv.Atoi(key)
		if err != nil || i < 0 || i >= n {
			t.Errorf("%s: numgen index %q outside 0..%d", s.String(), key, n-1)
			continue
		}
		if _, dup := indices[i]; dup || targets[ep] {
			t.Errorf("%s: index %d or chain %s appears twice", s.String(), i, ep)
		}
		indices[i], targets[ep] = ep, true
		epRules := script.rules[ep]
		if !script.chains[ep] || len(epRules) != 2 {
			t.Errorf("%s: endpoint chain %s has %q, want a chain with 2 rules", s.String(), ep, epRules)
			continue
		}
		to, ok := strings.CutPrefix(epRules[1], "meta l4proto "+s.Protocol+" dnat to ")
		addr, err := netip.ParseAddrPort(to)
		if !ok || err != nil {
			t.Errorf("%s: endpoint chain %s ends with %q, want a DNAT to an endpoint", s.String(), ep, epRules[1])
			continue
		}
		dnats = append(dnats, addr)
		if want := "ip saddr " + addr.Addr().String() + " jump mark-for-masquerade"; epRules[0] != want {
			t.Errorf("%s: endpoint chain %s starts with %q, want %q (hairpin)", s.String(), ep, epRules[0], want)
		}
	}
	if len(indices) != n {
		t.Errorf("%s: numgen maps %d indices, want %d", s.String(), len(indices), n)
	}
	slices.SortFunc(dnats, netip.AddrPort.Compare)
	want := slices.Clone(s.Endpoints)
	slices.SortFunc(want, netip.AddrPort.Compare)
	if !slices.Equal(dnats, want) {
		t.Errorf("%s: endpoint chains DNAT to %v, want each of %v once", s.String(), dnats, want)
	}
}

// Bad input is refused with the service named, before a byte is written.
func TestInvalidServicesRejected(t *testing.T) {
	ok := kubeproxy.Service{Namespace: "default", Name: "good", VIP: netip.MustParseAddr("10.96.0.1"), Port: 80, Protocol: "tcp", Endpoints: endpoints("10.244.0.10", 2, 8080)}
	bad := func(change func(*kubeproxy.Service)) kubeproxy.Service {
		s := ok
		s.Name = "bad-one"
		s.VIP = netip.MustParseAddr("10.96.0.2")
		s.Endpoints = slices.Clone(ok.Endpoints)
		change(&s)
		return s
	}
	cases := map[string]kubeproxy.Service{
		"IPv6 VIP":          bad(func(s *kubeproxy.Service) { s.VIP = netip.MustParseAddr("fd00::1") }),
		"IPv4-mapped VIP":   bad(func(s *kubeproxy.Service) { s.VIP = netip.MustParseAddr("::ffff:10.96.0.2") }),
		"no VIP":            bad(func(s *kubeproxy.Service) { s.VIP = netip.Addr{} }),
		"unspecified VIP":   bad(func(s *kubeproxy.Service) { s.VIP = netip.IPv4Unspecified() }),
		"port 0":            bad(func(s *kubeproxy.Service) { s.Port = 0 }),
		"protocol sctp":     bad(func(s *kubeproxy.Service) { s.Protocol = "sctp" }),
		"protocol TCP":      bad(func(s *kubeproxy.Service) { s.Protocol = "TCP" }),
		"empty name":        bad(func(s *kubeproxy.Service) { s.Name = "" }),
		"empty namespace":   bad(func(s *kubeproxy.Service) { s.Namespace = "" }),
		"name with space":   bad(func(s *kubeproxy.Service) { s.Name = "bad one" }),
		"name with quote":   bad(func(s *kubeproxy.Service) { s.Name = `bad"one` }),
		"uppercase name":    bad(func(s *kubeproxy.Service) { s.Name = "Bad-One" }),
		"long name":         bad(func(s *kubeproxy.Service) { s.Name = "bad-one" + strings.Repeat("x", 60) }),
		"same VIP and port": bad(func(s *kubeproxy.Service) { s.VIP = ok.VIP }),
		"same name and port": bad(func(s *kubeproxy.Service) {
			s.Name = ok.Name
			s.Namespace = ok.Namespace
		}),
		"IPv6 endpoint":      bad(func(s *kubeproxy.Service) { s.Endpoints[1] = netip.MustParseAddrPort("[fd00::2]:8080") }),
		"endpoint port 0":    bad(func(s *kubeproxy.Service) { s.Endpoints[1] = netip.AddrPortFrom(s.Endpoints[1].Addr(), 0) }),
		"endpoint twice":     bad(func(s *kubeproxy.Service) { s.Endpoints[1] = s.Endpoints[0] }),
		"no endpoint addr":   bad(func(s *kubeproxy.Service) { s.Endpoints[0] = netip.AddrPort{} }),
		"unspecified target": bad(func(s *kubeproxy.Service) { s.Endpoints[0] = netip.AddrPortFrom(netip.IPv4Unspecified(), 80) }),
		"endpoint twice of many": bad(func(s *kubeproxy.Service) {
			s.Endpoints = endpoints("10.244.0.10", 40, 8080)
			s.Endpoints[39] = s.Endpoints[3]
		}),
	}
	writers := map[string]func(io.Writer, []kubeproxy.Service, netip.Prefix) error{
		"iptables": kubeproxy.WriteIPTables,
		"nftables": kubeproxy.WriteNFTables,
	}
	for name, s := range cases {
		for mode, write := range writers {
			var buf bytes.Buffer
			err := write(&buf, []kubeproxy.Service{ok, s}, podCIDR)
			if !errors.Is(err, kubeproxy.ErrInvalid) {
				t.Errorf("%s, %s: got %v, want an error wrapping ErrInvalid", name, mode, err)
				continue
			}
			// The second service is at fault; its name is there unless
			// the name is what is wrong.
			named := strings.Contains(err.Error(), s.Name) || strings.Contains(err.Error(), strconv.Quote(s.Name))
			if !strings.Contains(err.Error(), "#1") || !named {
				t.Errorf("%s, %s: %q does not name service #1 %q", name, mode, err, s.Name)
			}
			if buf.Len() != 0 {
				t.Errorf("%s, %s: %d bytes written before the error", name, mode, buf.Len())
			}
		}
	}
	for _, p := range []string{"fd00::/64", "10.244.0.1/16"} {
		for mode, write := range writers {
			var buf bytes.Buffer
			if err := write(&buf, []kubeproxy.Service{ok}, netip.MustParsePrefix(p)); !errors.Is(err, kubeproxy.ErrInvalid) || !strings.Contains(err.Error(), p) || buf.Len() != 0 {
				t.Errorf("pod CIDR %s, %s: got %v and %d bytes, want an error naming it and nothing written", p, mode, err, buf.Len())
			}
		}
	}
	// The same VIP and port with another protocol is another service;
	// many distinct endpoints are fine.
	other := ok
	other.Protocol = "udp"
	other.Endpoints = endpoints("10.244.0.10", 40, 8080)
	for mode, write := range writers {
		if err := write(io.Discard, []kubeproxy.Service{ok, other}, podCIDR); err != nil {
			t.Errorf("%s: TCP and UDP on one VIP and port: %v", mode, err)
		}
	}
}

// Generation time and size for large service counts (run with -bench).
func BenchmarkWrite(b *testing.B) {
	writers := []struct {
		mode  kubeproxy.Mode
		write func(io.Writer, []kubeproxy.Service, netip.Prefix) error
	}{{kubeproxy.IPTables, kubeproxy.WriteIPTables}, {kubeproxy.NFTables, kubeproxy.WriteNFTables}}
	for _, n := range []int{1_000, 10_000, 100_000} {
		svcs := fillers(n)
		for _, w := range writers {
			b.Run(fmt.Sprintf("%s/%d", w.mode, n), func(b *testing.B) {
				b.ReportAllocs()
				var c countingWriter
				for b.Loop() {
					c = 0
					if err := w.write(&c, svcs, podCIDR); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(c)/1e6, "MB")
			})
		}
	}
}

type countingWriter int

func (c *countingWriter) Write(p []byte) (int, error) {
	*c += countingWriter(len(p))
	return len(p), nil
}
