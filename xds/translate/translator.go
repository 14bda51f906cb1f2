package translate

import (
	"maps"
	"net/netip"
	"slices"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"

	"github.com/sluice-mesh/sluice/dataplane/model"
)

// Translator translates like Translate but remembers what it translated,
// so translating a set that differs from the previous one in a few resources
// costs in proportion to the difference (plus a pass over the maps of r to
// find it, and the copy of State.Services).
//
// It tells resources apart by pointer. A resource held under the same name
// and pointer as in the last accepted translation is taken to be unchanged
// and is neither checked nor translated again; so the caller must never
// modify a message after handing it to Translate, and changes a resource by
// handing over a new message. Handing over a new message with the same
// content is correct but costs a new check of that resource: a caller that
// receives a resource again unchanged should keep the old pointer.
//
// Results share memory with each other and with the Translator: a service
// that did not change has the Endpoints and Splits slices (the same backing
// arrays) it had in the previous result, and State.Services, Ignored and
// Missing are those of the previous result when they did not change.
// Callers must not modify anything a Result holds.
//
// The maps of Resources are not kept: a caller may change them between
// calls (but not the messages in them).
//
// A rejected translation leaves the Translator as it was: the next call is
// compared with the last accepted set. The zero Translator is ready for use,
// as is one from NewTranslator. A Translator is not safe for concurrent use.
type Translator struct {
	// The resources of the last accepted translation, by name. Entries are
	// never modified once accepted, except for the family subsets that
	// endpoints fills in on first use.
	listeners   memo[*listenerv3.Listener, *listenerEntry]
	clusters    memo[*clusterv3.Cluster, *clusterEntry]
	assignments memo[*endpointv3.ClusterLoadAssignment, *assignmentEntry]

	// clusterUsers names, per cluster name, the listeners with a pool of
	// it, whether it exists or not; edsUsers names, per assignment name, the
	// EDS clusters reading it. They say which listeners a changed cluster or
	// assignment affects.
	clusterUsers map[string]map[string]struct{}
	edsUsers     map[string]map[string]struct{}

	names   []string                 // the listener names, sorted; never modified
	order   []*listenerEntry         // listeners[names[i]]; never modified
	offsets []int                    // where order[i]'s services start in last.State.Services; never modified
	keys    map[model.ServiceKey]int // services per key, all 1 (what Validate checks across services)
	missing map[string]int           // per Result.Missing name, how many pools need it
	last    Result                   // of the last accepted translation
}

// memo holds the accepted resources of one type.
type memo[M comparable, E entry[M]] struct {
	entries map[string]E
	// names holds the name of each accepted message. Finding out whether a
	// resource is unchanged is the one thing done for every resource on
	// every call, and finding a message by pointer (with the name alongside)
	// is several times cheaper than by name: it reads neither the name nor
	// the entry.
	names map[M]string
}

type entry[M any] interface{ message() M }

func newMemo[M comparable, E entry[M]]() memo[M, E] {
	return memo[M, E]{entries: make(map[string]E), names: make(map[M]string)}
}

// reserve makes room for n entries in an empty m, to fill it in one go.
func (m *memo[M, E]) reserve(n int) {
	if len(m.entries) == 0 {
		m.entries, m.names = make(map[string]E, n), make(map[M]string, n)
	}
}

// get returns the accepted entry named name, or nil.
func (m *memo[M, E]) get(name string) E { return m.entries[name] }

func (m *memo[M, E]) put(name string, e E) {
	m.remove(name)
	m.entries[name] = e
	m.names[e.message()] = name
}

func (m *memo[M, E]) remove(name string) {
	if old, ok := m.entries[name]; ok {
		delete(m.names, old.message())
		delete(m.entries, name)
	}
}

// diff returns, sorted, the names in now that m does not hold with the
// same message (changed or added), and the names m holds that now does not
// (removed).
func (m *memo[M, E]) diff(now map[string]M) (changed, removed []string) {
	found := 0
	for name, msg := range now {
		if n, ok := m.names[msg]; ok && n == name {
			found++
			continue
		}
		changed = append(changed, name)
		if _, ok := m.entries[name]; ok {
			found++
		}
	}
	if found < len(m.entries) {
		for name := range m.entries {
			if _, ok := now[name]; !ok {
				removed = append(removed, name)
			}
		}
	}
	slices.Sort(changed)
	slices.Sort(removed)
	return changed, removed
}

// diffWith diffs now against m, over the hinted names if there is a hint.
func diffWith[M comparable, E entry[M]](m *memo[M, E], now map[string]M, h *Hint, names func(*Hint) []string) (changed, removed []string) {
	if h == nil {
		return m.diff(now)
	}
	return m.diffNames(now, names(h))
}

// diffNames is diff restricted to names: only they can differ from m.
func (m *memo[M, E]) diffNames(now map[string]M, names []string) (changed, removed []string) {
	for _, name := range names {
		msg, inNow := now[name]
		_, inMemo := m.entries[name]
		switch {
		case inNow:
			if n, ok := m.names[msg]; !ok || n != name {
				changed = append(changed, name)
			}
		case inMemo:
			removed = append(removed, name)
		}
	}
	slices.Sort(changed)
	changed = slices.Compact(changed)
	slices.Sort(removed)
	removed = slices.Compact(removed)
	return changed, removed
}

// Hint names, per type, the resources that may differ from those of the
// last successful Translate: changed, added or removed. Every other
// resource must be the very message handed over then. With a hint the
// translator skips its pass over all resources to find the differences.
type Hint struct {
	Listeners, Clusters, Endpoints []string
}

// listenerEntry is an accepted listener and the services it gave.
type listenerEntry struct {
	msg      *listenerv3.Listener
	plan     *listenerPlan
	keys     []string        // Ignored keys it sets
	services []model.Service // never modified
	missing  []string        // Result.Missing names its pools need, with repeats
}

func (e *listenerEntry) message() *listenerv3.Listener { return e.msg }

// clusterEntry is an accepted cluster.
type clusterEntry struct {
	msg    *clusterv3.Cluster
	eds    string     // EDS: the assignment name
	static *endpoints // STATIC: the inline load_assignment
	keys   []string
}

func (e *clusterEntry) message() *clusterv3.Cluster { return e.msg }

// assignmentEntry is an accepted ClusterLoadAssignment.
type assignmentEntry struct {
	msg  *endpointv3.ClusterLoadAssignment
	eps  *endpoints
	keys []string
}

func (e *assignmentEntry) message() *endpointv3.ClusterLoadAssignment { return e.msg }

// endpoints is the translation of one assignment. Services take their
// endpoints from it without copying, so that unchanged services keep
// sharing them.
type endpoints struct {
	all []model.Endpoint
	// v4 and v6 are the endpoints of each family, made when a dual-stack
	// listener first needs them.
	split  bool
	v4, v6 []model.Endpoint
}

// of returns the endpoints a service at vip gets: all of them, or with a
// dual-stack listener those of vip's family. None is nil, as in Translate.
func (e *endpoints) of(vip netip.Addr, dualStack bool) []model.Endpoint {
	switch {
	case e == nil || len(e.all) == 0:
		return nil
	case !dualStack:
		return e.all
	}
	if !e.split {
		e.v4 = sameFamily(e.all, netip.IPv4Unspecified())
		e.v6 = sameFamily(e.all, netip.IPv6Unspecified())
		e.split = true
	}
	if vip.Is4() {
		return e.v4
	}
	return e.v6
}

// NewTranslator returns a Translator that has translated nothing yet.
func NewTranslator() *Translator {
	return &Translator{
		listeners:    newMemo[*listenerv3.Listener, *listenerEntry](),
		clusters:     newMemo[*clusterv3.Cluster, *clusterEntry](),
		assignments:  newMemo[*endpointv3.ClusterLoadAssignment, *assignmentEntry](),
		clusterUsers: make(map[string]map[string]struct{}),
		edsUsers:     make(map[string]map[string]struct{}),
		keys:         make(map[model.ServiceKey]int),
		missing:      make(map[string]int),
		last:         Result{Ignored: map[string]int{}},
	}
}

// step is one translation in progress: what differs from the last accepted
// one. A nil entry is a resource that is gone.
type step struct {
	listeners   map[string]*listenerEntry // changed, added, removed, or affected by a changed cluster or assignment
	clusters    map[string]*clusterEntry  // changed, added or removed
	assignments map[string]*assignmentEntry

	changed []string        // listeners changed, added or removed, sorted: their addresses may differ
	fresh   map[string]bool // listeners whose services differ from the accepted ones
}

// Translate returns what the package's Translate returns for r, the same
// error included, translating again only what differs from the last
// accepted call: the resources whose pointer changed, and the services of
// listeners using a cluster or assignment that changed, arrived or went.
func (t *Translator) Translate(r Resources) (Result, error) {
	return t.TranslateHint(r, nil)
}

// TranslateHint is Translate told which resources may have changed (nil
// means any may have). A wrong hint gives a wrong result: use it only when
// the changes are tracked exactly.
func (t *Translator) TranslateHint(r Resources, h *Hint) (Result, error) {
	if t.keys == nil {
		*t = *NewTranslator()
	}
	s := &step{fresh: make(map[string]bool)}
	tl := newTally()

	// Resources are checked in the order Translate checks them, so the
	// first refused is the one Translate reports: those not checked again
	// were accepted before and are accepted now.
	changed, removed := diffWith(&t.listeners, r.Listeners, h, func(h *Hint) []string { return h.Listeners })
	s.listeners = make(map[string]*listenerEntry, len(changed)+len(removed))
	for _, name := range changed {
		l := r.Listeners[name]
		p, err := tl.listener(name, l)
		if err != nil {
			return Result{}, err.resource("Listener", name)
		}
		s.listeners[name] = &listenerEntry{msg: l, plan: p, keys: tl.take()}
	}
	for _, name := range removed {
		s.listeners[name] = nil
	}
	s.changed = append(changed, removed...)
	slices.Sort(s.changed)

	changed, removed = diffWith(&t.clusters, r.Clusters, h, func(h *Hint) []string { return h.Clusters })
	s.clusters = make(map[string]*clusterEntry, len(changed)+len(removed))
	for _, name := range changed {
		c := r.Clusters[name]
		plan, err := tl.cluster(name, c)
		if err != nil {
			return Result{}, err.resource("Cluster", name)
		}
		e := &clusterEntry{msg: c, eds: plan.eds, keys: tl.take()}
		if plan.eds == "" {
			e.static = &endpoints{all: plan.static}
			if old := t.clusters.get(name); old != nil && old.static != nil && sameEndpoints(old.static.all, plan.static) {
				e.static = old.static
			}
		}
		s.clusters[name] = e
	}
	for _, name := range removed {
		s.clusters[name] = nil
	}

	changed, removed = diffWith(&t.assignments, r.Endpoints, h, func(h *Hint) []string { return h.Endpoints })
	s.assignments = make(map[string]*assignmentEntry, len(changed)+len(removed))
	for _, name := range changed {
		a := r.Endpoints[name]
		eps, err := tl.assignment(name, a)
		if err != nil {
			return Result{}, err.resource("ClusterLoadAssignment", name)
		}
		e := &assignmentEntry{msg: a, eps: &endpoints{all: eps}, keys: tl.take()}
		// A control plane often sends an assignment again as it was:
		// keeping the old endpoints keeps the services using them unchanged.
		if old := t.assignments.get(name); old != nil && sameEndpoints(old.eps.all, eps) {
			e.eps = old.eps
		}
		s.assignments[name] = e
	}
	for _, name := range removed {
		s.assignments[name] = nil
	}

	t.affected(s)
	for name, e := range s.listeners {
		if e != nil {
			t.assemble(s, name, e)
		}
	}

	names, order, moved := t.nextOrder(s)
	services, offsets := t.services(s, order, moved)
	if !t.valid(s, len(services)) {
		if err := validate(services); err != nil {
			return Result{}, err
		}
	}

	t.commit(s, names, order, offsets)
	t.last.State = model.State{Services: services}
	return t.last, nil
}

// take returns the Ignored keys of the resource just translated and starts
// the next one. Resources of a kind mostly set the same fields, so a list
// equal to the one before is shared with it.
func (t *tally) take() []string {
	if !slices.Equal(t.cur, t.taken) {
		t.taken = slices.Clone(t.cur)
	}
	t.cur = t.cur[:0]
	return t.taken
}

// affected adds to s.listeners the unchanged listeners whose services may
// change: those with a pool of a cluster that changed, arrived or went, or
// whose EDS assignment did.
func (t *Translator) affected(s *step) {
	touch := func(cluster string) {
		for name := range t.clusterUsers[cluster] {
			if _, ok := s.listeners[name]; ok {
				continue
			}
			old := t.listeners.get(name)
			s.listeners[name] = &listenerEntry{msg: old.msg, plan: old.plan, keys: old.keys}
		}
	}
	for name := range s.clusters {
		touch(name)
	}
	for name := range s.assignments {
		// Clusters that changed are touched above, with their new
		// assignment names.
		for cluster := range t.edsUsers[name] {
			touch(cluster)
		}
	}
}

// assemble gives e the services and missing names it has in s, keeping the
// accepted services if they are the same.
func (t *Translator) assemble(s *step, name string, e *listenerEntry) {
	p := e.plan
	sets := make([]*endpoints, len(p.pools))
	for i, pl := range p.pools {
		sets[i], e.missing = s.resolve(t, pl.cluster, e.missing)
	}
	dualStack := len(p.addrs) > 1
	e.services = appendServices(make([]model.Service, 0, len(p.addrs)), p, func(i int, vip netip.Addr) []model.Endpoint {
		return sets[i].of(vip, dualStack)
	})
	if old := t.listeners.get(name); old != nil && sameServices(old.services, e.services) {
		e.services = old.services
		return
	}
	s.fresh[name] = true
}

// resolve returns the endpoints of cluster in s, or nil and missing with
// what is missing added, as Translate's assemble does.
func (s *step) resolve(t *Translator, cluster string, missing []string) (*endpoints, []string) {
	c, ok := s.clusters[cluster]
	if !ok {
		c = t.clusters.get(cluster)
	}
	if c == nil {
		return nil, append(missing, "Cluster/"+cluster)
	}
	if c.eds == "" {
		return c.static, missing
	}
	a, ok := s.assignments[c.eds]
	if !ok {
		a = t.assignments.get(c.eds)
	}
	if a == nil {
		return nil, append(missing, "ClusterLoadAssignment/"+c.eds)
	}
	return a.eps, missing
}

// nextOrder returns the listener names, sorted, and their entries after s,
// and whether a listener came or went. It never sorts all names.
func (t *Translator) nextOrder(s *step) ([]string, []*listenerEntry, bool) {
	var added []string
	gone := false
	for _, name := range s.changed {
		switch {
		case s.listeners[name] == nil:
			gone = true
		case t.listeners.get(name) == nil:
			added = append(added, name)
		}
	}
	if !gone && len(added) == 0 {
		if len(s.listeners) == 0 {
			return t.names, t.order, false
		}
		order := slices.Clone(t.order)
		if len(s.listeners) > len(order)/16 {
			for i, name := range t.names {
				if e, ok := s.listeners[name]; ok {
					order[i] = e
				}
			}
			return t.names, order, false
		}
		for name, e := range s.listeners {
			i, _ := slices.BinarySearch(t.names, name)
			order[i] = e
		}
		return t.names, order, false
	}

	// Merge the kept names with the added ones, both sorted.
	n := len(t.names) + len(added)
	names, order := make([]string, 0, n), make([]*listenerEntry, 0, n)
	put := func(name string, e *listenerEntry) {
		names, order = append(names, name), append(order, e)
	}
	for i, name := range t.names {
		for len(added) > 0 && added[0] < name {
			put(added[0], s.listeners[added[0]])
			added = added[1:]
		}
		e, ok := s.listeners[name]
		switch {
		case !ok:
			put(name, t.order[i])
		case e != nil:
			put(name, e)
		}
	}
	for _, name := range added {
		put(name, s.listeners[name])
	}
	return names, order, true
}

// services returns the services of order's listeners, in order, and where
// each listener's start. Unless listeners came or went (moved) or changed
// their number of addresses, that is the last result with the fresh
// services written over their predecessors, which is much cheaper than
// putting 10,000 listeners' services together.
func (t *Translator) services(s *step, order []*listenerEntry, moved bool) ([]model.Service, []int) {
	if len(s.fresh) == 0 && !moved {
		return t.last.State.Services, t.offsets
	}
	patch := !moved && len(s.fresh) <= len(order)/16
	for name := range s.fresh {
		if !patch {
			break
		}
		patch = len(s.listeners[name].services) == len(t.listeners.get(name).services)
	}
	if patch {
		services := slices.Clone(t.last.State.Services)
		for name := range s.fresh {
			i, _ := slices.BinarySearch(t.names, name)
			copy(services[t.offsets[i]:], s.listeners[name].services)
		}
		return services, t.offsets
	}

	offsets := make([]int, len(order))
	n := 0
	for i, e := range order {
		offsets[i] = n
		n += len(e.services)
	}
	if n == 0 {
		return nil, offsets
	}
	services := make([]model.Service, 0, n)
	for _, e := range order {
		services = append(services, e.services...)
	}
	return services, offsets
}

// valid reports whether model.State.Validate would accept the services
// after s, of which there are n, looking only at what s changed: the
// changed services with ValidateService, and that each VIP:port/protocol is
// used once. It relies on Validate checking nothing more (as culprit does),
// and on the accepted services having passed it. It reports false when many
// services changed (a first translation), leaving the check to Validate.
// At 10,000 services Validate takes some 30 ms.
func (t *Translator) valid(s *step, n int) bool {
	fresh := 0
	for name := range s.fresh {
		fresh += len(s.listeners[name].services)
	}
	if fresh > n/4 {
		return false
	}
	for name := range s.fresh {
		svcs := s.listeners[name].services
		for i := range svcs {
			if model.ValidateService(i, &svcs[i]) != nil {
				return false
			}
		}
	}
	delta := keyDelta(s, &t.listeners)
	for k, d := range delta {
		if t.keys[k]+d > 1 {
			return false
		}
	}
	return true
}

// keyDelta returns how the number of services per key changes with s: only
// changed, added and removed listeners can change their addresses.
func keyDelta(s *step, accepted *memo[*listenerv3.Listener, *listenerEntry]) map[model.ServiceKey]int {
	delta := make(map[model.ServiceKey]int)
	add := func(e *listenerEntry, d int) {
		if e == nil {
			return
		}
		for _, ap := range e.plan.addrs {
			delta[model.ServiceKey{VIP: ap.Addr(), Port: ap.Port(), Protocol: e.plan.proto}] += d
		}
	}
	for _, name := range s.changed {
		add(accepted.get(name), -1)
		add(s.listeners[name], +1)
	}
	return delta
}

// commit makes s the accepted translation.
func (t *Translator) commit(s *step, names []string, order []*listenerEntry, offsets []int) {
	ignored := make(map[string]int)
	count := func(keys []string, d int) {
		for _, k := range keys {
			ignored[k] += d
		}
	}
	missing := make(map[string]int)
	countMissing := func(names []string, d int) {
		for _, m := range names {
			missing[m] += d
		}
	}

	if len(t.listeners.entries) == 0 {
		t.listeners.reserve(len(s.listeners))
		t.clusterUsers = make(map[string]map[string]struct{}, len(s.listeners))
		t.keys = make(map[model.ServiceKey]int, len(s.listeners))
	}
	if len(t.clusters.entries) == 0 {
		t.clusters.reserve(len(s.clusters))
		t.edsUsers = make(map[string]map[string]struct{}, len(s.clusters))
	}
	t.assignments.reserve(len(s.assignments))
	for k, d := range keyDelta(s, &t.listeners) {
		if n := t.keys[k] + d; n == 0 {
			delete(t.keys, k)
		} else {
			t.keys[k] = n
		}
	}
	for name, e := range s.listeners {
		old := t.listeners.get(name)
		if old != nil {
			countMissing(old.missing, -1)
		}
		if e != nil {
			countMissing(e.missing, +1)
		}
		if old != nil && e != nil && old.plan == e.plan {
			// Affected by a cluster or assignment only.
			t.listeners.put(name, e)
			continue
		}
		if old != nil {
			count(old.keys, -1)
			for _, pl := range old.plan.pools {
				removeUser(t.clusterUsers, pl.cluster, name)
			}
			t.listeners.remove(name)
		}
		if e != nil {
			count(e.keys, +1)
			for _, pl := range e.plan.pools {
				addUser(t.clusterUsers, pl.cluster, name)
			}
			t.listeners.put(name, e)
		}
	}
	for name, e := range s.clusters {
		if old := t.clusters.get(name); old != nil {
			count(old.keys, -1)
			if old.eds != "" {
				removeUser(t.edsUsers, old.eds, name)
			}
			t.clusters.remove(name)
		}
		if e != nil {
			count(e.keys, +1)
			if e.eds != "" {
				addUser(t.edsUsers, e.eds, name)
			}
			t.clusters.put(name, e)
		}
	}
	for name, e := range s.assignments {
		if old := t.assignments.get(name); old != nil {
			count(old.keys, -1)
			t.assignments.remove(name)
		}
		if e != nil {
			count(e.keys, +1)
			t.assignments.put(name, e)
		}
	}

	t.names, t.order, t.offsets = names, order, offsets
	// The Ignored and Missing of earlier results are never modified: they
	// are replaced when they change.
	maps.DeleteFunc(ignored, func(_ string, d int) bool { return d == 0 })
	if len(ignored) > 0 {
		next := maps.Clone(t.last.Ignored)
		for k, d := range ignored {
			if n := next[k] + d; n == 0 {
				delete(next, k)
			} else {
				next[k] = n
			}
		}
		t.last.Ignored = next
	}
	missingChanged := false
	for m, d := range missing {
		switch n := t.missing[m] + d; {
		case d == 0:
		case n == 0:
			delete(t.missing, m)
			missingChanged = true
		default:
			missingChanged = missingChanged || n == d
			t.missing[m] = n
		}
	}
	if missingChanged {
		t.last.Missing = nil
		if len(t.missing) > 0 {
			t.last.Missing = sortedKeys(t.missing)
		}
	}
}

func addUser(m map[string]map[string]struct{}, key, name string) {
	set := m[key]
	if set == nil {
		set = make(map[string]struct{}, 1)
		m[key] = set
	}
	set[name] = struct{}{}
}

func removeUser(m map[string]map[string]struct{}, key, name string) {
	set := m[key]
	delete(set, name)
	if len(set) == 0 {
		delete(m, key)
	}
}

// sameEndpoints reports whether a and b hold the same endpoints.
func sameEndpoints(a, b []model.Endpoint) bool {
	return slices.EqualFunc(a, b, func(x, y model.Endpoint) bool {
		if x.Workload != nil && y.Workload != nil {
			if *x.Workload != *y.Workload {
				return false
			}
		} else if x.Workload != y.Workload {
			return false
		}
		x.Workload, y.Workload = nil, nil
		return x == y
	})
}

// sameServices reports whether a and b are the same services with the same
// endpoint slices.
func sameServices(a, b []model.Service) bool {
	return slices.EqualFunc(a, b, func(x, y model.Service) bool {
		return x.Name == y.Name && x.VIP == y.VIP && x.Port == y.Port && x.Protocol == y.Protocol &&
			sameSlice(x.Endpoints, y.Endpoints) && (x.Splits == nil) == (y.Splits == nil) &&
			slices.EqualFunc(x.Splits, y.Splits, func(p, q model.Split) bool {
				return p.Name == q.Name && p.Weight == q.Weight && sameSlice(p.Endpoints, q.Endpoints)
			})
	})
}

// sameSlice reports whether a and b are the same slice of the same array.
func sameSlice[T any](a, b []T) bool {
	if len(a) != len(b) || (a == nil) != (b == nil) {
		return false
	}
	return len(a) == 0 || &a[0] == &b[0]
}
