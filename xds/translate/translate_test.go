package translate_test

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	matcherv3 "github.com/cncf/xds/go/xds/type/matcher/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	originaldstv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	tlsinspectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	udpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/udp/udp_proxy/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sluice-mesh/sluice/dataplane/model"
	"github.com/sluice-mesh/sluice/xds/translate"
)

func TestTranslateAccepts(t *testing.T) {
	tests := []struct {
		name    string
		res     func() translate.Resources
		want    []model.Service
		missing []string
		ignored map[string]int // checked when not nil
	}{
		{
			name:    "empty",
			res:     func() translate.Resources { return translate.Resources{} },
			want:    nil,
			ignored: map[string]int{},
		},
		{
			name: "single EDS cluster without service_name",
			res:  demo,
			want: []model.Service{demoService()},
			// tcpProxy() sets stat_prefix; edsCluster() asks for RANDOM, which
			// is what Sluice does and is not counted.
			ignored: map[string]int{"TcpProxy.stat_prefix": 1},
		},
		{
			name: "service metadata: fast path off, other keys counted",
			res: func() translate.Resources {
				r := demo()
				withService(listener(r), map[string]any{"fast_path": false}, "istio")
				return r
			},
			want: func() []model.Service {
				s := demoService()
				s.FastPath = model.FastPathOff
				return []model.Service{s}
			}(),
			ignored: map[string]int{"TcpProxy.stat_prefix": 1, "Listener.metadata.filter_metadata": 1},
		},
		{
			name: "service metadata: fast path on",
			res: func() translate.Resources {
				r := demo()
				withService(listener(r), map[string]any{"fast_path": true})
				return r
			},
			want: func() []model.Service {
				s := demoService()
				s.FastPath = model.FastPathOn
				return []model.Service{s}
			}(),
		},
		{
			name: "service metadata without settings",
			res: func() translate.Resources {
				r := demo()
				withService(listener(r), map[string]any{})
				return r
			},
			want: []model.Service{demoService()},
		},
		{
			name: "EDS cluster with service_name",
			res: func() translate.Resources {
				r := demo()
				r.Clusters["web"] = edsCluster("web", "web-v2")
				r.Endpoints = map[string]*endpointv3.ClusterLoadAssignment{
					"web":    cla("web", lbEndpoint("10.244.9.9", 1)),
					"web-v2": cla("web-v2", lbEndpoint("10.244.3.3", 9090)),
				}
				return r
			},
			want: []model.Service{{
				Name: "demo/web:80", VIP: ip("10.96.0.10"), Port: 80, Protocol: model.TCP,
				Endpoints: []model.Endpoint{ep("10.244.3.3", 9090)},
			}},
		},
		{
			name: "STATIC cluster",
			res: func() translate.Resources {
				r := demo()
				r.Clusters["web"] = staticCluster("web", lbEndpoint("10.244.5.1", 80), withWeight(lbEndpoint("10.244.5.2", 81), 3))
				r.Endpoints = nil
				return r
			},
			want: []model.Service{{
				Name: "demo/web:80", VIP: ip("10.96.0.10"), Port: 80, Protocol: model.TCP,
				Endpoints: []model.Endpoint{ep("10.244.5.1", 80), {Addr: ip("10.244.5.2"), Port: 81, Weight: 3}},
			}},
		},
		{
			name: "STATIC cluster without endpoints is empty, not missing",
			res: func() translate.Resources {
				r := demo()
				r.Clusters["web"] = &clusterv3.Cluster{Name: "web"} // type defaults to STATIC
				r.Endpoints = nil
				return r
			},
			want: []model.Service{{Name: "demo/web:80", VIP: ip("10.96.0.10"), Port: 80, Protocol: model.TCP}},
			ignored: map[string]int{
				"TcpProxy.stat_prefix": 1,
				// The default lb_policy is counted: it is approximated.
				"Cluster.lb_policy=ROUND_ROBIN": 1,
			},
		},
		{
			name: "weighted clusters",
			res: func() translate.Resources {
				r := demo()
				r.Listeners["demo/web:80"] = tcpListener("demo/web:80", "10.96.0.10", 80, weighted("web", 90, "canary", 10))
				r.Clusters["canary"] = staticCluster("canary", lbEndpoint("10.244.7.7", 8080))
				return r
			},
			want: []model.Service{{
				Name: "demo/web:80", VIP: ip("10.96.0.10"), Port: 80, Protocol: model.TCP,
				Splits: []model.Split{
					{Name: "web", Weight: 90, Endpoints: []model.Endpoint{ep("10.244.1.5", 8080), ep("10.244.2.7", 8080)}},
					{Name: "canary", Weight: 10, Endpoints: []model.Endpoint{ep("10.244.7.7", 8080)}},
				},
			}},
		},
		{
			name: "weighted clusters with weight 0 and a missing cluster",
			res: func() translate.Resources {
				r := demo()
				r.Listeners["demo/web:80"] = tcpListener("demo/web:80", "10.96.0.10", 80, weighted("web", 0, "canary", 5))
				return r
			},
			want: []model.Service{{
				Name: "demo/web:80", VIP: ip("10.96.0.10"), Port: 80, Protocol: model.TCP,
				Splits: []model.Split{
					{Name: "web", Weight: 0, Endpoints: []model.Endpoint{ep("10.244.1.5", 8080), ep("10.244.2.7", 8080)}},
					{Name: "canary", Weight: 5},
				},
			}},
			missing: []string{"Cluster/canary"},
		},
		{
			name: "cluster not sent yet",
			res: func() translate.Resources {
				r := demo()
				r.Clusters, r.Endpoints = nil, nil
				return r
			},
			want:    []model.Service{{Name: "demo/web:80", VIP: ip("10.96.0.10"), Port: 80, Protocol: model.TCP}},
			missing: []string{"Cluster/web"},
		},
		{
			name: "assignment not sent yet",
			res: func() translate.Resources {
				r := demo()
				r.Clusters["web"] = edsCluster("web", "web-eds")
				r.Endpoints = nil
				return r
			},
			want:    []model.Service{{Name: "demo/web:80", VIP: ip("10.96.0.10"), Port: 80, Protocol: model.TCP}},
			missing: []string{"ClusterLoadAssignment/web-eds"},
		},
		{
			name: "unused cluster and assignment are checked but neither needed nor missing",
			res: func() translate.Resources {
				r := demo()
				r.Clusters["spare"] = edsCluster("spare", "")
				r.Endpoints["orphan"] = cla("orphan", lbEndpoint("10.1.1.1", 1))
				return r
			},
			want: []model.Service{demoService()},
		},
		{
			name: "missing names are sorted and deduplicated",
			res: func() translate.Resources {
				r := demo()
				r.Listeners["b"] = tcpListener("b", "10.96.0.2", 80, weighted("zz", 1, "aa", 1))
				r.Listeners["c"] = tcpListener("c", "10.96.0.3", 80, tcpProxy("zz"))
				r.Clusters["aa"] = edsCluster("aa", "")
				return r
			},
			want: []model.Service{
				{Name: "b", VIP: ip("10.96.0.2"), Port: 80, Protocol: model.TCP, Splits: []model.Split{{Name: "zz", Weight: 1}, {Name: "aa", Weight: 1}}},
				{Name: "c", VIP: ip("10.96.0.3"), Port: 80, Protocol: model.TCP},
				demoService(),
			},
			missing: []string{"Cluster/zz", "ClusterLoadAssignment/aa"},
		},
		{
			name: "dual stack: each VIP gets the endpoints of its family",
			res: func() translate.Resources {
				r := demo()
				l := listener(r)
				l.AdditionalAddresses = []*listenerv3.AdditionalAddress{{Address: sockAddr("fd00:96::10", 80)}}
				r.Endpoints["web"] = cla("web", lbEndpoint("10.244.1.5", 8080), lbEndpoint("fd00:244::5", 8080))
				return r
			},
			want: []model.Service{
				{Name: "demo/web:80", VIP: ip("10.96.0.10"), Port: 80, Protocol: model.TCP, Endpoints: []model.Endpoint{ep("10.244.1.5", 8080)}},
				{Name: "demo/web:80", VIP: ip("fd00:96::10"), Port: 80, Protocol: model.TCP, Endpoints: []model.Endpoint{ep("fd00:244::5", 8080)}},
			},
		},
		{
			name: "dual stack with weighted clusters",
			res: func() translate.Resources {
				r := demo()
				l := tcpListener("demo/web:80", "fd00:96::10", 80, weighted("web", 3, "v6only", 1))
				l.AdditionalAddresses = []*listenerv3.AdditionalAddress{{Address: sockAddr("10.96.0.10", 80)}}
				r.Listeners["demo/web:80"] = l
				r.Clusters["v6only"] = staticCluster("v6only", lbEndpoint("fd00:244::7", 80))
				return r
			},
			want: []model.Service{
				{Name: "demo/web:80", VIP: ip("fd00:96::10"), Port: 80, Protocol: model.TCP, Splits: []model.Split{
					{Name: "web", Weight: 3},
					{Name: "v6only", Weight: 1, Endpoints: []model.Endpoint{ep("fd00:244::7", 80)}},
				}},
				{Name: "demo/web:80", VIP: ip("10.96.0.10"), Port: 80, Protocol: model.TCP, Splits: []model.Split{
					{Name: "web", Weight: 3, Endpoints: []model.Endpoint{ep("10.244.1.5", 8080), ep("10.244.2.7", 8080)}},
					{Name: "v6only", Weight: 1},
				}},
			},
		},
		{
			name: "IPv6 service",
			res: func() translate.Resources {
				r := demo()
				r.Listeners["demo/web:80"] = tcpListener("demo/web:80", "fd00:96::10", 443, tcpProxy("web"))
				r.Endpoints["web"] = cla("web", lbEndpoint("fd00:244::5", 8443))
				return r
			},
			want: []model.Service{{Name: "demo/web:80", VIP: ip("fd00:96::10"), Port: 443, Protocol: model.TCP,
				Endpoints: []model.Endpoint{ep("fd00:244::5", 8443)}}},
		},
		{
			name: "UDP through the deprecated cluster field",
			res: func() translate.Resources {
				r := demo()
				r.Listeners = map[string]*listenerv3.Listener{"dns": udpListener("dns", "10.96.0.53", 53, &udpproxyv3.UdpProxyConfig{
					StatPrefix:     "dns",
					RouteSpecifier: &udpproxyv3.UdpProxyConfig_Cluster{Cluster: "web"},
				})}
				return r
			},
			want: []model.Service{{Name: "dns", VIP: ip("10.96.0.53"), Port: 53, Protocol: model.UDP,
				Endpoints: []model.Endpoint{ep("10.244.1.5", 8080), ep("10.244.2.7", 8080)}}},
			ignored: map[string]int{"UdpProxyConfig.stat_prefix": 1},
		},
		{
			name: "UDP through a matcher's on_no_match",
			res: func() translate.Resources {
				r := demo()
				l := udpListener("dns", "10.96.0.53", 53, &udpproxyv3.UdpProxyConfig{
					StatPrefix:     "dns",
					IdleTimeout:    durationpb.New(30e9),
					RouteSpecifier: udpMatcher("web"),
				})
				l.UdpListenerConfig = &listenerv3.UdpListenerConfig{}
				r.Listeners = map[string]*listenerv3.Listener{"dns": l}
				return r
			},
			want: []model.Service{{Name: "dns", VIP: ip("10.96.0.53"), Port: 53, Protocol: model.UDP,
				Endpoints: []model.Endpoint{ep("10.244.1.5", 8080), ep("10.244.2.7", 8080)}}},
			ignored: map[string]int{
				"UdpProxyConfig.stat_prefix":   1,
				"UdpProxyConfig.idle_timeout":  1,
				"Listener.udp_listener_config": 1,
			},
		},
		{
			name: "TCP and UDP on the same VIP:port are two services",
			res: func() translate.Resources {
				r := demo()
				r.Listeners["demo/web:80/udp"] = udpListener("demo/web:80/udp", "10.96.0.10", 80,
					&udpproxyv3.UdpProxyConfig{RouteSpecifier: &udpproxyv3.UdpProxyConfig_Cluster{Cluster: "web"}})
				return r
			},
			want: []model.Service{demoService(), func() model.Service {
				s := demoService()
				s.Name, s.Protocol = "demo/web:80/udp", model.UDP
				return s
			}()},
		},
		{
			name: "health mapping",
			res: func() translate.Resources {
				r := demo()
				r.Endpoints["web"] = cla("web",
					withHealth(lbEndpoint("10.0.0.1", 1), corev3.HealthStatus_UNKNOWN),
					withHealth(lbEndpoint("10.0.0.2", 1), corev3.HealthStatus_HEALTHY),
					withHealth(lbEndpoint("10.0.0.3", 1), corev3.HealthStatus_UNHEALTHY),
					withHealth(lbEndpoint("10.0.0.4", 1), corev3.HealthStatus_DRAINING),
					withHealth(lbEndpoint("10.0.0.5", 1), corev3.HealthStatus_TIMEOUT),
					withHealth(lbEndpoint("10.0.0.6", 1), corev3.HealthStatus_DEGRADED),
				)
				return r
			},
			want: []model.Service{{Name: "demo/web:80", VIP: ip("10.96.0.10"), Port: 80, Protocol: model.TCP,
				Endpoints: []model.Endpoint{
					{Addr: ip("10.0.0.1"), Port: 1, Health: model.HealthUnknown},
					{Addr: ip("10.0.0.2"), Port: 1, Health: model.HealthHealthy},
					{Addr: ip("10.0.0.3"), Port: 1, Health: model.HealthUnhealthy},
					{Addr: ip("10.0.0.4"), Port: 1, Health: model.HealthDraining},
					{Addr: ip("10.0.0.5"), Port: 1, Health: model.HealthUnhealthy},
					{Addr: ip("10.0.0.6"), Port: 1, Health: model.HealthUnhealthy},
				}}},
		},
		{
			name: "priorities, localities and weights",
			res: func() translate.Resources {
				r := demo()
				r.Endpoints["web"] = &endpointv3.ClusterLoadAssignment{
					ClusterName: "web",
					Endpoints: []*endpointv3.LocalityLbEndpoints{
						{
							Locality:            &corev3.Locality{Region: "eu", Zone: "eu-1a", SubZone: "rack4"},
							LoadBalancingWeight: wrapperspb.UInt32(7),
							LbEndpoints:         []*endpointv3.LbEndpoint{withWeight(lbEndpoint("10.0.1.1", 80), 5), lbEndpoint("10.0.1.2", 80)},
						},
						{
							Locality:    &corev3.Locality{Region: "us"},
							Priority:    1,
							LbEndpoints: []*endpointv3.LbEndpoint{withWeight(lbEndpoint("10.0.2.1", 80), 0)},
						},
					},
				}
				return r
			},
			want: []model.Service{{Name: "demo/web:80", VIP: ip("10.96.0.10"), Port: 80, Protocol: model.TCP,
				Endpoints: []model.Endpoint{
					{Addr: ip("10.0.1.1"), Port: 80, Weight: 5, Locality: model.Locality{Region: "eu", Zone: "eu-1a", SubZone: "rack4"}.Ref()},
					{Addr: ip("10.0.1.2"), Port: 80, Locality: model.Locality{Region: "eu", Zone: "eu-1a", SubZone: "rack4"}.Ref()},
					{Addr: ip("10.0.2.1"), Port: 80, Priority: 1, Locality: model.Locality{Region: "us"}.Ref()},
				}}},
			ignored: map[string]int{"TcpProxy.stat_prefix": 1, "LocalityLbEndpoints.load_balancing_weight": 1},
		},
		{
			name: "workload metadata",
			res: func() translate.Resources {
				r := demo()
				full := withWorkload(lbEndpoint("10.244.1.5", 8080), map[string]any{
					"spiffe_id":       "spiffe://cluster.local/ns/demo/sa/web",
					"namespace":       "demo",
					"service_account": "web",
					"workload":        "web-7d9f",
					"node":            "node-a",
					"identity":        2147483647.0,
				})
				full.Metadata.FilterMetadata["other.io/thing"] = &structpb.Struct{}
				partial := withWorkload(lbEndpoint("10.244.2.7", 8080), map[string]any{"namespace": "demo", "identity": 0.0})
				r.Endpoints["web"] = cla("web", full, partial)
				return r
			},
			want: []model.Service{{Name: "demo/web:80", VIP: ip("10.96.0.10"), Port: 80, Protocol: model.TCP,
				Endpoints: []model.Endpoint{
					{Addr: ip("10.244.1.5"), Port: 8080, Workload: &model.Workload{
						Name: "web-7d9f", Namespace: "demo", ServiceAccount: "web", Node: "node-a",
						SPIFFEID: "spiffe://cluster.local/ns/demo/sa/web", Identity: 2147483647,
					}},
					{Addr: ip("10.244.2.7"), Port: 8080, Workload: &model.Workload{Namespace: "demo"}},
				}}},
			ignored: map[string]int{"TcpProxy.stat_prefix": 1, "LbEndpoint.metadata.filter_metadata": 1},
		},
		{
			name: "services ordered by listener name, then address",
			res: func() translate.Resources {
				r := demo()
				r.Listeners["a"] = tcpListener("a", "10.96.0.1", 1, tcpProxy("web"))
				r.Listeners["a"].AdditionalAddresses = []*listenerv3.AdditionalAddress{{Address: sockAddr("10.96.0.2", 2)}}
				r.Listeners["z"] = tcpListener("z", "10.96.0.26", 1, tcpProxy("web"))
				return r
			},
			want: func() []model.Service {
				eps := demoService().Endpoints
				return []model.Service{
					{Name: "a", VIP: ip("10.96.0.1"), Port: 1, Protocol: model.TCP, Endpoints: eps},
					{Name: "a", VIP: ip("10.96.0.2"), Port: 2, Protocol: model.TCP, Endpoints: eps},
					demoService(),
					{Name: "z", VIP: ip("10.96.0.26"), Port: 1, Protocol: model.TCP, Endpoints: eps},
				}
			}(),
		},
		{
			name: "harmless listener filters, an empty filter_chain_match and EDS load_assignment",
			res: func() translate.Resources {
				r := demo()
				l := listener(r)
				l.ListenerFilters = []*listenerv3.ListenerFilter{
					{Name: "anything", ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: mustAny(&tlsinspectorv3.TlsInspector{})}},
					{Name: "x", ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: mustAny(&originaldstv3.OriginalDst{})}},
				}
				l.FilterChains[0].FilterChainMatch = &listenerv3.FilterChainMatch{}
				cluster(r).LoadAssignment = cla("web", lbEndpoint("10.9.9.9", 9))
				return r
			},
			want: []model.Service{demoService()},
			ignored: map[string]int{
				"TcpProxy.stat_prefix": 1,
				"Listener.listener_filters=envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector": 1,
				"Listener.listener_filters=envoy.extensions.filters.listener.original_dst.v3.OriginalDst":   1,
				"Cluster.load_assignment": 1,
			},
		},
		{
			name: "ignored fields are counted once per resource",
			res: func() translate.Resources {
				r := demo()
				r.Listeners["b"] = tcpListener("b", "10.96.0.2", 80, tcpProxy("web"))
				for _, l := range r.Listeners {
					l.StatPrefix = "x"
					l.PerConnectionBufferLimitBytes = wrapperspb.UInt32(1 << 20)
					l.TrafficDirection = corev3.TrafficDirection_OUTBOUND
					l.Address.GetSocketAddress().Ipv4Compat = true
					l.FilterChains[0].Name = "chain"
					l.FilterChains[0].TransportSocketConnectTimeout = durationpb.New(1e9)
				}
				tp := proxyOf(r.Listeners["b"])
				tp.IdleTimeout = durationpb.New(60e9)
				tp.MaxConnectAttempts = wrapperspb.UInt32(3)
				setProxy(r.Listeners["b"], tp)
				c := cluster(r)
				c.LbPolicy = clusterv3.Cluster_MAGLEV
				c.ConnectTimeout = durationpb.New(1e9)
				c.CircuitBreakers = &clusterv3.CircuitBreakers{}
				c.EdsClusterConfig.EdsConfig.InitialFetchTimeout = durationpb.New(1e9)
				r.Clusters["other"] = edsCluster("other", "")
				r.Clusters["other"].LbPolicy = clusterv3.Cluster_ROUND_ROBIN
				r.Clusters["other"].ConnectTimeout = durationpb.New(1e9)
				a := assignment(r)
				a.Policy = &endpointv3.ClusterLoadAssignment_Policy{OverprovisioningFactor: wrapperspb.UInt32(140)}
				for _, lbe := range a.Endpoints[0].LbEndpoints {
					lbe.GetEndpoint().Hostname = "pod"
					lbe.GetEndpoint().HealthCheckConfig = &endpointv3.Endpoint_HealthCheckConfig{PortValue: 9}
				}
				return r
			},
			want: []model.Service{{Name: "b", VIP: ip("10.96.0.2"), Port: 80, Protocol: model.TCP, Endpoints: demoService().Endpoints}, demoService()},
			ignored: map[string]int{
				"Listener.stat_prefix":                                        2,
				"Listener.per_connection_buffer_limit_bytes":                  2,
				"Listener.traffic_direction":                                  2,
				"Listener.address.socket_address.ipv4_compat":                 2,
				"FilterChain.name":                                            2,
				"FilterChain.transport_socket_connect_timeout":                2,
				"TcpProxy.stat_prefix":                                        2,
				"TcpProxy.idle_timeout":                                       1,
				"TcpProxy.max_connect_attempts":                               1,
				"Cluster.lb_policy=MAGLEV":                                    1,
				"Cluster.lb_policy=ROUND_ROBIN":                               1,
				"Cluster.connect_timeout":                                     2,
				"Cluster.circuit_breakers":                                    1,
				"Cluster.eds_cluster_config.eds_config.initial_fetch_timeout": 1,
				"ClusterLoadAssignment.policy.overprovisioning_factor":        1,
				"LbEndpoint.endpoint.hostname":                                1,
				"LbEndpoint.endpoint.health_check_config":                     1,
			},
		},
		{
			name: "lb_policy values are counted by name",
			res: func() translate.Resources {
				r := demo()
				for _, p := range []clusterv3.Cluster_LbPolicy{clusterv3.Cluster_LEAST_REQUEST, clusterv3.Cluster_RING_HASH, clusterv3.Cluster_RANDOM} {
					c := edsCluster(p.String(), "")
					c.LbPolicy = p
					r.Clusters[c.Name] = c
				}
				tp := proxyOf(listener(r))
				tp.StatPrefix = ""
				setProxy(listener(r), tp)
				return r
			},
			want: []model.Service{demoService()},
			ignored: map[string]int{
				"Cluster.lb_policy=LEAST_REQUEST": 1,
				"Cluster.lb_policy=RING_HASH":     1,
			},
		},
		{
			name: "filters are told apart by type, not by name",
			res: func() translate.Resources {
				r := demo()
				listener(r).FilterChains[0].Filters[0].Name = "envoy.filters.network.http_connection_manager"
				return r
			},
			want: []model.Service{demoService()},
		},
		{
			name: "type URL host is irrelevant",
			res: func() translate.Resources {
				r := demo()
				listener(r).FilterChains[0].Filters[0].GetTypedConfig().TypeUrl = "example.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
				return r
			},
			want: []model.Service{demoService()},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := tt.res()
			before := cloneResources(r)
			got, err := translate.Translate(r)
			if err != nil {
				t.Fatalf("Translate: %v", err)
			}
			if !reflect.DeepEqual(got.State.Services, tt.want) {
				t.Errorf("services:\n got %s\nwant %s", dump(got.State.Services), dump(tt.want))
			}
			if !reflect.DeepEqual(got.Missing, tt.missing) {
				t.Errorf("Missing = %q, want %q", got.Missing, tt.missing)
			}
			if tt.ignored != nil && !reflect.DeepEqual(got.Ignored, tt.ignored) {
				t.Errorf("Ignored = %v, want %v", got.Ignored, tt.ignored)
			}
			if err := got.State.Validate(); err != nil {
				t.Errorf("State.Validate: %v", err)
			}
			if !equalResources(r, before) {
				t.Errorf("Translate modified its input")
			}
			again, err := translate.Translate(r)
			if err != nil || !reflect.DeepEqual(again, got) {
				t.Errorf("second Translate differs: %v", err)
			}
			checkTranslator(t, r)
		})
	}
}

func TestServicesDoNotShareEndpoints(t *testing.T) {
	r := demo()
	r.Listeners["b"] = tcpListener("b", "10.96.0.2", 80, tcpProxy("web"))
	got, err := translate.Translate(r)
	if err != nil {
		t.Fatal(err)
	}
	s := got.State.Services
	s[0].Endpoints[0].Port = 1
	if s[1].Endpoints[0].Port == 1 {
		t.Fatal("two services share one endpoint array")
	}
}

func TestNames(t *testing.T) {
	hcm := func(rds string) proto.Message {
		h := &hcmv3.HttpConnectionManager{StatPrefix: "http"}
		if rds != "" {
			h.RouteSpecifier = &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{RouteConfigName: rds, ConfigSource: adsSource()}}
		} else {
			h.RouteSpecifier = &hcmv3.HttpConnectionManager_RouteConfig{}
		}
		return h
	}
	httpListener := func(name string, filters ...*listenerv3.Filter) *listenerv3.Listener {
		return &listenerv3.Listener{Name: name, Address: sockAddr("10.96.0.9", 80),
			FilterChains: []*listenerv3.FilterChain{{Filters: filters}}}
	}
	garbage := filter("x", hcm("never"))
	garbage.GetTypedConfig().Value = []byte{0xff, 0xff}
	withDefault := httpListener("d", filter("tcp", tcpProxy("web")))
	withDefault.DefaultFilterChain = &listenerv3.FilterChain{Filters: []*listenerv3.Filter{filter("h", hcm("fallback"))}}
	r := translate.Resources{
		Listeners: map[string]*listenerv3.Listener{
			"a":   httpListener("a", filter("h", hcm("routes-b")), filter("h2", hcm("routes-a"))),
			"b":   httpListener("b", filter("h", hcm("routes-a"))),
			"c":   httpListener("c", filter("h", hcm("")), garbage),
			"d":   withDefault,
			"nil": nil,
		},
		Clusters: map[string]*clusterv3.Cluster{
			"web":    edsCluster("web", ""),
			"named":  edsCluster("named", "svc-named"),
			"also":   edsCluster("also", "svc-named"),
			"static": staticCluster("static"),
			"dns":    {Name: "dns", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STRICT_DNS}},
			"nil":    nil,
		},
	}
	if got, want := translate.RDSNames(r), []string{"fallback", "routes-a", "routes-b"}; !reflect.DeepEqual(got, want) {
		t.Errorf("RDSNames = %q, want %q", got, want)
	}
	if got, want := translate.EDSNames(r), []string{"svc-named", "web"}; !reflect.DeepEqual(got, want) {
		t.Errorf("EDSNames = %q, want %q", got, want)
	}
	if got := translate.EDSNames(translate.Resources{}); len(got) != 0 {
		t.Errorf("EDSNames of nothing = %q", got)
	}
	if got := translate.RDSNames(translate.Resources{}); len(got) != 0 {
		t.Errorf("RDSNames of nothing = %q", got)
	}
}

func TestResourceErrorText(t *testing.T) {
	e := &translate.ResourceError{Type: "Cluster", Name: "web", Field: "type", Reason: "no"}
	if got, want := e.Error(), `Cluster "web": type: no`; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	e.Field = ""
	if got, want := e.Error(), `Cluster "web": no`; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
}

func dump(svcs []model.Service) string {
	var b strings.Builder
	for _, s := range svcs {
		fmt.Fprintf(&b, "\n  %s %s eps=%s", s.Name, s.Key(), dumpEndpoints(s.Endpoints))
		for _, p := range s.Policies {
			fmt.Fprintf(&b, "\n    policy %q monitor=%v continuous=%v", p.Name, p.Monitor, p.Continuous)
			if p.Rules != nil {
				fmt.Fprintf(&b, " rules=%+v", *p.Rules)
			}
			if p.Shadow != nil {
				fmt.Fprintf(&b, " shadow=%+v", *p.Shadow)
			}
		}
		for _, sp := range s.Splits {
			fmt.Fprintf(&b, "\n    split %s w=%d eps=%s", sp.Name, sp.Weight, dumpEndpoints(sp.Endpoints))
		}
		if l7 := s.L7; l7 != nil {
			fmt.Fprintf(&b, "\n    L7 route_config=%q policies=%d", l7.RouteConfig, len(l7.Policies))
			if l7.Routes != nil {
				fmt.Fprintf(&b, " routes=%q virtual_hosts=%d", l7.Routes.Name, len(l7.Routes.VirtualHosts))
			}
			for _, c := range l7.Clusters {
				fmt.Fprintf(&b, "\n    cluster %s eps=%s", c.Name, dumpEndpoints(c.Endpoints))
			}
		}
	}
	return b.String()
}

func dumpEndpoints(eps []model.Endpoint) string {
	if eps == nil {
		return "nil"
	}
	var parts []string
	for _, e := range eps {
		s := fmt.Sprintf("%+v", e)
		if e.Workload != nil {
			s += fmt.Sprintf("%+v", *e.Workload)
		}
		parts = append(parts, s)
	}
	return "[" + strings.Join(parts, " ") + "]"
}

func cloneResources(r translate.Resources) translate.Resources {
	var c translate.Resources
	if r.Listeners != nil {
		c.Listeners = map[string]*listenerv3.Listener{}
		for k, v := range r.Listeners {
			c.Listeners[k] = proto.Clone(v).(*listenerv3.Listener)
		}
	}
	if r.Clusters != nil {
		c.Clusters = map[string]*clusterv3.Cluster{}
		for k, v := range r.Clusters {
			c.Clusters[k] = proto.Clone(v).(*clusterv3.Cluster)
		}
	}
	if r.Endpoints != nil {
		c.Endpoints = map[string]*endpointv3.ClusterLoadAssignment{}
		for k, v := range r.Endpoints {
			c.Endpoints[k] = proto.Clone(v).(*endpointv3.ClusterLoadAssignment)
		}
	}
	if r.Routes != nil {
		c.Routes = map[string]*routev3.RouteConfiguration{}
		for k, v := range r.Routes {
			c.Routes[k] = proto.Clone(v).(*routev3.RouteConfiguration)
		}
	}
	return c
}

func equalResources(a, b translate.Resources) bool {
	if len(a.Listeners) != len(b.Listeners) || len(a.Clusters) != len(b.Clusters) || len(a.Endpoints) != len(b.Endpoints) || len(a.Routes) != len(b.Routes) {
		return false
	}
	for k, v := range a.Routes {
		if !proto.Equal(v, b.Routes[k]) {
			return false
		}
	}
	for k, v := range a.Listeners {
		if !proto.Equal(v, b.Listeners[k]) {
			return false
		}
	}
	for k, v := range a.Clusters {
		if !proto.Equal(v, b.Clusters[k]) {
			return false
		}
	}
	for k, v := range a.Endpoints {
		if !proto.Equal(v, b.Endpoints[k]) {
			return false
		}
	}
	return true
}

// TestTranslateOddInputs feeds Translate what no control plane should send
// but a Go caller can build: nil resources, nil oneof payloads, nil list
// elements. It must answer, accepting or refusing, and never panic.
func TestTranslateOddInputs(t *testing.T) {
	tests := map[string]func(r *translate.Resources){
		"nil maps": func(r *translate.Resources) { *r = translate.Resources{} },
		"nil listener address payload": changeListener(func(l *listenerv3.Listener) {
			l.Address = &corev3.Address{Address: &corev3.Address_SocketAddress{}}
		}),
		"nil additional address": changeListener(func(l *listenerv3.Listener) {
			l.AdditionalAddresses = []*listenerv3.AdditionalAddress{nil}
		}),
		"nil filter chain": changeListener(func(l *listenerv3.Listener) { l.FilterChains[0] = nil }),
		"nil filter":       changeListener(func(l *listenerv3.Listener) { l.FilterChains[0].Filters[0] = nil }),
		"nil typed_config payload": changeListener(func(l *listenerv3.Listener) {
			l.FilterChains[0].Filters[0].ConfigType = &listenerv3.Filter_TypedConfig{}
		}),
		"nil listener filter": changeListener(func(l *listenerv3.Listener) {
			l.ListenerFilters = []*listenerv3.ListenerFilter{nil}
		}),
		"nil weighted clusters": changeProxy(func(tp *tcpproxyv3.TcpProxy) {
			tp.ClusterSpecifier = &tcpproxyv3.TcpProxy_WeightedClusters{}
		}),
		"nil udp matcher": setUDP(&udpproxyv3.UdpProxyConfig{RouteSpecifier: &udpproxyv3.UdpProxyConfig_Matcher{}}),
		"nil udp action": setUDP(&udpproxyv3.UdpProxyConfig{RouteSpecifier: &udpproxyv3.UdpProxyConfig_Matcher{
			Matcher: &matcherv3.Matcher{OnNoMatch: &matcherv3.Matcher_OnMatch{OnMatch: &matcherv3.Matcher_OnMatch_Action{}}},
		}}),
		"nil eds config payloads": changeCluster(func(c *clusterv3.Cluster) {
			c.EdsClusterConfig.EdsConfig.ConfigSourceSpecifier = &corev3.ConfigSource_Ads{}
		}),
		"nil cluster type payload": changeCluster(func(c *clusterv3.Cluster) {
			c.ClusterDiscoveryType = &clusterv3.Cluster_ClusterType{}
		}),
		"nil locality endpoints": changeAssignment(func(a *endpointv3.ClusterLoadAssignment) { a.Endpoints[0] = nil }),
		"nil lb endpoint":        changeEndpoint(func(e *endpointv3.LbEndpoint) { *e = endpointv3.LbEndpoint{} }),
		"nil endpoint payload":   changeEndpoint(func(e *endpointv3.LbEndpoint) { e.HostIdentifier = &endpointv3.LbEndpoint_Endpoint{} }),
		"nil endpoint in list":   changeAssignment(func(a *endpointv3.ClusterLoadAssignment) { a.Endpoints[0].LbEndpoints[1] = nil }),
		"nil workload struct": changeEndpoint(func(e *endpointv3.LbEndpoint) {
			e.Metadata = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"sluice.io/workload": nil}}
		}),
		"nil workload value": changeEndpoint(func(e *endpointv3.LbEndpoint) {
			e.Metadata = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
				"sluice.io/workload": {Fields: map[string]*structpb.Value{"identity": nil, "node": {}}},
			}}
		}),
		"garbage everywhere": func(r *translate.Resources) {
			listener(*r).FilterChains[0].Filters[0].GetTypedConfig().Value = []byte{0xff, 0xff, 0xff}
			cluster(*r).ProtoReflect().SetUnknown([]byte{0xff})
			assignment(*r).ProtoReflect().SetUnknown([]byte{0x08})
		},
	}
	for name, change := range tests {
		t.Run(name, func(t *testing.T) {
			r := demo()
			change(&r)
			translate.EDSNames(r)
			translate.RDSNames(r)
			checkTranslator(t, r)
			got, err := translate.Translate(r)
			if err != nil {
				var re *translate.ResourceError
				if !errors.As(err, &re) {
					t.Fatalf("error %v is a %T", err, err)
				}
				t.Log(err)
				return
			}
			if err := got.State.Validate(); err != nil {
				t.Fatalf("accepted an invalid state: %v", err)
			}
		})
	}
}

// TestValidateCulprit checks that a state Validate refuses is blamed on the
// listener its error names: Validate checks every service on its own
// before it looks for duplicates, so c is blamed, not b.
func TestValidateCulprit(t *testing.T) {
	r := demo()
	r.Listeners["a"] = tcpListener("a", "10.96.0.2", 80, tcpProxy("web"))
	r.Listeners["b"] = tcpListener("b", "10.96.0.2", 80, tcpProxy("web"))
	r.Listeners["c"] = tcpListener("c", "10.96.0.3", 80, tcpProxy("v6"))
	r.Clusters["v6"] = staticCluster("v6", lbEndpoint("fd00::1", 80))
	_, err := translate.Translate(r)
	var re *translate.ResourceError
	if !errors.As(err, &re) || re.Name != "c" || !strings.Contains(re.Reason, `service "c"`) {
		t.Errorf("err = %v, want the endpoint of service c refused", err)
	}
	checkTranslator(t, r)
	delete(r.Listeners, "c")
	_, err = translate.Translate(r)
	if !errors.As(err, &re) || re.Name != "b" || !strings.Contains(re.Reason, "duplicate") {
		t.Errorf("err = %v, want b a duplicate", err)
	}
	checkTranslator(t, r)
}
