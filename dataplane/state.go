package dataplane

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
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

// State is the complete desired routing state of one node. Apply replaces the
// previous state with it as a whole.
type State struct {
	Services []Service
}

// Service is a VIP:port/protocol and the endpoints behind it.
type Service struct {
	Name      string     // required: used in errors, logs and flow records
	VIP       netip.Addr // required: IPv4 or IPv6, no zone, not v4-mapped
	Port      uint16     // required
	Protocol  Protocol   // required: TCP or UDP
	Endpoints []Endpoint // optional: none means connections are refused
}

// Endpoint is one backend of a service.
type Endpoint struct {
	Addr     netip.Addr // required: same family as the service VIP
	Port     uint16     // required
	Weight   uint32     // optional: 0 means 1
	Health   Health     // optional: HealthUnknown by default
	Priority uint32     // optional: 0 is the highest priority
	Locality Locality   // optional
}

// Locality places an endpoint in the topology.
type Locality struct {
	Region, Zone, SubZone string
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

// Capacity bounds the kernel maps. Zero fields take the defaults of
// DefaultCapacity. Changing a capacity of an installed dataplane requires a
// teardown, because pinned maps keep the size they were created with.
type Capacity struct {
	Services   int // VIP:port/protocol entries
	Backends   int // backend entries over all services (usable endpoints only)
	UDPReverse int // reverse-translation entries for unconnected UDP (LRU)
}

// DefaultCapacity is used for every zero field of Capacity.
var DefaultCapacity = Capacity{Services: 16384, Backends: 131072, UDPReverse: 65536}

// WithDefaults returns c with zero fields set from DefaultCapacity.
func (c Capacity) WithDefaults() Capacity {
	if c.Services == 0 {
		c.Services = DefaultCapacity.Services
	}
	if c.Backends == 0 {
		c.Backends = DefaultCapacity.Backends
	}
	if c.UDPReverse == 0 {
		c.UDPReverse = DefaultCapacity.UDPReverse
	}
	return c
}

// MaxBackendsPerService is the largest active set one service can have; the
// kernel's binary search is bounded to that many entries.
const MaxBackendsPerService = 1 << 17

// Errors returned by Apply and Open, to be tested with errors.Is.
var (
	// ErrInvalidState: the state is malformed (bad address, duplicate VIP:port, ...).
	ErrInvalidState = errors.New("invalid state")
	// ErrCapacity: the state does not fit into the configured map capacities.
	ErrCapacity = errors.New("state exceeds capacity")
	// ErrIncompatiblePins: pinned objects do not match this build or configuration.
	ErrIncompatiblePins = errors.New("incompatible pinned objects")
	// ErrLocked: another process owns the pin directory.
	ErrLocked = errors.New("pin directory in use")
)

// EntryError names the entry of a State that was rejected and why.
type EntryError struct {
	Entry  string // e.g. `service "web" (10.96.0.10:80/TCP) endpoint 2 (10.244.1.5:8080)`
	Reason string
	Class  error // ErrInvalidState or ErrCapacity
}

func (e *EntryError) Error() string { return e.Entry + ": " + e.Reason }

// Unwrap lets errors.Is match the error class.
func (e *EntryError) Unwrap() error { return e.Class }

func serviceLabel(i int, s *Service) string {
	if s.Name == "" {
		return fmt.Sprintf("service #%d (%s)", i, s.Key())
	}
	return fmt.Sprintf("service %q (%s)", s.Name, s.Key())
}
