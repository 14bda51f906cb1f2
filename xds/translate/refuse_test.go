package translate_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	xdscorev3 "github.com/cncf/xds/go/xds/core/v3"
	matcherv3 "github.com/cncf/xds/go/xds/type/matcher/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	proxyprotocolv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/proxy_protocol/v3"
	tlsinspectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	udpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/udp/udp_proxy/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sluice-mesh/sluice/xds/translate"
)

// refusal is a change to demo() that Sluice must refuse, and the error it
// must give.
type refusal struct {
	name   string
	change func(r *translate.Resources)
	typ    string // resource type
	res    string // resource name
	field  string
	reason string // a substring of the reason
}

const (
	lname = "demo/web:80"
	fc0   = "filter_chains[0]"
	f0    = "filter_chains[0].filters[0]"
	tc0   = "filter_chains[0].filters[0].typed_config"
	lbe0  = "endpoints[0].lb_endpoints[0]"
	wlKey = `endpoints[0].lb_endpoints[0].metadata.filter_metadata["sluice.io/workload"]`
)

func changeListener(f func(l *listenerv3.Listener)) func(r *translate.Resources) {
	return func(r *translate.Resources) { f(listener(*r)) }
}

func changeSocket(f func(sa *corev3.SocketAddress)) func(r *translate.Resources) {
	return changeListener(func(l *listenerv3.Listener) { f(l.Address.GetSocketAddress()) })
}

func changeProxy(f func(tp *tcpproxyv3.TcpProxy)) func(r *translate.Resources) {
	return changeListener(func(l *listenerv3.Listener) {
		tp := proxyOf(l)
		f(tp)
		setProxy(l, tp)
	})
}

func changeCluster(f func(c *clusterv3.Cluster)) func(r *translate.Resources) {
	return func(r *translate.Resources) { f(cluster(*r)) }
}

func changeAssignment(f func(a *endpointv3.ClusterLoadAssignment)) func(r *translate.Resources) {
	return func(r *translate.Resources) { f(assignment(*r)) }
}

func changeEndpoint(f func(e *endpointv3.LbEndpoint)) func(r *translate.Resources) {
	return changeAssignment(func(a *endpointv3.ClusterLoadAssignment) { f(a.Endpoints[0].LbEndpoints[0]) })
}

func setWorkload(fields map[string]any) func(r *translate.Resources) {
	return changeEndpoint(func(e *endpointv3.LbEndpoint) { withWorkload(e, fields) })
}

func setUDP(cfg *udpproxyv3.UdpProxyConfig) func(r *translate.Resources) {
	return func(r *translate.Resources) {
		r.Listeners = map[string]*listenerv3.Listener{lname: udpListener(lname, "10.96.0.10", 80, cfg)}
	}
}

func udpCluster(c string) *udpproxyv3.UdpProxyConfig {
	return &udpproxyv3.UdpProxyConfig{RouteSpecifier: &udpproxyv3.UdpProxyConfig_Cluster{Cluster: c}}
}

// unknownField returns b with a field number no Envoy message uses.
func unknownField(b []byte) []byte {
	b = protowire.AppendTag(b, 9999, protowire.VarintType)
	return protowire.AppendVarint(b, 1)
}

func setFilter(cfg *anypb.Any) func(r *translate.Resources) {
	return changeListener(func(l *listenerv3.Listener) {
		l.FilterChains[0].Filters[0] = &listenerv3.Filter{Name: "f", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: cfg}}
	})
}

func TestTranslateRefusesListeners(t *testing.T) {
	runRefusals(t, []refusal{
		// Addresses.
		{"hostname VIP", changeSocket(func(sa *corev3.SocketAddress) { sa.Address = "web.demo.svc" }),
			"Listener", lname, "address.socket_address.address", `"web.demo.svc" is not an IP address literal`},
		{"resolver_name", changeSocket(func(sa *corev3.SocketAddress) { sa.ResolverName = "dns" }),
			"Listener", lname, "address.socket_address.resolver_name", "custom resolvers are not supported"},
		// Service metadata.
		{"fast_path not a bool", changeListener(func(l *listenerv3.Listener) { withService(l, map[string]any{"fast_path": "yes"}) }),
			"Listener", lname, `metadata.filter_metadata["sluice.io/service"]["fast_path"]`, "want a bool, got a string"},
		{"misspelt service key", changeListener(func(l *listenerv3.Listener) { withService(l, map[string]any{"fastPath": true}) }),
			"Listener", lname, `metadata.filter_metadata["sluice.io/service"]["fastPath"]`, "unknown key; the only key is fast_path"},
		{"fast_path on UDP", func(r *translate.Resources) {
			setUDP(udpCluster("web"))(r)
			withService(listener(*r), map[string]any{"fast_path": true})
		}, "Listener", lname, `metadata.filter_metadata["sluice.io/service"]["fast_path"]`, "the fast path carries TCP only"},
		{"named_port", changeSocket(func(sa *corev3.SocketAddress) {
			sa.PortSpecifier = &corev3.SocketAddress_NamedPort{NamedPort: "http"}
		}), "Listener", lname, "address.socket_address.named_port", "named ports are not supported"},
		{"port 0", changeSocket(func(sa *corev3.SocketAddress) { sa.PortSpecifier = nil }),
			"Listener", lname, "address.socket_address.port_value", "0 is not a port"},
		{"port 65536", changeSocket(func(sa *corev3.SocketAddress) {
			sa.PortSpecifier = &corev3.SocketAddress_PortValue{PortValue: 65536}
		}), "Listener", lname, "address.socket_address.port_value", "65536 is not a port"},
		{"unknown protocol", changeSocket(func(sa *corev3.SocketAddress) { sa.Protocol = 7 }),
			"Listener", lname, "address.socket_address.protocol", "unknown protocol 7"},
		{"pipe", changeListener(func(l *listenerv3.Listener) {
			l.Address = &corev3.Address{Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{Path: "/run/x"}}}
		}), "Listener", lname, "address.pipe", "pipe addresses are not supported"},
		{"internal address", changeListener(func(l *listenerv3.Listener) {
			l.Address = &corev3.Address{Address: &corev3.Address_EnvoyInternalAddress{EnvoyInternalAddress: &corev3.EnvoyInternalAddress{}}}
		}), "Listener", lname, "address.envoy_internal_address", "internal addresses are not supported"},
		{"empty address", changeListener(func(l *listenerv3.Listener) { l.Address = &corev3.Address{} }),
			"Listener", lname, "address.socket_address", "missing"},
		{"no address", changeListener(func(l *listenerv3.Listener) { l.Address = nil }),
			"Listener", lname, "address", "missing"},
		{"unspecified IPv4", changeSocket(func(sa *corev3.SocketAddress) { sa.Address = "0.0.0.0" }),
			"Listener", lname, "address.socket_address.address", "0.0.0.0 is not a service VIP"},
		{"unspecified IPv6", changeSocket(func(sa *corev3.SocketAddress) { sa.Address = "::" }),
			"Listener", lname, "address.socket_address.address", ":: is not a service VIP"},
		{"loopback", changeSocket(func(sa *corev3.SocketAddress) { sa.Address = "127.0.0.1" }),
			"Listener", lname, "address.socket_address.address", "127.0.0.1 is not a service VIP"},
		{"multicast", changeSocket(func(sa *corev3.SocketAddress) { sa.Address = "ff02::1" }),
			"Listener", lname, "address.socket_address.address", "ff02::1 is not a service VIP"},
		{"zone", changeSocket(func(sa *corev3.SocketAddress) { sa.Address = "fe80::1%eth0" }),
			"Listener", lname, "address.socket_address.address", "zones are not supported"},
		{"IPv4-mapped", changeSocket(func(sa *corev3.SocketAddress) { sa.Address = "::ffff:10.96.0.10" }),
			"Listener", lname, "address.socket_address.address", "use the IPv4 form 10.96.0.10"},
		{"additional address with another protocol", changeListener(func(l *listenerv3.Listener) {
			l.AdditionalAddresses = []*listenerv3.AdditionalAddress{{Address: udpAddr("fd00::10", 80)}}
		}), "Listener", lname, "additional_addresses[0].address.socket_address.protocol", "UDP differs from the main address's TCP"},
		{"additional address by hostname", changeListener(func(l *listenerv3.Listener) {
			l.AdditionalAddresses = []*listenerv3.AdditionalAddress{
				{Address: sockAddr("fd00::10", 80)},
				{Address: sockAddr("web", 80)},
			}
		}), "Listener", lname, "additional_addresses[1].address.socket_address.address", "not an IP address literal"},
		{"additional address loopback", changeListener(func(l *listenerv3.Listener) {
			l.AdditionalAddresses = []*listenerv3.AdditionalAddress{{Address: sockAddr("::1", 80)}}
		}), "Listener", lname, "additional_addresses[0].address.socket_address.address", "not a service VIP"},
		{"additional address without address", changeListener(func(l *listenerv3.Listener) {
			l.AdditionalAddresses = []*listenerv3.AdditionalAddress{{}}
		}), "Listener", lname, "additional_addresses[0].address", "missing"},

		// Listener fields and identity.
		{"nil listener", func(r *translate.Resources) { r.Listeners[lname] = nil },
			"Listener", lname, "", "nil resource"},
		{"name differs from key", changeListener(func(l *listenerv3.Listener) { l.Name = "other" }),
			"Listener", lname, "name", `"other" differs from the resource name "demo/web:80"`},
		{"default_filter_chain", changeListener(func(l *listenerv3.Listener) {
			l.DefaultFilterChain = &listenerv3.FilterChain{}
		}), "Listener", lname, "default_filter_chain", "Sluice routes at connect time, before any bytes are seen"},
		{"filter_chain_matcher", changeListener(func(l *listenerv3.Listener) {
			l.FilterChainMatcher = &matcherv3.Matcher{}
		}), "Listener", lname, "filter_chain_matcher", "connect time"},
		{"api_listener", changeListener(func(l *listenerv3.Listener) { l.ApiListener = &listenerv3.ApiListener{} }),
			"Listener", lname, "api_listener", "API listeners are not supported"},
		{"fcds_config", changeListener(func(l *listenerv3.Listener) {
			l.FcdsConfig = &listenerv3.Listener_FcdsConfig{}
			l.StatPrefix = "ignored, and not the first refusal"
		}), "Listener", lname, "fcds_config", "filter chain discovery is not supported"},
		{"first refused field in declaration order", changeListener(func(l *listenerv3.Listener) {
			l.ApiListener = &listenerv3.ApiListener{}                    // field 19, declared later
			l.DefaultFilterChain = &listenerv3.FilterChain{}             // field 25, declared earlier
			l.ListenerSpecifier = &listenerv3.Listener_InternalListener{ // declared last
				InternalListener: &listenerv3.Listener_InternalListenerConfig{},
			}
		}), "Listener", lname, "default_filter_chain", "default filter chain"},
		{"field unknown to this API version", func(r *translate.Resources) {
			l := listener(*r)
			l.ProtoReflect().SetUnknown(unknownField(nil))
		}, "Listener", lname, "", "unknown field number 9999 in envoy.config.listener.v3.Listener"},

		// Filter chains.
		{"no filter chain", changeListener(func(l *listenerv3.Listener) { l.FilterChains = nil }),
			"Listener", lname, "filter_chains", "exactly one filter chain, got 0"},
		{"two filter chains", changeListener(func(l *listenerv3.Listener) {
			l.FilterChains = append(l.FilterChains, l.FilterChains[0])
		}), "Listener", lname, "filter_chains", "exactly one filter chain, got 2"},
		{"filter_chain_match", changeListener(func(l *listenerv3.Listener) {
			l.FilterChains[0].FilterChainMatch = &listenerv3.FilterChainMatch{ServerNames: []string{"web"}}
		}), "Listener", lname, fc0 + ".filter_chain_match", "Sluice routes at connect time, before any bytes are seen"},
		{"TLS termination", changeListener(func(l *listenerv3.Listener) {
			l.FilterChains[0].TransportSocket = &corev3.TransportSocket{Name: "tls"}
		}), "Listener", lname, fc0 + ".transport_socket", "TLS termination is not supported"},
		{"two tcp_proxy filters", changeListener(func(l *listenerv3.Listener) {
			l.FilterChains[0].Filters = append(l.FilterChains[0].Filters, l.FilterChains[0].Filters[0])
		}), "Listener", lname, fc0 + ".filters[1]", "follows tcp_proxy (filters[0]), a terminal filter, which must be the last of the chain"},
		{"no filter", changeListener(func(l *listenerv3.Listener) { l.FilterChains[0].Filters = nil }),
			"Listener", lname, fc0 + ".filters", "empty; want a tcp_proxy"},
		{"network RBAC without tcp_proxy", setFilter(mustAny(&rbacv3.RBAC{StatPrefix: "rbac"})),
			"Listener", lname, fc0 + ".filters", "no tcp_proxy or http_connection_manager; the chain must end with one"},
		{"other filter", setFilter(mustAny(&structpb.Struct{})),
			"Listener", lname, f0, "unsupported filter type google.protobuf.Struct"},
		{"filter with a malformed type URL", setFilter(&anypb.Any{TypeUrl: "type.googleapis.com/"}),
			"Listener", lname, f0, `unsupported filter type ""`},
		{"filter without typed_config", setFilter(nil),
			"Listener", lname, tc0, "missing"},
		{"undecodable HTTP connection manager", setFilter(&anypb.Any{
			TypeUrl: "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager", Value: []byte{0x12, 0x7f},
		}), "Listener", lname, tc0, "cannot decode envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"},
		{"undecodable tcp_proxy", setFilter(&anypb.Any{
			TypeUrl: "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy", Value: []byte{0x12, 0x7f},
		}), "Listener", lname, tc0, "cannot decode envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"},
		{"filter config discovery", changeListener(func(l *listenerv3.Listener) {
			l.FilterChains[0].Filters[0].ConfigType = &listenerv3.Filter_ConfigDiscovery{ConfigDiscovery: &corev3.ExtensionConfigSource{}}
		}), "Listener", lname, f0 + ".config_discovery", "filter config discovery is not supported"},

		// HTTP connection manager (L7).
		{"HCM with scoped_routes", changeHCM(func(h *hcmv3.HttpConnectionManager) {
			h.RouteSpecifier = &hcmv3.HttpConnectionManager_ScopedRoutes{ScopedRoutes: &hcmv3.ScopedRoutes{}}
		}), "Listener", lname, tc0 + ".scoped_routes", "scoped routes are not supported; use rds or route_config"},
		{"HCM without routes", changeHCM(func(h *hcmv3.HttpConnectionManager) { h.RouteSpecifier = nil }),
			"Listener", lname, tc0 + ".rds", "missing; set rds or route_config"},
		{"RDS from another source than ADS", changeHCM(func(h *hcmv3.HttpConnectionManager) {
			h.GetRds().ConfigSource = &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_ApiConfigSource{ApiConfigSource: &corev3.ApiConfigSource{}}}
		}), "Listener", lname, tc0 + ".rds.config_source.api_config_source", "only ADS is supported"},
		{"RDS config source without ads", changeHCM(func(h *hcmv3.HttpConnectionManager) {
			h.GetRds().ConfigSource = &corev3.ConfigSource{ResourceApiVersion: corev3.ApiVersion_V3}
		}), "Listener", lname, tc0 + ".rds.config_source", "only ADS is supported; set ads: {}"},
		{"RDS without a name", changeHCM(func(h *hcmv3.HttpConnectionManager) { h.GetRds().RouteConfigName = "" }),
			"Listener", lname, tc0 + ".rds.route_config_name", "empty; name the RouteConfiguration"},
		{"inline route refused", changeHCM(func(h *hcmv3.HttpConnectionManager) {
			rc := routeConfig("inline", prefixRoute("/", "web"))
			rc.VirtualHosts[0].Routes[0].Action = &routev3.Route_Redirect{Redirect: &routev3.RedirectAction{}}
			h.RouteSpecifier = &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: rc}
		}), "Listener", lname, tc0 + ".route_config.virtual_hosts[0].routes[0].redirect", "redirects are not supported yet"},
		{"inline route to a workload directory", changeHCM(func(h *hcmv3.HttpConnectionManager) {
			h.RouteSpecifier = &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: routeConfig("", prefixRoute("/", translate.Directory))}
		}), "Listener", lname, tc0 + ".route_config.virtual_hosts[0].routes[0].route.cluster", "is a workload directory"},
		{"HTTP/3 codec", changeHCM(func(h *hcmv3.HttpConnectionManager) { h.CodecType = hcmv3.HttpConnectionManager_HTTP3 }),
			"Listener", lname, tc0 + ".codec_type", "HTTP3 is not supported; use AUTO, HTTP1 or HTTP2"},
		{"path normalization", changeHCM(func(h *hcmv3.HttpConnectionManager) { h.NormalizePath = wrapperspb.Bool(true) }),
			"Listener", lname, tc0 + ".normalize_path", "path normalization is not supported"},
		{"escaped slashes unescaped", changeHCM(func(h *hcmv3.HttpConnectionManager) {
			h.PathWithEscapedSlashesAction = hcmv3.HttpConnectionManager_UNESCAPE_AND_FORWARD
		}), "Listener", lname, tc0 + ".path_with_escaped_slashes_action", "UNESCAPE_AND_FORWARD is not supported"},
		{"merge_slashes", changeHCM(func(h *hcmv3.HttpConnectionManager) { h.MergeSlashes = true }),
			"Listener", lname, tc0 + ".merge_slashes", "merging slashes is not supported"},
		{"HCM header change", changeHCM(func(h *hcmv3.HttpConnectionManager) { h.Via = "sluice" }),
			"Listener", lname, tc0 + ".via", "changes request headers"},
		{"HCM strips the host port", changeHCM(func(h *hcmv3.HttpConnectionManager) {
			h.StripPortMode = &hcmv3.HttpConnectionManager_StripAnyHostPort{StripAnyHostPort: true}
		}), "Listener", lname, tc0 + ".strip_any_host_port", "use ignore_port_in_host_matching"},
		{"headers with underscores dropped", changeHCM(func(h *hcmv3.HttpConnectionManager) {
			h.CommonHttpProtocolOptions = &corev3.HttpProtocolOptions{
				IdleTimeout:                  durationpb.New(time.Minute),
				HeadersWithUnderscoresAction: corev3.HttpProtocolOptions_DROP_HEADER,
			}
		}), "Listener", lname, tc0 + ".common_http_protocol_options.headers_with_underscores_action", "headers are forwarded as sent"},
		{"no router", changeHCM(func(h *hcmv3.HttpConnectionManager) { h.HttpFilters = nil }),
			"Listener", lname, tc0 + ".http_filters", "no router (envoy.extensions.filters.http.router.v3.Router); it must be the last HTTP filter"},
		{"router not last", changeHCM(func(h *hcmv3.HttpConnectionManager) {
			optional := httpFilter("x", &structpb.Struct{})
			optional.IsOptional = true
			h.HttpFilters = append(h.HttpFilters, optional)
		}), "Listener", lname, tc0 + ".http_filters[1]", "follows the router (http_filters[0]), which must be the last HTTP filter"},
		{"unknown HTTP filter", changeHCM(func(h *hcmv3.HttpConnectionManager) {
			h.HttpFilters = append([]*hcmv3.HttpFilter{httpFilter("x", &structpb.Struct{})}, h.HttpFilters...)
		}), "Listener", lname, tc0 + ".http_filters[0]", "unsupported HTTP filter type google.protobuf.Struct"},
		{"disabled unknown HTTP filter", changeHCM(func(h *hcmv3.HttpConnectionManager) {
			f := httpFilter("x", &structpb.Struct{})
			f.Disabled = true
			h.HttpFilters = append([]*hcmv3.HttpFilter{f}, h.HttpFilters...)
		}), "Listener", lname, tc0 + ".http_filters[0]", "unsupported HTTP filter type google.protobuf.Struct"},
		{"HTTP filter without typed_config", changeHCM(func(h *hcmv3.HttpConnectionManager) { h.HttpFilters[0].ConfigType = nil }),
			"Listener", lname, tc0 + ".http_filters[0].typed_config", "missing"},
		{"HTTP filter config discovery", changeHCM(func(h *hcmv3.HttpConnectionManager) {
			h.HttpFilters[0].ConfigType = &hcmv3.HttpFilter_ConfigDiscovery{ConfigDiscovery: &corev3.ExtensionConfigSource{}}
		}), "Listener", lname, tc0 + ".http_filters[0].config_discovery", "filter config discovery is not supported"},
		{"disabled router", changeHCM(func(h *hcmv3.HttpConnectionManager) { h.HttpFilters[0].Disabled = true }),
			"Listener", lname, tc0 + ".http_filters[0].disabled", "the router cannot be disabled"},
		{"router with upstream filters", changeHCM(func(h *hcmv3.HttpConnectionManager) {
			h.HttpFilters[0] = httpFilter("router", &routerv3.Router{UpstreamHttpFilters: []*hcmv3.HttpFilter{{Name: "x"}}})
		}), "Listener", lname, tc0 + ".http_filters[0].typed_config.upstream_http_filters", "upstream HTTP filters are not supported"},
		{"filter after the HCM", func(r *translate.Resources) {
			changeHCM(func(*hcmv3.HttpConnectionManager) {})(r)
			fc := listener(*r).FilterChains[0]
			fc.Filters = append(fc.Filters, filter("rbac", &rbacv3.RBAC{StatPrefix: "rbac"}))
		}, "Listener", lname, fc0 + ".filters[1]", "follows http_connection_manager (filters[0]), a terminal filter, which must be the last of the chain"},
		{"tcp_proxy and HCM in one chain", changeListener(func(l *listenerv3.Listener) {
			l.FilterChains[0].Filters = append(l.FilterChains[0].Filters, filter("hcm", rdsHCM("web")))
		}), "Listener", lname, fc0 + ".filters[1]", "follows tcp_proxy (filters[0]), a terminal filter, which must be the last of the chain"},
		{"HCM and tcp_proxy in one chain", func(r *translate.Resources) {
			changeHCM(func(*hcmv3.HttpConnectionManager) {})(r)
			fc := listener(*r).FilterChains[0]
			fc.Filters = append(fc.Filters, filter("tcp", tcpProxy("web")))
		}, "Listener", lname, fc0 + ".filters[1]", "follows http_connection_manager (filters[0]), a terminal filter"},
		{"HCM on a UDP listener", func(r *translate.Resources) {
			setUDP(udpCluster("web"))(r)
			listener(*r).FilterChains = []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{filter("hcm", rdsHCM("web"))}}}
		}, "Listener", lname, "filter_chains", "a UDP listener takes no filter chains"},

		// tcp_proxy.
		{"tcp_proxy without cluster", changeProxy(func(tp *tcpproxyv3.TcpProxy) { tp.ClusterSpecifier = nil }),
			"Listener", lname, tc0 + ".cluster", "missing"},
		{"tcp_proxy empty cluster", changeProxy(func(tp *tcpproxyv3.TcpProxy) {
			tp.ClusterSpecifier = &tcpproxyv3.TcpProxy_Cluster{}
		}), "Listener", lname, tc0 + ".cluster", "empty cluster name"},
		{"hash_policy", changeProxy(func(tp *tcpproxyv3.TcpProxy) {
			tp.HashPolicy = []*typev3.HashPolicy{{}}
		}), "Listener", lname, tc0 + ".hash_policy", "hash-based backend choice is not supported"},
		{"metadata_match", changeProxy(func(tp *tcpproxyv3.TcpProxy) { tp.MetadataMatch = &corev3.Metadata{} }),
			"Listener", lname, tc0 + ".metadata_match", "endpoint subsets"},
		{"tunneling_config", changeProxy(func(tp *tcpproxyv3.TcpProxy) {
			tp.TunnelingConfig = &tcpproxyv3.TcpProxy_TunnelingConfig{Hostname: "x"}
		}), "Listener", lname, tc0 + ".tunneling_config", "tunneling is not supported"},
		{"on_demand", changeProxy(func(tp *tcpproxyv3.TcpProxy) { tp.OnDemand = &tcpproxyv3.TcpProxy_OnDemand{} }),
			"Listener", lname, tc0 + ".on_demand", "on-demand"},
		{"max_downstream_connection_duration", changeProxy(func(tp *tcpproxyv3.TcpProxy) {
			tp.MaxDownstreamConnectionDuration = durationpb.New(1e9)
		}), "Listener", lname, tc0 + ".max_downstream_connection_duration", "does not proxy"},
		{"tcp_proxy unknown field", changeListener(func(l *listenerv3.Listener) {
			a := l.FilterChains[0].Filters[0].GetTypedConfig()
			a.Value = unknownField(a.Value)
		}), "Listener", lname, tc0, "unknown field number 9999"},
		{"weighted cluster listed twice", changeProxy(func(tp *tcpproxyv3.TcpProxy) {
			*tp = *weighted("web", 1, "canary", 1, "web", 2)
		}), "Listener", lname, tc0 + ".weighted_clusters.clusters[2].name", `cluster "web" is listed twice (also clusters[0])`},
		{"weighted cluster metadata_match", changeProxy(func(tp *tcpproxyv3.TcpProxy) {
			*tp = *weighted("web", 1, "canary", 1)
			tp.GetWeightedClusters().Clusters[1].MetadataMatch = &corev3.Metadata{}
		}), "Listener", lname, tc0 + ".weighted_clusters.clusters[1].metadata_match", "endpoint subsets"},
		{"weighted clusters empty", changeProxy(func(tp *tcpproxyv3.TcpProxy) { *tp = *weighted() }),
			"Listener", lname, tc0 + ".weighted_clusters.clusters", "empty"},
		{"weighted cluster without name", changeProxy(func(tp *tcpproxyv3.TcpProxy) { *tp = *weighted("", 1) }),
			"Listener", lname, tc0 + ".weighted_clusters.clusters[0].name", "empty cluster name"},

		// Listener filters on a TCP listener.
		{"proxy_protocol listener filter", changeListener(func(l *listenerv3.Listener) {
			l.ListenerFilters = []*listenerv3.ListenerFilter{{Name: "envoy.filters.listener.tls_inspector",
				ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: mustAny(&proxyprotocolv3.ProxyProtocol{})}}}
		}), "Listener", lname, "listener_filters[0]", "unsupported listener filter type envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol"},
		{"undecodable tls_inspector", changeListener(func(l *listenerv3.Listener) {
			a := mustAny(&tlsinspectorv3.TlsInspector{})
			a.Value = []byte{0x0a}
			l.ListenerFilters = []*listenerv3.ListenerFilter{{ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: a}}}
		}), "Listener", lname, "listener_filters[0].typed_config", "cannot decode"},
		{"listener filter without typed_config", changeListener(func(l *listenerv3.Listener) {
			l.ListenerFilters = []*listenerv3.ListenerFilter{{Name: "envoy.filters.listener.tls_inspector"}}
		}), "Listener", lname, "listener_filters[0].typed_config", "missing"},
		{"udp_proxy on a TCP listener", changeListener(func(l *listenerv3.Listener) {
			l.ListenerFilters = []*listenerv3.ListenerFilter{udpProxyFilter(udpCluster("web"))}
		}), "Listener", lname, "listener_filters[0]", "unsupported listener filter type"},

		// UDP.
		{"UDP listener with filter chains", func(r *translate.Resources) {
			setUDP(udpCluster("web"))(r)
			listener(*r).FilterChains = []*listenerv3.FilterChain{{}}
		}, "Listener", lname, "filter_chains", "a UDP listener takes no filter chains"},
		{"UDP listener without udp_proxy", func(r *translate.Resources) {
			setUDP(udpCluster("web"))(r)
			listener(*r).ListenerFilters = nil
		}, "Listener", lname, "listener_filters", "exactly one listener filter (udp_proxy), got 0"},
		{"UDP listener with tls_inspector", func(r *translate.Resources) {
			setUDP(udpCluster("web"))(r)
			l := listener(*r)
			l.ListenerFilters = append(l.ListenerFilters, &listenerv3.ListenerFilter{
				ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: mustAny(&tlsinspectorv3.TlsInspector{})}})
		}, "Listener", lname, "listener_filters[1]", "unsupported listener filter type"},
		{"udp_proxy hash_policies", setUDP(&udpproxyv3.UdpProxyConfig{
			RouteSpecifier: &udpproxyv3.UdpProxyConfig_Cluster{Cluster: "web"},
			HashPolicies:   []*udpproxyv3.UdpProxyConfig_HashPolicy{{}},
		}), "Listener", lname, "listener_filters[0].typed_config.hash_policies", "hash-based"},
		{"udp_proxy per-packet balancing", setUDP(&udpproxyv3.UdpProxyConfig{
			RouteSpecifier:            &udpproxyv3.UdpProxyConfig_Cluster{Cluster: "web"},
			UsePerPacketLoadBalancing: true,
		}), "Listener", lname, "listener_filters[0].typed_config.use_per_packet_load_balancing", "per-packet"},
		{"udp_proxy without route", setUDP(&udpproxyv3.UdpProxyConfig{}),
			"Listener", lname, "listener_filters[0].typed_config.matcher", "missing"},
		{"udp_proxy matcher_list", setUDP(&udpproxyv3.UdpProxyConfig{RouteSpecifier: func() *udpproxyv3.UdpProxyConfig_Matcher {
			m := udpMatcher("web")
			m.Matcher.MatcherType = &matcherv3.Matcher_MatcherList_{MatcherList: &matcherv3.Matcher_MatcherList{}}
			return m
		}()}), "Listener", lname, "listener_filters[0].typed_config.matcher.matcher_list", "only on_no_match is supported"},
		{"udp_proxy matcher_tree", setUDP(&udpproxyv3.UdpProxyConfig{RouteSpecifier: &udpproxyv3.UdpProxyConfig_Matcher{
			Matcher: &matcherv3.Matcher{MatcherType: &matcherv3.Matcher_MatcherTree_{MatcherTree: &matcherv3.Matcher_MatcherTree{}}},
		}}), "Listener", lname, "listener_filters[0].typed_config.matcher.matcher_tree", "only on_no_match"},
		{"udp_proxy matcher without on_no_match", setUDP(&udpproxyv3.UdpProxyConfig{
			RouteSpecifier: &udpproxyv3.UdpProxyConfig_Matcher{Matcher: &matcherv3.Matcher{}},
		}), "Listener", lname, "listener_filters[0].typed_config.matcher.on_no_match", "missing"},
		{"udp_proxy nested matcher", setUDP(&udpproxyv3.UdpProxyConfig{RouteSpecifier: &udpproxyv3.UdpProxyConfig_Matcher{
			Matcher: &matcherv3.Matcher{OnNoMatch: &matcherv3.Matcher_OnMatch{OnMatch: &matcherv3.Matcher_OnMatch_Matcher{Matcher: &matcherv3.Matcher{}}}},
		}}), "Listener", lname, "listener_filters[0].typed_config.matcher.on_no_match.matcher", "nested matchers"},
		{"udp_proxy action of another type", setUDP(&udpproxyv3.UdpProxyConfig{RouteSpecifier: &udpproxyv3.UdpProxyConfig_Matcher{
			Matcher: &matcherv3.Matcher{OnNoMatch: &matcherv3.Matcher_OnMatch{OnMatch: &matcherv3.Matcher_OnMatch_Action{
				Action: &xdscorev3.TypedExtensionConfig{Name: "x", TypedConfig: mustAny(&structpb.Struct{})},
			}}},
		}}), "Listener", lname, "listener_filters[0].typed_config.matcher.on_no_match.action.typed_config", "unsupported action type google.protobuf.Struct"},
		{"udp_proxy route without cluster", setUDP(&udpproxyv3.UdpProxyConfig{RouteSpecifier: udpMatcher("")}),
			"Listener", lname, "listener_filters[0].typed_config.matcher.on_no_match.action.typed_config.cluster", "empty cluster name"},

		// Whole-state checks.
		{"duplicate VIP:port across listeners", func(r *translate.Resources) {
			r.Listeners["demo/web-copy"] = tcpListener("demo/web-copy", "10.96.0.10", 80, tcpProxy("web"))
		}, "Listener", "demo/web:80", "", `duplicate VIP:port/protocol, already used by service "demo/web-copy"`},
		{"family mismatch", changeSocket(func(sa *corev3.SocketAddress) { sa.Address = "fd00::10" }),
			"Listener", lname, "", "address family differs from the VIP's"},
		{"duplicate address inside a listener", changeListener(func(l *listenerv3.Listener) {
			l.AdditionalAddresses = []*listenerv3.AdditionalAddress{{Address: sockAddr("10.96.0.10", 80)}}
		}), "Listener", lname, "", "duplicate VIP:port/protocol"},
		{"listener errors come before cluster and assignment errors", func(r *translate.Resources) {
			cluster(*r).Name = "wrong"
			assignment(*r).ClusterName = "wrong"
			r.Listeners["zzz"] = tcpListener("zzz", "web", 80, tcpProxy("web"))
		}, "Listener", "zzz", "address.socket_address.address", "not an IP address literal"},
		{"listeners in name order", func(r *translate.Resources) {
			r.Listeners["b"] = tcpListener("b", "0.0.0.0", 80, tcpProxy("web"))
			r.Listeners["a"] = tcpListener("a", "web", 80, tcpProxy("web"))
		}, "Listener", "a", "address.socket_address.address", "not an IP address literal"},
	})
}

func TestTranslateRefusesClusters(t *testing.T) {
	typ := func(ty clusterv3.Cluster_DiscoveryType) func(r *translate.Resources) {
		return changeCluster(func(c *clusterv3.Cluster) { c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: ty} })
	}
	runRefusals(t, []refusal{
		{"STRICT_DNS", typ(clusterv3.Cluster_STRICT_DNS), "Cluster", "web", "type", "STRICT_DNS clusters are not supported"},
		{"LOGICAL_DNS", typ(clusterv3.Cluster_LOGICAL_DNS), "Cluster", "web", "type", "LOGICAL_DNS clusters are not supported"},
		{"ORIGINAL_DST", typ(clusterv3.Cluster_ORIGINAL_DST), "Cluster", "web", "type", "ORIGINAL_DST clusters are not supported"},
		{"unknown type", typ(42), "Cluster", "web", "type", "unknown cluster type 42"},
		{"cluster_type extension", changeCluster(func(c *clusterv3.Cluster) {
			c.ClusterDiscoveryType = &clusterv3.Cluster_ClusterType{ClusterType: &clusterv3.Cluster_CustomClusterType{Name: "x"}}
		}), "Cluster", "web", "cluster_type", "custom cluster types are not supported"},
		{"EDS over a gRPC config source", changeCluster(func(c *clusterv3.Cluster) {
			c.EdsClusterConfig.EdsConfig.ConfigSourceSpecifier = &corev3.ConfigSource_ApiConfigSource{ApiConfigSource: &corev3.ApiConfigSource{}}
		}), "Cluster", "web", "eds_cluster_config.eds_config.api_config_source", "only ADS is supported"},
		{"EDS from self", changeCluster(func(c *clusterv3.Cluster) {
			c.EdsClusterConfig.EdsConfig.ConfigSourceSpecifier = &corev3.ConfigSource_Self{Self: &corev3.SelfConfigSource{}}
		}), "Cluster", "web", "eds_cluster_config.eds_config.self", "only ADS is supported"},
		{"EDS config source without ads", changeCluster(func(c *clusterv3.Cluster) {
			c.EdsClusterConfig.EdsConfig = &corev3.ConfigSource{}
		}), "Cluster", "web", "eds_cluster_config.eds_config", "only ADS is supported; set ads: {}"},
		{"EDS over API V2", changeCluster(func(c *clusterv3.Cluster) {
			c.EdsClusterConfig.EdsConfig.ResourceApiVersion = corev3.ApiVersion_V2
		}), "Cluster", "web", "eds_cluster_config.eds_config.resource_api_version", "use V3"},
		{"CLUSTER_PROVIDED", changeCluster(func(c *clusterv3.Cluster) { c.LbPolicy = clusterv3.Cluster_CLUSTER_PROVIDED }),
			"Cluster", "web", "lb_policy", "CLUSTER_PROVIDED is not supported"},
		{"LOAD_BALANCING_POLICY_CONFIG", changeCluster(func(c *clusterv3.Cluster) {
			c.LbPolicy = clusterv3.Cluster_LOAD_BALANCING_POLICY_CONFIG
		}), "Cluster", "web", "lb_policy", "LOAD_BALANCING_POLICY_CONFIG is not supported"},
		{"load_balancing_policy", changeCluster(func(c *clusterv3.Cluster) {
			c.LoadBalancingPolicy = &clusterv3.LoadBalancingPolicy{}
		}), "Cluster", "web", "load_balancing_policy", "load balancing policy extensions are not supported"},
		{"lb_subset_config", changeCluster(func(c *clusterv3.Cluster) {
			c.LbSubsetConfig = &clusterv3.Cluster_LbSubsetConfig{}
		}), "Cluster", "web", "lb_subset_config", "subsets are not supported"},
		{"transport_socket", changeCluster(func(c *clusterv3.Cluster) {
			c.TransportSocket = &corev3.TransportSocket{Name: "tls"}
		}), "Cluster", "web", "transport_socket", "TLS origination is not supported"},
		{"transport_socket_matches", changeCluster(func(c *clusterv3.Cluster) {
			c.TransportSocketMatches = []*clusterv3.Cluster_TransportSocketMatch{{Name: "tls"}}
		}), "Cluster", "web", "transport_socket_matches", "TLS origination is not supported"},
		{"unlisted field", changeCluster(func(c *clusterv3.Cluster) {
			c.UpstreamBindConfig = &corev3.BindConfig{}
		}), "Cluster", "web", "upstream_bind_config", "binding upstream connections"},
		{"field without a rule", changeCluster(func(c *clusterv3.Cluster) {
			c.QueuingPolicies = &clusterv3.Cluster_QueuingPolicies{}
		}), "Cluster", "web", "queuing_policies", "Sluice refuses fields it does not know to be harmless"},
		{"nil cluster", func(r *translate.Resources) { r.Clusters["web"] = nil }, "Cluster", "web", "", "nil resource"},
		{"name differs from key", changeCluster(func(c *clusterv3.Cluster) { c.Name = "Web" }),
			"Cluster", "web", "name", `"Web" differs from the resource name "web"`},
		{"STATIC cluster with eds_cluster_config", typ(clusterv3.Cluster_STATIC),
			"Cluster", "web", "eds_cluster_config", "did you mean type: EDS?"},
		{"STATIC cluster with a hostname endpoint", func(r *translate.Resources) {
			r.Clusters["web"] = staticCluster("web", lbEndpoint("10.0.0.1", 80), lbEndpoint("backend.local", 80))
		}, "Cluster", "web", "load_assignment.endpoints[0].lb_endpoints[1].endpoint.address.socket_address.address", `"backend.local" is not an IP address literal`},
		{"STATIC cluster with another cluster_name", func(r *translate.Resources) {
			c := staticCluster("web", lbEndpoint("10.0.0.1", 80))
			c.LoadAssignment.ClusterName = "other"
			r.Clusters["web"] = c
		}, "Cluster", "web", "load_assignment.cluster_name", `"other" differs`},
		{"unused clusters are checked", func(r *translate.Resources) {
			r.Clusters["spare"] = edsCluster("spare", "")
			r.Clusters["spare"].LbPolicy = clusterv3.Cluster_CLUSTER_PROVIDED
		}, "Cluster", "spare", "lb_policy", "not supported"},
		{"cluster errors come before assignment errors", func(r *translate.Resources) {
			assignment(*r).ClusterName = "x"
			r.Clusters["zzz"] = staticCluster("zzz")
			r.Clusters["zzz"].ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_LOGICAL_DNS}
		}, "Cluster", "zzz", "type", "LOGICAL_DNS"},
	})
}

func TestTranslateRefusesAssignments(t *testing.T) {
	runRefusals(t, []refusal{
		{"cluster_name differs from key", changeAssignment(func(a *endpointv3.ClusterLoadAssignment) { a.ClusterName = "web2" }),
			"ClusterLoadAssignment", "web", "cluster_name", `"web2" differs from the name "web"`},
		{"nil assignment", func(r *translate.Resources) { r.Endpoints["web"] = nil },
			"ClusterLoadAssignment", "web", "", "nil resource"},
		{"LEDS", changeAssignment(func(a *endpointv3.ClusterLoadAssignment) {
			a.Endpoints[0].LbConfig = &endpointv3.LocalityLbEndpoints_LedsClusterLocalityConfig{
				LedsClusterLocalityConfig: &endpointv3.LedsClusterLocalityConfig{},
			}
		}), "ClusterLoadAssignment", "web", "endpoints[0].leds_cluster_locality_config", "LEDS is not supported"},
		{"named_endpoints", changeAssignment(func(a *endpointv3.ClusterLoadAssignment) {
			a.NamedEndpoints = map[string]*endpointv3.Endpoint{"x": {}}
		}), "ClusterLoadAssignment", "web", "named_endpoints", "named endpoints are not supported"},
		{"drop_overloads", changeAssignment(func(a *endpointv3.ClusterLoadAssignment) {
			a.Policy = &endpointv3.ClusterLoadAssignment_Policy{
				DropOverloads:          []*endpointv3.ClusterLoadAssignment_Policy_DropOverload{{Category: "x"}},
				OverprovisioningFactor: wrapperspb.UInt32(100),
			}
		}), "ClusterLoadAssignment", "web", "policy.drop_overloads", "drop overloads are not supported"},
		{"endpoint_name", changeEndpoint(func(e *endpointv3.LbEndpoint) {
			e.HostIdentifier = &endpointv3.LbEndpoint_EndpointName{EndpointName: "x"}
		}), "ClusterLoadAssignment", "web", lbe0 + ".endpoint_name", "named endpoints are not supported"},
		{"no endpoint", changeEndpoint(func(e *endpointv3.LbEndpoint) { e.HostIdentifier = nil }),
			"ClusterLoadAssignment", "web", lbe0 + ".endpoint", "missing"},
		{"no endpoint address", changeEndpoint(func(e *endpointv3.LbEndpoint) { e.GetEndpoint().Address = nil }),
			"ClusterLoadAssignment", "web", lbe0 + ".endpoint.address", "missing"},
		{"hostname endpoint", changeEndpoint(func(e *endpointv3.LbEndpoint) {
			e.GetEndpoint().Address.GetSocketAddress().Address = "web-0.web"
		}), "ClusterLoadAssignment", "web", lbe0 + ".endpoint.address.socket_address.address", `"web-0.web" is not an IP address literal`},
		{"pipe endpoint", changeEndpoint(func(e *endpointv3.LbEndpoint) {
			e.GetEndpoint().Address = &corev3.Address{Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{Path: "/x"}}}
		}), "ClusterLoadAssignment", "web", lbe0 + ".endpoint.address.pipe", "pipe addresses are not supported"},
		{"unspecified endpoint", changeEndpoint(func(e *endpointv3.LbEndpoint) {
			e.GetEndpoint().Address.GetSocketAddress().Address = "0.0.0.0"
		}), "ClusterLoadAssignment", "web", lbe0 + ".endpoint.address.socket_address.address", "0.0.0.0 is not a backend address"},
		{"endpoint port 0", changeEndpoint(func(e *endpointv3.LbEndpoint) {
			e.GetEndpoint().Address.GetSocketAddress().PortSpecifier = &corev3.SocketAddress_PortValue{}
		}), "ClusterLoadAssignment", "web", lbe0 + ".endpoint.address.socket_address.port_value", "0 is not a port"},
		{"endpoint named port", changeEndpoint(func(e *endpointv3.LbEndpoint) {
			e.GetEndpoint().Address.GetSocketAddress().PortSpecifier = &corev3.SocketAddress_NamedPort{NamedPort: "http"}
		}), "ClusterLoadAssignment", "web", lbe0 + ".endpoint.address.socket_address.named_port", "named ports are not supported"},
		{"unknown health", changeEndpoint(func(e *endpointv3.LbEndpoint) { e.HealthStatus = 42 }),
			"ClusterLoadAssignment", "web", lbe0 + ".health_status", "unknown value 42"},
		{"duplicate endpoint", changeAssignment(func(a *endpointv3.ClusterLoadAssignment) {
			a.Endpoints = append(a.Endpoints, &endpointv3.LocalityLbEndpoints{Priority: 1,
				LbEndpoints: []*endpointv3.LbEndpoint{lbEndpoint("10.244.2.7", 8080)}})
		}), "ClusterLoadAssignment", "web", "endpoints[1].lb_endpoints[0].endpoint.address", "10.244.2.7:8080 is listed twice (also endpoints[0].lb_endpoints[1])"},
		{"duplicate endpoint in a large assignment", changeAssignment(func(a *endpointv3.ClusterLoadAssignment) {
			var many []*endpointv3.LbEndpoint
			for i := range 40 {
				many = append(many, lbEndpoint(fmt.Sprintf("10.1.0.%d", i+1), 80))
			}
			a.Endpoints = append(a.Endpoints, &endpointv3.LocalityLbEndpoints{LbEndpoints: many},
				&endpointv3.LocalityLbEndpoints{LbEndpoints: []*endpointv3.LbEndpoint{lbEndpoint("10.1.0.5", 80)}})
		}), "ClusterLoadAssignment", "web", "endpoints[2].lb_endpoints[0].endpoint.address", "10.1.0.5:80 is listed twice (also endpoints[1].lb_endpoints[4])"},
		{"unused assignments are checked", func(r *translate.Resources) {
			r.Endpoints["orphan"] = cla("orphan", lbEndpoint("orphan.local", 1))
		}, "ClusterLoadAssignment", "orphan", lbe0 + ".endpoint.address.socket_address.address", "not an IP address literal"},

		// Workload metadata.
		{"workload spiffe_id not a string", setWorkload(map[string]any{"spiffe_id": 7.0}),
			"ClusterLoadAssignment", "web", wlKey + ".spiffe_id", "want a string, got a number"},
		{"workload namespace null", setWorkload(map[string]any{"namespace": nil}),
			"ClusterLoadAssignment", "web", wlKey + ".namespace", "want a string, got null"},
		{"workload node a list", setWorkload(map[string]any{"node": []any{"a"}}),
			"ClusterLoadAssignment", "web", wlKey + ".node", "want a string, got a list"},
		{"workload identity a string", setWorkload(map[string]any{"identity": "42"}),
			"ClusterLoadAssignment", "web", wlKey + ".identity", "want a number, got a string"},
		{"workload identity negative", setWorkload(map[string]any{"identity": -1.0}),
			"ClusterLoadAssignment", "web", wlKey + ".identity", "-1 is not an integer in 0..2147483647 (larger identities are derived from SPIFFE IDs)"},
		{"workload identity fractional", setWorkload(map[string]any{"identity": 1.5}),
			"ClusterLoadAssignment", "web", wlKey + ".identity", "1.5 is not an integer"},
		{"workload identity too large", setWorkload(map[string]any{"identity": 2147483648.0}),
			"ClusterLoadAssignment", "web", wlKey + ".identity", "2147483648 is not an integer in 0..2147483647 (larger identities are derived from SPIFFE IDs)"},
		{"workload unknown key", setWorkload(map[string]any{"namespace": "demo", "serviceAccount": "web", "zzz": 1.0}),
			"ClusterLoadAssignment", "web", wlKey + `["serviceAccount"]`, "unknown key"},
	})
}

func TestTranslateRefusesRouteConfigurations(t *testing.T) {
	// The listener reads the routes "web" (RDS); routes that no listener
	// reads are checked too.
	withRoutes := func(f func(r *translate.Resources)) func(r *translate.Resources) {
		return func(r *translate.Resources) {
			changeHCM(func(*hcmv3.HttpConnectionManager) {})(r)
			r.Routes = map[string]*routev3.RouteConfiguration{"web": routeConfig("web", prefixRoute("/", "web"))}
			f(r)
		}
	}
	runRefusals(t, []refusal{
		{"a refused route", withRoutes(func(r *translate.Resources) {
			r.Routes["web"].VirtualHosts[0].Routes[0].Action = &routev3.Route_Redirect{Redirect: &routev3.RedirectAction{}}
		}), "RouteConfiguration", "web", "virtual_hosts[0].routes[0].redirect", "redirects are not supported yet"},
		{"name differs from key", withRoutes(func(r *translate.Resources) { r.Routes["web"].Name = "Web" }),
			"RouteConfiguration", "web", "name", `"Web" differs from the resource name "web"`},
		{"nil route configuration", withRoutes(func(r *translate.Resources) { r.Routes["web"] = nil }),
			"RouteConfiguration", "web", "", "nil resource"},
		{"unused route configurations are checked", func(r *translate.Resources) {
			r.Routes = map[string]*routev3.RouteConfiguration{"spare": routeConfig("spare", prefixRoute("/", translate.Directory))}
		}, "RouteConfiguration", "spare", "virtual_hosts[0].routes[0].route.cluster", "is a workload directory"},
		{"assignment errors come before route errors", withRoutes(func(r *translate.Resources) {
			r.Routes["web"].VirtualHosts[0].Domains = nil
			assignment(*r).ClusterName = "x"
		}), "ClusterLoadAssignment", "web", "cluster_name", `"x" differs`},
	})
}

// changeHCM makes demo()'s listener an L7 one, on the same address, that
// reads the routes "web" (RDS), and changes its HttpConnectionManager
// with f.
func changeHCM(f func(h *hcmv3.HttpConnectionManager)) func(r *translate.Resources) {
	return func(r *translate.Resources) {
		h := rdsHCM("web")
		f(h)
		r.Listeners[lname] = httpListener(lname, "10.96.0.10", 80, h)
	}
}

func runRefusals(t *testing.T, tests []refusal) {
	t.Helper()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := demo()
			tt.change(&r)
			got, err := translate.Translate(r)
			if err == nil {
				t.Fatalf("Translate accepted it: %s", dump(got.State.Services))
			}
			var re *translate.ResourceError
			if !errors.As(err, &re) {
				t.Fatalf("error %v (%T) is not a *ResourceError", err, err)
			}
			if re.Type != tt.typ || re.Name != tt.res || re.Field != tt.field {
				t.Errorf("refused %s %q field %q, want %s %q field %q\n(%v)", re.Type, re.Name, re.Field, tt.typ, tt.res, tt.field, err)
			}
			if !strings.Contains(re.Reason, tt.reason) {
				t.Errorf("reason %q does not say %q", re.Reason, tt.reason)
			}
			prefix := tt.typ + ` "` + tt.res + `": `
			if tt.field != "" {
				prefix += tt.field + ": "
			}
			if !strings.HasPrefix(err.Error(), prefix) {
				t.Errorf("error %q does not start with %q", err, prefix)
			}
			checkTranslator(t, r)
		})
	}
}

func TestL7ErrorText(t *testing.T) {
	// The exact text operators see, as documented in docs/xds.md.
	r := demo()
	changeHCM(func(h *hcmv3.HttpConnectionManager) {
		h.RouteSpecifier = &hcmv3.HttpConnectionManager_ScopedRoutes{ScopedRoutes: &hcmv3.ScopedRoutes{}}
	})(&r)
	_, err := translate.Translate(r)
	want := `Listener "demo/web:80": filter_chains[0].filters[0].typed_config.scoped_routes: scoped routes are not supported; use rds or route_config`
	if err == nil || err.Error() != want {
		t.Errorf("error = %v\nwant    %s", err, want)
	}
}
