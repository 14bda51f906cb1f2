package sockops_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/dataplane"
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
