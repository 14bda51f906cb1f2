package mesh

import (
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/sluice-mesh/sluice/dataplane/model"
)

// Directory renders a workload directory named name (a name for which
// translate.IsDirectory holds): the EDS cluster through which agents
// subscribe to it, and its assignment, one endpoint per peer in the order
// given, port 0, with the peer's workload metadata. Agents learn from it
// who the peers are; nothing is routed to them.
func Directory(name string, peers []model.Peer) (*clusterv3.Cluster, *endpointv3.ClusterLoadAssignment) {
	group := &endpointv3.LocalityLbEndpoints{LbEndpoints: make([]*endpointv3.LbEndpoint, 0, len(peers))}
	for _, p := range peers {
		group.LbEndpoints = append(group.LbEndpoints, &endpointv3.LbEndpoint{
			HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
				Address: socketAddress(p.Addr, 0, model.TCP),
			}},
			Metadata: &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
				WorkloadMetadata: workloadStruct(p.Workload),
			}},
		})
	}
	c := cluster(name)
	c.ConnectTimeout = nil // never connected to
	return c, &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{group}}
}
