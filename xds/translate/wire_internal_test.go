package translate

import (
	"reflect"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func wireEndpoint(addr string, port uint32, mods ...func(*endpointv3.LbEndpoint)) *endpointv3.LbEndpoint {
	e := &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
		Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: addr, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}}}}}
	for _, m := range mods {
		m(e)
	}
	return e
}

func socket(e *endpointv3.LbEndpoint) *corev3.SocketAddress {
	return e.GetEndpoint().GetAddress().GetSocketAddress()
}

func wireCLA(name string, groups ...*endpointv3.LocalityLbEndpoints) *endpointv3.ClusterLoadAssignment {
	return &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: groups}
}

func group(eps ...*endpointv3.LbEndpoint) *endpointv3.LocalityLbEndpoints {
	return &endpointv3.LocalityLbEndpoints{LbEndpoints: eps}
}

// commonAssignments have the form AssignmentWire reads.
func commonAssignments() map[string]*endpointv3.ClusterLoadAssignment {
	weighted := func(w uint32) func(*endpointv3.LbEndpoint) {
		return func(e *endpointv3.LbEndpoint) { e.LoadBalancingWeight = wrapperspb.UInt32(w) }
	}
	health := func(h corev3.HealthStatus) func(*endpointv3.LbEndpoint) {
		return func(e *endpointv3.LbEndpoint) { e.HealthStatus = h }
	}
	eu := group(wireEndpoint("10.0.1.1", 80, weighted(5)), wireEndpoint("10.0.1.2", 80, health(corev3.HealthStatus_DRAINING)))
	eu.Locality = &corev3.Locality{Region: "eu", Zone: "eu-1a", SubZone: "rack4"}
	us := group(wireEndpoint("10.0.2.1", 80, health(corev3.HealthStatus_DEGRADED)))
	us.Locality, us.Priority = &corev3.Locality{Region: "us"}, 1
	return map[string]*endpointv3.ClusterLoadAssignment{
		"one endpoint":       wireCLA("web", group(wireEndpoint("10.244.0.1", 8080))),
		"no endpoints":       wireCLA("web"),
		"an empty locality":  wireCLA("web", group()),
		"localities":         wireCLA("web", eu, us),
		"IPv6":               wireCLA("db", group(wireEndpoint("fd00::1", 5432), wireEndpoint("fd00::2", 5432, weighted(0)))),
		"zero weight, TCP":   wireCLA("web", group(wireEndpoint("10.0.0.1", 1, weighted(0), func(e *endpointv3.LbEndpoint) { socket(e).Protocol = corev3.SocketAddress_TCP }))),
		"unhealthy and more": wireCLA("web", group(wireEndpoint("10.0.0.1", 65535, health(corev3.HealthStatus_UNHEALTHY)), wireEndpoint("10.0.0.1", 65534, health(corev3.HealthStatus_TIMEOUT)))),
	}
}

// otherAssignments are left to the decoder: refused, ignored or
// unsupported fields, metadata, and errors.
func otherAssignments() map[string]*endpointv3.ClusterLoadAssignment {
	one := func(mod func(*endpointv3.LbEndpoint)) *endpointv3.ClusterLoadAssignment {
		return wireCLA("web", group(wireEndpoint("10.244.0.1", 8080, mod)))
	}
	md, _ := structpb.NewStruct(map[string]any{"namespace": "demo"})
	weightedGroup := group(wireEndpoint("10.0.0.1", 80))
	weightedGroup.LoadBalancingWeight = wrapperspb.UInt32(3)
	return map[string]*endpointv3.ClusterLoadAssignment{
		"no name":         wireCLA("", group(wireEndpoint("10.244.0.1", 8080))),
		"policy":          {ClusterName: "web", Policy: &endpointv3.ClusterLoadAssignment_Policy{OverprovisioningFactor: wrapperspb.UInt32(140)}},
		"locality weight": wireCLA("web", weightedGroup),
		"metadata": one(func(e *endpointv3.LbEndpoint) {
			e.Metadata = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{workloadKey: md}}
		}),
		"hostname": one(func(e *endpointv3.LbEndpoint) { e.GetEndpoint().Hostname = "web-0" }),
		"UDP":      one(func(e *endpointv3.LbEndpoint) { socket(e).Protocol = corev3.SocketAddress_UDP }),
		"named port": one(func(e *endpointv3.LbEndpoint) {
			socket(e).PortSpecifier = &corev3.SocketAddress_NamedPort{NamedPort: "http"}
		}),
		"resolver":          one(func(e *endpointv3.LbEndpoint) { socket(e).ResolverName = "dns" }),
		"endpoint name":     wireCLA("web", group(&endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_EndpointName{EndpointName: "x"}})),
		"no address":        wireCLA("web", group(&endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{}}})),
		"a name, not an IP": wireCLA("web", group(wireEndpoint("web.demo", 80))),
		"IPv4-mapped":       wireCLA("web", group(wireEndpoint("::ffff:10.0.0.1", 80))),
		"unspecified":       wireCLA("web", group(wireEndpoint("0.0.0.0", 80))),
		"port 0":            wireCLA("web", group(wireEndpoint("10.0.0.1", 0))),
		"port 65536":        wireCLA("web", group(wireEndpoint("10.0.0.1", 65536))),
		"unknown health":    one(func(e *endpointv3.LbEndpoint) { e.HealthStatus = 42 }),
		"twice the same":    wireCLA("web", group(wireEndpoint("10.0.0.1", 80)), group(wireEndpoint("10.0.0.1", 80))),
		"ipv4_compat":       one(func(e *endpointv3.LbEndpoint) { socket(e).Ipv4Compat = true }),
		"health check port": one(func(e *endpointv3.LbEndpoint) {
			e.GetEndpoint().HealthCheckConfig = &endpointv3.Endpoint_HealthCheckConfig{PortValue: 9}
		}),
		"observability name": one(func(e *endpointv3.LbEndpoint) { e.GetEndpoint().ObservabilityName = "w" }),
	}
}

// checkWire fails unless AssignmentWire either declines b or gives exactly
// what decoding b and Assignment give. It reports whether it took b.
func checkWire(t *testing.T, b []byte) bool {
	t.Helper()
	var p Preparer
	name, got, ok := p.AssignmentWire(b)
	if !ok {
		return false
	}
	var a endpointv3.ClusterLoadAssignment
	if err := proto.Unmarshal(b, &a); err != nil {
		t.Fatalf("AssignmentWire took what does not decode (%v): %x", err, b)
	}
	if name != a.GetClusterName() {
		t.Fatalf("AssignmentWire read the name %q, the message has %q", name, a.GetClusterName())
	}
	want := p.Assignment(name, &a)
	if want.Err() != nil {
		t.Fatalf("AssignmentWire took what Assignment refuses: %v", want.Err())
	}
	if len(want.keys) != 0 || got.keys != nil || got.err != nil {
		t.Fatalf("AssignmentWire took an assignment with ignored fields %q (it reports %q)", want.keys, got.keys)
	}
	if !reflect.DeepEqual(got.eps, want.eps) || cap(got.eps) != len(got.eps) {
		t.Fatalf("AssignmentWire gives %+v (cap %d), Assignment %+v", got.eps, cap(got.eps), want.eps)
	}
	return true
}

func TestAssignmentWire(t *testing.T) {
	for name, a := range commonAssignments() {
		b, err := proto.Marshal(a)
		if err != nil {
			t.Fatal(err)
		}
		if !checkWire(t, b) {
			t.Errorf("%s: declined", name)
		}
	}
	for name, a := range otherAssignments() {
		b, err := proto.Marshal(a)
		if err != nil {
			t.Fatal(err)
		}
		if checkWire(t, b) {
			t.Errorf("%s: taken", name)
		}
	}
	// Encodings the marshaller does not produce but a decoder accepts.
	base, _ := proto.Marshal(commonAssignments()["one endpoint"])
	twice := protowire.AppendTag(nil, 1, protowire.BytesType)
	twice = protowire.AppendString(twice, "web")
	for name, b := range map[string][]byte{
		"a name given twice":  append(append([]byte{}, base...), twice...),
		"an unknown field":    protowire.AppendVarint(protowire.AppendTag(append([]byte{}, base...), 99, protowire.VarintType), 1),
		"a truncated message": base[:len(base)-1],
		"invalid UTF-8 name":  protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), []byte{0xff}),
	} {
		if checkWire(t, b) {
			t.Errorf("%s: taken", name)
		}
	}
}

// FuzzAssignmentWire: whatever the bytes, AssignmentWire declines them or
// agrees with decoding and Assignment.
func FuzzAssignmentWire(f *testing.F) {
	for _, set := range []map[string]*endpointv3.ClusterLoadAssignment{commonAssignments(), otherAssignments()} {
		for _, a := range set {
			b, err := proto.Marshal(a)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) { checkWire(t, b) })
}
