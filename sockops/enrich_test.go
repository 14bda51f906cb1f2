package sockops_test

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/dataplane"
	"github.com/sluice-mesh/sluice/dataplane/l7"
	"github.com/sluice-mesh/sluice/dataplane/model"
	"github.com/sluice-mesh/sluice/dataplane/policy"
	"github.com/sluice-mesh/sluice/identity"
	"github.com/sluice-mesh/sluice/sockops"
	"github.com/sluice-mesh/sluice/sockops/flow"
)

func TestEnricherFlow(t *testing.T) {
	epoch := time.Date(2026, 11, 22, 0, 0, 0, 0, time.UTC)
	e := sockops.NewEnricher("node-1", func(mono time.Duration) time.Time { return epoch.Add(mono) })
	ap := netip.MustParseAddrPort
	web := &model.Workload{Name: "web-1", Namespace: "shop", SPIFFEID: "spiffe://td/ns/shop/sa/web"}
	services := []model.Service{
		{Name: "shop/web:80", VIP: netip.MustParseAddr("10.96.0.1"), Port: 80, Protocol: model.TCP,
			Endpoints: []model.Endpoint{{Addr: netip.MustParseAddr("10.244.1.5"), Port: 8080, Workload: web}}},
		// Two services share an endpoint: its service is not known from it.
		{Name: "shop/a:81", VIP: netip.MustParseAddr("10.96.0.2"), Port: 81, Protocol: model.TCP,
			Endpoints: []model.Endpoint{{Addr: netip.MustParseAddr("10.244.1.6"), Port: 9000}}},
		{Name: "shop/b:82", VIP: netip.MustParseAddr("10.96.0.3"), Port: 82, Protocol: model.TCP,
			Endpoints: []model.Endpoint{{Addr: netip.MustParseAddr("10.244.1.6"), Port: 9000}}},
	}
	client := identity.Workload{Name: "cli", Namespace: "jobs", SPIFFEID: "spiffe://td/ns/jobs/sa/cli", Addrs: []netip.Addr{netip.MustParseAddr("10.244.1.9")}}
	e.SetState(services, []identity.Workload{client})

	tests := []struct {
		name string
		ev   dataplane.Event
		want flow.Flow
	}{{
		name: "client-side close through a VIP",
		ev: dataplane.Event{Kind: dataplane.EventClose, Time: 5 * time.Second, Source: ap("10.244.1.9:40000"),
			Destination: ap("10.244.1.5:8080"), Service: ap("10.96.0.1:80"), BytesSent: 10, BytesRecv: 20,
			Duration: time.Millisecond, RTT: 30 * time.Microsecond, Retransmits: 2, FastPath: true},
		want: flow.Flow{Time: epoch.Add(5 * time.Second), Node: "node-1", Event: flow.EventClose, Reporter: flow.ReporterSource,
			Verdict: flow.VerdictAllowed, Protocol: "tcp",
			Source:      flow.Peer{Workload: "cli", Namespace: "jobs", Identity: client.SPIFFEID, Address: ap("10.244.1.9:40000")},
			Service:     &flow.Service{Name: "shop/web", VIP: ap("10.96.0.1:80")},
			Destination: flow.Peer{Workload: "web-1", Namespace: "shop", Identity: web.SPIFFEID, Address: ap("10.244.1.5:8080")},
			BytesSent:   10, BytesRecv: 20, Duration: time.Millisecond, RTT: 30 * time.Microsecond, Retransmits: 2, FastPath: true},
	}, {
		name: "server-side open: the service from the endpoint",
		ev:   dataplane.Event{Kind: dataplane.EventOpen, Server: true, Source: ap("10.244.2.1:1234"), Destination: ap("10.244.1.5:8080")},
		want: flow.Flow{Time: epoch, Node: "node-1", Event: flow.EventOpen, Reporter: flow.ReporterDestination,
			Verdict: flow.VerdictAllowed, Protocol: "tcp", Source: flow.Peer{Address: ap("10.244.2.1:1234")},
			Service:     &flow.Service{Name: "shop/web"},
			Destination: flow.Peer{Workload: "web-1", Namespace: "shop", Identity: web.SPIFFEID, Address: ap("10.244.1.5:8080")}},
	}, {
		name: "deny at the destination names the rule; a shared endpoint names no service",
		ev: dataplane.Event{Kind: dataplane.EventDenyIngress, Source: ap("10.244.3.3:5555"), Destination: ap("10.244.1.6:9000"),
			SPIFFEID: "spiffe://td/ns/x/sa/y", Deny: true, Rule: policy.Rule{Policy: "only-web", Default: true}},
		want: flow.Flow{Time: epoch, Node: "node-1", Event: flow.EventDeny, Reporter: flow.ReporterDestination,
			Verdict: flow.VerdictDenied, Reason: "policy", Policy: "only-web#default", Protocol: "tcp",
			Source:      flow.Peer{Identity: "spiffe://td/ns/x/sa/y", Address: ap("10.244.3.3:5555")},
			Destination: flow.Peer{Address: ap("10.244.1.6:9000")}},
	}, {
		name: "dry-run deny at connect",
		ev: dataplane.Event{Kind: dataplane.EventShadowDenyConnect, Source: ap("10.244.1.9:0"), Destination: ap("10.244.1.5:8080"),
			ShadowDeny: true, ShadowRule: policy.Rule{Policy: "audit", Rule: "no-jobs"}},
		want: flow.Flow{Time: epoch, Node: "node-1", Event: flow.EventDeny, Reporter: flow.ReporterSource,
			Verdict: flow.VerdictAudit, Reason: "policy (dry run)", Policy: "audit#no-jobs", Protocol: "tcp",
			Source:      flow.Peer{Workload: "cli", Namespace: "jobs", Identity: client.SPIFFEID, Address: ap("10.244.1.9:0")},
			Service:     &flow.Service{Name: "shop/web"},
			Destination: flow.Peer{Workload: "web-1", Namespace: "shop", Identity: web.SPIFFEID, Address: ap("10.244.1.5:8080")}},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := e.Flow(tt.ev)
			if (got.Service == nil) != (tt.want.Service == nil) || got.Service != nil && *got.Service != *tt.want.Service {
				t.Errorf("service %+v, want %+v", got.Service, tt.want.Service)
			}
			got.Service, tt.want.Service = nil, nil
			if got != tt.want {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}

	// A new state is seen by the next event.
	e.SetState(nil, nil)
	if f := e.Flow(tests[0].ev); f.Source.Workload != "" || f.Service.Name != "" {
		t.Errorf("after the state changed: %+v", f)
	}
}

// A request record of the L7 proxy becomes a request flow: the client by
// its address and the identity the proxy knew it by, the L7 service, the
// upstream endpoint named from the service's clusters; a denied request
// is verdict denied with reason http-policy and the deciding rule.
func TestEnricherRequest(t *testing.T) {
	e := sockops.NewEnricher("node-1", nil)
	ap := netip.MustParseAddrPort
	cartV2 := &model.Workload{Name: "cart-v2-1", Namespace: "shop", SPIFFEID: "spiffe://td/ns/shop/sa/cart"}
	services := []model.Service{{Name: "shop/cart:80", VIP: netip.MustParseAddr("10.96.0.10"), Port: 80, Protocol: model.TCP,
		L7: &model.L7{Clusters: []model.Cluster{{Name: "cart-v2", Endpoints: []model.Endpoint{
			{Addr: netip.MustParseAddr("10.244.2.5"), Port: 8080, Workload: cartV2}}}}}}}
	client := identity.Workload{Name: "web-1", Namespace: "shop", SPIFFEID: "spiffe://td/ns/shop/sa/web",
		Addrs: []netip.Addr{netip.MustParseAddr("10.244.1.4")}}
	e.SetState(services, []identity.Workload{client})

	start := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	rec := l7.RequestRecord{
		Origin:   l7.Origin{Service: ap("10.96.0.10:80"), Client: ap("10.244.1.4:43210"), Identity: 7},
		ClientID: "spiffe://td/ns/shop/sa/web", Service: "shop/cart:80", Route: "items", Cluster: "cart-v2",
		Upstream: ap("10.244.2.5:8080"), Method: "GET", Authority: "cart.shop", Path: "/items/" + strings.Repeat("x", 300),
		Proto: "HTTP/1.1", Code: 200, Tries: 2, Start: start, Duration: 1500 * time.Microsecond,
	}
	got := e.Request(l7.NewWireRecord(rec))
	want := flow.Flow{
		Time: start.Add(1500 * time.Microsecond), Node: "node-1", Event: flow.EventRequest, Reporter: flow.ReporterProxy,
		Verdict: flow.VerdictAllowed, Protocol: "http",
		Source:      flow.Peer{Workload: "web-1", Namespace: "shop", Identity: client.SPIFFEID, Address: ap("10.244.1.4:43210")},
		Destination: flow.Peer{Workload: "cart-v2-1", Namespace: "shop", Identity: cartV2.SPIFFEID, Address: ap("10.244.2.5:8080")},
		Duration:    1500 * time.Microsecond,
	}
	wantHTTP := flow.HTTP{Method: "GET", Path: rec.Path[:l7.MaxRecordText], PathTruncated: true, Authority: "cart.shop",
		Protocol: "HTTP/1.1", Code: 200, Route: "items", Cluster: "cart-v2", Tries: 2}
	if got.Service == nil || *got.Service != (flow.Service{Name: "shop/cart", VIP: ap("10.96.0.10:80")}) {
		t.Errorf("service %+v, want shop/cart 10.96.0.10:80", got.Service)
	}
	if got.HTTP == nil || *got.HTTP != wantHTTP {
		t.Errorf("http %+v, want %+v", got.HTTP, wantHTTP)
	}
	got.Service, got.HTTP = nil, nil
	if got != want {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}

	// Denied by HTTP policy, no upstream tried; gRPC; an IPv4-mapped
	// client address; the identity the proxy knew wins over the address's.
	denied := rec
	denied.Origin.Client = ap("[::ffff:10.244.1.4]:5000")
	denied.ClientID = "spiffe://td/ns/shop/sa/other"
	denied.Upstream, denied.Route, denied.Cluster, denied.Tries = netip.AddrPort{}, "", "", 0
	denied.Path, denied.Code, denied.GRPC, denied.GRPCStatus, denied.Err = "/pkg.Svc/Call", 403, true, "7", "denied"
	denied.Denied = &l7.Verdict{Policy: "shop/cart-http"}
	f := e.Request(l7.NewWireRecord(denied))
	if f.Verdict != flow.VerdictDenied || f.Reason != "http-policy" || f.Policy != "shop/cart-http#default" {
		t.Errorf("denied: verdict %q reason %q policy %q, want denied http-policy shop/cart-http#default", f.Verdict, f.Reason, f.Policy)
	}
	if f.Protocol != "grpc" || f.HTTP.Code != 403 || f.HTTP.GRPCStatus != "7" || f.HTTP.Error != "denied" || f.HTTP.PathTruncated {
		t.Errorf("denied: protocol %q http %+v", f.Protocol, f.HTTP)
	}
	if f.Source.Address != ap("10.244.1.4:5000") || f.Source.Workload != "web-1" || f.Source.Identity != denied.ClientID {
		t.Errorf("denied: source %+v", f.Source)
	}
	if f.Destination != (flow.Peer{}) {
		t.Errorf("denied: destination %+v, want none", f.Destination)
	}
	audited := rec
	audited.Audit = &l7.Verdict{Policy: "shop/cart-audit", Rule: "no-delete"}
	if f := e.Request(l7.NewWireRecord(audited)); f.Verdict != flow.VerdictAudit || f.Reason != "http-policy (dry run)" || f.Policy != "shop/cart-audit#no-delete" {
		t.Errorf("audited: verdict %q reason %q policy %q, want audit, http-policy (dry run), shop/cart-audit#no-delete", f.Verdict, f.Reason, f.Policy)
	}
	withRule := denied
	withRule.Denied = &l7.Verdict{Policy: "shop/cart-http", Rule: "no-delete"}
	if f := e.Request(l7.NewWireRecord(withRule)); f.Policy != "shop/cart-http#no-delete" {
		t.Errorf("policy %q, want shop/cart-http#no-delete", f.Policy)
	}

	// A connection of unknown origin: no service, no client.
	lost := l7.RequestRecord{Method: "GET", Path: "/", Proto: "HTTP/1.1", Code: 502, Start: start, Err: "no connection information"}
	if f := e.Request(l7.NewWireRecord(lost)); f.Service != nil || f.Source.Address.IsValid() || f.HTTP.Code != 502 {
		t.Errorf("unknown origin: %+v", f)
	}
}
