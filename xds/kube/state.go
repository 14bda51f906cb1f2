package kube

import (
	"cmp"
	"fmt"
	"hash/fnv"
	"net/netip"
	"slices"
	"strconv"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/sluice-mesh/sluice/dataplane/model"
	"github.com/sluice-mesh/sluice/xds/mesh"
	"github.com/sluice-mesh/sluice/xds/translate"
)

// State is the cluster as the control plane sees it — Services,
// EndpointSlices, Pods and MeshPolicies — and the xDS resources served for
// it. Changes mark only the Services they affect; Flush translates and
// renders those alone and returns what changed. State does no I/O. It is
// not safe for concurrent use.
type State struct {
	trustDomain string

	services    map[string]*corev1.Service                       // "ns/name" → Service
	nsServices  map[string]map[string]struct{}                   // namespace → its Services' keys
	slices      map[string]map[string]*discoveryv1.EndpointSlice // Service key → slice key → slice
	sliceOwner  map[string]string                                // slice key → Service key it was filed under
	pods        map[string]*corev1.Pod                           // "ns/name" → Pod
	podServices map[string]map[string]struct{}                   // pod key → keys of the Services whose endpoints refer to it
	policies    map[string]*policyEntry                          // "ns/name" → MeshPolicy
	nsPolicies  map[string]map[string]struct{}                   // namespace → its policies' keys

	served        map[string]*servedService // Service key → what is served for it
	dirty         map[string]struct{}       // Service keys to translate again
	dirtyPolicies map[string]struct{}       // policy keys whose status to compute again

	shardPods map[int]map[string]struct{} // directory shard → its pods' keys
	dirs      map[int]directory           // directory shard → what is served for it
	dirtyDirs map[int]struct{}            // directory shards to render again

	renders uint64 // Services translated and rendered so far
}

// policyEntry is one MeshPolicy object and the version of it that is
// served.
type policyEntry struct {
	namespace, name string
	generation      int64
	err             error               // why the current version is invalid; nil if valid
	served          *Policy             // the version served: the current one if valid, else the last valid one; nil if none
	covered         map[string]struct{} // Services the served version is applied to
}

// directory is the workload directory served for one shard.
type directory struct {
	cluster, assignment types.Resource
}

// servedService is what is served for one Service.
type servedService struct {
	resources map[string]map[string]types.Resource // type → name → resource
	pods      []string                             // pods its endpoints refer to
	policies  []string                             // keys of the policies applied
	reason    string                               // what is reported about it ("" nothing)
}

// NewState returns an empty State whose workloads' SPIFFE IDs are in
// trustDomain.
func NewState(trustDomain string) *State {
	return &State{
		trustDomain:   trustDomain,
		services:      map[string]*corev1.Service{},
		nsServices:    map[string]map[string]struct{}{},
		slices:        map[string]map[string]*discoveryv1.EndpointSlice{},
		sliceOwner:    map[string]string{},
		pods:          map[string]*corev1.Pod{},
		podServices:   map[string]map[string]struct{}{},
		policies:      map[string]*policyEntry{},
		nsPolicies:    map[string]map[string]struct{}{},
		served:        map[string]*servedService{},
		dirty:         map[string]struct{}{},
		dirtyPolicies: map[string]struct{}{},
		shardPods:     map[int]map[string]struct{}{},
		dirs:          map[int]directory{},
		dirtyDirs:     map[int]struct{}{},
	}
}

// Renders returns how many times a Service has been translated and
// rendered: a measure of the work Flush did.
func (s *State) Renders() uint64 { return s.renders }

func key(namespace, name string) string { return namespace + "/" + name }

func add(m map[string]map[string]struct{}, k, v string) {
	if m[k] == nil {
		m[k] = map[string]struct{}{}
	}
	m[k][v] = struct{}{}
}

func remove(m map[string]map[string]struct{}, k, v string) {
	delete(m[k], v)
	if len(m[k]) == 0 {
		delete(m, k)
	}
}

// SetService records a new or changed Service.
func (s *State) SetService(svc *corev1.Service) {
	k := key(svc.Namespace, svc.Name)
	s.services[k] = svc
	add(s.nsServices, svc.Namespace, k)
	// A change of selector can change which policies cover it: Flush
	// looks at every policy of the namespace.
	s.dirty[k] = struct{}{}
}

// DeleteService records that a Service is gone.
func (s *State) DeleteService(namespace, name string) {
	k := key(namespace, name)
	delete(s.services, k)
	remove(s.nsServices, namespace, k)
	s.dirty[k] = struct{}{}
}

// sliceService returns the key of the Service an EndpointSlice belongs to,
// "" if it names none.
func sliceService(sl *discoveryv1.EndpointSlice) string {
	name := sl.Labels[discoveryv1.LabelServiceName]
	if name == "" {
		return ""
	}
	return key(sl.Namespace, name)
}

// SetEndpointSlice records a new or changed EndpointSlice.
func (s *State) SetEndpointSlice(sl *discoveryv1.EndpointSlice) {
	sk := key(sl.Namespace, sl.Name)
	owner := sliceService(sl)
	if prev, ok := s.sliceOwner[sk]; ok && prev != owner {
		s.dropSlice(sk)
	}
	if owner == "" {
		return
	}
	if s.slices[owner] == nil {
		s.slices[owner] = map[string]*discoveryv1.EndpointSlice{}
	}
	s.slices[owner][sk] = sl
	s.sliceOwner[sk] = owner
	s.dirty[owner] = struct{}{}
}

// DeleteEndpointSlice records that an EndpointSlice is gone.
func (s *State) DeleteEndpointSlice(namespace, name string) {
	s.dropSlice(key(namespace, name))
}

func (s *State) dropSlice(sk string) {
	owner, ok := s.sliceOwner[sk]
	if !ok {
		return
	}
	delete(s.sliceOwner, sk)
	delete(s.slices[owner], sk)
	if len(s.slices[owner]) == 0 {
		delete(s.slices, owner)
	}
	s.dirty[owner] = struct{}{}
}

// SetPod records a new or changed Pod. Only what endpoints take from a pod
// (service account, node) marks the Services referring to it; that or a
// change of its addresses marks its workload directory.
func (s *State) SetPod(pod *corev1.Pod) {
	k := key(pod.Namespace, pod.Name)
	old := s.pods[k]
	s.pods[k] = pod
	shard := directoryShard(k)
	if s.shardPods[shard] == nil {
		s.shardPods[shard] = map[string]struct{}{}
	}
	s.shardPods[shard][k] = struct{}{}
	who := old == nil || old.Spec.ServiceAccountName != pod.Spec.ServiceAccountName || old.Spec.NodeName != pod.Spec.NodeName
	if who || !slices.Equal(peerAddrs(old), peerAddrs(pod)) {
		s.dirtyDirs[shard] = struct{}{}
	}
	if !who {
		return
	}
	for svc := range s.podServices[k] {
		s.dirty[svc] = struct{}{}
	}
}

// DeletePod records that a Pod is gone.
func (s *State) DeletePod(namespace, name string) {
	k := key(namespace, name)
	if _, ok := s.pods[k]; !ok {
		return
	}
	delete(s.pods, k)
	shard := directoryShard(k)
	delete(s.shardPods[shard], k)
	s.dirtyDirs[shard] = struct{}{}
	for svc := range s.podServices[k] {
		s.dirty[svc] = struct{}{}
	}
}

// SetPolicy records a new or changed MeshPolicy: p is its valid form, or
// nil with err saying why it is invalid. An invalid version does not
// replace the served one: the Services covered keep the last valid version
// this State saw, if any.
func (s *State) SetPolicy(namespace, name string, generation int64, p *Policy, err error) {
	k := key(namespace, name)
	e := s.policies[k]
	if e == nil {
		e = &policyEntry{namespace: namespace, name: name, covered: map[string]struct{}{}}
		s.policies[k] = e
		add(s.nsPolicies, namespace, k)
	} else if e.generation == generation && (e.err == nil) == (err == nil) {
		// A status write or a resync: nothing served changes, but the
		// status may need writing again.
		s.dirtyPolicies[k] = struct{}{}
		return
	}
	e.generation, e.err = generation, err
	s.dirtyPolicies[k] = struct{}{}
	if p == nil {
		return // the served version, if any, stays
	}
	e.served = p
	s.markNamespace(e)
}

// DeletePolicy records that a MeshPolicy is gone.
func (s *State) DeletePolicy(namespace, name string) {
	k := key(namespace, name)
	e := s.policies[k]
	if e == nil {
		return
	}
	delete(s.policies, k)
	remove(s.nsPolicies, namespace, k)
	delete(s.dirtyPolicies, k)
	for svc := range e.covered {
		s.dirty[svc] = struct{}{}
	}
}

// markNamespace marks the Services e's served version covers now or was
// applied to.
func (s *State) markNamespace(e *policyEntry) {
	for svc := range e.covered {
		s.dirty[svc] = struct{}{}
	}
	for svc := range s.nsServices[e.namespace] {
		if e.served.Covers(e.namespace, s.services[svc].Spec.Selector) {
			s.dirty[svc] = struct{}{}
		}
	}
}

// Update is a change of the resources of one type: resources to add or
// replace, by name, and names to remove.
type Update struct {
	Set    map[string]types.Resource
	Delete []string
}

func (u *Update) empty() bool { return len(u.Set) == 0 && len(u.Delete) == 0 }

// Report is what is said about a Service Sluice does not fully serve.
type Report struct {
	Service *corev1.Service // the Service as last seen
	Reason  string          // "" once there is nothing left to report
	Skipped bool            // the Service is not served at all
}

// PolicyStatus is the status a MeshPolicy should have.
type PolicyStatus struct {
	Namespace, Name string
	Generation      int64
	Accepted        bool
	Message         string   // why it is not accepted, or which version is served
	Covered         []string // "ns/name" of the Services the served version is applied to, sorted
}

// Changes are what a Flush changed.
type Changes struct {
	Listeners, Clusters, Endpoints Update
	Reports                        []Report
	Statuses                       []PolicyStatus
}

// Empty reports whether nothing is to be served differently.
func (c *Changes) Empty() bool {
	return c.Listeners.empty() && c.Clusters.empty() && c.Endpoints.empty()
}

// Resource type names of Changes, as go-control-plane's type URLs end.
const (
	listenerKind = "listener"
	clusterKind  = "cluster"
	endpointKind = "endpoint"
)

// Flush translates and renders the Services marked since the last Flush
// and returns the resources that changed, the reports that changed and the
// policy statuses to check.
func (s *State) Flush() Changes {
	var c Changes
	c.Listeners.Set, c.Clusters.Set, c.Endpoints.Set = map[string]types.Resource{}, map[string]types.Resource{}, map[string]types.Resource{}
	for _, k := range drain(s.dirty) {
		s.flushService(k, &c)
	}
	for _, shard := range drain(s.dirtyDirs) {
		s.flushDirectory(shard, &c)
	}
	for _, k := range drain(s.dirtyPolicies) {
		if e := s.policies[k]; e != nil {
			c.Statuses = append(c.Statuses, e.status())
		}
	}
	return c
}

// drain empties the set m and returns what it held, sorted.
func drain[K cmp.Ordered](m map[K]struct{}) []K {
	out := make([]K, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	clear(m)
	return out
}

func (e *policyEntry) status() PolicyStatus {
	st := PolicyStatus{Namespace: e.namespace, Name: e.name, Generation: e.generation, Accepted: e.err == nil}
	for svc := range e.covered {
		st.Covered = append(st.Covered, svc)
	}
	slices.Sort(st.Covered)
	switch {
	case e.err != nil && e.served != nil:
		st.Message = e.err.Error() + "; still serving generation " + strconv.FormatInt(e.served.Generation, 10)
	case e.err != nil:
		st.Message = e.err.Error() + "; not served"
	default:
		st.Message = "served"
	}
	return st
}

// flushService translates Service k again and records what changed in c.
func (s *State) flushService(k string, c *Changes) {
	old := s.served[k]
	svc := s.services[k]
	next := &servedService{resources: map[string]map[string]types.Resource{}}
	if svc != nil {
		s.renders++
		var pols []*Policy
		for pk := range s.nsPolicies[svc.Namespace] {
			if p := s.policies[pk].served; p != nil && p.Covers(svc.Namespace, svc.Spec.Selector) {
				pols = append(pols, p)
				next.policies = append(next.policies, pk)
			}
		}
		slices.SortFunc(pols, func(a, b *Policy) int { return cmp.Compare(a.Name, b.Name) })
		slices.Sort(next.policies)
		var eps []*discoveryv1.EndpointSlice
		for _, sl := range s.slices[k] {
			eps = append(eps, sl)
		}
		slices.SortFunc(eps, func(a, b *discoveryv1.EndpointSlice) int { return cmp.Compare(a.Name, b.Name) })
		t := Translate(svc, eps, s.pod, pols, s.trustDomain)
		next.pods = t.Pods
		next.reason = t.Reason()
		if t.Service != nil {
			r := t.Service.Render(s.trustDomain)
			next.resources[listenerKind] = map[string]types.Resource{}
			next.resources[clusterKind] = map[string]types.Resource{}
			next.resources[endpointKind] = map[string]types.Resource{}
			for _, l := range r.Listeners {
				next.resources[listenerKind][l.Name] = l
			}
			for _, cl := range r.Clusters {
				next.resources[clusterKind][cl.Name] = cl
			}
			for _, e := range r.Endpoints {
				next.resources[endpointKind][e.ClusterName] = e
			}
		} else {
			next.policies = nil // a skipped Service carries no policy
		}
		if old == nil || old.reason != next.reason {
			if next.reason != "" || (old != nil && old.reason != "") {
				c.Reports = append(c.Reports, Report{Service: svc, Reason: next.reason, Skipped: t.Service == nil})
			}
		}
	}
	var oldRes map[string]map[string]types.Resource
	var oldPods, oldPols []string
	if old != nil {
		oldRes, oldPods, oldPols = old.resources, old.pods, old.policies
	}
	diff(oldRes[listenerKind], next.resources[listenerKind], &c.Listeners)
	diff(oldRes[clusterKind], next.resources[clusterKind], &c.Clusters)
	diff(oldRes[endpointKind], next.resources[endpointKind], &c.Endpoints)

	// Indexes: pods referred to, policies applied.
	for _, p := range oldPods {
		remove(s.podServices, p, k)
	}
	for _, p := range next.pods {
		add(s.podServices, p, k)
	}
	if !slices.Equal(oldPols, next.policies) {
		for _, pk := range oldPols {
			if e := s.policies[pk]; e != nil {
				delete(e.covered, k)
				s.dirtyPolicies[pk] = struct{}{}
			}
		}
		for _, pk := range next.policies {
			e := s.policies[pk]
			e.covered[k] = struct{}{}
			s.dirtyPolicies[pk] = struct{}{}
		}
	}
	if svc == nil {
		delete(s.served, k)
		return
	}
	s.served[k] = next
}

// diff records in u the resources of next that differ from old's, and the
// names of old's that next lacks.
func diff(old, next map[string]types.Resource, u *Update) {
	for name, r := range next {
		if o, ok := old[name]; ok && proto.Equal(o, r) {
			continue
		}
		u.Set[name] = r
	}
	for name := range old {
		if _, ok := next[name]; !ok {
			u.Delete = append(u.Delete, name)
		}
	}
}

// DirectoryShards is the number of workload directories the pods are
// spread over, by a hash of their namespace and name: a pod's change
// renders and pushes again the directory of its shard alone (about 400
// pods at 100,000), and a cluster has at most this many.
const DirectoryShards = 256

// DirectoryName is the name of the workload directory of shard
// (translate.Directory + "/" + two hex digits).
func DirectoryName(shard int) string { return fmt.Sprintf("%s/%02x", translate.Directory, shard) }

// DirectoryOf returns the name of the workload directory that lists the
// pod namespace/name.
func DirectoryOf(namespace, name string) string {
	return DirectoryName(directoryShard(key(namespace, name)))
}

func directoryShard(podKey string) int {
	h := fnv.New32a()
	h.Write([]byte(podKey))
	return int(h.Sum32() % DirectoryShards)
}

// peerAddrs returns the addresses by which other nodes know pod as a
// client: its pod IPs, none if it is on the host network or finished.
func peerAddrs(pod *corev1.Pod) []netip.Addr {
	if pod.Spec.HostNetwork || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return nil
	}
	var out []netip.Addr
	for _, ip := range pod.Status.PodIPs {
		if a, err := netip.ParseAddr(ip.IP); err == nil {
			out = append(out, a.Unmap())
		}
	}
	if len(out) == 0 && pod.Status.PodIP != "" {
		if a, err := netip.ParseAddr(pod.Status.PodIP); err == nil {
			out = append(out, a.Unmap())
		}
	}
	return out
}

// flushDirectory renders the workload directory of shard again — every
// pod of it with an address, by namespace and name — and records what
// changed in c. A shard without such pods has none.
func (s *State) flushDirectory(shard int, c *Changes) {
	keys := make([]string, 0, len(s.shardPods[shard]))
	for k := range s.shardPods[shard] {
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		delete(s.shardPods, shard)
	}
	slices.Sort(keys)
	var peers []model.Peer
	for _, k := range keys {
		pod := s.pods[k]
		addrs := peerAddrs(pod)
		if len(addrs) == 0 {
			continue
		}
		sa := cmp.Or(pod.Spec.ServiceAccountName, mesh.DefaultServiceAccount)
		w := &model.Workload{Name: pod.Name, Namespace: pod.Namespace, ServiceAccount: sa, Node: pod.Spec.NodeName,
			SPIFFEID: mesh.SPIFFEID(s.trustDomain, pod.Namespace, sa)}
		seen := map[netip.Addr]bool{}
		for _, a := range addrs {
			if !seen[a] {
				seen[a] = true
				peers = append(peers, model.Peer{Addr: a, Workload: w})
			}
		}
	}
	name := DirectoryName(shard)
	old, had := s.dirs[shard]
	if len(peers) == 0 {
		if had {
			c.Clusters.Delete = append(c.Clusters.Delete, name)
			c.Endpoints.Delete = append(c.Endpoints.Delete, name)
			delete(s.dirs, shard)
		}
		return
	}
	cl, cla := mesh.Directory(name, peers)
	next := directory{cluster: cl, assignment: cla}
	if !had || !proto.Equal(old.cluster, cl) {
		c.Clusters.Set[name] = cl
	}
	if !had || !proto.Equal(old.assignment, cla) {
		c.Endpoints.Set[name] = cla
	}
	s.dirs[shard] = next
}

func (s *State) pod(namespace, name string) *corev1.Pod {
	return s.pods[key(namespace, name)]
}

// Resources returns every resource served, by kind ("listener", "cluster",
// "endpoint") and name. It walks the whole state: for tests.
func (s *State) Resources() map[string]map[string]types.Resource {
	out := map[string]map[string]types.Resource{listenerKind: {}, clusterKind: {}, endpointKind: {}}
	for _, sv := range s.served {
		for kind, rs := range sv.resources {
			for name, r := range rs {
				out[kind][name] = r
			}
		}
	}
	for shard, d := range s.dirs {
		out[clusterKind][DirectoryName(shard)] = d.cluster
		out[endpointKind][DirectoryName(shard)] = d.assignment
	}
	return out
}

// Reason returns what is reported about Service namespace/name, "" if
// nothing is (or it is unknown).
func (s *State) Reason(namespace, name string) string {
	if sv := s.served[key(namespace, name)]; sv != nil {
		return sv.reason
	}
	return ""
}
