package dataplane

import "errors"

// Capacity bounds the kernel maps. Zero fields take the defaults of
// DefaultCapacity. Changing a capacity of an installed dataplane requires a
// teardown, because pinned maps keep the size they were created with.
type Capacity struct {
	Services    int // VIP:port/protocol entries
	Backends    int // backend entries over all services (usable endpoints only)
	UDPReverse  int // reverse-translation entries for unconnected UDP (LRU)
	Workloads   int // local workloads (cgroups)
	Addresses   int // workload addresses with an identity
	PolicyDests int // endpoints with a policy
	Classes     int // source CIDRs over all policy sets
	Verdicts    int // verdict entries over all policy sets
	Rules       int // policy rules, each with its own counters
	EventBytes  int // size of the event ring buffer; a power of two, at least 4096
	FastPath    int // sockets on the same-node fast path (two per connection)
	L7Conns     int // connections to L7 services the L7 proxy has not picked up yet (LRU)
}

// DefaultCapacity is used for every zero field of Capacity.
var DefaultCapacity = Capacity{
	Services: 16384, Backends: 131072, UDPReverse: 65536,
	Workloads: 4096, Addresses: 131072, PolicyDests: 65536, Classes: 16384,
	Verdicts: 131072, Rules: 16384, EventBytes: 1 << 22, FastPath: 65536,
	L7Conns: 65536,
}

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
	for _, f := range []struct {
		v *int
		d int
	}{
		{&c.Workloads, DefaultCapacity.Workloads},
		{&c.Addresses, DefaultCapacity.Addresses},
		{&c.PolicyDests, DefaultCapacity.PolicyDests},
		{&c.Classes, DefaultCapacity.Classes},
		{&c.Verdicts, DefaultCapacity.Verdicts},
		{&c.Rules, DefaultCapacity.Rules},
		{&c.EventBytes, DefaultCapacity.EventBytes},
		{&c.FastPath, DefaultCapacity.FastPath},
		{&c.L7Conns, DefaultCapacity.L7Conns},
	} {
		if *f.v == 0 {
			*f.v = f.d
		}
	}
	return c
}

// MaxBackendsPerService is the largest active set one service can have; the
// kernel's binary search is bounded to that many entries.
const MaxBackendsPerService = 1 << 17

// Errors of Open, to be tested with errors.Is. Apply rejects states with the
// classes of package model (model.ErrInvalidState, model.ErrCapacity).
var (
	// ErrIncompatiblePins: pinned objects do not match this build or configuration.
	ErrIncompatiblePins = errors.New("incompatible pinned objects")
	// ErrNotRemoved: something of a dataplane is still there after it
	// was removed (Teardown, Uninstall, CheckRemoved name what).
	ErrNotRemoved = errors.New("dataplane not fully removed")
	// ErrLocked: another process owns the pin directory.
	ErrLocked = errors.New("pin directory in use")
)

// Status describes what the dataplane has programmed.
type Status struct {
	Generation     uint32 // generation the programs read
	Services       int    // service entries in force
	Backends       int    // backend entries in force
	EntriesWritten uint64 // map entries written or deleted by this process (churn)
}

// Stats are the programs' counters, summed over CPUs.
type Stats struct {
	Translated  uint64 // connects and datagrams rewritten to a backend
	NoBackend   uint64 // refused: service without a usable endpoint
	BackendMiss uint64 // service entry whose backend was missing; stays 0 unless the maps are inconsistent

	DenyConnect uint64 // connects refused by policy at the client (EPERM)
	DenyIngress uint64 // connections denied by policy at their destination
	TagSent     uint64 // SYNs that carried the client's identity
	TagTrusted  uint64 // accepted connections whose tag matched the source address
	TagRejected uint64 // accepted connections whose tag did not (taken as unknown)
	Untagged    uint64 // accepted connections without a tag (unknown source)
	Dropped     uint64 // packets dropped to or from denied connections
	VerdictMiss uint64 // policy lookups without a verdict, denied; stays 0 unless the maps are inconsistent
	EventsLost  uint64 // events the ring buffer had no room for
	Terminated  uint64 // denied connections destroyed
	EarlyData   uint64 // segments with payload dropped at a listener: they would open a denied connection

	FastRegistered uint64 // sockets put on the same-node fast path
	FastFull       uint64 // sockets left off it because its maps were full
	FastFallback   uint64 // connections whose sender found its peer off the fast path: normal path for good
	FastBytes      uint64 // bytes the fast path carried
}
