// Package translate turns Envoy v3 xDS resources into Sluice's desired
// dataplane state. It is pure: no I/O, no globals, deterministic.
package translate

import (
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
	// Missing lists, sorted, the clusters and cluster load assignments that
	// a listener needs and that are not present yet (an EDS cluster whose
	// assignment has not arrived, a cluster not yet sent). Services using
	// them have no endpoints from them in State. A client may wait for them
	// before applying State, as Envoy does while warming.
	Missing []string
}

// ResourceError is a resource Sluice refuses: it names the resource and the
// field, so a control plane operator can find it (it is sent back as the
// NACK's error_detail).
type ResourceError struct {
	Type   string // "Listener", "Cluster", "ClusterLoadAssignment" or "RouteConfiguration"
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
	panic("implemented by the translate package")
}

// RDSNames returns, sorted, the RouteConfiguration names the listeners in r
// refer to through RDS.
func RDSNames(r Resources) []string {
	panic("implemented by the translate package")
}

// Translate returns the dataplane state r describes, or a *ResourceError for
// the first resource (in name order, listeners first, then clusters, then
// assignments) that Sluice cannot honour. It never panics, whatever r holds.
func Translate(r Resources) (Result, error) {
	panic("implemented by the translate package")
}
