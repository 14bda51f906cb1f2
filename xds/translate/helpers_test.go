package translate_test

import (
	"net/netip"

	xdscorev3 "github.com/cncf/xds/go/xds/core/v3"
	matcherv3 "github.com/cncf/xds/go/xds/type/matcher/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	udpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/udp/udp_proxy/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sluice-mesh/sluice/dataplane/model"
	"github.com/sluice-mesh/sluice/xds/translate"
)

// Builders of the resources a control plane typically sends. Each returns a
// fresh message, so test cases can mutate what they get.

func mustAny(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic(err)
	}
	return a
}

func sockAddr(ip string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address:       ip,
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}

func udpAddr(ip string, port uint32) *corev3.Address {
	a := sockAddr(ip, port)
	a.GetSocketAddress().Protocol = corev3.SocketAddress_UDP
	return a
}

func tcpProxy(cluster string) *tcpproxyv3.TcpProxy {
	return &tcpproxyv3.TcpProxy{
		StatPrefix:       "tcp",
		ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: cluster},
	}
}

func weighted(pairs ...any) *tcpproxyv3.TcpProxy {
	wc := &tcpproxyv3.TcpProxy_WeightedCluster{}
	for i := 0; i+1 < len(pairs); i += 2 {
		wc.Clusters = append(wc.Clusters, &tcpproxyv3.TcpProxy_WeightedCluster_ClusterWeight{
			Name:   pairs[i].(string),
			Weight: uint32(pairs[i+1].(int)),
		})
	}
	return &tcpproxyv3.TcpProxy{ClusterSpecifier: &tcpproxyv3.TcpProxy_WeightedClusters{WeightedClusters: wc}}
}

func filter(name string, cfg proto.Message) *listenerv3.Filter {
	return &listenerv3.Filter{Name: name, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(cfg)}}
}

// tcpListener is a TCP listener on ip:port whose one filter is tp.
func tcpListener(name, ip string, port uint32, tp *tcpproxyv3.TcpProxy) *listenerv3.Listener {
	return &listenerv3.Listener{
		Name:    name,
		Address: sockAddr(ip, port),
		FilterChains: []*listenerv3.FilterChain{{
			Filters: []*listenerv3.Filter{filter("envoy.filters.network.tcp_proxy", tp)},
		}},
	}
}

func udpProxyFilter(cfg *udpproxyv3.UdpProxyConfig) *listenerv3.ListenerFilter {
	return &listenerv3.ListenerFilter{
		Name:       "envoy.filters.udp_listener.udp_proxy",
		ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: mustAny(cfg)},
	}
}

// udpMatcher is a udp_proxy matcher that sends every session to cluster.
func udpMatcher(cluster string) *udpproxyv3.UdpProxyConfig_Matcher {
	return &udpproxyv3.UdpProxyConfig_Matcher{Matcher: &matcherv3.Matcher{
		OnNoMatch: &matcherv3.Matcher_OnMatch{OnMatch: &matcherv3.Matcher_OnMatch_Action{
			Action: &xdscorev3.TypedExtensionConfig{
				Name:        "route",
				TypedConfig: mustAny(&udpproxyv3.Route{Cluster: cluster}),
			},
		}},
	}}
}

func udpListener(name, ip string, port uint32, cfg *udpproxyv3.UdpProxyConfig) *listenerv3.Listener {
	return &listenerv3.Listener{
		Name:            name,
		Address:         udpAddr(ip, port),
		ListenerFilters: []*listenerv3.ListenerFilter{udpProxyFilter(cfg)},
	}
}

func adsSource() *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ResourceApiVersion:    corev3.ApiVersion_V3,
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
	}
}

func edsCluster(name, serviceName string) *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		LbPolicy:             clusterv3.Cluster_RANDOM,
		EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: adsSource(), ServiceName: serviceName},
	}
}

func staticCluster(name string, eps ...*endpointv3.LbEndpoint) *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		LbPolicy:             clusterv3.Cluster_RANDOM,
		LoadAssignment:       cla(name, eps...),
	}
}

func lbEndpoint(ip string, port uint32) *endpointv3.LbEndpoint {
	return &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
		Address: sockAddr(ip, port),
	}}}
}

func withHealth(e *endpointv3.LbEndpoint, h corev3.HealthStatus) *endpointv3.LbEndpoint {
	e.HealthStatus = h
	return e
}

func withWeight(e *endpointv3.LbEndpoint, w uint32) *endpointv3.LbEndpoint {
	e.LoadBalancingWeight = wrapperspb.UInt32(w)
	return e
}

func withWorkload(e *endpointv3.LbEndpoint, fields map[string]any) *endpointv3.LbEndpoint {
	s, err := structpb.NewStruct(fields)
	if err != nil {
		panic(err)
	}
	e.Metadata = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"sluice.io/workload": s}}
	return e
}

// withService sets a listener's service metadata (sluice.io/service) to
// fields, and other filter metadata to others.
func withService(l *listenerv3.Listener, fields map[string]any, others ...string) {
	s, err := structpb.NewStruct(fields)
	if err != nil {
		panic(err)
	}
	l.Metadata = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"sluice.io/service": s}}
	for _, o := range others {
		l.Metadata.FilterMetadata[o] = &structpb.Struct{}
	}
}

// cla is an assignment with one locality holding eps.
func cla(name string, eps ...*endpointv3.LbEndpoint) *endpointv3.ClusterLoadAssignment {
	return &endpointv3.ClusterLoadAssignment{
		ClusterName: name,
		Endpoints:   []*endpointv3.LocalityLbEndpoints{{LbEndpoints: eps}},
	}
}

// demo is the resources of one TCP service "demo/web:80" on 10.96.0.10:80
// whose EDS cluster "web" has two endpoints.
func demo() translate.Resources {
	return translate.Resources{
		Listeners: map[string]*listenerv3.Listener{"demo/web:80": tcpListener("demo/web:80", "10.96.0.10", 80, tcpProxy("web"))},
		Clusters:  map[string]*clusterv3.Cluster{"web": edsCluster("web", "")},
		Endpoints: map[string]*endpointv3.ClusterLoadAssignment{"web": cla("web",
			lbEndpoint("10.244.1.5", 8080), lbEndpoint("10.244.2.7", 8080))},
	}
}

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }

func ep(addr string, port uint16) model.Endpoint {
	return model.Endpoint{Addr: ip(addr), Port: port}
}

// demoService is what demo() translates to.
func demoService() model.Service {
	return model.Service{
		Name: "demo/web:80", VIP: ip("10.96.0.10"), Port: 80, Protocol: model.TCP,
		Endpoints: []model.Endpoint{ep("10.244.1.5", 8080), ep("10.244.2.7", 8080)},
	}
}

// listener, cluster and assignment return the only resource of their kind
// in r, for cases that mutate it.
func listener(r translate.Resources) *listenerv3.Listener {
	for _, l := range r.Listeners {
		return l
	}
	panic("no listener")
}

func cluster(r translate.Resources) *clusterv3.Cluster {
	for _, c := range r.Clusters {
		return c
	}
	panic("no cluster")
}

func assignment(r translate.Resources) *endpointv3.ClusterLoadAssignment {
	for _, a := range r.Endpoints {
		return a
	}
	panic("no assignment")
}

// proxyOf returns the TcpProxy of a listener built by tcpListener, for
// cases to change it; setProxy puts it back.
func proxyOf(l *listenerv3.Listener) *tcpproxyv3.TcpProxy {
	tp := &tcpproxyv3.TcpProxy{}
	if err := l.GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(tp); err != nil {
		panic(err)
	}
	return tp
}

func setProxy(l *listenerv3.Listener, tp *tcpproxyv3.TcpProxy) {
	l.FilterChains[0].Filters[0] = filter("envoy.filters.network.tcp_proxy", tp)
}

// routerFilter is the HTTP filter an HTTP connection manager ends with.
func routerFilter() *hcmv3.HttpFilter {
	return httpFilter("envoy.filters.http.router", &routerv3.Router{})
}

func httpFilter(name string, cfg proto.Message) *hcmv3.HttpFilter {
	return &hcmv3.HttpFilter{Name: name, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(cfg)}}
}

// rdsHCM is an HTTP connection manager that reads the route configuration
// routes over ADS and has the router as its one HTTP filter.
func rdsHCM(routes string) *hcmv3.HttpConnectionManager {
	return &hcmv3.HttpConnectionManager{
		StatPrefix: "http",
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			RouteConfigName: routes, ConfigSource: adsSource(),
		}},
		HttpFilters: []*hcmv3.HttpFilter{routerFilter()},
	}
}

// inlineHCM is an HTTP connection manager that carries its routes.
func inlineHCM(rc *routev3.RouteConfiguration) *hcmv3.HttpConnectionManager {
	h := rdsHCM("")
	h.RouteSpecifier = &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: rc}
	return h
}

// httpListener is a TCP listener on ip:port whose one filter is h.
func httpListener(name, ip string, port uint32, h *hcmv3.HttpConnectionManager) *listenerv3.Listener {
	return &listenerv3.Listener{
		Name:    name,
		Address: sockAddr(ip, port),
		FilterChains: []*listenerv3.FilterChain{{
			Filters: []*listenerv3.Filter{filter("envoy.filters.network.http_connection_manager", h)},
		}},
	}
}

// hcmOf returns the HttpConnectionManager of the last filter of a
// listener's chain, for cases to change it; setHCM puts it back.
func hcmOf(l *listenerv3.Listener) *hcmv3.HttpConnectionManager {
	fs := l.GetFilterChains()[0].GetFilters()
	h := &hcmv3.HttpConnectionManager{}
	if err := fs[len(fs)-1].GetTypedConfig().UnmarshalTo(h); err != nil {
		panic(err)
	}
	return h
}

func setHCM(l *listenerv3.Listener, h *hcmv3.HttpConnectionManager) {
	fs := l.FilterChains[0].Filters
	fs[len(fs)-1] = filter("envoy.filters.network.http_connection_manager", h)
}

// routeConfig is a route configuration whose one virtual host, for any
// domain, has routes.
func routeConfig(name string, routes ...*routev3.Route) *routev3.RouteConfiguration {
	return &routev3.RouteConfiguration{
		Name:         name,
		VirtualHosts: []*routev3.VirtualHost{{Name: "any", Domains: []string{"*"}, Routes: routes}},
	}
}

// prefixRoute routes the requests whose path starts with prefix to one
// cluster, or to several (name, weight pairs) by weight.
func prefixRoute(prefix string, clusters ...any) *routev3.Route {
	a := &routev3.RouteAction{}
	if len(clusters) == 1 {
		a.ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: clusters[0].(string)}
	} else {
		wc := &routev3.WeightedCluster{}
		for i := 0; i+1 < len(clusters); i += 2 {
			wc.Clusters = append(wc.Clusters, &routev3.WeightedCluster_ClusterWeight{
				Name: clusters[i].(string), Weight: wrapperspb.UInt32(uint32(clusters[i+1].(int))),
			})
		}
		a.ClusterSpecifier = &routev3.RouteAction_WeightedClusters{WeightedClusters: wc}
	}
	return &routev3.Route{
		Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: prefix}},
		Action: &routev3.Route_Route{Route: a},
	}
}
