package mesh

import (
	"cmp"
	"net/netip"
	"slices"
	"time"

	xdscore "github.com/cncf/xds/go/xds/core/v3"
	xdsmatcher "github.com/cncf/xds/go/xds/type/matcher/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacconfigv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	udpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/udp/udp_proxy/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sluice-mesh/sluice/dataplane/model"
)

// Names Sluice's rendering uses in Envoy resources.
const (
	// TCPProxyFilter is the network filter of a TCP service's listener.
	TCPProxyFilter = "envoy.filters.network.tcp_proxy"
	// RBACFilter is the network filter of a service's policy, before the
	// tcp_proxy of each of its TCP listeners.
	RBACFilter = "envoy.filters.network.rbac"
	// UDPProxyFilter is the listener filter of a UDP service's listener.
	UDPProxyFilter = "envoy.filters.udp_listener.udp_proxy"
	// UDPRouteAction is the name of the matcher action that sends every
	// datagram of a UDP service to its cluster.
	UDPRouteAction = "route"
	// WorkloadMetadata is the endpoint filter_metadata key under which the
	// workload running at an endpoint is described.
	WorkloadMetadata = "sluice.io/workload"
	// ServiceMetadata is the listener filter_metadata key of the service's
	// settings: fast_path.
	ServiceMetadata = "sluice.io/service"
)

// ConnectTimeout is the connect_timeout of every rendered cluster. Sluice
// routes at connect time and does not use it; Envoy requires a value.
const ConnectTimeout = time.Second

// Resources are the Envoy v3 resources a mesh renders to: for every port of
// every service, a listener, a cluster and a cluster load assignment sharing
// one name (see Service.ResourceName). Each slice is sorted by name. The
// listener of a TCP port carries the service's policies, one RBAC filter
// each, in file order, before its tcp_proxy.
type Resources struct {
	Listeners []*listenerv3.Listener
	Clusters  []*clusterv3.Cluster
	Endpoints []*endpointv3.ClusterLoadAssignment
}

// Resources renders m. The result is deterministic: the same mesh renders
// to resources that marshal to the same bytes (with deterministic
// marshalling), whatever the order of services, ports and endpoints in the
// file. m must be valid, as Parse returns it.
func (m *Mesh) Resources() Resources {
	var r Resources
	for i := range m.Services {
		m.Services[i].render(&r, m.TrustDomain)
	}
	r.sort()
	return r
}

// sort sorts each slice of r by name.
func (r *Resources) sort() {
	slices.SortFunc(r.Listeners, func(a, b *listenerv3.Listener) int { return cmp.Compare(a.Name, b.Name) })
	slices.SortFunc(r.Clusters, func(a, b *clusterv3.Cluster) int { return cmp.Compare(a.Name, b.Name) })
	slices.SortFunc(r.Endpoints, func(a, b *endpointv3.ClusterLoadAssignment) int {
		return cmp.Compare(a.ClusterName, b.ClusterName)
	})
}

// listener renders the listener of s's port p; policies and the fast path
// apply to TCP ports only, and trustDomain is that of the policies'
// namespaces and service accounts.
func listener(name string, s *Service, p Port, trustDomain string) *listenerv3.Listener {
	vips, policies := s.VIPs, s.Policies
	l := &listenerv3.Listener{Name: name}
	if len(vips) > 0 {
		l.Address = socketAddress(vips[0], p.Port, p.Protocol)
	}
	for _, vip := range vips[min(1, len(vips)):] {
		l.AdditionalAddresses = append(l.AdditionalAddresses, &listenerv3.AdditionalAddress{
			Address: socketAddress(vip, p.Port, p.Protocol),
		})
	}
	if p.Protocol == model.UDP {
		route := mustAny(&udpproxyv3.Route{Cluster: name})
		l.ListenerFilters = []*listenerv3.ListenerFilter{{
			Name: UDPProxyFilter,
			ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: mustAny(&udpproxyv3.UdpProxyConfig{
				StatPrefix: name,
				RouteSpecifier: &udpproxyv3.UdpProxyConfig_Matcher{Matcher: &xdsmatcher.Matcher{
					OnNoMatch: &xdsmatcher.Matcher_OnMatch{OnMatch: &xdsmatcher.Matcher_OnMatch_Action{
						Action: &xdscore.TypedExtensionConfig{Name: UDPRouteAction, TypedConfig: route},
					}},
				}},
			})},
		}}
		return l
	}
	filters := make([]*listenerv3.Filter, 0, len(policies)+1)
	for i := range policies {
		filters = append(filters, rbacFilter(trustDomain, &policies[i]))
	}
	filters = append(filters, &listenerv3.Filter{
		Name: TCPProxyFilter,
		ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(&tcpproxyv3.TcpProxy{
			StatPrefix:       name,
			ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: name},
		})},
	})
	l.FilterChains = []*listenerv3.FilterChain{{Filters: filters}}
	if s.FastPath != model.FastPathUnset {
		l.Metadata = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{ServiceMetadata: {
			Fields: map[string]*structpb.Value{"fast_path": structpb.NewBoolValue(s.FastPath == model.FastPathOn)},
		}}}
	}
	return l
}

// rbacFilter renders pol as a network RBAC filter named after it: its rules
// are enforced, or only recorded as shadow_rules in a dry run.
func rbacFilter(trustDomain string, pol *Policy) *listenerv3.Filter {
	rules := &rbacconfigv3.RBAC{Action: rbacAction(pol.Action)}
	for _, r := range pol.Rules {
		if rules.Policies == nil {
			rules.Policies = make(map[string]*rbacconfigv3.Policy, len(pol.Rules))
		}
		rules.Policies[r.Name] = rbacPolicy(trustDomain, &r)
	}
	cfg := &rbacv3.RBAC{StatPrefix: pol.Name}
	if pol.DryRun {
		cfg.ShadowRules = rules
	} else {
		cfg.Rules = rules
	}
	if pol.Continuous {
		cfg.EnforcementType = rbacv3.RBAC_CONTINUOUS
	}
	return &listenerv3.Filter{
		Name:       RBACFilter,
		ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(cfg)},
	}
}

func rbacAction(a Action) rbacconfigv3.RBAC_Action {
	switch a {
	case ActionDeny:
		return rbacconfigv3.RBAC_DENY
	case ActionAudit:
		return rbacconfigv3.RBAC_LOG
	}
	return rbacconfigv3.RBAC_ALLOW
}

// rbacPolicy renders r: any of its sources, to any of its ports. A port is
// matched against the listener's own, so on the listener of a port r does
// not list, r matches nothing.
func rbacPolicy(trustDomain string, r *Rule) *rbacconfigv3.Policy {
	p := &rbacconfigv3.Policy{}
	for _, port := range r.Ports {
		p.Permissions = append(p.Permissions, &rbacconfigv3.Permission{
			Rule: &rbacconfigv3.Permission_DestinationPort{DestinationPort: uint32(port)},
		})
	}
	if p.Permissions == nil {
		p.Permissions = []*rbacconfigv3.Permission{{Rule: &rbacconfigv3.Permission_Any{Any: true}}}
	}
	for i := range r.From {
		p.Principals = append(p.Principals, sourcePrincipal(trustDomain, &r.From[i]))
	}
	if p.Principals == nil {
		p.Principals = []*rbacconfigv3.Principal{{Identifier: &rbacconfigv3.Principal_Any{Any: true}}}
	}
	return p
}

// sourcePrincipal renders src as the AND of its fields, each the OR of its
// values, negated for a Not field. A single term is rendered without an AND
// or OR around it.
func sourcePrincipal(trustDomain string, src *Source) *rbacconfigv3.Principal {
	var all []*rbacconfigv3.Principal
	add := func(ids []*rbacconfigv3.Principal, negate bool) {
		if len(ids) == 0 {
			return
		}
		id := ids[0]
		if len(ids) > 1 {
			id = &rbacconfigv3.Principal{Identifier: &rbacconfigv3.Principal_OrIds{
				OrIds: &rbacconfigv3.Principal_Set{Ids: ids},
			}}
		}
		if negate {
			id = &rbacconfigv3.Principal{Identifier: &rbacconfigv3.Principal_NotId{NotId: id}}
		}
		all = append(all, id)
	}
	add(principals(src.Principals), false)
	add(namespaces(trustDomain, src.Namespaces), false)
	add(serviceAccounts(trustDomain, src.ServiceAccounts), false)
	add(ipBlocks(src.IPBlocks), false)
	add(principals(src.NotPrincipals), true)
	add(namespaces(trustDomain, src.NotNamespaces), true)
	add(serviceAccounts(trustDomain, src.NotServiceAccounts), true)
	add(ipBlocks(src.NotIPBlocks), true)
	if len(all) == 1 {
		return all[0]
	}
	return &rbacconfigv3.Principal{Identifier: &rbacconfigv3.Principal_AndIds{
		AndIds: &rbacconfigv3.Principal_Set{Ids: all},
	}}
}

func principals(ids []string) []*rbacconfigv3.Principal {
	out := make([]*rbacconfigv3.Principal, len(ids))
	for i, id := range ids {
		if id == AnyPrincipal {
			out[i] = authenticated(nil)
		} else {
			out[i] = authenticated(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: id}})
		}
	}
	return out
}

// namespaces matches the SPIFFE IDs of a namespace's workloads by their
// prefix, "spiffe://<trust domain>/ns/<namespace>/sa/".
func namespaces(trustDomain string, nss []string) []*rbacconfigv3.Principal {
	out := make([]*rbacconfigv3.Principal, len(nss))
	for i, ns := range nss {
		out[i] = authenticated(&matcherv3.StringMatcher{
			MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: SPIFFEID(trustDomain, ns, "")},
		})
	}
	return out
}

func serviceAccounts(trustDomain string, sas []ServiceAccount) []*rbacconfigv3.Principal {
	out := make([]*rbacconfigv3.Principal, len(sas))
	for i, sa := range sas {
		out[i] = authenticated(&matcherv3.StringMatcher{
			MatchPattern: &matcherv3.StringMatcher_Exact{Exact: SPIFFEID(trustDomain, sa.Namespace, sa.Name)},
		})
	}
	return out
}

// authenticated matches a source with a mesh identity whose SPIFFE ID
// name matches; any mesh identity if name is nil.
func authenticated(name *matcherv3.StringMatcher) *rbacconfigv3.Principal {
	return &rbacconfigv3.Principal{Identifier: &rbacconfigv3.Principal_Authenticated_{
		Authenticated: &rbacconfigv3.Principal_Authenticated{PrincipalName: name},
	}}
}

func ipBlocks(blocks []netip.Prefix) []*rbacconfigv3.Principal {
	out := make([]*rbacconfigv3.Principal, len(blocks))
	for i, b := range blocks {
		out[i] = &rbacconfigv3.Principal{Identifier: &rbacconfigv3.Principal_DirectRemoteIp{
			DirectRemoteIp: &corev3.CidrRange{
				AddressPrefix: b.Addr().String(),
				PrefixLen:     wrapperspb.UInt32(uint32(b.Bits())),
			},
		}}
	}
	return out
}

func cluster(name string) *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{
			EdsConfig: &corev3.ConfigSource{
				ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
				ResourceApiVersion:    corev3.ApiVersion_V3,
			},
		},
		LbPolicy:       clusterv3.Cluster_ROUND_ROBIN,
		ConnectTimeout: durationpb.New(ConnectTimeout),
	}
}

// assignment groups endpoints by (priority, locality), groups in that order,
// endpoints of a group by address: file order does not change the result.
func assignment(name string, eps []Endpoint, p Port) *endpointv3.ClusterLoadAssignment {
	sorted := slices.Clone(eps)
	slices.SortFunc(sorted, func(a, b Endpoint) int {
		return cmp.Or(
			cmp.Compare(a.Priority, b.Priority),
			cmp.Compare(a.Locality.Region, b.Locality.Region),
			cmp.Compare(a.Locality.Zone, b.Locality.Zone),
			cmp.Compare(a.Locality.SubZone, b.Locality.SubZone),
			a.Address.Compare(b.Address),
		)
	})
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: name}
	var group *endpointv3.LocalityLbEndpoints
	for i, ep := range sorted {
		if i == 0 || ep.Priority != sorted[i-1].Priority || ep.Locality != sorted[i-1].Locality {
			group = &endpointv3.LocalityLbEndpoints{Priority: ep.Priority}
			if ep.Locality != (model.Locality{}) {
				group.Locality = &corev3.Locality{
					Region:  ep.Locality.Region,
					Zone:    ep.Locality.Zone,
					SubZone: ep.Locality.SubZone,
				}
			}
			cla.Endpoints = append(cla.Endpoints, group)
		}
		group.LbEndpoints = append(group.LbEndpoints, lbEndpoint(ep, p))
	}
	return cla
}

func lbEndpoint(ep Endpoint, p Port) *endpointv3.LbEndpoint {
	lb := &endpointv3.LbEndpoint{
		HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
			Address: socketAddress(ep.Address, p.TargetPort, p.Protocol),
		}},
		HealthStatus:        healthStatus(ep.Health),
		LoadBalancingWeight: wrapperspb.UInt32(max(ep.Weight, 1)),
	}
	if w := ep.Workload; w != nil {
		lb.Metadata = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
			WorkloadMetadata: workloadStruct(w),
		}}
	}
	return lb
}

// workloadStruct describes w in endpoint metadata. Fields that are not set
// (node, identity) are left out rather than sent empty.
func workloadStruct(w *model.Workload) *structpb.Struct {
	f := map[string]*structpb.Value{
		"spiffe_id":       structpb.NewStringValue(w.SPIFFEID),
		"namespace":       structpb.NewStringValue(w.Namespace),
		"service_account": structpb.NewStringValue(w.ServiceAccount),
		"workload":        structpb.NewStringValue(w.Name),
	}
	if w.Node != "" {
		f["node"] = structpb.NewStringValue(w.Node)
	}
	if w.Identity != 0 {
		f["identity"] = structpb.NewNumberValue(float64(w.Identity))
	}
	if w.L7Proxy {
		f["l7_proxy"] = structpb.NewBoolValue(true)
	}
	return &structpb.Struct{Fields: f}
}

func healthStatus(h model.Health) corev3.HealthStatus {
	switch h {
	case model.HealthHealthy:
		return corev3.HealthStatus_HEALTHY
	case model.HealthUnhealthy:
		return corev3.HealthStatus_UNHEALTHY
	case model.HealthDraining:
		return corev3.HealthStatus_DRAINING
	}
	return corev3.HealthStatus_UNKNOWN
}

func socketAddress(a netip.Addr, port uint16, proto model.Protocol) *corev3.Address {
	sa := &corev3.SocketAddress{
		Address:       a.String(),
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(port)},
	}
	if proto == model.UDP {
		sa.Protocol = corev3.SocketAddress_UDP
	}
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: sa}}
}

// mustAny packs m deterministically, so that equal resources marshal to
// equal bytes and keep their version. Marshalling a well-formed generated
// message cannot fail; a failure is a bug in this package.
func mustAny(m proto.Message) *anypb.Any {
	a := &anypb.Any{}
	if err := anypb.MarshalFrom(a, m, proto.MarshalOptions{Deterministic: true}); err != nil {
		panic("mesh: pack " + string(m.ProtoReflect().Descriptor().FullName()) + ": " + err.Error())
	}
	return a
}
