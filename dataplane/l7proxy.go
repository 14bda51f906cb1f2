package dataplane

import (
	"net/netip"
	"slices"

	"github.com/sluice-mesh/sluice/dataplane/model"
)

// L7Proxy is where the node's L7 proxy listens: an address per family it
// serves (docs/l7.md). It connects upstream from the same addresses.
type L7Proxy []netip.AddrPort

// For returns the proxy's address for a VIP's family, if it has one.
func (p L7Proxy) For(vip netip.Addr) (netip.AddrPort, bool) {
	for _, ap := range p {
		if ap.Addr().Is4() == vip.Is4() {
			return ap, true
		}
	}
	return netip.AddrPort{}, false
}

// Route returns s as the kernel serves it with the L7 proxy p: each L7
// service's one endpoint is the proxy's address of its family (none if the
// proxy has no address of that family: its connections are refused), and
// the proxy's addresses and peers (other nodes' proxies) are trusted to
// carry their clients' identities — only while s has an L7 service: a
// mesh without one needs no address to speak for others. s itself is not
// changed.
func (p L7Proxy) Route(s model.State, peers []netip.Addr) model.State {
	if !slices.ContainsFunc(s.Services, func(svc model.Service) bool { return svc.L7 != nil }) {
		return s
	}
	if len(p)+len(peers) > 0 {
		s.Identities.Proxies = make([]netip.Addr, 0, len(p)+len(peers))
		for _, ap := range p {
			s.Identities.Proxies = append(s.Identities.Proxies, ap.Addr())
		}
		for _, a := range peers {
			if !slices.Contains(s.Identities.Proxies, a) {
				s.Identities.Proxies = append(s.Identities.Proxies, a)
			}
		}
	}
	// One endpoint slice per family, shared by every L7 service, so
	// states compare cheaply (model.Service.Equal).
	var eps [2][]model.Endpoint
	for _, ap := range p {
		i := 0
		if ap.Addr().Is6() {
			i = 1
		}
		if eps[i] == nil {
			eps[i] = []model.Endpoint{{Addr: ap.Addr(), Port: ap.Port()}}
		}
	}
	services := slices.Clone(s.Services)
	for i := range services {
		svc := &services[i]
		if svc.L7 == nil {
			continue
		}
		svc.Splits = nil
		if svc.VIP.Is4() {
			svc.Endpoints = eps[0]
		} else {
			svc.Endpoints = eps[1]
		}
	}
	s.Services = services
	return s
}

// L7Origin is what the kernel recorded of a connection to an L7 service
// (L7Conns.Take).
type L7Origin struct {
	Service  netip.AddrPort // the VIP:port the client dialed
	Identity uint32         // the client's identity; 0 unknown
}
