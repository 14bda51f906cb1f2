package xds_test

import (
	"context"
	"fmt"
	"net"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/sluice-mesh/sluice/dataplane/model"
)

// controlPlane is go-control-plane's real ADS server on a loopback port,
// serving one snapshot to every node, and recording the NACKs it receives.
type controlPlane struct {
	t     testing.TB
	addr  string
	cache cachev3.SnapshotCache
	srv   *grpc.Server
	done  chan struct{}
	opts  []grpc.ServerOption // e.g. TLS credentials

	mu        sync.Mutex
	nacks     []string     // error_detail messages
	responses int          // responses sent
	requested []string     // types in the order of their first request
	node      *corev3.Node // the node of the first request
}

type anyNode struct{}

func (anyNode) ID(*corev3.Node) string { return "mesh" }

func newControlPlane(t testing.TB, opts ...grpc.ServerOption) *controlPlane {
	return newControlPlaneAt(t, "127.0.0.1:0", opts...)
}

func newControlPlaneAt(t testing.TB, addr string, opts ...grpc.ServerOption) *controlPlane {
	cp := &controlPlane{t: t, cache: cachev3.NewSnapshotCache(true, anyNode{}, nil), opts: opts}
	cp.start(addr)
	t.Cleanup(cp.stop)
	return cp
}

func (cp *controlPlane) start(addr string) {
	cp.t.Helper()
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		cp.t.Fatalf("listen %s: %v", addr, err)
	}
	cp.addr = lis.Addr().String()
	cb := serverv3.CallbackFuncs{
		StreamRequestFunc: func(_ int64, r *discoverygrpc.DiscoveryRequest) error {
			cp.recordRequest(r.GetNode(), r.GetTypeUrl(), r.GetErrorDetail().GetMessage())
			return nil
		},
		StreamDeltaRequestFunc: func(_ int64, r *discoverygrpc.DeltaDiscoveryRequest) error {
			cp.recordRequest(r.GetNode(), r.GetTypeUrl(), r.GetErrorDetail().GetMessage())
			return nil
		},
		StreamResponseFunc: func(context.Context, int64, *discoverygrpc.DiscoveryRequest, *discoverygrpc.DiscoveryResponse) {
			cp.countResponse()
		},
		StreamDeltaResponseFunc: func(int64, *discoverygrpc.DeltaDiscoveryRequest, *discoverygrpc.DeltaDiscoveryResponse) {
			cp.countResponse()
		},
	}
	cp.srv = grpc.NewServer(cp.opts...)
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(cp.srv, serverv3.NewServer(context.Background(), cp.cache, cb))
	cp.done = make(chan struct{})
	go func() {
		defer close(cp.done)
		_ = cp.srv.Serve(lis)
	}()
}

func (cp *controlPlane) stop() {
	if cp.srv != nil {
		cp.srv.Stop()
		<-cp.done
		cp.srv = nil
	}
}

// restart stops the server and serves again on the same address with the
// same cache, as a restarted control plane with the same config would.
func (cp *controlPlane) restart() {
	cp.stop()
	cp.start(cp.addr)
}

func (cp *controlPlane) recordRequest(node *corev3.Node, typeURL, nack string) {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	if cp.node == nil && node != nil {
		cp.node = node
	}
	if !slices.Contains(cp.requested, typeURL) {
		cp.requested = append(cp.requested, typeURL)
	}
	if nack != "" {
		cp.nacks = append(cp.nacks, nack)
	}
}

func (cp *controlPlane) firstNode() *corev3.Node {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return cp.node
}

func (cp *controlPlane) requestOrder() []string {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return slices.Clone(cp.requested)
}

func (cp *controlPlane) countResponse() {
	cp.mu.Lock()
	cp.responses++
	cp.mu.Unlock()
}

func (cp *controlPlane) nackMessages() []string {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return append([]string(nil), cp.nacks...)
}

func (cp *controlPlane) set(version string, m mesh) {
	cp.t.Helper()
	snap, err := cachev3.NewSnapshot(version, m.resources())
	if err != nil {
		cp.t.Fatal(err)
	}
	if err := cp.cache.SetSnapshot(context.Background(), "mesh", snap); err != nil {
		cp.t.Fatal(err)
	}
}

// mesh is a test description of services, rendered into xDS resources.
type mesh struct {
	services []svc
	l7       []l7svc
	extra    []types.Resource // raw listeners added as they are (for bad input)
	noCLA    bool             // leave assignments out (warming)
	peers    []string         // "ip spiffe-id": the workload directory sluice.io/workloads/test
}

// l7svc is an L7 service whose listener reads the routes "<name>-routes"
// (RDS), which send every request to the cluster of one of the mesh's
// services.
type l7svc struct {
	name    string
	vip     string
	port    uint32
	cluster string // the name of a svc of the mesh
}

type svc struct {
	name      string
	vip       string
	port      uint32
	endpoints []string // ip:port
}

func (m mesh) resources() map[resourcev3.Type][]types.Resource {
	out := map[resourcev3.Type][]types.Resource{}
	for _, s := range m.services {
		out[resourcev3.ListenerType] = append(out[resourcev3.ListenerType], tcpListener(s.name, s.vip, s.port, s.name))
		out[resourcev3.ClusterType] = append(out[resourcev3.ClusterType], edsCluster(s.name))
		if !m.noCLA {
			out[resourcev3.EndpointType] = append(out[resourcev3.EndpointType], assignment(s.name, s.endpoints...))
		}
	}
	for _, s := range m.l7 {
		out[resourcev3.ListenerType] = append(out[resourcev3.ListenerType], httpListener(s.name, s.vip, s.port, s.name+"-routes"))
		out[resourcev3.RouteType] = append(out[resourcev3.RouteType], routeConfig(s.name+"-routes", s.cluster))
	}
	out[resourcev3.ListenerType] = append(out[resourcev3.ListenerType], m.extra...)
	if len(m.peers) > 0 {
		const dir = "sluice.io/workloads/test"
		cla := &endpointv3.ClusterLoadAssignment{ClusterName: dir, Endpoints: []*endpointv3.LocalityLbEndpoints{{}}}
		for _, p := range m.peers {
			ip, id, _ := strings.Cut(p, " ")
			cla.Endpoints[0].LbEndpoints = append(cla.Endpoints[0].LbEndpoints, &endpointv3.LbEndpoint{
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: socketAddr(ip, 0)}},
				Metadata: &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"sluice.io/workload": {
					Fields: map[string]*structpb.Value{"spiffe_id": structpb.NewStringValue(id)},
				}}},
			})
		}
		out[resourcev3.ClusterType] = append(out[resourcev3.ClusterType], edsCluster(dir))
		out[resourcev3.EndpointType] = append(out[resourcev3.EndpointType], cla)
	}
	return out
}

func socketAddr(ip string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: ip, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}

func typed(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic(err)
	}
	return a
}

func tcpListener(name, vip string, port uint32, cluster string) *listenerv3.Listener {
	tp := &tcpproxyv3.TcpProxy{StatPrefix: name, ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: cluster}}
	return &listenerv3.Listener{
		Name:    name,
		Address: socketAddr(vip, port),
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
			Name: "envoy.filters.network.tcp_proxy", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: typed(tp)},
		}}}},
	}
}

// httpListener is an L7 listener that reads the route configuration
// routes (RDS).
func httpListener(name, vip string, port uint32, routes string) *listenerv3.Listener {
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix:     name,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{RouteConfigName: routes}},
		HttpFilters: []*hcmv3.HttpFilter{{
			Name: "envoy.filters.http.router", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: typed(&routerv3.Router{})},
		}},
	}
	l := tcpListener(name, vip, port, "")
	l.FilterChains[0].Filters[0] = &listenerv3.Filter{Name: "envoy.filters.network.http_connection_manager", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: typed(hcm)}}
	return l
}

// refusedListener is a listener Sluice refuses: an L7 one without the
// router HTTP filter.
func refusedListener(name, vip string, port uint32) *listenerv3.Listener {
	l := httpListener(name, vip, port, "routes")
	hcm := &hcmv3.HttpConnectionManager{}
	if err := l.FilterChains[0].Filters[0].GetTypedConfig().UnmarshalTo(hcm); err != nil {
		panic(err)
	}
	hcm.HttpFilters = nil
	l.FilterChains[0].Filters[0].ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: typed(hcm)}
	return l
}

// routeConfig is a route configuration that sends every request to cluster.
func routeConfig(name, cluster string) *routev3.RouteConfiguration {
	return &routev3.RouteConfiguration{Name: name, VirtualHosts: []*routev3.VirtualHost{{
		Name: "any", Domains: []string{"*"},
		Routes: []*routev3.Route{{
			Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster}}},
		}},
	}}}
}

func edsCluster(name string) *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{EdsConfig: &corev3.ConfigSource{
			ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
			ResourceApiVersion:    corev3.ApiVersion_V3,
		}},
	}
}

func assignment(cluster string, eps ...string) *endpointv3.ClusterLoadAssignment {
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: cluster, Endpoints: []*endpointv3.LocalityLbEndpoints{{}}}
	for _, ep := range eps {
		host, port, _ := net.SplitHostPort(ep)
		var p uint32
		fmt.Sscan(port, &p)
		cla.Endpoints[0].LbEndpoints = append(cla.Endpoints[0].LbEndpoints, &endpointv3.LbEndpoint{
			HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: socketAddr(host, p)}},
			HealthStatus:   corev3.HealthStatus_HEALTHY,
		})
	}
	return cla
}

// summary renders what the test expects a state to hold, independent of
// how the client builds it: "name vip:port/TCP -> ep,ep" per service, and
// "name vip:port/TCP L7 routes/virtual hosts -> cluster=ep,ep" per L7
// service, sorted.
func (m mesh) summary() string {
	var lines []string
	endpoints := map[string]string{}
	for _, s := range m.services {
		eps := append([]string(nil), s.endpoints...)
		sort.Strings(eps)
		if m.noCLA {
			eps = nil
		}
		endpoints[s.name] = strings.Join(eps, ",")
		lines = append(lines, fmt.Sprintf("%s %s/TCP -> %s", s.name, net.JoinHostPort(s.vip, fmt.Sprint(s.port)), endpoints[s.name]))
	}
	for _, s := range m.l7 {
		lines = append(lines, fmt.Sprintf("%s %s/TCP L7 %s-routes/1 -> %s=%s", s.name, net.JoinHostPort(s.vip, fmt.Sprint(s.port)), s.name, s.cluster, endpoints[s.cluster]))
	}
	for _, p := range m.peers {
		lines = append(lines, "peer "+p)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

func summarize(s model.State) string {
	var lines []string
	for _, svc := range s.Services {
		if svc.L7 != nil {
			var clusters []string
			for _, c := range svc.L7.Clusters {
				var eps []string
				for _, ep := range c.Endpoints {
					eps = append(eps, net.JoinHostPort(ep.Addr.String(), fmt.Sprint(ep.Port)))
				}
				sort.Strings(eps)
				clusters = append(clusters, c.Name+"="+strings.Join(eps, ","))
			}
			lines = append(lines, fmt.Sprintf("%s %s L7 %s/%d -> %s", svc.Name, svc.Key(), svc.L7.Routes.Name, len(svc.L7.Routes.VirtualHosts), strings.Join(clusters, " ")))
			continue
		}
		var eps []string
		for _, p := range svc.Pools() {
			for _, ep := range p.Endpoints {
				eps = append(eps, net.JoinHostPort(ep.Addr.String(), fmt.Sprint(ep.Port)))
			}
		}
		sort.Strings(eps)
		lines = append(lines, fmt.Sprintf("%s %s -> %s", svc.Name, svc.Key(), strings.Join(eps, ",")))
	}
	for _, p := range s.Peers {
		lines = append(lines, "peer "+p.Addr.String()+" "+p.Workload.SPIFFEID)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// recorder is the Applier of the client tests: it keeps every state it is
// given, and fails on demand.
type recorder struct {
	mu     sync.Mutex
	states []model.State
	fail   error
}

func (r *recorder) Apply(s model.State) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail != nil {
		return r.fail
	}
	r.states = append(r.states, s)
	return nil
}

func (r *recorder) setFail(err error) {
	r.mu.Lock()
	r.fail = err
	r.mu.Unlock()
}

// last returns the latest applied state's summary and how many applies there were.
func (r *recorder) last() (string, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.states) == 0 {
		return "", 0
	}
	return summarize(r.states[len(r.states)-1]), len(r.states)
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
