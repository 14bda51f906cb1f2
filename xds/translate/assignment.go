package translate

import (
	"fmt"
	"math"
	"net/netip"
	"sort"
	"strconv"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/sluice-mesh/sluice/dataplane/model"
	sid "github.com/sluice-mesh/sluice/identity"
)

// workloadKey is the filter_metadata key under which an endpoint's metadata
// describes the workload behind it.
const workloadKey = "sluice.io/workload"

// healthOf maps Envoy's health statuses onto the model's. TIMEOUT and
// DEGRADED become unhealthy: Envoy sends degraded hosts traffic only when
// the healthy ones are not enough, and Sluice has no such fallback, so it
// never uses them.
var healthOf = map[corev3.HealthStatus]model.Health{
	corev3.HealthStatus_UNKNOWN:   model.HealthUnknown,
	corev3.HealthStatus_HEALTHY:   model.HealthHealthy,
	corev3.HealthStatus_UNHEALTHY: model.HealthUnhealthy,
	corev3.HealthStatus_DRAINING:  model.HealthDraining,
	corev3.HealthStatus_TIMEOUT:   model.HealthUnhealthy,
	corev3.HealthStatus_DEGRADED:  model.HealthUnhealthy,
}

// assignment translates a ClusterLoadAssignment named name (its map key, or
// the STATIC cluster holding it). Endpoints keep the assignment's order.
func (t *tally) assignment(name string, a *endpointv3.ClusterLoadAssignment) ([]model.Endpoint, *fieldError) {
	if a == nil {
		return nil, errAt("", "nil resource")
	}
	if err := t.check(a.ProtoReflect(), assignmentPolicy); err != nil {
		return nil, err
	}
	if a.GetClusterName() != name {
		return nil, errAt("cluster_name", "%q differs from the name %q it is sent under", a.GetClusterName(), name)
	}
	if err := t.check(a.GetPolicy().ProtoReflect(), assignmentPolicyPolicy); err != nil {
		return nil, err.in("policy")
	}
	n := 0
	for _, lle := range a.GetEndpoints() {
		n += len(lle.GetLbEndpoints())
	}
	eps := make([]model.Endpoint, 0, n)
	dir := IsDirectory(name)
	for i, lle := range a.GetEndpoints() {
		if lle == nil {
			return nil, errAt(index("endpoints", i), "missing")
		}
		if err := t.check(lle.ProtoReflect(), localityEndpointsPolicy); err != nil {
			return nil, err.in(index("endpoints", i))
		}
		if err := t.check(lle.GetLocality().ProtoReflect(), localityPolicy); err != nil {
			return nil, err.in(index("endpoints", i) + ".locality")
		}
		loc := model.Locality{
			Region:  lle.GetLocality().GetRegion(),
			Zone:    lle.GetLocality().GetZone(),
			SubZone: lle.GetLocality().GetSubZone(),
		}.Ref()
		for j, lbe := range lle.GetLbEndpoints() {
			ep, err := t.lbEndpoint(lbe, dir)
			if err != nil {
				return nil, err.in(fmt.Sprintf("endpoints[%d].lb_endpoints[%d]", i, j))
			}
			ep.Locality = loc
			ep.Priority = lle.GetPriority()
			eps = append(eps, ep)
		}
	}
	// The model cannot hold one address twice in a pool.
	if first, again := duplicate(eps); again >= 0 {
		i, j := position(a, again)
		fi, fj := position(a, first)
		return nil, errAt(fmt.Sprintf("endpoints[%d].lb_endpoints[%d].endpoint.address", i, j),
			"%s is listed twice (also endpoints[%d].lb_endpoints[%d])",
			netip.AddrPortFrom(eps[again].Addr, eps[again].Port), fi, fj)
	}
	if dir {
		if err := directoryEndpoints(a, eps); err != nil {
			return nil, err
		}
	}
	return eps, nil
}

// duplicate returns the indexes (first, second) of the first endpoint whose
// address:port repeats an earlier one, or (-1, -1). Small assignments, the
// common case, are scanned without building a map.
func duplicate(eps []model.Endpoint) (int, int) {
	if len(eps) <= 32 {
		for j := 1; j < len(eps); j++ {
			for k := 0; k < j; k++ {
				if eps[k].Addr == eps[j].Addr && eps[k].Port == eps[j].Port {
					return k, j
				}
			}
		}
		return -1, -1
	}
	seen := make(map[netip.AddrPort]int, len(eps))
	for j := range eps {
		ap := netip.AddrPortFrom(eps[j].Addr, eps[j].Port)
		if k, dup := seen[ap]; dup {
			return k, j
		}
		seen[ap] = j
	}
	return -1, -1
}

// position returns where the k-th endpoint of a is: its locality and its
// index there.
func position(a *endpointv3.ClusterLoadAssignment, k int) (int, int) {
	for i, lle := range a.GetEndpoints() {
		if n := len(lle.GetLbEndpoints()); k >= n {
			k -= n
		} else {
			return i, k
		}
	}
	return -1, -1
}

// lbEndpoint translates one endpoint; in a workload directory (dir) its
// port may be 0, as it is not used.
func (t *tally) lbEndpoint(lbe *endpointv3.LbEndpoint, dir bool) (model.Endpoint, *fieldError) {
	if lbe == nil {
		return model.Endpoint{}, errAt("", "missing")
	}
	if err := t.check(lbe.ProtoReflect(), lbEndpointPolicy); err != nil {
		return model.Endpoint{}, err
	}
	e := lbe.GetEndpoint()
	if e == nil {
		return model.Endpoint{}, errAt("endpoint", "missing")
	}
	if err := t.check(e.ProtoReflect(), endpointPolicy); err != nil {
		return model.Endpoint{}, err.in("endpoint")
	}
	ap, err := t.backend(e.GetAddress(), dir)
	if err != nil {
		return model.Endpoint{}, err.in("endpoint.address")
	}
	h, ok := healthOf[lbe.GetHealthStatus()]
	if !ok {
		return model.Endpoint{}, errAt("health_status", "unknown value %d", int32(lbe.GetHealthStatus()))
	}
	ep := model.Endpoint{
		Addr:   ap.Addr(),
		Port:   ap.Port(),
		Weight: lbe.GetLoadBalancingWeight().GetValue(), // unset is 0, which the model reads as 1
		Health: h,
	}
	if md := lbe.GetMetadata(); md != nil {
		w, err := t.endpointMetadata(md)
		if err != nil {
			return model.Endpoint{}, err.in("metadata")
		}
		if w != nil && w.L7Proxy && !dir {
			return model.Endpoint{}, errAt(fmt.Sprintf("metadata.filter_metadata[%q].%s", workloadKey, workloadProxyKey),
				"an L7 proxy is listed in a workload directory (%s…), not as a service's endpoint", Directory)
		}
		ep.Workload = w
	}
	return ep, nil
}

func (t *tally) endpointMetadata(md *corev3.Metadata) (*model.Workload, *fieldError) {
	if err := t.check(md.ProtoReflect(), endpointMetadataPolicy); err != nil {
		return nil, err
	}
	fm := md.GetFilterMetadata()
	s, ok := fm[workloadKey]
	others := len(fm)
	if ok {
		others--
	}
	if others > 0 {
		t.add("LbEndpoint.metadata.filter_metadata")
	}
	if !ok {
		return nil, nil
	}
	w, err := workload(s)
	if err != nil {
		return nil, err.in(fmt.Sprintf("filter_metadata[%q]", workloadKey))
	}
	return w, nil
}

// workloadStrings are the string keys of the workload metadata and where
// each goes.
var workloadStrings = []struct {
	key string
	set func(*model.Workload, string)
}{
	{"spiffe_id", func(w *model.Workload, s string) { w.SPIFFEID = s }},
	{"namespace", func(w *model.Workload, s string) { w.Namespace = s }},
	{"service_account", func(w *model.Workload, s string) { w.ServiceAccount = s }},
	{"workload", func(w *model.Workload, s string) { w.Name = s }},
	{"node", func(w *model.Workload, s string) { w.Node = s }},
}

const (
	workloadIdentityKey = "identity"
	workloadProxyKey    = "l7_proxy"
)

// workload reads the workload metadata of an endpoint. Unknown keys are
// refused: Sluice owns this schema, and a misspelt key would otherwise
// silently leave an identity empty.
func workload(s *structpb.Struct) (*model.Workload, *fieldError) {
	w := &model.Workload{}
	fields := s.GetFields()
	known := 0
	for _, ws := range workloadStrings {
		v, ok := fields[ws.key]
		if !ok {
			continue
		}
		known++
		sv, ok := v.GetKind().(*structpb.Value_StringValue)
		if !ok {
			return nil, errAt(ws.key, "want a string, got %s", kindName(v))
		}
		ws.set(w, sv.StringValue)
	}
	if v, ok := fields[workloadIdentityKey]; ok {
		known++
		id, err := identity(v)
		if err != nil {
			return nil, err.in(workloadIdentityKey)
		}
		w.Identity = id
	}
	if v, ok := fields[workloadProxyKey]; ok {
		known++
		b, ok := v.GetKind().(*structpb.Value_BoolValue)
		if !ok {
			return nil, errAt(workloadProxyKey, "want a bool, got %s", kindName(v))
		}
		w.L7Proxy = b.BoolValue
	}
	if known < len(fields) {
		var unknown []string
		for k := range fields {
			if !isWorkloadKey(k) {
				unknown = append(unknown, k)
			}
		}
		sort.Strings(unknown)
		return nil, errAt(fmt.Sprintf("[%q]", unknown[0]),
			"unknown key; the keys are spiffe_id, namespace, service_account, workload, node, identity and l7_proxy")
	}
	return w, nil
}

func isWorkloadKey(k string) bool {
	if k == workloadIdentityKey || k == workloadProxyKey {
		return true
	}
	for _, ws := range workloadStrings {
		if ws.key == k {
			return true
		}
	}
	return false
}

// identity reads a numeric identity: a JSON number that is an integer in
// 0..2147483647; 0 is none, and larger numbers are those Sluice derives
// from SPIFFE IDs (identity.FirstDerived).
func identity(v *structpb.Value) (uint32, *fieldError) {
	nv, ok := v.GetKind().(*structpb.Value_NumberValue)
	if !ok {
		return 0, errAt("", "want a number, got %s", kindName(v))
	}
	f := nv.NumberValue
	if f != math.Trunc(f) || f < 0 || f >= float64(sid.FirstDerived) {
		// NaN and the infinities fail these tests too.
		return 0, errAt("", "%s is not an integer in 0..%d (larger identities are derived from SPIFFE IDs)", formatNumber(f), sid.FirstDerived-1)
	}
	return uint32(f), nil
}

// formatNumber writes a JSON number as a user would have: 4294967296, not
// 4.294967296e+09.
func formatNumber(f float64) string {
	if math.Abs(f) < 1e15 {
		return strconv.FormatFloat(f, 'f', -1, 64)
	}
	return strconv.FormatFloat(f, 'g', -1, 64)
}

func kindName(v *structpb.Value) string {
	switch v.GetKind().(type) {
	case *structpb.Value_NullValue:
		return "null"
	case *structpb.Value_NumberValue:
		return "a number"
	case *structpb.Value_StringValue:
		return "a string"
	case *structpb.Value_BoolValue:
		return "a bool"
	case *structpb.Value_StructValue:
		return "an object"
	case *structpb.Value_ListValue:
		return "a list"
	}
	return "no value"
}
