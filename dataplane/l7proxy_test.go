package dataplane

import (
	"net/netip"
	"testing"

	"github.com/sluice-mesh/sluice/dataplane/model"
)

// TestL7ProxyRoute: L7 services get the proxy of their family as their
// one endpoint (none without one), L4 services and the caller's state are
// left as they are, and the proxy's addresses become trusted.
func TestL7ProxyRoute(t *testing.T) {
	l7 := &model.L7{Routes: &model.HTTPRoutes{Name: "r"}}
	ep := []model.Endpoint{{Addr: netip.MustParseAddr("10.244.1.5"), Port: 8080}}
	in := model.State{Services: []model.Service{
		{Name: "l4", VIP: netip.MustParseAddr("10.96.0.1"), Port: 80, Protocol: model.TCP, Endpoints: ep},
		{Name: "web", VIP: netip.MustParseAddr("10.96.0.2"), Port: 80, Protocol: model.TCP, L7: l7},
		{Name: "web6", VIP: netip.MustParseAddr("fd00::2"), Port: 80, Protocol: model.TCP, L7: l7},
	}}
	p := L7Proxy{netip.MustParseAddrPort("10.244.255.1:15001")}
	peer := netip.MustParseAddr("10.244.255.2")
	out := p.Route(in, []netip.Addr{peer, p[0].Addr()})
	if got := out.Services[0].Endpoints; len(got) != 1 || got[0] != ep[0] {
		t.Errorf("L4 service endpoints: %v, want %v", got, ep)
	}
	if got := out.Services[1].Endpoints; len(got) != 1 || netip.AddrPortFrom(got[0].Addr, got[0].Port) != p[0] {
		t.Errorf("L7 service endpoints: %v, want the proxy %s", got, p[0])
	}
	if got := out.Services[2].Endpoints; len(got) != 0 {
		t.Errorf("IPv6 L7 service without an IPv6 proxy: endpoints %v, want none (refused)", got)
	}
	if in.Services[1].Endpoints != nil {
		t.Errorf("Route changed its input: %v", in.Services[1].Endpoints)
	}
	if got := out.Identities.Proxies; len(got) != 2 || got[0] != p[0].Addr() || got[1] != peer {
		t.Errorf("trusted proxies: %v, want [%s %s]", got, p[0].Addr(), peer)
	}
	if err := out.Validate(); err != nil {
		t.Errorf("routed state: %v", err)
	}
	if got := (L7Proxy{}).Route(in, nil); got.Identities.Proxies != nil || len(got.Services[1].Endpoints) != 0 {
		t.Errorf("no proxy: proxies %v, L7 endpoints %v, want none", got.Identities.Proxies, got.Services[1].Endpoints)
	}
	l4only := model.State{Services: in.Services[:1]}
	if got := p.Route(l4only, []netip.Addr{peer}); &got.Services[0] != &l4only.Services[0] || got.Identities.Proxies != nil {
		t.Errorf("a state without L7 services must keep its services as they are and trust no proxy: proxies %v", got.Identities.Proxies)
	}
}
