package translate

import (
	"math"
	"unicode/utf8"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/sluice-mesh/sluice/dataplane/model"
)

// AssignmentWire prepares an encoded ClusterLoadAssignment without
// decoding it into a message, when it has the common form: a cluster name,
// and endpoints given as IP socket addresses with at most a locality, a
// priority, a health status and a weight, and no field that is refused,
// ignored or metadata. It returns the cluster name it read and what
// Assignment gives for the decoded message named so; ok is false when b
// has another form (or is not valid), and the caller must then decode it
// and use Assignment, which also explains any error.
//
// At 10,000 assignments of 10 endpoints, decoding the messages and
// preparing them took most of the time of a full state; this reads the
// encoding once and allocates only the endpoints.
func (p *Preparer) AssignmentWire(b []byte) (clusterName string, prep *Prepared, ok bool) {
	n, ok := countEndpoints(b)
	if !ok {
		return "", nil, false
	}
	eps := make([]model.Endpoint, 0, n)
	var name []byte
	ok = fields(b, func(num protowire.Number, typ protowire.Type, _ uint64, data []byte) bool {
		switch {
		case num == 1 && typ == protowire.BytesType && name == nil:
			name = data
			return utf8.Valid(data)
		case num == 2 && typ == protowire.BytesType:
			eps, ok = localityWire(data, eps)
			return ok
		}
		return false
	})
	if !ok || len(name) == 0 || len(eps) != n {
		return "", nil, false
	}
	if first, _ := duplicate(eps); first >= 0 {
		return "", nil, false
	}
	return string(name), &Prepared{eps: eps}, true
}

// countEndpoints counts the lb_endpoints of an encoded assignment.
func countEndpoints(b []byte) (int, bool) {
	n := 0
	ok := fields(b, func(num protowire.Number, typ protowire.Type, _ uint64, data []byte) bool {
		if num != 2 || typ != protowire.BytesType {
			return true
		}
		return fields(data, func(num protowire.Number, typ protowire.Type, _ uint64, _ []byte) bool {
			if num == 2 && typ == protowire.BytesType {
				n++
			}
			return true
		})
	})
	return n, ok
}

// localityWire appends the endpoints of an encoded LocalityLbEndpoints.
func localityWire(b []byte, eps []model.Endpoint) ([]model.Endpoint, bool) {
	start := len(eps)
	var loc model.Locality
	var priority uint64
	var seen uint8
	ok := fields(b, func(num protowire.Number, typ protowire.Type, v uint64, data []byte) bool {
		switch {
		case num == 1 && typ == protowire.BytesType && once(&seen, 1):
			return localityFields(data, &loc)
		case num == 2 && typ == protowire.BytesType:
			ep, ok := lbEndpointWire(data)
			eps = append(eps, ep)
			return ok
		case num == 5 && typ == protowire.VarintType && once(&seen, 2):
			priority = v
			return v <= math.MaxUint32
		}
		return false
	})
	if !ok {
		return nil, false
	}
	ref := loc.Ref()
	for i := start; i < len(eps); i++ {
		eps[i].Locality = ref
		eps[i].Priority = uint32(priority)
	}
	return eps, true
}

func localityFields(b []byte, loc *model.Locality) bool {
	var seen uint8
	return fields(b, func(num protowire.Number, typ protowire.Type, _ uint64, data []byte) bool {
		if typ != protowire.BytesType || num < 1 || num > 3 || !once(&seen, uint8(1)<<num) || !utf8.Valid(data) {
			return false
		}
		switch num {
		case 1:
			loc.Region = string(data)
		case 2:
			loc.Zone = string(data)
		case 3:
			loc.SubZone = string(data)
		}
		return true
	})
}

// lbEndpointWire reads an encoded LbEndpoint.
func lbEndpointWire(b []byte) (model.Endpoint, bool) {
	var ep model.Endpoint
	var addr []byte
	var port uint64
	var seen uint8
	ok := fields(b, func(num protowire.Number, typ protowire.Type, v uint64, data []byte) bool {
		switch {
		case num == 1 && typ == protowire.BytesType && once(&seen, 1): // endpoint
			return only(data, 1, func(data []byte) bool { // address
				return only(data, 1, func(data []byte) bool { // socket_address
					return socketFields(data, &addr, &port)
				})
			})
		case num == 2 && typ == protowire.VarintType && once(&seen, 2): // health_status
			h, known := healthOf[corev3.HealthStatus(int32(v))]
			ep.Health = h
			return known && v <= math.MaxInt32
		case num == 4 && typ == protowire.BytesType && once(&seen, 4): // load_balancing_weight
			var sub uint8
			return fields(data, func(num protowire.Number, typ protowire.Type, v uint64, _ []byte) bool {
				ep.Weight = uint32(v)
				return num == 1 && typ == protowire.VarintType && once(&sub, 1) && v <= math.MaxUint32
			})
		}
		return false
	})
	if !ok || addr == nil || !utf8.Valid(addr) {
		return ep, false
	}
	ip, err := parseIP(string(addr))
	if err != nil || ip.IsUnspecified() || ip.IsMulticast() || port == 0 || port > 65535 {
		return ep, false
	}
	ep.Addr, ep.Port = ip, uint16(port)
	return ep, true
}

// socketFields reads the address and port of an encoded SocketAddress
// whose protocol, if set, is TCP (the default).
func socketFields(b []byte, addr *[]byte, port *uint64) bool {
	var seen uint8
	return fields(b, func(num protowire.Number, typ protowire.Type, v uint64, data []byte) bool {
		switch {
		case num == 1 && typ == protowire.VarintType && once(&seen, 1): // protocol
			return v == 0
		case num == 2 && typ == protowire.BytesType && once(&seen, 2):
			*addr = data
			return true
		case num == 3 && typ == protowire.VarintType && once(&seen, 4):
			*port = v
			return true
		}
		return false
	})
}

// only calls f with field num of an encoded message that has that field
// once and no other.
func only(b []byte, num protowire.Number, f func([]byte) bool) bool {
	found := false
	ok := fields(b, func(n protowire.Number, typ protowire.Type, _ uint64, data []byte) bool {
		if n != num || typ != protowire.BytesType || found {
			return false
		}
		found = true
		return f(data)
	})
	return ok && found
}

// once reports whether the bit is not yet set in seen, and sets it: each
// field the fast path reads must appear at most once (a repeated singular
// field is merged or overridden by the full decoder; the fast path leaves
// that to it).
func once(seen *uint8, bit uint8) bool {
	if *seen&bit != 0 {
		return false
	}
	*seen |= bit
	return true
}

// fields calls f for each field of an encoded message, with the value of a
// varint field or the bytes of a length-delimited one, until f returns
// false. It reports false if f did, or if b is not a valid encoding of
// varint and length-delimited fields only.
func fields(b []byte, f func(num protowire.Number, typ protowire.Type, v uint64, data []byte) bool) bool {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return false
		}
		b = b[n:]
		var v uint64
		var data []byte
		switch typ {
		case protowire.VarintType:
			v, n = protowire.ConsumeVarint(b)
		case protowire.BytesType:
			data, n = protowire.ConsumeBytes(b)
		default:
			return false
		}
		if n < 0 || !f(num, typ, v, data) {
			return false
		}
		b = b[n:]
	}
	return true
}
