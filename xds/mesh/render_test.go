package mesh_test

import (
	"bytes"
	"testing"
	"time"

	xdscore "github.com/cncf/xds/go/xds/core/v3"
	xdsmatcher "github.com/cncf/xds/go/xds/type/matcher/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	udpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/udp/udp_proxy/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sluice-mesh/sluice/dataplane/model"
	"github.com/sluice-mesh/sluice/xds/mesh"
	"github.com/sluice-mesh/sluice/xds/translate"
)

// renderFile is a dual-stack TCP+UDP service with endpoints in two
// localities and two priorities, and a second, single-stack service.
var renderFile = lines(
	"trustDomain: example.org",
	"services:",
	"  - name: web",
	"    namespace: demo",
	`    vips: [10.96.0.10, "fd00:96::10"]`,
	"    ports:",
	"      - {port: 80, targetPort: 8080}",
	"      - {port: 53, protocol: UDP, targetPort: 5353}",
	"    endpoints:",
	"      - address: 10.244.0.12", // sorts after .11 within its group
	"        weight: 3",
	"        workload: {name: web-b, serviceAccount: web, node: node-1, identity: 1234}",
	"      - address: 10.244.0.11",
	"        health: draining",
	"        workload: {name: web-a, serviceAccount: web, identity: 1234}",
	"      - address: fd00:244::11",
	"        health: unknown",
	"        locality: {region: r1, zone: z1, subZone: s1}",
	"      - address: 10.244.1.11",
	"        health: unhealthy",
	"        priority: 1",
	"  - name: api",
	"    namespace: demo",
	"    vips: [10.96.0.20]",
	"    ports: [{port: 443}]",
)

func mustParse(t *testing.T, data []byte) *mesh.Mesh {
	t.Helper()
	m, err := mesh.Parse("mesh.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func pack(t *testing.T, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func sockAddr(addr string, port uint32, proto corev3.SocketAddress_Protocol) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address:       addr,
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
		Protocol:      proto,
	}}}
}

// equal compares whole resources; the tests then check the fields a
// client reads one by one, for a readable failure.
func equal(t *testing.T, what string, got, want proto.Message) {
	t.Helper()
	if !proto.Equal(got, want) {
		t.Errorf("%s:\n got %v\nwant %v", what, got, want)
	}
}

func TestRenderNames(t *testing.T) {
	r := mustParse(t, renderFile).Resources()
	var ls, cs, es []string
	for _, l := range r.Listeners {
		ls = append(ls, l.Name)
	}
	for _, c := range r.Clusters {
		cs = append(cs, c.Name)
	}
	for _, e := range r.Endpoints {
		es = append(es, e.ClusterName)
	}
	want := []string{"demo/api:443", "demo/web:53/udp", "demo/web:80"}
	for what, got := range map[string][]string{"listeners": ls, "clusters": cs, "assignments": es} {
		if len(got) != len(want) {
			t.Errorf("%s = %q, want %q", what, got, want)
			continue
		}
		for i := range got {
			if got[i] != want[i] {
				t.Errorf("%s = %q, want %q", what, got, want)
				break
			}
		}
	}
}

func TestRenderTCPListener(t *testing.T) {
	r := mustParse(t, renderFile).Resources()
	l := r.Listeners[2]
	want := &listenerv3.Listener{
		Name:    "demo/web:80",
		Address: sockAddr("10.96.0.10", 80, corev3.SocketAddress_TCP),
		AdditionalAddresses: []*listenerv3.AdditionalAddress{{
			Address: sockAddr("fd00:96::10", 80, corev3.SocketAddress_TCP),
		}},
		FilterChains: []*listenerv3.FilterChain{{
			Filters: []*listenerv3.Filter{{
				Name: "envoy.filters.network.tcp_proxy",
				ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: pack(t, &tcpproxyv3.TcpProxy{
					StatPrefix:       "demo/web:80",
					ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: "demo/web:80"},
				})},
			}},
		}},
	}
	equal(t, "TCP listener", l, want)

	// Field by field, for a reader of a failure.
	if got := l.GetAddress().GetSocketAddress(); got.GetAddress() != "10.96.0.10" || got.GetPortValue() != 80 || got.GetProtocol() != corev3.SocketAddress_TCP {
		t.Errorf("address = %v", got)
	}
	if len(l.FilterChains) != 1 || len(l.FilterChains[0].Filters) != 1 {
		t.Fatalf("filter chains = %v", l.FilterChains)
	}
	f := l.FilterChains[0].Filters[0]
	var tp tcpproxyv3.TcpProxy
	if err := f.GetTypedConfig().UnmarshalTo(&tp); err != nil {
		t.Fatal(err)
	}
	if tp.GetCluster() != "demo/web:80" || tp.GetStatPrefix() != "demo/web:80" {
		t.Errorf("tcp_proxy = %v", &tp)
	}
	if l.ListenerFilters != nil || l.StatPrefix != "" {
		t.Errorf("listener has more than asked: %v", l)
	}
}

func TestRenderUDPListener(t *testing.T) {
	r := mustParse(t, renderFile).Resources()
	l := r.Listeners[1]
	want := &listenerv3.Listener{
		Name:    "demo/web:53/udp",
		Address: sockAddr("10.96.0.10", 53, corev3.SocketAddress_UDP),
		AdditionalAddresses: []*listenerv3.AdditionalAddress{{
			Address: sockAddr("fd00:96::10", 53, corev3.SocketAddress_UDP),
		}},
		ListenerFilters: []*listenerv3.ListenerFilter{{
			Name: "envoy.filters.udp_listener.udp_proxy",
			ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: pack(t, &udpproxyv3.UdpProxyConfig{
				StatPrefix: "demo/web:53/udp",
				RouteSpecifier: &udpproxyv3.UdpProxyConfig_Matcher{Matcher: &xdsmatcher.Matcher{
					OnNoMatch: &xdsmatcher.Matcher_OnMatch{OnMatch: &xdsmatcher.Matcher_OnMatch_Action{
						Action: &xdscore.TypedExtensionConfig{
							Name:        "route",
							TypedConfig: pack(t, &udpproxyv3.Route{Cluster: "demo/web:53/udp"}),
						},
					}},
				}},
			})},
		}},
	}
	equal(t, "UDP listener", l, want)

	if l.FilterChains != nil {
		t.Errorf("UDP listener has filter chains: %v", l.FilterChains)
	}
	var up udpproxyv3.UdpProxyConfig
	if err := l.GetListenerFilters()[0].GetTypedConfig().UnmarshalTo(&up); err != nil {
		t.Fatal(err)
	}
	action := up.GetMatcher().GetOnNoMatch().GetAction()
	var route udpproxyv3.Route
	if err := action.GetTypedConfig().UnmarshalTo(&route); err != nil {
		t.Fatal(err)
	}
	if action.GetName() != "route" || route.GetCluster() != "demo/web:53/udp" || up.GetStatPrefix() != "demo/web:53/udp" {
		t.Errorf("udp_proxy = %v", &up)
	}
}

func TestRenderCluster(t *testing.T) {
	r := mustParse(t, renderFile).Resources()
	c := r.Clusters[2]
	want := &clusterv3.Cluster{
		Name:                 "demo/web:80",
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{
			EdsConfig: &corev3.ConfigSource{
				ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
				ResourceApiVersion:    corev3.ApiVersion_V3,
			},
		},
		LbPolicy:       clusterv3.Cluster_ROUND_ROBIN,
		ConnectTimeout: durationpb.New(time.Second),
	}
	equal(t, "cluster", c, want)
	if c.GetType() != clusterv3.Cluster_EDS || c.GetEdsClusterConfig().GetServiceName() != "" ||
		c.GetEdsClusterConfig().GetEdsConfig().GetAds() == nil || c.GetConnectTimeout().AsDuration() != time.Second {
		t.Errorf("cluster = %v", c)
	}
}

func TestRenderAssignment(t *testing.T) {
	r := mustParse(t, renderFile).Resources()
	workload := func(name, node string) *corev3.Metadata {
		f := map[string]*structpb.Value{
			"spiffe_id":       structpb.NewStringValue("spiffe://example.org/ns/demo/sa/web"),
			"namespace":       structpb.NewStringValue("demo"),
			"service_account": structpb.NewStringValue("web"),
			"workload":        structpb.NewStringValue(name),
			"identity":        structpb.NewNumberValue(1234),
		}
		if node != "" {
			f["node"] = structpb.NewStringValue(node)
		}
		return &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"sluice.io/workload": {Fields: f}}}
	}
	ep := func(addr string, port uint32, proto corev3.SocketAddress_Protocol, h corev3.HealthStatus, w uint32, md *corev3.Metadata) *endpointv3.LbEndpoint {
		return &endpointv3.LbEndpoint{
			HostIdentifier:      &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: sockAddr(addr, port, proto)}},
			HealthStatus:        h,
			LoadBalancingWeight: wrapperspb.UInt32(w),
			Metadata:            md,
		}
	}
	tcp, udp := corev3.SocketAddress_TCP, corev3.SocketAddress_UDP
	// Groups by priority, then locality (no locality first); endpoints in a
	// group by address, IPv4 before IPv6.
	want := &endpointv3.ClusterLoadAssignment{
		ClusterName: "demo/web:80",
		Endpoints: []*endpointv3.LocalityLbEndpoints{{
			LbEndpoints: []*endpointv3.LbEndpoint{
				ep("10.244.0.11", 8080, tcp, corev3.HealthStatus_DRAINING, 1, workload("web-a", "")),
				ep("10.244.0.12", 8080, tcp, corev3.HealthStatus_HEALTHY, 3, workload("web-b", "node-1")),
			},
		}, {
			Locality:    &corev3.Locality{Region: "r1", Zone: "z1", SubZone: "s1"},
			LbEndpoints: []*endpointv3.LbEndpoint{ep("fd00:244::11", 8080, tcp, corev3.HealthStatus_UNKNOWN, 1, nil)},
		}, {
			Priority:    1,
			LbEndpoints: []*endpointv3.LbEndpoint{ep("10.244.1.11", 8080, tcp, corev3.HealthStatus_UNHEALTHY, 1, nil)},
		}},
	}
	equal(t, "TCP assignment", r.Endpoints[2], want)

	// The UDP port's endpoints are the same hosts on its own target port.
	u := r.Endpoints[1]
	if u.ClusterName != "demo/web:53/udp" {
		t.Fatalf("assignment[1] = %s", u.ClusterName)
	}
	got := u.Endpoints[0].LbEndpoints[0].GetEndpoint().GetAddress().GetSocketAddress()
	if got.GetAddress() != "10.244.0.11" || got.GetPortValue() != 5353 || got.GetProtocol() != udp {
		t.Errorf("UDP endpoint address = %v", got)
	}

	// A service without endpoints still has an (empty) assignment, so that a
	// client knows it refuses connections rather than waiting for it.
	equal(t, "empty assignment", r.Endpoints[0], &endpointv3.ClusterLoadAssignment{ClusterName: "demo/api:443"})
}

// The same mesh written in another order renders byte-identical resources,
// so that go-control-plane's versions do not change.
func TestRenderDeterministic(t *testing.T) {
	reordered := lines(
		"trustDomain: example.org",
		"services:",
		"  - name: api",
		"    namespace: demo",
		"    vips: [10.96.0.20]",
		"    ports: [{port: 443}]",
		"  - name: web",
		"    namespace: demo",
		`    vips: [10.96.0.10, "fd00:96::10"]`,
		"    ports:",
		"      - {port: 53, protocol: UDP, targetPort: 5353}",
		"      - {port: 80, targetPort: 8080}",
		"    endpoints:",
		"      - address: 10.244.1.11",
		"        health: unhealthy",
		"        priority: 1",
		"      - address: fd00:244::11",
		"        health: unknown",
		"        locality: {region: r1, zone: z1, subZone: s1}",
		"      - address: 10.244.0.11",
		"        health: draining",
		"        workload: {name: web-a, serviceAccount: web, identity: 1234}",
		"      - address: 10.244.0.12",
		"        weight: 3",
		"        workload: {serviceAccount: web, node: node-1, identity: 1234, name: web-b}",
	)
	a := mustParse(t, renderFile).Resources()
	b := mustParse(t, renderFile).Resources()
	c := mustParse(t, reordered).Resources()
	for _, other := range []mesh.Resources{b, c} {
		if !equalResources(a, other) {
			t.Fatalf("renderings differ:\n%v\n%v", a, other)
		}
		am, om := marshalAll(t, a), marshalAll(t, other)
		for i := range am {
			if !bytes.Equal(am[i], om[i]) {
				t.Errorf("resource %d marshals differently", i)
			}
		}
	}
}

func equalResources(a, b mesh.Resources) bool {
	if len(a.Listeners) != len(b.Listeners) || len(a.Clusters) != len(b.Clusters) || len(a.Endpoints) != len(b.Endpoints) {
		return false
	}
	for i := range a.Listeners {
		if !proto.Equal(a.Listeners[i], b.Listeners[i]) || !proto.Equal(a.Clusters[i], b.Clusters[i]) ||
			!proto.Equal(a.Endpoints[i], b.Endpoints[i]) {
			return false
		}
	}
	return true
}

func marshalAll(t *testing.T, r mesh.Resources) [][]byte {
	t.Helper()
	var out [][]byte
	for _, m := range toTypes(r)[resource.ListenerType] {
		out = append(out, marshal(t, m))
	}
	for _, m := range toTypes(r)[resource.ClusterType] {
		out = append(out, marshal(t, m))
	}
	for _, m := range toTypes(r)[resource.EndpointType] {
		out = append(out, marshal(t, m))
	}
	return out
}

func marshal(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := cache.MarshalResource(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func toTypes(r mesh.Resources) map[resource.Type][]types.Resource {
	out := map[resource.Type][]types.Resource{}
	for _, l := range r.Listeners {
		out[resource.ListenerType] = append(out[resource.ListenerType], l)
	}
	for _, c := range r.Clusters {
		out[resource.ClusterType] = append(out[resource.ClusterType], c)
	}
	for _, e := range r.Endpoints {
		out[resource.EndpointType] = append(out[resource.EndpointType], e)
	}
	return out
}

func TestRenderSnapshotConsistent(t *testing.T) {
	for name, data := range map[string][]byte{"render file": renderFile, "web": with(), "policies": policyFile} {
		t.Run(name, func(t *testing.T) {
			r := mustParse(t, data).Resources()
			snap, err := cache.NewSnapshot("1", toTypes(r))
			if err != nil {
				t.Fatal(err)
			}
			if err := snap.Consistent(); err != nil {
				t.Errorf("Consistent: %v", err)
			}
			for _, typ := range []resource.Type{resource.ListenerType, resource.ClusterType, resource.EndpointType} {
				for name, res := range snap.GetResources(typ) {
					if err := res.(interface{ ValidateAll() error }).ValidateAll(); err != nil {
						t.Errorf("%s %s fails Envoy's validation rules: %v", typ, name, err)
					}
				}
			}
		})
	}
}

// translated runs the rendering of m through Sluice's translator.
func translated(t *testing.T, m *mesh.Mesh) translate.Result {
	t.Helper()
	r := m.Resources()
	in := translate.Resources{
		Listeners: map[string]*listenerv3.Listener{},
		Clusters:  map[string]*clusterv3.Cluster{},
		Endpoints: map[string]*endpointv3.ClusterLoadAssignment{},
	}
	for _, l := range r.Listeners {
		in.Listeners[l.Name] = l
	}
	for _, c := range r.Clusters {
		in.Clusters[c.Name] = c
	}
	for _, e := range r.Endpoints {
		in.Endpoints[e.ClusterName] = e
	}
	res, err := translate.Translate(in)
	if err != nil {
		t.Fatalf("Translate refuses the rendering: %v", err)
	}
	if len(res.Missing) != 0 {
		t.Errorf("Translate misses %q", res.Missing)
	}
	return res
}

// TestRenderFastPath checks that a service's fastPath reaches the
// dataplane model through the listener's metadata, on TCP ports only.
func TestRenderFastPath(t *testing.T) {
	for _, tc := range []struct {
		setting string
		want    model.FastPath
	}{
		{"", model.FastPathUnset},
		{"    fastPath: true", model.FastPathOn},
		{"    fastPath: false", model.FastPathOff},
	} {
		file := lines(
			"services:",
			"  - name: web",
			"    vips: [10.96.0.10]",
			"    ports: [{port: 80}, {port: 53, protocol: UDP}]",
			"    endpoints: [{address: 10.244.0.11}]",
			tc.setting,
		)
		got := map[model.Protocol]model.FastPath{}
		for _, s := range translated(t, mustParse(t, file)).State.Services {
			got[s.Protocol] = s.FastPath
		}
		if got[model.TCP] != tc.want || got[model.UDP] != model.FastPathUnset {
			t.Errorf("%q: TCP port %v, UDP port %v; want %v and unset", tc.setting, got[model.TCP], got[model.UDP], tc.want)
		}
	}
}
