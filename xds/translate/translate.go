// Package translate turns Envoy v3 xDS resources into Sluice's desired
// dataplane state. It is pure: no I/O, no globals, deterministic.
package translate

import (
	"net/netip"
	"slices"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"github.com/sluice-mesh/sluice/dataplane/model"
)

// Resources is the complete set of xDS resources a client holds, by name.
// Translate never modifies it.
type Resources struct {
	Listeners map[string]*listenerv3.Listener
	Clusters  map[string]*clusterv3.Cluster
	Endpoints map[string]*endpointv3.ClusterLoadAssignment // by cluster_name / EDS service_name
	Routes    map[string]*routev3.RouteConfiguration
}

// Result is the translation of a Resources.
type Result struct {
	// State is the desired dataplane state; it passes model.State.Validate.
	State model.State
	// Ignored counts, per field path (e.g. "Cluster.connect_timeout"), the
	// resources in which a field was set that Sluice accepts but does not act
	// on because it does not change connect-time routing.
	Ignored map[string]int
	// Missing lists, sorted, the clusters, cluster load assignments and
	// route configurations that a listener needs and that are not present
	// yet (an EDS cluster whose assignment has not arrived, a cluster or
	// RDS route configuration not yet sent), as "Cluster/<name>",
	// "ClusterLoadAssignment/<name>" and "RouteConfiguration/<name>".
	// Services using them have no endpoints from them in State; an L7
	// service whose route configuration is missing has routes of that name
	// without a virtual host, so no request has a route. A client may wait
	// for them before applying State, as Envoy does while warming.
	Missing []string
}

// ResourceError is a resource Sluice refuses: it names the resource and the
// field, so a control plane operator can find it (it is sent back as the
// NACK's error_detail).
type ResourceError struct {
	Type   string // "Listener", "Cluster", "ClusterLoadAssignment", "RouteConfiguration", or "HTTP RBAC" (TranslateHTTPRBAC)
	Name   string // resource name
	Field  string // path within the resource, e.g. "filter_chains[0].filters[0].typed_config"
	Reason string
}

func (e *ResourceError) Error() string {
	s := e.Type + " " + quote(e.Name)
	if e.Field != "" {
		s += ": " + e.Field
	}
	return s + ": " + e.Reason
}

func quote(s string) string { return `"` + s + `"` }

// EDSNames returns, sorted, the ClusterLoadAssignment names the clusters in
// r need: the EDS service name (or cluster name) of every EDS cluster. A
// client subscribes to exactly these.
func EDSNames(r Resources) []string {
	var names []string
	for name, c := range r.Clusters {
		if c.GetType() == clusterv3.Cluster_EDS {
			names = append(names, edsName(name, c.GetEdsClusterConfig()))
		}
	}
	slices.Sort(names)
	return slices.Compact(names)
}

// RDSNames returns, sorted, the RouteConfiguration names the listeners in r
// refer to through RDS.
func RDSNames(r Resources) []string {
	var names []string
	for _, l := range r.Listeners {
		names = routeConfigNames(l, names)
	}
	slices.Sort(names)
	return slices.Compact(names)
}

// Translate returns the dataplane state r describes, or a *ResourceError for
// the first resource (in name order, listeners first, then clusters, then
// assignments, then route configurations) that Sluice cannot honour. It
// never panics, whatever r holds.
//
// Every resource in r is checked, also those no listener uses, so a client
// NACKs a bad resource when it arrives rather than when it is first used.
// Services are ordered by listener name, then by address (the main address,
// then additional_addresses in order); endpoints keep the order of their
// assignment. A listener with several addresses (dual-stack) gives each of
// its services the endpoints of that service's address family only; with one
// address, an endpoint of the other family is an error (for an L4 service:
// an L7 service's clusters are reached by the L7 proxy, which connects
// afresh).
//
// A listener with an http_connection_manager is an L7 service (Service.L7):
// its routes come inline or from the RouteConfiguration it names (RDS), its
// clusters are every cluster its routes name, sorted, each with its
// endpoints resolved as a tcp_proxy's cluster is and the upstream protocol
// the cluster's HTTP protocol options say, and it has no endpoints of its
// own.
//
// The endpoints of the workload directories (IsDirectory), in name order,
// are State.Peers.
//
// Translate checks and translates everything in r, every time: a client
// that translates its resources after every change uses a Translator.
func Translate(r Resources) (Result, error) {
	t := newTally()
	plans := make([]*listenerPlan, 0, len(r.Listeners))
	for _, name := range sortedKeys(r.Listeners) {
		p, err := t.listener(name, r.Listeners[name])
		if err != nil {
			return Result{}, err.resource("Listener", name)
		}
		t.done()
		plans = append(plans, p)
	}
	clusters := make(map[string]clusterPlan, len(r.Clusters))
	for _, name := range sortedKeys(r.Clusters) {
		c, err := t.cluster(name, r.Clusters[name])
		if err != nil {
			return Result{}, err.resource("Cluster", name)
		}
		t.done()
		clusters[name] = c
	}
	assignments := make(map[string][]model.Endpoint, len(r.Endpoints))
	for _, name := range sortedKeys(r.Endpoints) {
		eps, err := t.assignment(name, r.Endpoints[name])
		if err != nil {
			return Result{}, err.resource("ClusterLoadAssignment", name)
		}
		t.done()
		assignments[name] = eps
	}
	routes := make(map[string]routePlan, len(r.Routes))
	for _, name := range sortedKeys(r.Routes) {
		rc, err := t.routeConfig(name, r.Routes[name])
		if err != nil {
			return Result{}, err.resource("RouteConfiguration", name)
		}
		t.done()
		routes[name] = newRoutePlan(rc)
	}

	services, missing := assemble(plans, clusters, assignments, routes)
	if err := validate(services); err != nil {
		return Result{}, err
	}
	var peers []model.Peer
	for _, name := range sortedKeys(assignments) {
		if IsDirectory(name) {
			peers = appendPeers(peers, assignments[name])
		}
	}
	res := Result{State: model.State{Services: services, Peers: peers}, Ignored: t.counts}
	if len(missing) > 0 {
		res.Missing = sortedKeys(missing)
	}
	return res, nil
}

// validate checks services with model.State.Validate and blames the
// listener of the service it rejects.
func validate(services []model.Service) error {
	if err := (model.State{Services: services}).Validate(); err != nil {
		return &ResourceError{Type: "Listener", Name: services[culprit(services)].Name, Reason: err.Error()}
	}
	return nil
}

// assemble puts checked listeners, clusters, assignments and route
// configurations together into services, and says which of them the
// listeners need and do not have (see Result.Missing).
func assemble(plans []*listenerPlan, clusters map[string]clusterPlan, assignments map[string][]model.Endpoint, routes map[string]routePlan) ([]model.Service, map[string]bool) {
	missing := make(map[string]bool)
	resolve := func(cluster string) ([]model.Endpoint, model.UpstreamProtocol) {
		c, ok := clusters[cluster]
		if !ok {
			missing["Cluster/"+cluster] = true
			return nil, 0
		}
		if c.eds == "" {
			return c.static, c.protocol
		}
		eps, ok := assignments[c.eds]
		if !ok {
			missing["ClusterLoadAssignment/"+c.eds] = true
		}
		return eps, c.protocol
	}
	// Each service gets its own endpoint slice, so that a consumer may
	// reorder one in place: the first user of a cluster's endpoints takes
	// them, later ones get copies.
	taken := make(map[*model.Endpoint]bool, len(assignments)+len(clusters))
	endpointsFor := func(eps []model.Endpoint, vip netip.Addr, dualStack bool) []model.Endpoint {
		switch {
		case len(eps) == 0:
			return nil
		case dualStack:
			return sameFamily(eps, vip)
		case taken[&eps[0]]:
			return slices.Clone(eps)
		}
		taken[&eps[0]] = true
		return eps
	}

	n := 0
	for _, p := range plans {
		n += len(p.addrs)
	}
	if n == 0 {
		return nil, missing
	}
	services := make([]model.Service, 0, n)
	pools := make([][]model.Endpoint, 0, 1)
	var protocols []model.UpstreamProtocol // of an L7 listener's pools
	dualStack := false
	pick := func(i int, vip netip.Addr) []model.Endpoint { return endpointsFor(pools[i], vip, dualStack) }
	protocol := func(i int) model.UpstreamProtocol { return protocols[i] }
	for _, p := range plans {
		pools, protocols = pools[:0], protocols[:0]
		var rp routePlan
		if p.l7 == nil {
			for _, pl := range p.pools {
				eps, _ := resolve(pl.cluster)
				pools = append(pools, eps)
			}
		} else {
			rp = p.l7.inline
			if p.l7.rds != "" {
				var ok bool
				if rp, ok = routes[p.l7.rds]; !ok {
					missing["RouteConfiguration/"+p.l7.rds] = true
					rp = missingRoutes(p.l7.rds)
				}
			}
			for _, c := range rp.clusters {
				eps, proto := resolve(c)
				pools, protocols = append(pools, eps), append(protocols, proto)
			}
		}
		dualStack = len(p.addrs) > 1
		services = appendServices(services, p, rp, pick, protocol)
	}
	return services, missing
}

// appendServices appends to dst the services of listener p, one per
// address; pick returns the endpoints of p's i-th cluster for the service
// at vip: of its i-th pool, or for an L7 listener of the i-th cluster its
// routes rp name, whose upstream protocol protocol returns.
func appendServices(dst []model.Service, p *listenerPlan, rp routePlan, pick func(i int, vip netip.Addr) []model.Endpoint, protocol func(i int) model.UpstreamProtocol) []model.Service {
	for _, ap := range p.addrs {
		svc := model.Service{Name: p.name, VIP: ap.Addr(), Port: ap.Port(), Protocol: p.proto, Policies: p.policies, FastPath: p.fastPath}
		if p.l7 != nil {
			l7 := &model.L7{RouteConfig: p.l7.rds, Routes: rp.routes, Policies: p.l7.policies}
			if len(rp.clusters) > 0 {
				l7.Clusters = make([]model.Cluster, len(rp.clusters))
				for i, c := range rp.clusters {
					l7.Clusters[i] = model.Cluster{Name: c, Endpoints: pick(i, ap.Addr()), Protocol: protocol(i)}
				}
			}
			svc.L7 = l7
			dst = append(dst, svc)
			continue
		}
		if p.weighted {
			// A split is named after its cluster, which is unique within
			// the listener.
			svc.Splits = make([]model.Split, len(p.pools))
			for i, pl := range p.pools {
				svc.Splits[i] = model.Split{Name: pl.cluster, Weight: pl.weight, Endpoints: pick(i, ap.Addr())}
			}
		} else {
			svc.Endpoints = pick(0, ap.Addr())
		}
		dst = append(dst, svc)
	}
	return dst
}

// sameFamily returns, in a new slice, the endpoints of eps of vip's family:
// for one VIP of a dual-stack listener, the others can never be reached.
func sameFamily(eps []model.Endpoint, vip netip.Addr) []model.Endpoint {
	var out []model.Endpoint
	for _, ep := range eps {
		if ep.Addr.Is4() == vip.Is4() {
			out = append(out, ep)
		}
	}
	return out
}

// culprit returns the index of the service model.State.Validate rejects: it
// checks every service on its own (ValidateService), and then that no
// service repeats the VIP:port/protocol of one before it (ValidateUnique).
func culprit(services []model.Service) int {
	for i := range services {
		if model.ValidateService(i, &services[i]) != nil {
			return i
		}
	}
	owner := make(map[model.ServiceKey]bool, len(services))
	for i := range services {
		k := services[i].Key()
		if owner[k] {
			return i
		}
		owner[k] = true
	}
	return 0 // unreachable while Validate checks nothing more
}
