package policy

import (
	"cmp"
	"fmt"
	"math/bits"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/sluice-mesh/sluice/dataplane/model"
)

// Limits that keep hostile input from exhausting the stack or the CPU: a
// slice of principals can contain itself, which makes an infinitely deep (or
// exponentially wide) tree.
const (
	maxDepth = 64      // nesting of principals or permissions
	maxNodes = 1 << 16 // principals and permissions of one rule, counted as a tree
)

// Compile turns the policies of services into tables against names, the
// known identities (numeric identity → SPIFFE ID; 0 must not be a key). It
// reads services and names and keeps no reference to them. Services that
// are not TCP, or have no policy, are ignored; with none left, the tables
// are empty.
//
// Its cost is sets × classes × identity groups × rules, where identities
// that all of a set's SPIFFE ID matchers treat alike form one group, plus
// one pass over the identities per (set, class) whose groups do not all
// share identity 0's verdict.
func Compile(services []model.Service, names map[uint32]string) (*Tables, error) {
	if _, ok := names[0]; ok {
		return nil, &model.EntryError{
			Entry:  "identity 0",
			Reason: "0 is the unknown identity and cannot name a SPIFFE ID",
			Class:  ErrInvalid,
		}
	}
	c := newCompiler(names)

	var svcs []*service
	byName := make(map[string]int)
	for i := range services {
		svc := &services[i]
		if svc.Protocol != model.TCP || len(svc.Policies) == 0 {
			continue
		}
		if svc.Name == "" {
			return nil, &model.EntryError{Entry: model.Label(i, svc), Reason: "a service with policies needs a name, which its rules are counted under", Class: ErrInvalid}
		}
		if j, dup := byName[svc.Name]; dup {
			return nil, &model.EntryError{
				Entry:  model.Label(i, svc),
				Reason: "name already used by " + model.Label(j, &services[j]) + "; services with policies need distinct names, which their rules are counted under",
				Class:  ErrInvalid,
			}
		}
		byName[svc.Name] = i
		s, err := c.service(i, svc)
		if err != nil {
			return nil, err
		}
		svcs = append(svcs, s)
	}
	t := &Tables{}
	if len(svcs) == 0 {
		return t, nil
	}

	slices.SortFunc(svcs, func(a, b *service) int { return strings.Compare(a.svc.Name, b.svc.Name) })
	for _, s := range svcs {
		s.rebase(uint32(len(t.Rules)))
		t.Rules = append(t.Rules, s.rules...)
	}

	sets, err := dests(t, svcs)
	if err != nil {
		return nil, err
	}
	t.Sets = len(sets)
	for i, members := range sets {
		c.evaluate(t, uint32(i+1), members, svcs)
	}
	return t, nil
}

// compiler holds what Compile shares between services and sets: the
// identities, and the SPIFFE ID matchers and CIDRs of all policies, each
// numbered once.
type compiler struct {
	ids   []uint32 // index 0: the unknown identity; then the known ones, ascending
	names []string // SPIFFE ID of ids[i]
	lower []string // names in lower case, made when a matcher first ignores case

	exact      map[string][]int32 // name → indexes in ids, made for the first exact matcher
	exactLower map[string][]int32 // the same, in lower case

	matchers map[matcherKey]int32
	idBits   [][]uint64 // per matcher: bit i is set if it matches names[i]

	cidrIDs map[netip.Prefix]int32
	cidrs   []netip.Prefix

	nodes int // of the rule being compiled, against maxNodes

	scratch scratch
}

// scratch is memory that evaluating one set needs and the next reuses.
type scratch struct {
	enforced, dryRun []ruleSet
	matchers, cidrs  []int32
	group, moved     []int32 // partition: by identity, by group
	touched          []int32
	reps, sizes      []int32
	outcomes         []outcome
	differs          []bool
	inCIDR           []bool
}

// matcherKey is a model.StringMatch in canonical form: Value is lowered
// when case is ignored, so equal matchers share their results.
type matcherKey struct {
	kind       model.MatchKind
	value      string
	ignoreCase bool
}

func newCompiler(names map[uint32]string) *compiler {
	c := &compiler{
		ids:      make([]uint32, 1, len(names)+1),
		matchers: make(map[matcherKey]int32),
		cidrIDs:  make(map[netip.Prefix]int32),
	}
	for id := range names {
		c.ids = append(c.ids, id)
	}
	slices.Sort(c.ids[1:])
	c.names = make([]string, len(c.ids))
	for i, id := range c.ids[1:] {
		c.names[i+1] = names[id]
	}
	return c
}

// matcher returns the number of m, which must not be MatchNone, and
// computes which identities it matches the first time it sees it.
func (c *compiler) matcher(m model.StringMatch) int32 {
	k := matcherKey{kind: m.Kind, value: m.Value, ignoreCase: m.IgnoreCase}
	if k.ignoreCase {
		k.value = strings.ToLower(k.value)
	}
	if n, ok := c.matchers[k]; ok {
		return n
	}
	set := make([]uint64, (len(c.ids)+63)/64)
	names := c.names
	if k.ignoreCase {
		if c.lower == nil {
			c.lower = make([]string, len(c.names))
			for i, s := range c.names {
				c.lower[i] = strings.ToLower(s)
			}
		}
		names = c.lower
	}
	if k.kind == model.MatchExact {
		for _, i := range c.exactIndex(k.ignoreCase)[k.value] {
			set[i/64] |= 1 << (i % 64)
		}
	} else {
		var match func(s, v string) bool
		switch k.kind {
		case model.MatchPrefix:
			match = strings.HasPrefix
		case model.MatchSuffix:
			match = strings.HasSuffix
		default:
			match = strings.Contains
		}
		for i := 1; i < len(names); i++ {
			if match(names[i], k.value) {
				set[i/64] |= 1 << (i % 64)
			}
		}
	}
	n := int32(len(c.idBits))
	c.idBits = append(c.idBits, set)
	c.matchers[k] = n
	return n
}

func (c *compiler) exactIndex(lower bool) map[string][]int32 {
	m, names := &c.exact, c.names
	if lower {
		m, names = &c.exactLower, c.lower
	}
	if *m == nil {
		*m = make(map[string][]int32, len(names))
		for i := 1; i < len(names); i++ {
			(*m)[names[i]] = append((*m)[names[i]], int32(i))
		}
	}
	return *m
}

func (c *compiler) cidr(p netip.Prefix) int32 {
	if n, ok := c.cidrIDs[p]; ok {
		return n
	}
	n := int32(len(c.cidrs))
	c.cidrs = append(c.cidrs, p)
	c.cidrIDs[p] = n
	return n
}

// service is a compiled service: its rule sets, enforced and dry-run, in
// evaluation order, holding only the rules whose permissions match the
// service (the others can never match).
type service struct {
	svc      *model.Service
	rules    []Rule // its part of Tables.Rules
	enforced []ruleSet
	dryRun   []ruleSet
	matchers []int32 // SPIFFE ID matchers of its principals, each once
	cidrs    []int32 // source CIDRs of its principals, each once
}

type ruleSet struct {
	deny       bool // the action is DENY
	continuous bool // of a Continuous policy
	rules      []rule
	fallback   uint32 // the Default pseudo-rule's reference
}

// rule is a rule that matches the service's destination: it matches a
// connection when one of its principals does.
type rule struct {
	ref        uint32 // index into Tables.Rules plus one
	principals []node
}

// node is a compiled principal.
type node struct {
	op   op
	arg  int32 // opName: matcher; opCIDR: CIDR number
	kids []node
}

type op uint8

const (
	opAny  op = iota
	opMesh    // any identity but 0
	opName    // an identity that matcher arg matches
	opCIDR    // a source whose class lies in CIDR arg
	opAnd
	opOr
	opNot
)

// rebase makes s's rule references point into Tables.Rules, where its
// rules start at base.
func (s *service) rebase(base uint32) {
	for _, sets := range [][]ruleSet{s.enforced, s.dryRun} {
		for i := range sets {
			sets[i].fallback += base
			for j := range sets[i].rules {
				sets[i].rules[j].ref += base
			}
		}
	}
}

// fault is a malformed principal or permission at path within its rule.
type fault struct {
	path   string // e.g. "principals[0].ids[2]"
	reason string
	limit  bool // a limit was exceeded: path stays at the top, a full one would be as long as the nesting
}

// service compiles the policies of svc, the i-th service of the input.
func (c *compiler) service(i int, svc *model.Service) (*service, error) {
	s := &service{svc: svc}
	seenMatcher := make(map[int32]bool)
	seenCIDR := make(map[int32]bool)
	policyNames := make(map[string]int, len(svc.Policies))
	for k := range svc.Policies {
		pol := &svc.Policies[k]
		entry := func() string { return model.Label(i, svc) + " " + label("policy", k, pol.Name) }
		if pol.Name == "" {
			return nil, &model.EntryError{Entry: entry(), Reason: "policy has no name; name it, its rules are counted under it", Class: ErrInvalid}
		}
		if j, dup := policyNames[pol.Name]; dup {
			return nil, &model.EntryError{Entry: entry(), Reason: fmt.Sprintf("name already used by policy %d; rename one, their rules are counted under it", j), Class: ErrInvalid}
		}
		policyNames[pol.Name] = k
		for _, part := range []struct {
			rs      *model.RuleSet
			dryRun  bool
			monitor bool
			what    string
		}{
			{pol.Rules, pol.Monitor, pol.Monitor, "rules"},
			{pol.Shadow, true, false, "shadow rules"},
		} {
			if part.rs == nil {
				continue
			}
			where := func() string { return entry() + " " + part.what }
			rs, err := c.ruleSet(s, part.rs, Rule{Service: svc.Name, Policy: pol.Name, Shadow: part.dryRun, Monitor: part.monitor}, where)
			if err != nil {
				return nil, err
			}
			rs.continuous = pol.Continuous
			if part.dryRun {
				s.dryRun = append(s.dryRun, rs)
			} else {
				s.enforced = append(s.enforced, rs)
			}
		}
	}
	for _, sets := range [][]ruleSet{s.enforced, s.dryRun} {
		for _, rs := range sets {
			for _, r := range rs.rules {
				for k := range r.principals {
					collect(&r.principals[k], seenMatcher, seenCIDR, s)
				}
			}
		}
	}
	return s, nil
}

// collect adds the matchers and CIDRs of n that s does not have yet.
func collect(n *node, seenMatcher, seenCIDR map[int32]bool, s *service) {
	switch n.op {
	case opName:
		if !seenMatcher[n.arg] {
			seenMatcher[n.arg] = true
			s.matchers = append(s.matchers, n.arg)
		}
	case opCIDR:
		if !seenCIDR[n.arg] {
			seenCIDR[n.arg] = true
			s.cidrs = append(s.cidrs, n.arg)
		}
	}
	for k := range n.kids {
		collect(&n.kids[k], seenMatcher, seenCIDR, s)
	}
}

func label(what string, i int, name string) string {
	if name == "" {
		return fmt.Sprintf("%s #%d", what, i)
	}
	return fmt.Sprintf("%s %q", what, name)
}

// ruleSet compiles rs; proto is what its rules' entries in Tables.Rules
// have in common.
func (c *compiler) ruleSet(s *service, rs *model.RuleSet, proto Rule, where func() string) (ruleSet, error) {
	if rs.Action != model.Allow && rs.Action != model.Deny {
		return ruleSet{}, &model.EntryError{Entry: where(), Reason: fmt.Sprintf("unknown action %d; use ALLOW or DENY", rs.Action), Class: ErrInvalid}
	}
	proto.Action = rs.Action
	out := ruleSet{deny: rs.Action == model.Deny}
	ruleNames := make(map[string]int, len(rs.Rules))
	for k := range rs.Rules {
		r := &rs.Rules[k]
		bad := func(reason string) error {
			return &model.EntryError{Entry: where() + " " + label("rule", k, r.Name), Reason: reason, Class: ErrInvalid}
		}
		switch {
		case r.Name == "":
			return ruleSet{}, bad("rule has no name; name it, it is counted under its name")
		case len(r.Principals) == 0:
			return ruleSet{}, bad("rule has no principals, so it can match nothing; add one (Any for every source)")
		case len(r.Permissions) == 0:
			return ruleSet{}, bad("rule has no permissions, so it can match nothing; add one (Any for every destination)")
		}
		if j, dup := ruleNames[r.Name]; dup {
			return ruleSet{}, bad(fmt.Sprintf("name already used by rule %d of the same rule set", j))
		}
		ruleNames[r.Name] = k

		c.nodes = 0
		destMatches := false
		for p := range r.Permissions {
			m, f := c.permission(&r.Permissions[p], s.svc, 1)
			if f != nil {
				return ruleSet{}, bad(fmt.Sprintf("permissions[%d]%s: %s", p, f.path, f.reason))
			}
			destMatches = destMatches || m
		}
		principals := make([]node, len(r.Principals))
		for p := range r.Principals {
			var f *fault
			principals[p], f = c.principal(&r.Principals[p], 1)
			if f != nil {
				return ruleSet{}, bad(fmt.Sprintf("principals[%d]%s: %s", p, f.path, f.reason))
			}
		}
		entry := proto
		entry.Rule = r.Name
		s.rules = append(s.rules, entry)
		if destMatches {
			out.rules = append(out.rules, rule{ref: uint32(len(s.rules)), principals: principals})
		}
	}
	fallback := proto
	fallback.Default = true
	s.rules = append(s.rules, fallback)
	out.fallback = uint32(len(s.rules))
	return out, nil
}

// enter accounts for one more node of the rule being compiled at depth.
func (c *compiler) enter(depth int) *fault {
	c.nodes++
	switch {
	case depth > maxDepth:
		return &fault{reason: fmt.Sprintf("nested more than %d deep", maxDepth), limit: true}
	case c.nodes > maxNodes:
		return &fault{reason: fmt.Sprintf("rule has more than %d principals and permissions", maxNodes), limit: true}
	}
	return nil
}

func (c *compiler) principal(p *model.Principal, depth int) (node, *fault) {
	if f := c.enter(depth); f != nil {
		return node{}, f
	}
	var n node
	switch p.Kind {
	case model.PrincipalAny:
		return node{op: opAny}, nil
	case model.PrincipalAuthenticated:
		if p.Name.Kind > model.MatchContains {
			return node{}, &fault{reason: fmt.Sprintf("unknown string match kind %d", p.Name.Kind)}
		}
		if p.Name.Kind == model.MatchNone {
			return node{op: opMesh}, nil
		}
		return node{op: opName, arg: c.matcher(p.Name)}, nil
	case model.PrincipalSourceIP:
		if reason := checkPrefix(p.CIDR); reason != "" {
			return node{}, &fault{reason: reason}
		}
		return node{op: opCIDR, arg: c.cidr(p.CIDR)}, nil
	case model.PrincipalAnd, model.PrincipalOr:
		if len(p.Ids) == 0 {
			return node{}, &fault{reason: "AND or OR of no principals"}
		}
		n.op = opAnd
		if p.Kind == model.PrincipalOr {
			n.op = opOr
		}
	case model.PrincipalNot:
		if len(p.Ids) != 1 {
			return node{}, &fault{reason: fmt.Sprintf("NOT needs exactly one principal, has %d", len(p.Ids))}
		}
		n.op = opNot
	case model.PrincipalHeader:
		return node{}, &fault{reason: reasonHTTP("header principal")}
	default:
		return node{}, &fault{reason: fmt.Sprintf("unknown principal kind %d", p.Kind)}
	}
	n.kids = make([]node, len(p.Ids))
	for k := range p.Ids {
		var f *fault
		if n.kids[k], f = c.principal(&p.Ids[k], depth+1); f != nil {
			if !f.limit {
				f.path = fmt.Sprintf(".ids[%d]%s", k, f.path)
			}
			return node{}, f
		}
	}
	return n, nil
}

// permission checks p and reports whether it matches the destination of
// svc. It looks at all of p, also where the result is already known.
func (c *compiler) permission(p *model.Permission, svc *model.Service, depth int) (bool, *fault) {
	if f := c.enter(depth); f != nil {
		return false, f
	}
	switch p.Kind {
	case model.PermissionAny:
		return true, nil
	case model.PermissionPort:
		if p.Port > p.PortEnd {
			return false, &fault{reason: fmt.Sprintf("port range %d-%d ends before it starts", p.Port, p.PortEnd)}
		}
		return p.Port <= svc.Port && svc.Port <= p.PortEnd, nil
	case model.PermissionIP:
		if reason := checkPrefix(p.CIDR); reason != "" {
			return false, &fault{reason: reason}
		}
		return p.CIDR.Contains(svc.VIP), nil
	case model.PermissionAnd, model.PermissionOr:
		if len(p.Rules) == 0 {
			return false, &fault{reason: "AND or OR of no permissions"}
		}
	case model.PermissionNot:
		if len(p.Rules) != 1 {
			return false, &fault{reason: fmt.Sprintf("NOT needs exactly one permission, has %d", len(p.Rules))}
		}
	case model.PermissionHeader:
		return false, &fault{reason: reasonHTTP("header permission")}
	case model.PermissionPath:
		return false, &fault{reason: reasonHTTP("path permission")}
	default:
		return false, &fault{reason: fmt.Sprintf("unknown permission kind %d", p.Kind)}
	}
	all, some := true, false
	for k := range p.Rules {
		m, f := c.permission(&p.Rules[k], svc, depth+1)
		if f != nil {
			if !f.limit {
				f.path = fmt.Sprintf(".rules[%d]%s", k, f.path)
			}
			return false, f
		}
		all, some = all && m, some || m
	}
	switch p.Kind {
	case model.PermissionAnd:
		return all, nil
	case model.PermissionOr:
		return some, nil
	}
	return !all, nil // NOT of its one permission
}

// reasonHTTP is why an L4 policy cannot hold what, which needs a request.
func reasonHTTP(what string) string {
	return "a " + what + " needs an HTTP request; it belongs in an L7 service's HTTP policy, not in an L4 policy, which is decided at connect"
}

// checkPrefix returns why p cannot be a policy's CIDR, or "".
func checkPrefix(p netip.Prefix) string {
	switch {
	case !p.IsValid():
		return "invalid or missing CIDR"
	case p != p.Masked():
		return fmt.Sprintf("CIDR %s has bits set after its prefix length; use %s", p, p.Masked())
	case p.Addr().Is4In6():
		// Masked and IPv4-mapped, so at least /96: it has an IPv4 form.
		return fmt.Sprintf("CIDR %s is IPv4-mapped IPv6, which no IPv4 address matches; use %s",
			p, netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96))
	}
	return ""
}

// endpoint is one (destination, service) pair, before destinations are
// grouped into sets.
type endpoint struct {
	dst netip.AddrPort
	svc int32 // index into the services sorted by name
}

// dests fills t.Dests and returns the members of each set (indexes into
// svcs), by set id minus one.
func dests(t *Tables, svcs []*service) ([][]int32, error) {
	var eps []endpoint
	for k, s := range svcs {
		for _, pool := range s.svc.Pools() {
			for j := range pool.Endpoints {
				ep := &pool.Endpoints[j]
				if !ep.Addr.IsValid() {
					return nil, &model.EntryError{
						Entry:  fmt.Sprintf("service %q (%s) endpoint %d of pool %q", s.svc.Name, s.svc.Key(), j, pool.Name),
						Reason: "missing address",
						Class:  ErrInvalid,
					}
				}
				eps = append(eps, endpoint{netip.AddrPortFrom(ep.Addr, ep.Port), int32(k)})
			}
		}
	}
	slices.SortFunc(eps, func(a, b endpoint) int {
		return cmp.Or(a.dst.Compare(b.dst), cmp.Compare(a.svc, b.svc))
	})
	eps = slices.Compact(eps)

	var sets [][]int32
	single := make([]uint32, len(svcs)) // set of a single service, 0 if none yet
	multi := make(map[string]uint32)
	var members []int32
	var key []byte
	for i := 0; i < len(eps); {
		dst := eps[i].dst
		members = members[:0]
		for ; i < len(eps) && eps[i].dst == dst; i++ {
			members = append(members, eps[i].svc)
		}
		var id uint32
		if len(members) == 1 {
			if id = single[members[0]]; id == 0 {
				sets = append(sets, slices.Clone(members))
				id = uint32(len(sets))
				single[members[0]] = id
			}
		} else {
			key = key[:0]
			for _, m := range members {
				key = strconv.AppendInt(append(key, ','), int64(m), 10)
			}
			if id = multi[string(key)]; id == 0 {
				sets = append(sets, slices.Clone(members))
				id = uint32(len(sets))
				multi[string(key)] = id
			}
		}
		t.Dests = append(t.Dests, Dest{Addr: dst.Addr(), Port: dst.Port(), Set: id})
	}
	for i := range t.Dests {
		d := &t.Dests[i]
		for _, m := range sets[d.Set-1] {
			if len(svcs[m].cidrs) > 0 {
				d.HasCIDR = true
				break
			}
		}
	}
	return sets, nil
}

// point is where a compiled principal is evaluated: an identity (index into
// compiler.ids) and a source class, given as the CIDRs that hold it.
type point struct {
	id     int
	idBits [][]uint64
	inCIDR []bool // by CIDR number; only those of the set being evaluated are meaningful
}

func (n *node) match(p *point) bool {
	switch n.op {
	case opAny:
		return true
	case opMesh:
		return p.id != 0
	case opName:
		return p.idBits[n.arg][p.id/64]&(1<<(p.id%64)) != 0
	case opCIDR:
		return p.inCIDR[n.arg]
	case opAnd:
		for k := range n.kids {
			if !n.kids[k].match(p) {
				return false
			}
		}
		return true
	case opOr:
		for k := range n.kids {
			if n.kids[k].match(p) {
				return true
			}
		}
		return false
	}
	return !n.kids[0].match(p) // opNot
}

// decide combines rule sets as one policy set does: the first that denies
// decides; if none does, the first decides.
func decide(sets []ruleSet, p *point) (deny bool, ref uint32, terminate bool) {
	for i := range sets {
		rs := &sets[i]
		decider, matched := rs.fallback, false
	rules:
		for j := range rs.rules {
			for k := range rs.rules[j].principals {
				if rs.rules[j].principals[k].match(p) {
					decider, matched = rs.rules[j].ref, true
					break rules
				}
			}
		}
		if matched == rs.deny {
			return true, decider, rs.continuous
		}
		if ref == 0 {
			ref = decider
		}
	}
	return false, ref, false
}

// outcome is a verdict without its key.
type outcome struct {
	deny       bool
	rule       uint32
	shadow     Shadow
	shadowRule uint32
	terminate  bool
}

// outcomeAt decides a set's enforced and dry-run rule sets at p.
func outcomeAt(enforced, dryRun []ruleSet, p *point) outcome {
	var o outcome
	o.deny, o.rule, o.terminate = decide(enforced, p)
	if len(dryRun) > 0 {
		var deny bool
		deny, o.shadowRule, _ = decide(dryRun, p)
		o.shadow = ShadowAllow
		if deny {
			o.shadow = ShadowDeny
		}
	}
	return o
}

// evaluate appends the classes and verdicts of set id, whose services are
// members: per class, it decides each identity group once, through its
// representative, and lists the identities of the groups whose verdict is
// not identity 0's.
func (c *compiler) evaluate(t *Tables, id uint32, members []int32, svcs []*service) {
	sc := &c.scratch
	enforced, dryRun := sc.enforced[:0], sc.dryRun[:0]
	matchers, cidrs := sc.matchers[:0], sc.cidrs[:0]
	for _, m := range members {
		s := svcs[m]
		enforced = append(enforced, s.enforced...)
		dryRun = append(dryRun, s.dryRun...)
		matchers = append(matchers, s.matchers...)
		cidrs = append(cidrs, s.cidrs...)
	}
	sc.enforced, sc.dryRun, sc.matchers, sc.cidrs = enforced, dryRun, matchers, cidrs
	slices.Sort(matchers)
	matchers = slices.Compact(matchers)
	slices.SortFunc(cidrs, func(a, b int32) int { return c.cidrs[a].Compare(c.cidrs[b]) })
	cidrs = slices.Compact(cidrs)
	for k, n := range cidrs {
		t.Classes = append(t.Classes, Class{Set: id, Prefix: c.cidrs[n], Class: uint32(k + 1)})
	}

	group, reps, sizes := c.partition(matchers)
	outcomes := resize(&sc.outcomes, len(reps))
	differs := resize(&sc.differs, len(reps))
	p := point{idBits: c.idBits, inCIDR: resize(&sc.inCIDR, len(c.cidrs))}
	for class := 0; class <= len(cidrs); class++ {
		// The class's addresses lie in a CIDR iff its own prefix does:
		// two CIDRs that share an address nest. Class 0 lies in none.
		for _, n := range cidrs {
			p.inCIDR[n] = false
			if class > 0 {
				own, x := c.cidrs[cidrs[class-1]], c.cidrs[n]
				p.inCIDR[n] = x.Bits() <= own.Bits() && x.Contains(own.Addr())
			}
		}
		anyDiffers := false
		for g, rep := range reps {
			p.id = int(rep)
			outcomes[g] = outcomeAt(enforced, dryRun, &p)
			differs[g] = g > 0 && outcomes[g] != outcomes[0]
			anyDiffers = anyDiffers || differs[g]
		}
		t.Verdicts = append(t.Verdicts, outcomes[0].verdict(id, 0, uint32(class)))
		if !anyDiffers {
			continue
		}
		n := 0
		for g := range reps {
			if differs[g] {
				n += int(sizes[g])
			}
		}
		if cap(t.Verdicts)-len(t.Verdicts) < n {
			// At least double: append alone grows large slices by a
			// quarter, copying the verdicts five times over.
			t.Verdicts = slices.Grow(t.Verdicts, max(n, cap(t.Verdicts)))
		}
		for i := 1; i < len(c.ids); i++ {
			if g := group[i]; differs[g] {
				t.Verdicts = append(t.Verdicts, outcomes[g].verdict(id, c.ids[i], uint32(class)))
			}
		}
	}
}

func (o outcome) verdict(set, identity, class uint32) Verdict {
	return Verdict{
		Set: set, Identity: identity, Class: class,
		Deny: o.deny, Rule: o.rule, Shadow: o.shadow, ShadowRule: o.shadowRule, Terminate: o.terminate,
	}
}

// partition groups the identities that matchers all treat alike, by
// splitting the groups on each matcher in turn: the identities a matcher
// matches leave their group for a new one, at a cost in proportion to how
// many they are. Identity 0, which no matcher matches and which opMesh
// tells apart, stays alone in group 0. It returns each identity's group,
// numbered in order of first member, and each group's first member (its
// representative) and size.
func (c *compiler) partition(matchers []int32) (group, reps, sizes []int32) {
	sc := &c.scratch
	group = resize(&sc.group, len(c.ids))
	groups := int32(1)
	if len(c.ids) > 1 {
		for i := 1; i < len(group); i++ {
			group[i] = 1
		}
		groups = 2
	}
	moved := resize(&sc.moved, int(groups)) // by group: where its matching identities go, -1 if not yet decided
	for k := range moved {
		moved[k] = -1
	}
	touched := sc.touched[:0]
	for _, m := range matchers {
		touched = touched[:0]
		for w, word := range c.idBits[m] {
			for ; word != 0; word &= word - 1 {
				i := w*64 + bits.TrailingZeros64(word)
				g := group[i]
				if moved[g] < 0 {
					moved[g] = groups
					moved = append(moved, -1)
					groups++
					touched = append(touched, g)
				}
				group[i] = moved[g]
			}
		}
		for _, g := range touched {
			moved[g] = -1
		}
	}
	sc.moved, sc.touched = moved, touched
	// Groups all of whose members moved are empty: number those left.
	dense := moved[:groups]
	for k := range dense {
		dense[k] = -1
	}
	reps, sizes = sc.reps[:0], sc.sizes[:0]
	for i, g := range group {
		if dense[g] < 0 {
			dense[g] = int32(len(reps))
			reps = append(reps, int32(i))
			sizes = append(sizes, 0)
		}
		group[i] = dense[g]
		sizes[group[i]]++
	}
	sc.reps, sc.sizes = reps, sizes
	return group, reps, sizes
}

// resize sets the length of *s to n, reusing its memory if it can, and
// returns it. The contents are not cleared.
func resize[E any](s *[]E, n int) []E {
	if cap(*s) < n {
		*s = make([]E, n)
	}
	*s = (*s)[:n]
	return *s
}
