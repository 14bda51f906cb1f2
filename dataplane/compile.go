package dataplane

import (
	"cmp"
	"fmt"
	"math"
	"net/netip"
	"slices"
)

// activeSet is what the kernel needs of one service: its stable id and the
// endpoints that get new connections, with cumulative weights.
type activeSet struct {
	ID          uint32
	Backends    []activeBackend // canonical order: by address, then port
	TotalWeight uint32
}

type activeBackend struct {
	Addr      netip.Addr
	Port      uint16
	CumWeight uint32 // this backend owns [previous CumWeight, CumWeight)
}

// compile validates s against caps and returns each service's active set.
// Service ids in prevIDs are kept, so an unchanged service keeps its kernel
// entries; new services get the lowest free ids. It is pure.
func compile(s State, caps Capacity, prevIDs map[ServiceKey]uint32) (map[ServiceKey]activeSet, error) {
	caps = caps.WithDefaults()
	if len(s.Services) > caps.Services {
		return nil, &EntryError{
			Entry:  serviceLabel(caps.Services, &s.Services[caps.Services]),
			Reason: fmt.Sprintf("state has %d services, capacity is %d", len(s.Services), caps.Services),
			Class:  ErrCapacity,
		}
	}

	out := make(map[ServiceKey]activeSet, len(s.Services))
	owner := make(map[ServiceKey]int, len(s.Services))
	backends := 0
	for i := range s.Services {
		svc := &s.Services[i]
		if err := validateService(i, svc); err != nil {
			return nil, err
		}
		key := svc.Key()
		if j, dup := owner[key]; dup {
			return nil, &EntryError{
				Entry:  serviceLabel(i, svc),
				Reason: "duplicate VIP:port/protocol, already used by " + serviceLabel(j, &s.Services[j]),
				Class:  ErrInvalidState,
			}
		}
		owner[key] = i

		set, err := chooseActiveSet(i, svc)
		if err != nil {
			return nil, err
		}
		backends += len(set.Backends)
		if backends > caps.Backends {
			return nil, &EntryError{
				Entry:  serviceLabel(i, svc),
				Reason: fmt.Sprintf("backend capacity %d exhausted (state needs at least %d)", caps.Backends, backends),
				Class:  ErrCapacity,
			}
		}
		out[key] = set
	}
	assignIDs(out, prevIDs)
	return out, nil
}

func validateService(i int, svc *Service) error {
	bad := func(reason string) error {
		return &EntryError{Entry: serviceLabel(i, svc), Reason: reason, Class: ErrInvalidState}
	}
	switch {
	case !svc.VIP.IsValid():
		return bad("missing VIP")
	case svc.VIP.Zone() != "":
		return bad("VIP must not have a zone")
	case svc.VIP.Is4In6():
		return bad("VIP is IPv4-mapped IPv6; use the IPv4 form " + svc.VIP.Unmap().String())
	case svc.VIP.IsUnspecified() || svc.VIP.IsMulticast() || svc.VIP.IsLoopback():
		return bad("VIP " + svc.VIP.String() + " is unspecified, multicast or loopback")
	case svc.Port == 0:
		return bad("port 0")
	case svc.Protocol != TCP && svc.Protocol != UDP:
		return bad("protocol must be TCP or UDP")
	}

	seen := make(map[netip.AddrPort]int, len(svc.Endpoints))
	for j := range svc.Endpoints {
		ep := &svc.Endpoints[j]
		ap := netip.AddrPortFrom(ep.Addr, ep.Port)
		badEP := func(reason string) error {
			return &EntryError{
				Entry:  fmt.Sprintf("%s endpoint %d (%s)", serviceLabel(i, svc), j, ap),
				Reason: reason,
				Class:  ErrInvalidState,
			}
		}
		switch {
		case !ep.Addr.IsValid():
			return badEP("missing address")
		case ep.Addr.Zone() != "":
			return badEP("address must not have a zone")
		case ep.Addr.Is4In6():
			return badEP("address is IPv4-mapped IPv6; use the IPv4 form")
		case ep.Addr.Is4() != svc.VIP.Is4():
			return badEP("address family differs from the VIP's")
		case ep.Addr.IsUnspecified() || ep.Addr.IsMulticast():
			return badEP("address is unspecified or multicast")
		case ep.Port == 0:
			return badEP("port 0")
		case ep.Health > HealthDraining:
			return badEP("unknown health " + ep.Health.String())
		}
		if k, dup := seen[ap]; dup {
			return badEP(fmt.Sprintf("duplicate of endpoint %d", k))
		}
		seen[ap] = j
	}
	return nil
}

// chooseActiveSet picks the usable endpoints of the highest priority (lowest
// number) that has any, and lays out their weights cumulatively.
func chooseActiveSet(i int, svc *Service) (activeSet, error) {
	best := uint32(math.MaxUint32)
	found := false
	for _, ep := range svc.Endpoints {
		if ep.Health.Usable() && (!found || ep.Priority < best) {
			best, found = ep.Priority, true
		}
	}
	if !found {
		return activeSet{}, nil
	}

	var chosen []Endpoint
	for _, ep := range svc.Endpoints {
		if ep.Health.Usable() && ep.Priority == best {
			chosen = append(chosen, ep)
		}
	}
	if len(chosen) > MaxBackendsPerService {
		return activeSet{}, &EntryError{
			Entry:  serviceLabel(i, svc),
			Reason: fmt.Sprintf("%d usable endpoints at priority %d, at most %d are supported", len(chosen), best, MaxBackendsPerService),
			Class:  ErrCapacity,
		}
	}
	slices.SortFunc(chosen, func(a, b Endpoint) int {
		if c := a.Addr.Compare(b.Addr); c != 0 {
			return c
		}
		return cmp.Compare(a.Port, b.Port)
	})

	set := activeSet{Backends: make([]activeBackend, len(chosen))}
	var total uint64
	for j, ep := range chosen {
		w := uint64(ep.Weight)
		if w == 0 {
			w = 1
		}
		total += w
		if total > math.MaxUint32 {
			return activeSet{}, &EntryError{
				Entry:  serviceLabel(i, svc),
				Reason: fmt.Sprintf("sum of endpoint weights at priority %d exceeds %d", best, uint32(math.MaxUint32)),
				Class:  ErrInvalidState,
			}
		}
		set.Backends[j] = activeBackend{Addr: ep.Addr, Port: ep.Port, CumWeight: uint32(total)}
	}
	set.TotalWeight = uint32(total)
	return set, nil
}

// assignIDs gives every service its id from prev, or the lowest id (from 1)
// that is neither kept nor already given. New services are numbered in key
// order so the result does not depend on the order of the input.
func assignIDs(sets map[ServiceKey]activeSet, prev map[ServiceKey]uint32) {
	used := make(map[uint32]bool, len(sets))
	var fresh []ServiceKey
	for k, set := range sets {
		if id, ok := prev[k]; ok && id != 0 {
			set.ID = id
			sets[k] = set
			used[id] = true
			continue
		}
		fresh = append(fresh, k)
	}
	slices.SortFunc(fresh, compareKeys)
	next := uint32(1)
	for _, k := range fresh {
		for used[next] {
			next++
		}
		set := sets[k]
		set.ID = next
		sets[k] = set
		used[next] = true
	}
}

func compareKeys(a, b ServiceKey) int {
	if c := a.VIP.Compare(b.VIP); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Port, b.Port); c != 0 {
		return c
	}
	return cmp.Compare(a.Protocol, b.Protocol)
}
