package identity

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/sluice-mesh/sluice/dataplane/model"
)

// Local is a local workload whose cgroup id the caller resolved.
type Local struct {
	Workload   Workload       // required: its SPIFFEID set, as ParseWorkloads sets it
	CgroupID   uint64         // required: the cgroup v2 id (inode number of its directory)
	CgroupPath string         // optional: the resolved path, for errors and logs; Workload.Cgroup if empty
	FastPath   model.FastPath // optional: its setting of the same-node fast path
}

// Stats describes what Build made of its input, for logs and metrics.
type Stats struct {
	SPIFFEIDs int // distinct SPIFFE IDs, from endpoints and local workloads
	Derived   int // of which the number is derived (the control plane gave none)
	// AmbiguousAddrs are the addresses claimed by two identities or more,
	// left out of Identities.Addrs; sorted.
	AmbiguousAddrs []netip.Addr
}

// ErrInvalidIdentities is the class of every error Build returns: the
// services and local workloads do not describe one consistent set of
// identities. Test for it with errors.Is.
var ErrInvalidIdentities = errors.New("invalid identities")

// Build assembles what a node knows of who is who from the workloads of
// every endpoint of services (all pools) and from the node's local
// workloads:
//
//   - Names: every SPIFFE ID with its numeric identity (see Assign). An
//     endpoint's Workload.Identity is the number the control plane gave
//     it; a local workload has no number of its own and takes the one its
//     endpoints give, or a derived one.
//   - Addrs: every endpoint address whose workload has a SPIFFE ID, and
//     every local workload address, with its identity, sorted by address.
//     An address claimed by two identities or more (host-network workloads
//     sharing the node's address, a stale endpoint) is left out, so that a
//     connection from it is unknown, and listed in Stats.AmbiguousAddrs.
//   - Cgroups: one entry per local workload, sorted by cgroup id.
//
// Endpoints without a workload, or whose workload has no SPIFFE ID, and
// invalid (zero) addresses claim nothing. The error, if any, matches ErrInvalidIdentities and names where
// the offending SPIFFE IDs come from. Build is pure: equal inputs give
// reflect.DeepEqual results, which share no memory with the inputs but
// strings.
func Build(services []model.Service, locals []Local) (model.Identities, Stats, error) {
	return BuildListed(services, nil, locals, nil)
}

// BuildListed is Build with the workloads a node is told of besides
// endpoints, so that a client that is no service's endpoint is still known
// at other nodes:
//
//   - peers, from the control plane's workload directories
//     (model.State.Peers): each claims its address for its workload's
//     SPIFFE ID, with the number the control plane gives it, exactly as an
//     endpoint does;
//   - listed, the mesh file's workloads section, every node's: each claims
//     its addresses for its SPIFFE ID with no number of its own, as a
//     local workload.
func BuildListed(services []model.Service, peers []model.Peer, locals []Local, listed []Workload) (model.Identities, Stats, error) {
	b := builder{services: services, peers: peers, locals: locals, listed: listed, index: map[string]int32{}}
	if err := b.collect(); err != nil {
		return model.Identities{}, Stats{}, err
	}
	numbers, err := b.assign()
	if err != nil {
		return model.Identities{}, Stats{}, err
	}
	var ids model.Identities
	var stats Stats
	stats.SPIFFEIDs = len(b.ids)
	if len(b.ids) > 0 {
		ids.Names = make(map[uint32]string, len(b.ids))
	}
	for i, id := range b.ids {
		ids.Names[numbers[i]] = id.spiffeID
		if id.given == Unknown {
			stats.Derived++
		}
	}
	ids.Addrs, stats.AmbiguousAddrs = b.addrs(numbers)
	for i, l := range locals {
		ids.Cgroups = append(ids.Cgroups, model.CgroupIdentity{
			CgroupID: l.CgroupID,
			Path:     cgroupPath(&l),
			Identity: numbers[b.localIDs[i]],
			Addrs:    slices.Clone(l.Workload.Addrs),
			FastPath: fastPath(&l),
		})
	}
	slices.SortFunc(ids.Cgroups, func(a, b model.CgroupIdentity) int { return cmp.Compare(a.CgroupID, b.CgroupID) })
	return ids, stats, nil
}

// fastPath is l's fast-path setting as the dataplane takes it: the fast
// path finds workloads by address, so one without any cannot be on.
func fastPath(l *Local) model.FastPath {
	if l.FastPath == model.FastPathOn && len(l.Workload.Addrs) == 0 {
		return model.FastPathUnset
	}
	return l.FastPath
}

// builder holds Build's intermediate state. SPIFFE IDs are numbered in
// the order they are first seen (ids, index); claims refer to them by that
// number, so that only distinct IDs reach Assign.
type builder struct {
	services []model.Service
	peers    []model.Peer
	locals   []Local
	listed   []Workload
	ids      []seenID
	index    map[string]int32 // SPIFFE ID → its position in ids
	claims   []claim
	localIDs []int32 // locals[i]'s position in ids
}

// seenID is a distinct SPIFFE ID and the first place it was seen.
type seenID struct {
	spiffeID string
	given    uint32
	from     origin
}

// origin is an endpoint (services[svc], split pool, or -1 for the
// service's Endpoints, endpoint ep) or, if local, locals[ep], or, if
// listed, listed[ep], or, if peer, peers[ep].
type origin struct {
	local, listed, peer bool
	svc, pool, ep       int
}

// claim says that addr belongs to the SPIFFE ID ids[id].
type claim struct {
	addr netip.Addr
	id   int32
}

func (b *builder) collect() error {
	n := 0
	for i := range b.services {
		s := &b.services[i]
		n += len(s.Endpoints)
		for j := range s.Splits {
			n += len(s.Splits[j].Endpoints)
		}
	}
	for i := range b.locals {
		n += len(b.locals[i].Workload.Addrs)
	}
	for i := range b.listed {
		n += len(b.listed[i].Addrs)
	}
	n += len(b.peers)
	b.claims = make([]claim, 0, n)
	for i := range b.services {
		s := &b.services[i]
		if len(s.Splits) == 0 {
			if err := b.endpoints(s.Endpoints, i, -1); err != nil {
				return err
			}
			continue
		}
		for j := range s.Splits {
			if err := b.endpoints(s.Splits[j].Endpoints, i, j); err != nil {
				return err
			}
		}
	}
	if err := b.collectPeers(); err != nil {
		return err
	}
	if err := b.collectLocals(); err != nil {
		return err
	}
	return b.collectListed()
}

func (b *builder) collectPeers() error {
	var last *model.Workload
	var id int32
	for i := range b.peers {
		p := &b.peers[i]
		w := p.Workload
		if w != nil && w.L7Proxy {
			continue // speaks for others: dataplane.L7Proxy.Route trusts it
		}
		if w == nil || w.SPIFFEID == "" {
			return &buildError{msg: fmt.Sprintf("identity: %s has no SPIFFE ID", b.describe(origin{peer: true, ep: i}))}
		}
		if w != last {
			var err error
			if id, err = b.see(w.SPIFFEID, w.Identity, origin{peer: true, ep: i}); err != nil {
				return err
			}
			last = w
		}
		if p.Addr.IsValid() {
			b.claims = append(b.claims, claim{addr: p.Addr, id: id})
		}
	}
	return nil
}

func (b *builder) collectListed() error {
	for i := range b.listed {
		w := &b.listed[i]
		if w.SPIFFEID == "" {
			return &buildError{msg: fmt.Sprintf("identity: %s has no SPIFFE ID", b.describe(origin{listed: true, ep: i}))}
		}
		if _, err := b.unnumbered(w.SPIFFEID, w.Addrs, origin{listed: true, ep: i}); err != nil {
			return err
		}
	}
	return nil
}

func (b *builder) endpoints(eps []model.Endpoint, svc, pool int) error {
	// Endpoints of one workload usually share its *Workload: look its
	// SPIFFE ID up once per run of them.
	var last *model.Workload
	var id int32
	for k := range eps {
		ep := &eps[k]
		w := ep.Workload
		if w == nil || w.SPIFFEID == "" {
			continue
		}
		if w != last {
			var err error
			if id, err = b.see(w.SPIFFEID, w.Identity, origin{svc: svc, pool: pool, ep: k}); err != nil {
				return err
			}
			last = w
		}
		if ep.Addr.IsValid() {
			b.claims = append(b.claims, claim{addr: ep.Addr, id: id})
		}
	}
	return nil
}

func (b *builder) collectLocals() error {
	b.localIDs = make([]int32, len(b.locals))
	cgroups := make(map[uint64]int, len(b.locals))
	for i := range b.locals {
		l := &b.locals[i]
		switch {
		case l.Workload.SPIFFEID == "":
			return &buildError{msg: fmt.Sprintf("identity: %s has no SPIFFE ID", b.describe(origin{local: true, ep: i}))}
		case l.CgroupID == 0:
			return &buildError{msg: fmt.Sprintf("identity: %s has no cgroup id", b.describe(origin{local: true, ep: i}))}
		}
		if j, dup := cgroups[l.CgroupID]; dup {
			return &buildError{msg: fmt.Sprintf("identity: %s and %s have the same cgroup id %d",
				b.describe(origin{local: true, ep: j}), b.describe(origin{local: true, ep: i}), l.CgroupID)}
		}
		cgroups[l.CgroupID] = i
		id, err := b.unnumbered(l.Workload.SPIFFEID, l.Workload.Addrs, origin{local: true, ep: i})
		if err != nil {
			return err
		}
		b.localIDs[i] = id
	}
	return nil
}

// unnumbered records a workload that has no number of its own (a local
// or listed one): it takes what its endpoints are given, or a derived
// one. Its addresses claim its SPIFFE ID. It returns the ID's position in
// b.ids.
func (b *builder) unnumbered(spiffeID string, addrs []netip.Addr, from origin) (int32, error) {
	id, ok := b.index[spiffeID]
	if !ok {
		var err error
		if id, err = b.see(spiffeID, Unknown, from); err != nil {
			return 0, err
		}
	}
	for _, a := range addrs {
		if a.IsValid() {
			b.claims = append(b.claims, claim{addr: a, id: id})
		}
	}
	return id, nil
}

// see records that spiffeID was given the number given at from, and returns
// the ID's position in b.ids.
func (b *builder) see(spiffeID string, given uint32, from origin) (int32, error) {
	if i, ok := b.index[spiffeID]; ok {
		first := &b.ids[i]
		if first.given != given {
			// Assign says what is wrong; Build says where.
			_, err := Assign([]Request{{SPIFFEID: spiffeID, Given: first.given}, {SPIFFEID: spiffeID, Given: given}})
			return 0, &buildError{err: err, where: []string{b.describe(first.from), b.describe(from)}}
		}
		return i, nil
	}
	i := int32(len(b.ids))
	b.ids = append(b.ids, seenID{spiffeID: spiffeID, given: given, from: from})
	b.index[spiffeID] = i
	return i, nil
}

// assign numbers the distinct SPIFFE IDs: numbers[i] is ids[i]'s.
func (b *builder) assign() ([]uint32, error) {
	reqs := make([]Request, len(b.ids))
	for i, id := range b.ids {
		reqs[i] = Request{SPIFFEID: id.spiffeID, Given: id.given}
	}
	assigned, err := Assign(reqs)
	if err != nil {
		return nil, &buildError{err: err, where: b.culprits(reqs)}
	}
	numbers := make([]uint32, len(b.ids))
	for i, id := range b.ids {
		numbers[i] = assigned[id.spiffeID]
	}
	return numbers, nil
}

// culprits names where the SPIFFE IDs come from that made Assign refuse
// reqs (distinct IDs): the first one Assign refuses on its own, or the
// first two given the same number. It runs only once Assign has failed.
func (b *builder) culprits(reqs []Request) []string {
	owner := map[uint32]int{}
	for i, r := range reqs {
		if _, err := Assign(reqs[i : i+1]); err != nil {
			return []string{b.describe(b.ids[i].from)}
		}
		if r.Given == Unknown {
			continue
		}
		if j, taken := owner[r.Given]; taken {
			return []string{b.describe(b.ids[j].from), b.describe(b.ids[i].from)}
		}
		owner[r.Given] = i
	}
	return nil
}

// addrs turns the claims into the address → identity bindings, leaving out
// and returning the addresses claimed by two identities or more.
func (b *builder) addrs(numbers []uint32) (bound []model.AddrIdentity, ambiguous []netip.Addr) {
	claims := b.claims
	slices.SortFunc(claims, func(x, y claim) int {
		if c := x.addr.Compare(y.addr); c != 0 {
			return c
		}
		return cmp.Compare(x.id, y.id)
	})
	if len(claims) > 0 {
		bound = make([]model.AddrIdentity, 0, len(claims))
	}
	for i := 0; i < len(claims); {
		j := i + 1
		same := true
		for ; j < len(claims) && claims[j].addr == claims[i].addr; j++ {
			same = same && claims[j].id == claims[i].id
		}
		if same {
			bound = append(bound, model.AddrIdentity{Addr: claims[i].addr, Identity: numbers[claims[i].id]})
		} else {
			ambiguous = append(ambiguous, claims[i].addr)
		}
		i = j
	}
	if len(bound) == 0 {
		bound = nil
	}
	return bound, ambiguous
}

// describe names an origin for errors.
func (b *builder) describe(o origin) string {
	if o.peer {
		p := &b.peers[o.ep]
		if p.Workload == nil {
			return fmt.Sprintf("directory workload at %s", p.Addr)
		}
		return fmt.Sprintf("directory workload %s/%s (%s)", p.Workload.Namespace, p.Workload.Name, p.Addr)
	}
	if o.listed {
		w := &b.listed[o.ep]
		return fmt.Sprintf("listed workload %s/%s", w.Namespace, w.Name)
	}
	if o.local {
		l := &b.locals[o.ep]
		return fmt.Sprintf("local workload %s/%s (cgroup %s)", l.Workload.Namespace, l.Workload.Name, cgroupPath(l))
	}
	s := &b.services[o.svc]
	eps, pool := s.Endpoints, ""
	if o.pool >= 0 {
		eps, pool = s.Splits[o.pool].Endpoints, fmt.Sprintf(" split %q", s.Splits[o.pool].Name)
	}
	ep := &eps[o.ep]
	return fmt.Sprintf("%s%s endpoint %d (%s)", model.Label(o.svc, s), pool, o.ep, netip.AddrPortFrom(ep.Addr, ep.Port))
}

func cgroupPath(l *Local) string {
	if l.CgroupPath != "" {
		return l.CgroupPath
	}
	return l.Workload.Cgroup
}

// buildError is a Build error: Assign's error (or msg) and where the
// SPIFFE IDs concerned come from.
type buildError struct {
	msg   string
	err   error
	where []string
}

func (e *buildError) Error() string {
	s := e.msg
	if e.err != nil {
		s = e.err.Error()
	}
	switch len(e.where) {
	case 1:
		s += " (at " + e.where[0] + ")"
	case 2:
		s += " (at " + e.where[0] + " and " + e.where[1] + ")"
	}
	return s
}

func (e *buildError) Unwrap() []error {
	if e.err == nil {
		return []error{ErrInvalidIdentities}
	}
	return []error{ErrInvalidIdentities, e.err}
}
