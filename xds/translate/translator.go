package translate

import (
	"iter"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"weak"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"github.com/sluice-mesh/sluice/dataplane/model"
)

// Translator translates like Translate but remembers what it translated,
// so translating a set that differs from the previous one in a few resources
// costs in proportion to the difference (plus a pass over the maps of r to
// find it, and a copy of State.Services).
//
// It tells resources apart by pointer. A resource held under the same name
// and pointer as in the last accepted translation is taken to be unchanged
// and is neither checked nor translated again; so the caller changes a
// resource by handing over a new message. Handing over a new message with
// the same content is correct but costs a new check of that resource: a
// caller that receives a resource again unchanged should keep the old
// pointer. A message is read only while it is new, and must not be
// modified until its translation is accepted: after that the Translator
// keeps what it needs from it and never reads it again, nor keeps it alive
// (it remembers messages by weak pointer). A caller that tells every change
// in a Hint need not keep accepted messages at all (see Hint).
//
// Results share memory with each other and with the Translator: a service
// that did not change has the Endpoints, Splits and Policies slices (the
// same backing arrays) and the L7 it had in the previous result, services
// reading one route configuration share its routes, and State.Services,
// Ignored and Missing are those of the previous result when they did not
// change.
// Callers must not modify anything a Result holds.
//
// The Translator reuses the backing array of State.Services. A Result's
// State.Services stays valid until the Translator stages again after a
// later result was accepted: a result that is not accepted is valid until
// the next Stage (or Translate, TranslateHint, StagePrepared), an accepted
// one until the first Stage after the next accept. A caller that keeps a
// state longer must copy its Services (the services themselves may be kept:
// their slices are not reused).
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
	listeners   memo[listenerv3.Listener, *listenerEntry]
	clusters    memo[clusterv3.Cluster, *clusterEntry]
	assignments memo[endpointv3.ClusterLoadAssignment, *assignmentEntry]
	routes      memo[routev3.RouteConfiguration, *routeEntry]

	// clusterUsers names, per cluster name, the listeners whose services
	// resolve it (with a pool of it, or whose routes name it), whether it
	// exists or not; edsUsers names, per assignment name, the EDS clusters
	// reading it; rdsUsers, per route configuration name, the listeners
	// reading it through RDS, whether it exists or not. They say which
	// listeners a changed cluster, assignment or route configuration
	// affects.
	clusterUsers users
	edsUsers     users
	rdsUsers     users

	names   []string                 // the listener names, sorted; never modified
	order   []*listenerEntry         // listeners[names[i]]; never modified
	offsets []int                    // where order[i]'s services start in last.State.Services; never modified
	keys    map[model.ServiceKey]int // services per key, all 1 (what Validate checks across services)
	missing map[string]int           // per Result.Missing name, how many pools need it
	last    Result                   // of the last accepted translation

	// spare is the backing array of the Services of the accepted result
	// before last, which no Result the caller may still use refers to
	// (see Result): a new state's services are written into it rather
	// than into a new array, so a change costs no allocation of the size
	// of the state.
	spare []model.Service
}

// memo holds the accepted resources of one type, messages of type M.
type memo[M any, E entry[M]] struct {
	entries map[string]E
	// names holds the name of each accepted message. Finding out whether a
	// resource is unchanged is the one thing done for every resource on
	// every call without a hint, and finding a message by pointer (with the
	// name alongside) is several times cheaper than by name: it reads
	// neither the name nor the entry. The pointers are weak: the Translator
	// does not keep messages alive, and a weak pointer never equals one
	// made from another message, even one at the address of a freed one.
	names map[weak.Pointer[M]]string
}

type entry[M any] interface{ message() weak.Pointer[M] }

func newMemo[M any, E entry[M]]() memo[M, E] {
	return memo[M, E]{entries: make(map[string]E), names: make(map[weak.Pointer[M]]string)}
}

// reserve makes room for n entries in an empty m, to fill it in one go.
func (m *memo[M, E]) reserve(n int) {
	if len(m.entries) == 0 {
		m.entries, m.names = make(map[string]E, n), make(map[weak.Pointer[M]]string, n)
	}
}

// get returns the accepted entry named name, or nil.
func (m *memo[M, E]) get(name string) E { return m.entries[name] }

func (m *memo[M, E]) put(name string, e E) {
	m.remove(name)
	m.entries[name] = e
	if id := e.message(); id != (weak.Pointer[M]{}) {
		m.names[id] = name // not for a prepared resource: it has no message
	}
}

func (m *memo[M, E]) remove(name string) {
	if old, ok := m.entries[name]; ok {
		if id := old.message(); id != (weak.Pointer[M]{}) {
			delete(m.names, id)
		}
		delete(m.entries, name)
	}
}

// diff returns, sorted, the names in now that m does not hold with the
// same message (changed or added), and the names m holds that now does not
// (removed).
func (m *memo[M, E]) diff(now map[string]*M) (changed, removed []string) {
	found := 0
	for name, msg := range now {
		if n, ok := m.names[weak.Make(msg)]; ok && n == name {
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
func diffWith[M any, E entry[M]](m *memo[M, E], now map[string]*M, h *Hint, names func(*Hint) []string) (changed, removed []string) {
	if h == nil {
		return m.diff(now)
	}
	return m.diffNames(now, names(h))
}

// diffNames is diff restricted to names: only they can differ from m.
func (m *memo[M, E]) diffNames(now map[string]*M, names []string) (changed, removed []string) {
	for _, name := range names {
		msg, inNow := now[name]
		_, inMemo := m.entries[name]
		switch {
		case inNow:
			if n, ok := m.names[weak.Make(msg)]; !ok || n != name {
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
// last accepted translation: changed, added or removed. With a hint the
// translator skips its pass over all resources to find the differences and
// reads only the named resources of a Resources: every other resource is
// taken to be as it was in the last accepted translation, whether or not
// the maps hold it. So a caller that tracks its changes exactly hands over
// just the changed resources, and can drop each message once its
// translation is accepted.
type Hint struct {
	Listeners, Clusters, Endpoints, Routes []string
}

// listenerEntry is an accepted listener and the services it gave.
type listenerEntry struct {
	msg      weak.Pointer[listenerv3.Listener]
	plan     *listenerPlan
	keys     []string        // Ignored keys it sets
	services []model.Service // never modified
	missing  []string        // Result.Missing names its services need, with repeats
	// routeClusters are, for an L7 listener, the clusters its routes name
	// (of the routes it has in this translation). Never modified.
	routeClusters []string
}

func (e *listenerEntry) message() weak.Pointer[listenerv3.Listener] { return e.msg }

// clusters returns the number of clusters e's services resolve, and the
// name of the i-th: its plan's pools, or the clusters its routes name.
func (e *listenerEntry) clusters() (int, func(i int) string) {
	if e.plan.l7 != nil {
		return len(e.routeClusters), func(i int) string { return e.routeClusters[i] }
	}
	return len(e.plan.pools), func(i int) string { return e.plan.pools[i].cluster }
}

// addUsers adds e, the entry of listener name, to the users of the
// clusters and route configuration it reads; removeUsers removes it.
func (t *Translator) addUsers(name string, e *listenerEntry) {
	n, cluster := e.clusters()
	for i := range n {
		t.clusterUsers.add(cluster(i), name)
	}
	if l7 := e.plan.l7; l7 != nil && l7.rds != "" {
		t.rdsUsers.add(l7.rds, name)
	}
}

func (t *Translator) removeUsers(name string, e *listenerEntry) {
	n, cluster := e.clusters()
	for i := range n {
		t.clusterUsers.remove(cluster(i), name)
	}
	if l7 := e.plan.l7; l7 != nil && l7.rds != "" {
		t.rdsUsers.remove(l7.rds, name)
	}
}

// clusterEntry is an accepted cluster.
type clusterEntry struct {
	msg      weak.Pointer[clusterv3.Cluster]
	eds      string     // EDS: the assignment name
	static   *endpoints // STATIC: the inline load_assignment
	protocol model.UpstreamProtocol
	keys     []string
}

func (e *clusterEntry) message() weak.Pointer[clusterv3.Cluster] { return e.msg }

// routeEntry is an accepted RouteConfiguration.
type routeEntry struct {
	msg  weak.Pointer[routev3.RouteConfiguration]
	plan routePlan
	keys []string
}

func (e *routeEntry) message() weak.Pointer[routev3.RouteConfiguration] { return e.msg }

// assignmentEntry is an accepted ClusterLoadAssignment.
type assignmentEntry struct {
	msg  weak.Pointer[endpointv3.ClusterLoadAssignment]
	eps  *endpoints
	keys []string
}

func (e *assignmentEntry) message() weak.Pointer[endpointv3.ClusterLoadAssignment] { return e.msg }

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
		listeners:    newMemo[listenerv3.Listener, *listenerEntry](),
		clusters:     newMemo[clusterv3.Cluster, *clusterEntry](),
		assignments:  newMemo[endpointv3.ClusterLoadAssignment, *assignmentEntry](),
		routes:       newMemo[routev3.RouteConfiguration, *routeEntry](),
		clusterUsers: newUsers(0),
		edsUsers:     newUsers(0),
		rdsUsers:     newUsers(0),
		keys:         make(map[model.ServiceKey]int),
		missing:      make(map[string]int),
		last:         Result{Ignored: map[string]int{}},
	}
}

// step is one translation in progress: what differs from the last accepted
// one. A nil entry is a resource that is gone.
type step struct {
	listeners   map[string]*listenerEntry // changed, added, removed, or affected by a changed cluster, assignment or route configuration
	clusters    map[string]*clusterEntry  // changed, added or removed
	assignments map[string]*assignmentEntry
	routes      map[string]*routeEntry

	changed []string        // listeners changed, added or removed, sorted: their addresses may differ
	fresh   map[string]bool // listeners whose services differ from the accepted ones
}

// Translate returns what the package's Translate returns for r, the same
// error included, translating again only what differs from the last
// accepted call: the resources whose pointer changed, and the services of
// listeners using a cluster, assignment or route configuration that
// changed, arrived or went.
func (t *Translator) Translate(r Resources) (Result, error) {
	return t.TranslateHint(r, nil)
}

// TranslateHint is Translate told which resources may have changed (nil
// means any may have). A wrong hint gives a wrong result: use it only when
// the changes are tracked exactly.
func (t *Translator) TranslateHint(r Resources, h *Hint) (Result, error) {
	res, accept, err := t.Stage(r, h)
	if err != nil {
		return Result{}, err
	}
	accept()
	return res, nil
}

// Stage is TranslateHint without making the translation the accepted one:
// the Translator is as it was until accept is called, which a caller does
// once it has put the result to use (and does not if that failed, so the
// next translation is compared with the last accepted one again). accept
// must be called at most once, and not after another call to Stage,
// TranslateHint or Translate.
func (t *Translator) Stage(r Resources, h *Hint) (res Result, accept func(), err error) {
	var p Preparer
	lc, lr := diffWith(&t.listeners, r.Listeners, h, func(h *Hint) []string { return h.Listeners })
	cc, cr := diffWith(&t.clusters, r.Clusters, h, func(h *Hint) []string { return h.Clusters })
	ac, ar := diffWith(&t.assignments, r.Endpoints, h, func(h *Hint) []string { return h.Endpoints })
	rc, rr := diffWith(&t.routes, r.Routes, h, func(h *Hint) []string { return h.Routes })
	return t.stage(
		input[listenerv3.Listener]{lc, lr, func(name string) (*Prepared, weak.Pointer[listenerv3.Listener]) {
			l := r.Listeners[name]
			return p.Listener(name, l), weak.Make(l)
		}},
		input[clusterv3.Cluster]{cc, cr, func(name string) (*Prepared, weak.Pointer[clusterv3.Cluster]) {
			c := r.Clusters[name]
			return p.Cluster(name, c), weak.Make(c)
		}},
		input[endpointv3.ClusterLoadAssignment]{ac, ar, func(name string) (*Prepared, weak.Pointer[endpointv3.ClusterLoadAssignment]) {
			a := r.Endpoints[name]
			return p.Assignment(name, a), weak.Make(a)
		}},
		input[routev3.RouteConfiguration]{rc, rr, func(name string) (*Prepared, weak.Pointer[routev3.RouteConfiguration]) {
			c := r.Routes[name]
			return p.Route(name, c), weak.Make(c)
		}},
	)
}

// Prepared is one resource checked and translated on its own, for
// StagePrepared: the part of translating that needs nothing but the
// resource, and most of the cost. A caller can prepare many resources at
// once on several goroutines, and let go of each message once prepared.
type Prepared struct {
	err     *ResourceError
	keys    []string         // Ignored keys it sets
	plan    *listenerPlan    // Listener
	cluster clusterPlan      // Cluster
	eps     []model.Endpoint // ClusterLoadAssignment
	routes  routePlan        // RouteConfiguration
}

// Err returns why the resource is refused, or nil. StagePrepared refuses
// it with this error (unless it finds an earlier one).
func (p *Prepared) Err() error {
	if p.err == nil {
		return nil
	}
	return p.err
}

// Preparer prepares resources. The zero Preparer is ready for use; one is
// not safe for concurrent use (use one per goroutine).
type Preparer struct{ tl *tally }

func (p *Preparer) tally() *tally {
	if p.tl == nil {
		p.tl = newTally()
	}
	return p.tl
}

// Listener prepares a listener.
func (p *Preparer) Listener(name string, l *listenerv3.Listener) *Prepared {
	tl := p.tally()
	plan, err := tl.listener(name, l)
	keys := tl.take()
	if err != nil {
		return &Prepared{err: err.resource("Listener", name)}
	}
	return &Prepared{plan: plan, keys: keys}
}

// Cluster prepares a cluster.
func (p *Preparer) Cluster(name string, c *clusterv3.Cluster) *Prepared {
	tl := p.tally()
	plan, err := tl.cluster(name, c)
	keys := tl.take()
	if err != nil {
		return &Prepared{err: err.resource("Cluster", name)}
	}
	return &Prepared{cluster: plan, keys: keys}
}

// Assignment prepares a ClusterLoadAssignment.
func (p *Preparer) Assignment(name string, a *endpointv3.ClusterLoadAssignment) *Prepared {
	tl := p.tally()
	eps, err := tl.assignment(name, a)
	keys := tl.take()
	if err != nil {
		return &Prepared{err: err.resource("ClusterLoadAssignment", name)}
	}
	return &Prepared{eps: eps, keys: keys}
}

// Route prepares a RouteConfiguration.
func (p *Preparer) Route(name string, rc *routev3.RouteConfiguration) *Prepared {
	tl := p.tally()
	routes, err := tl.routeConfig(name, rc)
	keys := tl.take()
	if err != nil {
		return &Prepared{err: err.resource("RouteConfiguration", name)}
	}
	return &Prepared{routes: newRoutePlan(routes), keys: keys}
}

// PreparedResources holds prepared resources by type and name.
type PreparedResources struct {
	Listeners, Clusters, Endpoints, Routes map[string]*Prepared
}

// StagePrepared is Stage given prepared resources and the exact changes
// since the last accepted translation: h names every resource changed,
// added or removed, and p holds those of them that are (still) there. What
// h does not name is taken to be as it was; what h names and p does not
// hold is gone. The result is what Stage gives for the same resources.
// Resources accepted this way have no message to be compared with: a later
// Stage without a hint translates every resource it is given again.
func (t *Translator) StagePrepared(p PreparedResources, h Hint) (res Result, accept func(), err error) {
	lc, lr := preparedChanges(&t.listeners, p.Listeners, h.Listeners)
	cc, cr := preparedChanges(&t.clusters, p.Clusters, h.Clusters)
	ac, ar := preparedChanges(&t.assignments, p.Endpoints, h.Endpoints)
	rc, rr := preparedChanges(&t.routes, p.Routes, h.Routes)
	return t.stage(
		input[listenerv3.Listener]{lc, lr, func(name string) (*Prepared, weak.Pointer[listenerv3.Listener]) {
			return p.Listeners[name], weak.Pointer[listenerv3.Listener]{}
		}},
		input[clusterv3.Cluster]{cc, cr, func(name string) (*Prepared, weak.Pointer[clusterv3.Cluster]) {
			return p.Clusters[name], weak.Pointer[clusterv3.Cluster]{}
		}},
		input[endpointv3.ClusterLoadAssignment]{ac, ar, func(name string) (*Prepared, weak.Pointer[endpointv3.ClusterLoadAssignment]) {
			return p.Endpoints[name], weak.Pointer[endpointv3.ClusterLoadAssignment]{}
		}},
		input[routev3.RouteConfiguration]{rc, rr, func(name string) (*Prepared, weak.Pointer[routev3.RouteConfiguration]) {
			return p.Routes[name], weak.Pointer[routev3.RouteConfiguration]{}
		}},
	)
}

// preparedChanges sorts the hinted names into changed (held by have) and
// removed (accepted and not held).
func preparedChanges[M any, E entry[M]](m *memo[M, E], have map[string]*Prepared, names []string) (changed, removed []string) {
	for _, name := range names {
		if p := have[name]; p != nil {
			changed = append(changed, name)
		} else if _, ok := m.entries[name]; ok {
			removed = append(removed, name)
		}
	}
	slices.Sort(changed)
	slices.Sort(removed)
	return slices.Compact(changed), slices.Compact(removed)
}

// input is what changed in one type: the names changed (or added) and
// removed, sorted, and how to get a changed one prepared, with the weak
// pointer to its message (zero if there is none).
type input[M any] struct {
	changed, removed []string
	get              func(name string) (*Prepared, weak.Pointer[M])
}

func (t *Translator) stage(li input[listenerv3.Listener], ci input[clusterv3.Cluster], ai input[endpointv3.ClusterLoadAssignment], ri input[routev3.RouteConfiguration]) (res Result, accept func(), err error) {
	if t.keys == nil {
		*t = *NewTranslator()
	}
	s := &step{fresh: make(map[string]bool)}

	// Resources are checked in the order Translate checks them, so the
	// first refused is the one Translate reports: those not checked again
	// were accepted before and are accepted now.
	s.listeners = make(map[string]*listenerEntry, len(li.changed)+len(li.removed))
	for _, name := range li.changed {
		p, id := li.get(name)
		if p.err != nil {
			return Result{}, nil, p.err
		}
		s.listeners[name] = &listenerEntry{msg: id, plan: p.plan, keys: p.keys}
	}
	for _, name := range li.removed {
		s.listeners[name] = nil
	}
	s.changed = append(slices.Clone(li.changed), li.removed...)
	slices.Sort(s.changed)

	s.clusters = make(map[string]*clusterEntry, len(ci.changed)+len(ci.removed))
	for _, name := range ci.changed {
		p, id := ci.get(name)
		if p.err != nil {
			return Result{}, nil, p.err
		}
		plan := p.cluster
		e := &clusterEntry{msg: id, eds: plan.eds, protocol: plan.protocol, keys: p.keys}
		if plan.eds == "" {
			e.static = &endpoints{all: plan.static}
			if old := t.clusters.get(name); old != nil && old.static != nil && sameEndpoints(old.static.all, plan.static) {
				e.static = old.static
			}
		}
		s.clusters[name] = e
	}
	for _, name := range ci.removed {
		s.clusters[name] = nil
	}

	s.assignments = make(map[string]*assignmentEntry, len(ai.changed)+len(ai.removed))
	for _, name := range ai.changed {
		p, id := ai.get(name)
		if p.err != nil {
			return Result{}, nil, p.err
		}
		e := &assignmentEntry{msg: id, eps: &endpoints{all: p.eps}, keys: p.keys}
		// A control plane often sends an assignment again as it was:
		// keeping the old endpoints keeps the services using them unchanged.
		if old := t.assignments.get(name); old != nil && sameEndpoints(old.eps.all, p.eps) {
			e.eps = old.eps
		}
		s.assignments[name] = e
	}
	for _, name := range ai.removed {
		s.assignments[name] = nil
	}

	s.routes = make(map[string]*routeEntry, len(ri.changed)+len(ri.removed))
	for _, name := range ri.changed {
		p, id := ri.get(name)
		if p.err != nil {
			return Result{}, nil, p.err
		}
		s.routes[name] = &routeEntry{msg: id, plan: p.routes, keys: p.keys}
	}
	for _, name := range ri.removed {
		s.routes[name] = nil
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
			return Result{}, nil, err
		}
	}

	out := t.outcome(s)
	res = Result{State: model.State{Services: services, Peers: t.peers(s)}, Ignored: out.ignored, Missing: out.missing}
	return res, func() {
		t.commit(s, names, order, offsets, out)
		if prev := t.last.State.Services; cap(prev) > 0 && !shareArray(prev, res.State.Services) {
			t.spare = prev[:cap(prev)]
		}
		t.last = res
	}, nil
}

// peers returns the State.Peers after s: the last result's, unless a
// workload directory changed, came or went.
func (t *Translator) peers(s *step) []model.Peer {
	changed := false
	for name := range s.assignments {
		changed = changed || IsDirectory(name)
	}
	if !changed {
		return t.last.State.Peers
	}
	var names []string
	for name := range t.assignments.entries {
		if _, ok := s.assignments[name]; !ok && IsDirectory(name) {
			names = append(names, name)
		}
	}
	for name, e := range s.assignments {
		if e != nil && IsDirectory(name) {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	var peers []model.Peer
	for _, name := range names {
		e, ok := s.assignments[name]
		if !ok {
			e = t.assignments.get(name)
		}
		peers = appendPeers(peers, e.eps.all)
	}
	return peers
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
// change: those resolving a cluster that changed, arrived or went, or whose
// EDS assignment did, and those reading a route configuration that did.
func (t *Translator) affected(s *step) {
	touch := func(listeners iter.Seq[string]) {
		for name := range listeners {
			if _, ok := s.listeners[name]; ok {
				continue
			}
			old := t.listeners.get(name)
			s.listeners[name] = &listenerEntry{msg: old.msg, plan: old.plan, keys: old.keys}
		}
	}
	for name := range s.clusters {
		touch(t.clusterUsers.of(name))
	}
	for name := range s.assignments {
		// Clusters that changed are touched above, with their new
		// assignment names.
		for cluster := range t.edsUsers.of(name) {
			touch(t.clusterUsers.of(cluster))
		}
	}
	// A listener whose routes changed may resolve other clusters now; it
	// resolves them against s, so the clusters and assignments that changed
	// along with the routes are seen.
	for name := range s.routes {
		touch(t.rdsUsers.of(name))
	}
}

// assemble gives e the services and missing names it has in s, keeping the
// accepted services if they are the same.
func (t *Translator) assemble(s *step, name string, e *listenerEntry) {
	p := e.plan
	var rp routePlan
	if p.l7 != nil {
		rp = p.l7.inline
		if p.l7.rds != "" {
			rp, e.missing = s.route(t, p.l7.rds, e.missing)
		}
		e.routeClusters = rp.clusters
	}
	n, cluster := e.clusters()
	sets := make([]*endpoints, n)
	protocols := make([]model.UpstreamProtocol, n)
	for i := range n {
		sets[i], protocols[i], e.missing = s.resolve(t, cluster(i), e.missing)
	}
	dualStack := len(p.addrs) > 1
	e.services = appendServices(make([]model.Service, 0, len(p.addrs)), p, rp, func(i int, vip netip.Addr) []model.Endpoint {
		return sets[i].of(vip, dualStack)
	}, func(i int) model.UpstreamProtocol { return protocols[i] })
	if old := t.listeners.get(name); old != nil && sameServices(old.services, e.services) {
		e.services = old.services
		return
	}
	s.fresh[name] = true
}

// resolve returns the endpoints and upstream protocol of cluster in s, or
// nil and missing with what is missing added, as Translate's assemble
// does.
func (s *step) resolve(t *Translator, cluster string, missing []string) (*endpoints, model.UpstreamProtocol, []string) {
	c, ok := s.clusters[cluster]
	if !ok {
		c = t.clusters.get(cluster)
	}
	if c == nil {
		return nil, 0, append(missing, "Cluster/"+cluster)
	}
	if c.eds == "" {
		return c.static, c.protocol, missing
	}
	a, ok := s.assignments[c.eds]
	if !ok {
		a = t.assignments.get(c.eds)
	}
	if a == nil {
		return nil, c.protocol, append(missing, "ClusterLoadAssignment/"+c.eds)
	}
	return a.eps, c.protocol, missing
}

// route returns the routes of the route configuration name in s, or none
// and missing with it added, as Translate's assemble does.
func (s *step) route(t *Translator, name string, missing []string) (routePlan, []string) {
	r, ok := s.routes[name]
	if !ok {
		r = t.routes.get(name)
	}
	if r == nil {
		return missingRoutes(name), append(missing, "RouteConfiguration/"+name)
	}
	return r.plan, missing
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
		services := t.buffer(len(t.last.State.Services))
		copy(services, t.last.State.Services)
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
	services := t.buffer(n)[:0]
	for _, e := range order {
		services = append(services, e.services...)
	}
	return services, offsets
}

// shareArray reports whether a and b start at the same array element.
func shareArray(a, b []model.Service) bool {
	return cap(a) > 0 && cap(b) > 0 && &a[:1][0] == &b[:1][0]
}

// buffer returns a slice of n services to fill: the spare one (see
// Translator.spare) when it is large enough, else a new one.
func (t *Translator) buffer(n int) []model.Service {
	if cap(t.spare) < n {
		return make([]model.Service, n)
	}
	b := t.spare[:n]
	clear(t.spare[n:cap(t.spare)]) // holds no endpoints of older states alive
	return b
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
func keyDelta(s *step, accepted *memo[listenerv3.Listener, *listenerEntry]) map[model.ServiceKey]int {
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

// outcome is what accepting a step changes beyond the resources: the
// Ignored and Missing of its result, and the pool counts behind Missing.
type outcome struct {
	ignored      map[string]int // Result.Ignored; the accepted one when unchanged
	missing      []string       // Result.Missing; the accepted one when unchanged
	missingCount map[string]int // per missing name, how many pools need it; the accepted one when unchanged
}

// outcome works out, without changing t, what accepting s gives.
func (t *Translator) outcome(s *step) outcome {
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
	for name, e := range s.listeners {
		old := t.listeners.get(name)
		if old != nil {
			countMissing(old.missing, -1)
		}
		if e != nil {
			countMissing(e.missing, +1)
		}
		if old != nil && e != nil && old.plan == e.plan {
			continue // affected by a cluster or assignment only
		}
		if old != nil {
			count(old.keys, -1)
		}
		if e != nil {
			count(e.keys, +1)
		}
	}
	for name, e := range s.clusters {
		if old := t.clusters.get(name); old != nil {
			count(old.keys, -1)
		}
		if e != nil {
			count(e.keys, +1)
		}
	}
	for name, e := range s.assignments {
		if old := t.assignments.get(name); old != nil {
			count(old.keys, -1)
		}
		if e != nil {
			count(e.keys, +1)
		}
	}
	for name, e := range s.routes {
		if old := t.routes.get(name); old != nil {
			count(old.keys, -1)
		}
		if e != nil {
			count(e.keys, +1)
		}
	}

	// The Ignored and Missing of earlier results are never modified: they
	// are replaced when they change.
	out := outcome{ignored: t.last.Ignored, missing: t.last.Missing, missingCount: t.missing}
	maps.DeleteFunc(ignored, func(_ string, d int) bool { return d == 0 })
	if len(ignored) > 0 {
		out.ignored = maps.Clone(t.last.Ignored)
		for k, d := range ignored {
			if n := out.ignored[k] + d; n == 0 {
				delete(out.ignored, k)
			} else {
				out.ignored[k] = n
			}
		}
	}
	maps.DeleteFunc(missing, func(_ string, d int) bool { return d == 0 })
	if len(missing) > 0 {
		out.missingCount = maps.Clone(t.missing)
		changed := false
		for m, d := range missing {
			switch n := out.missingCount[m] + d; {
			case n == 0:
				delete(out.missingCount, m)
				changed = true
			default:
				changed = changed || n == d
				out.missingCount[m] = n
			}
		}
		if changed {
			out.missing = nil
			if len(out.missingCount) > 0 {
				out.missing = sortedKeys(out.missingCount)
			}
		}
	}
	return out
}

// commit makes s, with the outcome t.outcome(s) gave, the accepted
// translation.
func (t *Translator) commit(s *step, names []string, order []*listenerEntry, offsets []int, out outcome) {
	if len(t.listeners.entries) == 0 {
		t.listeners.reserve(len(s.listeners))
		t.clusterUsers = newUsers(len(s.listeners))
		t.keys = make(map[model.ServiceKey]int, len(s.listeners))
	}
	if len(t.clusters.entries) == 0 {
		t.clusters.reserve(len(s.clusters))
		t.edsUsers = newUsers(len(s.clusters))
	}
	t.assignments.reserve(len(s.assignments))
	t.routes.reserve(len(s.routes))
	for k, d := range keyDelta(s, &t.listeners) {
		if n := t.keys[k] + d; n == 0 {
			delete(t.keys, k)
		} else {
			t.keys[k] = n
		}
	}
	for name, e := range s.listeners {
		old := t.listeners.get(name)
		if old != nil && e != nil && old.plan == e.plan {
			// Affected by a cluster, assignment or route configuration
			// only: its routes may name other clusters now.
			if !slices.Equal(old.routeClusters, e.routeClusters) {
				t.removeUsers(name, old)
				t.addUsers(name, e)
			}
			t.listeners.put(name, e)
			continue
		}
		if old != nil {
			t.removeUsers(name, old)
			t.listeners.remove(name)
		}
		if e != nil {
			t.addUsers(name, e)
			t.listeners.put(name, e)
		}
	}
	for name, e := range s.clusters {
		if old := t.clusters.get(name); old != nil {
			if old.eds != "" {
				t.edsUsers.remove(old.eds, name)
			}
			t.clusters.remove(name)
		}
		if e != nil {
			if e.eds != "" {
				t.edsUsers.add(e.eds, name)
			}
			t.clusters.put(name, e)
		}
	}
	for name, e := range s.assignments {
		t.assignments.remove(name)
		if e != nil {
			t.assignments.put(name, e)
		}
	}
	for name, e := range s.routes {
		t.routes.remove(name)
		if e != nil {
			t.routes.put(name, e)
		}
	}
	t.names, t.order, t.offsets = names, order, offsets
	t.missing = out.missingCount
}

// EDSNames returns, sorted, the assignment names the accepted clusters
// need, as EDSNames does for the resources of the last accepted
// translation.
func (t *Translator) EDSNames() []string {
	return t.edsUsers.keys()
}

// RDSNames returns, sorted, the route configuration names the accepted
// listeners refer to, as RDSNames does for the resources of the last
// accepted translation.
func (t *Translator) RDSNames() []string {
	return t.rdsUsers.keys()
}

// users holds, per name, the set of names using it. Most names have one
// user, which is kept without a set of its own: with 10,000 clusters, a
// set each would be a good part of the Translator's memory.
type users struct {
	one  map[string]string              // names with one user
	many map[string]map[string]struct{} // names with more (or, after removals, fewer)
}

func newUsers(n int) users {
	return users{one: make(map[string]string, n), many: make(map[string]map[string]struct{})}
}

func (u *users) add(key, name string) {
	if set, ok := u.many[key]; ok {
		set[name] = struct{}{}
		return
	}
	first, ok := u.one[key]
	switch {
	case !ok:
		u.one[key] = name
	case first != name:
		delete(u.one, key)
		u.many[key] = map[string]struct{}{first: {}, name: {}}
	}
}

func (u *users) remove(key, name string) {
	if set, ok := u.many[key]; ok {
		delete(set, name)
		if len(set) == 0 {
			delete(u.many, key)
		}
		return
	}
	if u.one[key] == name {
		delete(u.one, key)
	}
}

// keys returns, sorted, the names that have users.
func (u *users) keys() []string {
	names := make([]string, 0, len(u.one)+len(u.many))
	for name := range u.one {
		names = append(names, name)
	}
	for name := range u.many {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

// of returns the users of key.
func (u *users) of(key string) iter.Seq[string] {
	return func(yield func(string) bool) {
		if name, ok := u.one[key]; ok {
			yield(name)
			return
		}
		for name := range u.many[key] {
			if !yield(name) {
				return
			}
		}
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
// endpoint slices, equal policies and the same routes.
func sameServices(a, b []model.Service) bool {
	return slices.EqualFunc(a, b, func(x, y model.Service) bool {
		return x.Name == y.Name && x.VIP == y.VIP && x.Port == y.Port && x.Protocol == y.Protocol && x.FastPath == y.FastPath &&
			samePolicies(x.Policies, y.Policies) && sameL7(x.L7, y.L7) &&
			sameSlice(x.Endpoints, y.Endpoints) && (x.Splits == nil) == (y.Splits == nil) &&
			slices.EqualFunc(x.Splits, y.Splits, func(p, q model.Split) bool {
				return p.Name == q.Name && p.Weight == q.Weight && sameSlice(p.Endpoints, q.Endpoints)
			})
	})
}

// sameL7 reports whether a and b are the same L7 serving: the same routes
// (the same translation of a route configuration, or both the routes of one
// that is missing), equal policies, and the same clusters with the same
// endpoint slices and upstream protocols.
func sameL7(a, b *model.L7) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.RouteConfig == b.RouteConfig && sameRoutes(a.Routes, b.Routes) && samePolicies(a.Policies, b.Policies) &&
		(a.Clusters == nil) == (b.Clusters == nil) &&
		slices.EqualFunc(a.Clusters, b.Clusters, func(p, q model.Cluster) bool {
			return p.Name == q.Name && p.Protocol == q.Protocol && sameSlice(p.Endpoints, q.Endpoints)
		})
}

// sameRoutes reports whether a and b are the same translation, or both
// the empty routes of a missing route configuration (missingRoutes), which
// are made anew each time.
func sameRoutes(a, b *model.HTTPRoutes) bool {
	return a == b || a.VirtualHosts == nil && b.VirtualHosts == nil && a.Name == b.Name && a.IgnorePort == b.IgnorePort
}

// samePolicies reports whether a and b are equal policies. A listener
// whose policies did not change shares them with its accepted services, so
// only a changed listener with policies pays for a deep comparison.
func samePolicies(a, b []model.Policy) bool {
	if len(a) != len(b) || (a == nil) != (b == nil) {
		return false
	}
	return len(a) == 0 || &a[0] == &b[0] || reflect.DeepEqual(a, b)
}

// sameSlice reports whether a and b are the same slice of the same array.
func sameSlice[T any](a, b []T) bool {
	if len(a) != len(b) || (a == nil) != (b == nil) {
		return false
	}
	return len(a) == 0 || &a[0] == &b[0]
}
