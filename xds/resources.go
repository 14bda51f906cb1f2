package xds

import (
	"fmt"
	"maps"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/sluice-mesh/sluice/xds/translate"
)

// Type URLs the client subscribes to, in the order Envoy requests them:
// clusters before the listeners that use them, assignments after clusters.
var subscribedTypes = []string{
	resourcev3.ClusterType,
	resourcev3.EndpointType,
	resourcev3.ListenerType,
	resourcev3.RouteType,
}

// wildcardType reports whether a type is subscribed as a whole (Envoy does
// so for listeners and clusters) rather than by name.
func wildcardType(typeURL string) bool {
	return typeURL == resourcev3.ListenerType || typeURL == resourcev3.ClusterType
}

// shortType names a type URL in logs and errors.
func shortType(typeURL string) string {
	switch typeURL {
	case resourcev3.ListenerType:
		return "LDS"
	case resourcev3.ClusterType:
		return "CDS"
	case resourcev3.EndpointType:
		return "EDS"
	case resourcev3.RouteType:
		return "RDS"
	}
	return typeURL
}

// resource is one accepted resource with the version the server gave it
// (Delta) or the version of the response that carried it (SotW).
type resource struct {
	version string
	msg     proto.Message
}

// resourceSet holds accepted resources by type URL, then by name. It is
// copied before a response is applied, so a rejected response leaves it
// unchanged.
type resourceSet map[string]map[string]resource

// with returns a copy of s with u's changes. Only the changed type's map is
// copied; the others are shared, as sets are never modified in place.
func (s resourceSet) with(u *update) resourceSet {
	out := maps.Clone(s)
	if out == nil {
		out = resourceSet{}
	}
	var m map[string]resource
	if u.full {
		m = make(map[string]resource, len(u.upserts))
	} else {
		m = maps.Clone(s[u.typeURL])
		if m == nil {
			m = make(map[string]resource, len(u.upserts))
		}
	}
	maps.Copy(m, u.upserts)
	for _, name := range u.removed {
		delete(m, name)
	}
	out[u.typeURL] = m
	return out
}

// names returns the names held for a type.
func (s resourceSet) names(typeURL string) map[string]string {
	out := make(map[string]string, len(s[typeURL]))
	for name, r := range s[typeURL] {
		out[name] = r.version
	}
	return out
}

// translateInput views the set as translation input.
func (s resourceSet) translateInput() translate.Resources {
	r := translate.Resources{
		Listeners: make(map[string]*listenerv3.Listener, len(s[resourcev3.ListenerType])),
		Clusters:  make(map[string]*clusterv3.Cluster, len(s[resourcev3.ClusterType])),
		Endpoints: make(map[string]*endpointv3.ClusterLoadAssignment, len(s[resourcev3.EndpointType])),
		Routes:    make(map[string]*routev3.RouteConfiguration, len(s[resourcev3.RouteType])),
	}
	for name, res := range s[resourcev3.ListenerType] {
		r.Listeners[name] = res.msg.(*listenerv3.Listener)
	}
	for name, res := range s[resourcev3.ClusterType] {
		r.Clusters[name] = res.msg.(*clusterv3.Cluster)
	}
	for name, res := range s[resourcev3.EndpointType] {
		r.Endpoints[name] = res.msg.(*endpointv3.ClusterLoadAssignment)
	}
	for name, res := range s[resourcev3.RouteType] {
		r.Routes[name] = res.msg.(*routev3.RouteConfiguration)
	}
	return r
}

// decode unpacks one resource of the expected type and returns its name.
func decode(typeURL string, a *anypb.Any) (string, proto.Message, error) {
	if a == nil {
		return "", nil, fmt.Errorf("empty resource")
	}
	if a.GetTypeUrl() != typeURL {
		return "", nil, fmt.Errorf("resource of type %s in a %s response", a.GetTypeUrl(), shortType(typeURL))
	}
	var msg interface {
		proto.Message
		GetName() string
	}
	switch typeURL {
	case resourcev3.ListenerType:
		msg = &listenerv3.Listener{}
	case resourcev3.ClusterType:
		msg = &clusterv3.Cluster{}
	case resourcev3.RouteType:
		msg = &routev3.RouteConfiguration{}
	case resourcev3.EndpointType:
		cla := &endpointv3.ClusterLoadAssignment{}
		if err := a.UnmarshalTo(cla); err != nil {
			return "", nil, fmt.Errorf("decode: %w", err)
		}
		return cla.GetClusterName(), cla, nil
	default:
		return "", nil, fmt.Errorf("unexpected type %s", typeURL)
	}
	if err := a.UnmarshalTo(msg); err != nil {
		return "", nil, fmt.Errorf("decode: %w", err)
	}
	return msg.GetName(), msg, nil
}
