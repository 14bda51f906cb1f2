package model

import (
	"fmt"
	"net/netip"
)

// Validate checks that s is well formed: addresses, ports, protocols
// (L7 clusters' upstream protocols too) and health values are valid,
// endpoint families match their VIP, and no two services share a
// VIP:port/protocol. It returns an *EntryError naming the
// first offending entry. Capacity limits are the dataplane's to check.
func (s State) Validate() error {
	for i := range s.Services {
		if err := ValidateService(i, &s.Services[i]); err != nil {
			return err
		}
	}
	return s.ValidateUnique()
}

// ValidateUnique checks that no two services of s share a
// VIP:port/protocol. With ValidateService on every service it is Validate;
// callers that know most services are unchanged validate only the others.
func (s State) ValidateUnique() error {
	owner := make(map[ServiceKey]int, len(s.Services))
	for i := range s.Services {
		svc := &s.Services[i]
		key := svc.Key()
		if j, dup := owner[key]; dup {
			return &EntryError{
				Entry:  Label(i, svc),
				Reason: "duplicate VIP:port/protocol, already used by " + Label(j, &s.Services[j]),
				Class:  ErrInvalidState,
			}
		}
		owner[key] = i
	}
	return nil
}

// ValidateService checks one service, the i-th of its state (i is used to
// name it in errors).
func ValidateService(i int, svc *Service) error {
	bad := func(reason string) error {
		return &EntryError{Entry: Label(i, svc), Reason: reason, Class: ErrInvalidState}
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
	case len(svc.Endpoints) > 0 && len(svc.Splits) > 0:
		return bad("has both endpoints and splits; use one")
	case svc.L7 != nil && svc.Protocol != TCP:
		return bad("an L7 service must be TCP")
	case svc.L7 != nil && len(svc.Splits) > 0:
		return bad("an L7 service has no splits: its routes choose clusters")
	case svc.L7 != nil && svc.L7.Routes == nil:
		return bad("an L7 service needs routes")
	case svc.FastPath > FastPathOff:
		return bad("fast path setting " + svc.FastPath.String() + " is not unset, on or off")
	}
	if svc.L7 != nil {
		for _, cl := range svc.L7.Clusters {
			if cl.Protocol > UpstreamUseDownstream {
				return bad(fmt.Sprintf("cluster %q: upstream protocol %s is not HTTP/1.1, HTTP/2 or the client's", cl.Name, cl.Protocol))
			}
		}
	}
	splitNames := make(map[string]bool, len(svc.Splits))
	for k, sp := range svc.Splits {
		if sp.Name == "" || splitNames[sp.Name] {
			return bad(fmt.Sprintf("split %d: name %q is empty or repeated", k, sp.Name))
		}
		splitNames[sp.Name] = true
	}
	for _, pool := range svc.Pools() {
		// Named only on error: most states are valid, and formatting every
		// service's name would cost more than checking it.
		where := func() string {
			if len(svc.Splits) > 0 {
				return Label(i, svc) + fmt.Sprintf(" split %q", pool.Name)
			}
			return Label(i, svc)
		}
		if err := validateEndpoints(where, svc.VIP, pool.Endpoints); err != nil {
			return err
		}
	}
	return nil
}

// smallPool is the size up to which duplicate endpoints are found by
// comparing pairs rather than with a map.
const smallPool = 16

func validateEndpoints(where func() string, vip netip.Addr, eps []Endpoint) error {
	var seen map[netip.AddrPort]int
	if len(eps) > smallPool {
		seen = make(map[netip.AddrPort]int, len(eps))
	}
	for j := range eps {
		ep := &eps[j]
		ap := netip.AddrPortFrom(ep.Addr, ep.Port)
		bad := func(reason string) error {
			return &EntryError{
				Entry:  fmt.Sprintf("%s endpoint %d (%s)", where(), j, ap),
				Reason: reason,
				Class:  ErrInvalidState,
			}
		}
		switch {
		case !ep.Addr.IsValid():
			return bad("missing address")
		case ep.Addr.Zone() != "":
			return bad("address must not have a zone")
		case ep.Addr.Is4In6():
			return bad("address is IPv4-mapped IPv6; use the IPv4 form")
		case ep.Addr.Is4() != vip.Is4():
			return bad("address family differs from the VIP's")
		case ep.Addr.IsUnspecified() || ep.Addr.IsMulticast():
			return bad("address is unspecified or multicast")
		case ep.Port == 0:
			return bad("port 0")
		case ep.Health > HealthDraining:
			return bad("unknown health " + ep.Health.String())
		}
		if seen == nil {
			for k := range j {
				if eps[k].Addr == ep.Addr && eps[k].Port == ep.Port {
					return bad(fmt.Sprintf("duplicate of endpoint %d", k))
				}
			}
			continue
		}
		if k, dup := seen[ap]; dup {
			return bad(fmt.Sprintf("duplicate of endpoint %d", k))
		}
		seen[ap] = j
	}
	return nil
}
