package translate

import (
	"fmt"
	"strings"

	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"

	"github.com/sluice-mesh/sluice/dataplane/model"
)

// Directory is the name of a workload directory: the ClusterLoadAssignment
// named Directory, or Directory + "/" + anything, whose endpoints are
// workloads (with their "sluice.io/workload" metadata) rather than a
// service's backends. A control plane lists there the workloads other
// nodes must know by address that back no service, such as clients; a
// client subscribes to a directory through an EDS cluster of the same
// name. Its endpoints become State.Peers: identity only, never routed.
const Directory = "sluice.io/workloads"

// IsDirectory reports whether name names a workload directory.
func IsDirectory(name string) bool {
	return name == Directory || strings.HasPrefix(name, Directory+"/")
}

// notDirectory refuses a listener's pool of the workload directory cluster.
func notDirectory(cluster string) *fieldError {
	if IsDirectory(cluster) {
		return errAt("", "cluster %q is a workload directory (%s…): it names workloads, it has no backends to route to", cluster, Directory)
	}
	return nil
}

// directoryCluster checks that an EDS cluster and the assignment it reads
// (eds) agree on being a workload directory.
func directoryCluster(name, eds string) *fieldError {
	switch {
	case IsDirectory(name) && !IsDirectory(eds):
		return errAt("eds_cluster_config.service_name", "%q is not a workload directory name, but the cluster %q is one; a directory cluster reads the directory of its own name", eds, name)
	case !IsDirectory(name) && IsDirectory(eds):
		return errAt("eds_cluster_config.service_name", "%q is a workload directory's; only a cluster named %s or %s/… reads a directory", eds, Directory, Directory)
	}
	return nil
}

// directoryEndpoints checks that each endpoint of a directory names its
// workload. Errors are relative to the assignment.
func directoryEndpoints(a *endpointv3.ClusterLoadAssignment, eps []model.Endpoint) *fieldError {
	for k := range eps {
		if w := eps[k].Workload; w == nil || w.SPIFFEID == "" {
			i, j := position(a, k)
			return errAt(fmt.Sprintf("endpoints[%d].lb_endpoints[%d].metadata", i, j),
				"a workload directory's endpoint needs filter_metadata[%q] with spiffe_id", workloadKey)
		}
	}
	return nil
}

// appendPeers appends the peers of a directory's endpoints to dst.
func appendPeers(dst []model.Peer, eps []model.Endpoint) []model.Peer {
	for k := range eps {
		dst = append(dst, model.Peer{Addr: eps[k].Addr, Workload: eps[k].Workload})
	}
	return dst
}
