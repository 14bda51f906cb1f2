package translate

import (
	"slices"
	"testing"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
)

// policies lists every field policy, by the name tests report it under.
func policies() map[string]*policy {
	return map[string]*policy{
		"listener":              listenerPolicy,
		"additionalAddress":     additionalAddressPolicy,
		"listenerAddress":       listenerAddressPolicy,
		"listenerSocket":        listenerSocketPolicy,
		"extraAddress":          extraAddressPolicy,
		"extraSocket":           extraSocketPolicy,
		"filterChain":           filterChainPolicy,
		"filter":                filterPolicy,
		"listenerFilter":        listenerFilterPolicy,
		"tcpProxy":              tcpProxyPolicy,
		"weightedCluster":       weightedClusterPolicy,
		"clusterWeight":         clusterWeightPolicy,
		"udpProxy":              udpProxyPolicy,
		"udpMatcher":            udpMatcherPolicy,
		"udpOnMatch":            udpOnMatchPolicy,
		"udpAction":             udpActionPolicy,
		"udpRoute":              udpRoutePolicy,
		"cluster":               clusterPolicy,
		"edsClusterConfig":      edsClusterConfigPolicy,
		"edsConfigSource":       edsConfigSourcePolicy,
		"ads":                   adsPolicy,
		"assignment":            assignmentPolicy,
		"assignmentPolicy":      assignmentPolicyPolicy,
		"localityEndpoints":     localityEndpointsPolicy,
		"locality":              localityPolicy,
		"lbEndpoint":            lbEndpointPolicy,
		"endpoint":              endpointPolicy,
		"endpointAddress":       endpointAddressPolicy,
		"endpointSocket":        endpointSocketPolicy,
		"endpointMetadata":      endpointMetadataPolicy,
		"rbacFilter":            rbacFilterPolicy,
		"rbacRules":             rbacRulesPolicy,
		"rbacRule":              rbacRulePolicy,
		"rbacPermission":        rbacPermissionPolicy,
		"rbacPermissionSet":     rbacPermissionSetPolicy,
		"rbacPrincipal":         rbacPrincipalPolicy,
		"rbacPrincipalSet":      rbacPrincipalSetPolicy,
		"rbacAuthenticated":     rbacAuthenticatedPolicy,
		"rbacStringMatcher":     rbacStringMatcherPolicy,
		"rbacCIDR":              rbacCIDRPolicy,
		"rbacPortRange":         rbacPortRangePolicy,
		"httpRBACFilter":        httpRBACFilterPolicy,
		"httpRBACPermission":    httpRBACPermissionPolicy,
		"httpRBACPrincipal":     httpRBACPrincipalPolicy,
		"httpRBACPathMatcher":   httpRBACPathMatcherPolicy,
		"httpRBACHeaderMatcher": httpRBACHeaderMatcherPolicy,
		"httpRBACStringMatcher": httpRBACStringMatcherPolicy,
		"httpRBACRegex":         httpRBACRegexPolicy,
		"hcm":                   hcmPolicy,
		"hcmProtocol":           hcmProtocolPolicy,
		"rds":                   rdsPolicy,
		"rdsConfigSource":       rdsConfigSourcePolicy,
		"httpFilter":            httpFilterPolicy,
		"router":                routerPolicy,
	}
}

// refusedByDefault are the fields deliberately left without a rule, and so
// refused with the generic reason. A field missing from both the rules and
// this list is one the Envoy API gained since the rules were reviewed: it is
// refused at run time too, but this test asks for a decision.
var refusedByDefault = map[string][]protoreflect.Name{
	"listener":   {"deprecated_v1"},
	"udpOnMatch": {"keep_matching"},
	"cluster":    {"queuing_policies"},
}

func TestPoliciesNameRealFields(t *testing.T) {
	for name, p := range policies() {
		fields := p.msg.Fields()
		for f := range p.rules {
			if fields.ByName(f) == nil {
				t.Errorf("%s policy (%s) has a rule for %q, which the message does not have", name, p.msg.FullName(), f)
			}
		}
		for i := 0; i < fields.Len(); i++ {
			f := fields.Get(i).Name()
			if _, ok := p.rules[f]; !ok && !slices.Contains(refusedByDefault[name], f) {
				t.Errorf("%s policy (%s): field %q has no rule; decide whether Sluice honours, ignores or refuses it", name, p.msg.FullName(), f)
			}
		}
		for _, f := range refusedByDefault[name] {
			if _, ok := p.rules[f]; ok {
				t.Errorf("%s policy: %q has a rule and is listed as refused by default", name, f)
			}
		}
	}
}

func TestIgnoredKeys(t *testing.T) {
	for name, p := range policies() {
		for f, r := range p.rules {
			if r.verdict == ignored && (r.key == "" || r.key[len(r.key)-len(f)-1:] != "."+string(f)) {
				t.Errorf("%s policy: ignored field %q has key %q", name, f, r.key)
			}
			if r.verdict != ignored && r.key != "" {
				t.Errorf("%s policy: %q is not ignored but has key %q", name, f, r.key)
			}
		}
	}
}

func TestFieldErrorPaths(t *testing.T) {
	tests := []struct {
		inner string
		segs  []string
		want  string
	}{
		{"", []string{"address"}, "address"},
		{"port_value", []string{"socket_address", "address"}, "address.socket_address.port_value"},
		{"[\"x\"]", []string{"filter_metadata[\"k\"]"}, "filter_metadata[\"k\"][\"x\"]"},
		{"name", []string{"", "clusters[1]"}, "clusters[1].name"},
	}
	for _, tt := range tests {
		e := errAt(tt.inner, "r")
		for _, s := range tt.segs {
			e = e.in(s)
		}
		if e.field != tt.want {
			t.Errorf("%q in %q = %q, want %q", tt.inner, tt.segs, e.field, tt.want)
		}
	}
}

// TestCleanShortcuts checks each policy's reflection-free shortcut against
// the policy: it must never call a message clean that sets a watched field.
func TestCleanShortcuts(t *testing.T) {
	for name, p := range map[string]*policy{
		"listenerAddress": listenerAddressPolicy,
		"extraAddress":    extraAddressPolicy,
		"endpointAddress": endpointAddressPolicy,
		"endpointSocket":  endpointSocketPolicy,
		"endpoint":        endpointPolicy,
		"lbEndpoint":      lbEndpointPolicy,
	} {
		if p.clean == nil {
			t.Errorf("%s policy: the shortcut was dropped: %s gained fields; update it", name, p.msg.FullName())
		}
	}
	for name, p := range policies() {
		if p.clean == nil {
			continue
		}
		mt, err := protoregistry.GlobalTypes.FindMessageByName(p.msg.FullName())
		if err != nil {
			t.Fatal(err)
		}
		if !p.clean(mt.New().Interface()) {
			t.Errorf("%s policy: an empty %s is not clean", name, p.msg.FullName())
		}
		for _, w := range p.watch {
			m := mt.New()
			setSome(m, w.fd)
			if !m.Has(w.fd) {
				t.Fatalf("%s: could not set %s", name, w.fd.FullName())
			}
			if p.clean(m.Interface()) {
				t.Errorf("%s policy: shortcut calls a message with %s set clean", name, w.fd.Name())
			}
		}
	}
}

// setSome sets fd in m to a value that is not the default.
func setSome(m protoreflect.Message, fd protoreflect.FieldDescriptor) {
	switch {
	case fd.IsList():
		l := m.Mutable(fd).List()
		if fd.Message() != nil {
			l.Append(l.NewElement())
		} else {
			l.Append(scalar(fd))
		}
	case fd.IsMap():
		mp := m.Mutable(fd).Map()
		v := mp.NewValue()
		if fd.MapValue().Message() == nil {
			v = scalar(fd.MapValue())
		}
		mp.Set(scalar(fd.MapKey()).MapKey(), v)
	case fd.Message() != nil:
		m.Set(fd, m.NewField(fd))
	default:
		m.Set(fd, scalar(fd))
	}
}

func scalar(fd protoreflect.FieldDescriptor) protoreflect.Value {
	switch fd.Kind() {
	case protoreflect.BoolKind:
		return protoreflect.ValueOfBool(true)
	case protoreflect.EnumKind:
		return protoreflect.ValueOfEnum(1)
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		return protoreflect.ValueOfInt32(1)
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		return protoreflect.ValueOfInt64(1)
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return protoreflect.ValueOfUint32(1)
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return protoreflect.ValueOfUint64(1)
	case protoreflect.FloatKind:
		return protoreflect.ValueOfFloat32(1)
	case protoreflect.DoubleKind:
		return protoreflect.ValueOfFloat64(1)
	case protoreflect.StringKind:
		return protoreflect.ValueOfString("x")
	case protoreflect.BytesKind:
		return protoreflect.ValueOfBytes([]byte{1})
	}
	panic("kind " + fd.Kind().String())
}
