// Package model defines the desired routing state of one node — services,
// their VIPs and endpoints — and validates it. It is pure Go: translators
// (xDS, files) build a State, and the dataplane programs it.
package model

import (
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"unique"
)

// Protocol is a service's transport protocol, numbered as in IP headers.
type Protocol uint8

// Protocols a service can use.
const (
	TCP Protocol = 6
	UDP Protocol = 17
)

func (p Protocol) String() string {
	switch p {
	case TCP:
		return "TCP"
	case UDP:
		return "UDP"
	}
	return "proto(" + strconv.Itoa(int(p)) + ")"
}

// Health is an endpoint's health as reported by the control plane.
type Health uint8

// Endpoint health states. Only HealthUnknown and HealthHealthy endpoints are
// given new connections; HealthDraining endpoints keep the connections they
// already have (routing happens at connect time, so nothing is cut).
const (
	HealthUnknown Health = iota
	HealthHealthy
	HealthUnhealthy
	HealthDraining
)

func (h Health) String() string {
	switch h {
	case HealthUnknown:
		return "unknown"
	case HealthHealthy:
		return "healthy"
	case HealthUnhealthy:
		return "unhealthy"
	case HealthDraining:
		return "draining"
	}
	return "health(" + strconv.Itoa(int(h)) + ")"
}

// Usable reports whether an endpoint in this state may get new connections.
func (h Health) Usable() bool { return h == HealthUnknown || h == HealthHealthy }

// State is the complete desired routing state of one node. It replaces the
// previous state as a whole.
type State struct {
	Services []Service
	// Peers are workloads the control plane names outside any service (a
	// workload directory, docs/xds.md): clients that back no service, so
	// that other nodes know who they are. Identity only; never routed.
	Peers      []Peer
	Identities Identities // who is who, for policy; the zero value knows no one
}

// Peer is one address of a workload the control plane names outside any
// service.
type Peer struct {
	Addr     netip.Addr // required
	Workload *Workload  // required, with its SPIFFEID
}

// Service is a VIP:port/protocol and the endpoints behind it: either one
// pool (Endpoints) or a weighted split across pools (Splits), not both.
type Service struct {
	Name      string     // required: used in errors, logs and flow records
	VIP       netip.Addr // required: IPv4 or IPv6, no zone, not v4-mapped
	Port      uint16     // required
	Protocol  Protocol   // required: TCP or UDP
	Endpoints []Endpoint // optional: none (and no Splits) means connections are refused
	Splits    []Split    // optional: instead of Endpoints
	Policies  []Policy   // optional: L4 authorization, TCP only; every policy must allow a connection
	FastPath  FastPath   // optional: the same-node fast path for its TCP connections (docs/fastpath.md)
	// L7: the service is served by the node's L7 proxy (docs/l7.md); TCP
	// only, and then it has no Endpoints or Splits of its own.
	L7 *L7
}

// FastPath is a setting of the same-node fast path (docs/fastpath.md), on
// a service or a local workload. A connection between two local workloads
// takes the fast path unless either workload or the service it was dialed
// through is off; then if the service is on, or else if both workloads
// are on.
type FastPath uint8

const (
	FastPathUnset FastPath = iota // no setting of its own
	FastPathOn
	FastPathOff
)

func (f FastPath) String() string {
	switch f {
	case FastPathUnset:
		return "unset"
	case FastPathOn:
		return "on"
	case FastPathOff:
		return "off"
	}
	return fmt.Sprintf("FastPath(%d)", uint8(f))
}

// Split is one pool of a service's weighted split (an xDS weighted cluster).
// Each pool chooses its usable endpoints by health and priority on its own;
// a pool left with none gets no connections and its share goes to the others.
type Split struct {
	Name      string // required: the pool's name, used in errors
	Weight    uint32 // required: share of new connections relative to the other splits; 0 gets none
	Endpoints []Endpoint
}

// Endpoint is one backend of a service.
//
// A mesh holds one for every backend of every service (100,000 at 10,000
// services of 10), so it is kept small: 56 bytes.
type Endpoint struct {
	Addr     netip.Addr  // required: same family as the service VIP
	Weight   uint32      // optional: 0 means 1
	Priority uint32      // optional: 0 is the highest priority
	Port     uint16      // required
	Health   Health      // optional: HealthUnknown by default
	Locality LocalityRef // optional
	Workload *Workload   // optional: who runs at this address, from endpoint metadata
}

// Workload describes the workload behind an endpoint, as the control plane
// reports it (xDS endpoint metadata "sluice.io/workload"). Routing does not
// use it; identity, policy and flow records do.
type Workload struct {
	Name           string
	Namespace      string
	ServiceAccount string
	Node           string
	SPIFFEID       string // spiffe://<trust-domain>/ns/<ns>/sa/<sa>
	Identity       uint32 // numeric identity allocated by the control plane; 0 if none
	// L7Proxy marks a node's L7 proxy, listed in a workload directory
	// (State.Peers only): its address connects upstream on behalf of
	// its clients and is trusted to carry their identities, so it claims
	// no identity of its own.
	L7Proxy bool
}

// Locality places an endpoint in the topology.
type Locality struct {
	Region, Zone, SubZone string
}

// LocalityRef refers to a Locality the way an Endpoint holds it: equal
// localities have equal references (so endpoints compare with ==), and
// all the endpoints of a locality share one copy of it. The zero
// LocalityRef is the zero Locality.
type LocalityRef struct {
	h unique.Handle[Locality]
}

// Ref returns the reference to l.
func (l Locality) Ref() LocalityRef {
	if l == (Locality{}) {
		return LocalityRef{}
	}
	return LocalityRef{unique.Make(l)}
}

// Value returns the locality r refers to.
func (r LocalityRef) Value() Locality {
	if r == (LocalityRef{}) {
		return Locality{}
	}
	return r.h.Value()
}

// ServiceKey identifies a service by what a client dials.
type ServiceKey struct {
	VIP      netip.Addr
	Port     uint16
	Protocol Protocol
}

func (k ServiceKey) String() string {
	return netip.AddrPortFrom(k.VIP, k.Port).String() + "/" + k.Protocol.String()
}

// Key returns the key a client's connection is matched on.
func (s *Service) Key() ServiceKey {
	return ServiceKey{VIP: s.VIP, Port: s.Port, Protocol: s.Protocol}
}

// Pools returns the service's endpoint pools: its Splits, or its Endpoints
// as a single pool of weight 1.
func (s *Service) Pools() []Split {
	if len(s.Splits) > 0 {
		return s.Splits
	}
	return []Split{{Name: s.Name, Weight: 1, Endpoints: s.Endpoints}}
}

// Errors classes of a rejected State, to be tested with errors.Is.
var (
	// ErrInvalidState: the state is malformed (bad address, duplicate VIP:port, ...).
	ErrInvalidState = errors.New("invalid state")
	// ErrCapacity: the state does not fit into the dataplane's capacities.
	ErrCapacity = errors.New("state exceeds capacity")
)

// EntryError names the entry of a State that was rejected and why.
type EntryError struct {
	Entry  string // e.g. `service "web" (10.96.0.10:80/TCP) endpoint 2 (10.244.1.5:8080)`
	Reason string
	Class  error // ErrInvalidState or ErrCapacity
	// Limit names the dataplane capacity that was exceeded (a field of
	// dataplane.Capacity, e.g. "Services") when a larger one would let
	// the state fit; empty for fixed limits and invalid states.
	Limit string
}

func (e *EntryError) Error() string { return e.Entry + ": " + e.Reason }

// Unwrap lets errors.Is match the error class.
func (e *EntryError) Unwrap() error { return e.Class }

// Label names the i-th service of a State for errors and logs.
func Label(i int, s *Service) string {
	if s.Name == "" {
		return fmt.Sprintf("service #%d (%s)", i, s.Key())
	}
	return fmt.Sprintf("service %q (%s)", s.Name, s.Key())
}

// Equal reports whether s and o describe the same routing, workload
// metadata included. Endpoint slices that share their backing array compare
// in constant time, so comparing a state with its successor costs in
// proportion to what was rebuilt.
func (s *Service) Equal(o *Service) bool {
	return s.Name == o.Name && s.VIP == o.VIP && s.Port == o.Port && s.Protocol == o.Protocol &&
		s.FastPath == o.FastPath && endpointsEqual(s.Endpoints, o.Endpoints) &&
		(s.L7 == o.L7 || s.L7 != nil && o.L7 != nil && reflect.DeepEqual(s.L7, o.L7)) &&
		(len(s.Policies) == 0 && len(o.Policies) == 0 || reflect.DeepEqual(s.Policies, o.Policies)) &&
		slices.EqualFunc(s.Splits, o.Splits, func(a, b Split) bool {
			return a.Name == b.Name && a.Weight == b.Weight && endpointsEqual(a.Endpoints, b.Endpoints)
		})
}

func endpointsEqual(a, b []Endpoint) bool {
	if len(a) != len(b) {
		return false
	}
	if len(a) == 0 || &a[0] == &b[0] {
		return true
	}
	return slices.EqualFunc(a, b, func(x, y Endpoint) bool {
		if (x.Workload == nil) != (y.Workload == nil) || x.Workload != nil && *x.Workload != *y.Workload {
			return false
		}
		x.Workload, y.Workload = nil, nil
		return x == y
	})
}

// Equal reports whether two states hold equal services in the same order
// and equal identities. States sharing their Services slice compare their
// services in constant time.
func (s State) Equal(o State) bool {
	if !reflect.DeepEqual(s.Identities, o.Identities) {
		return false
	}
	if len(s.Services) == len(o.Services) && (len(s.Services) == 0 || &s.Services[0] == &o.Services[0]) {
		return true
	}
	return slices.EqualFunc(s.Services, o.Services, func(a, b Service) bool { return a.Equal(&b) })
}
