package main

import (
	"io"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/dataplane"
	"github.com/sluice-mesh/sluice/dataplane/model"
	"github.com/sluice-mesh/sluice/sockops"
	"github.com/sluice-mesh/sluice/sockops/flow"
	"github.com/sluice-mesh/sluice/sockops/metrics"
	"github.com/sluice-mesh/sluice/sockops/observe"
)

// Events read before the first state (a restarted agent reading what
// happened while none ran) are recorded once a state is known, named by it
// and in the order they were read; beyond the sink's hold they are
// recorded at once, unnamed.
func TestFlowSinkHoldsEventsUntilAState(t *testing.T) {
	ap := netip.MustParseAddrPort
	enricher := sockops.NewEnricher("node-1", func(d time.Duration) time.Time { return time.Unix(0, 0).Add(d) })
	store := flow.NewStore(16)
	sink := &flowSink{enricher: enricher, store: store, hold: 2,
		metrics: metrics.New("node-1", func() observe.Status { return observe.Status{} }),
		log:     slog.New(slog.NewTextHandler(io.Discard, nil))}
	ev := func(port uint16) dataplane.Event {
		return dataplane.Event{Kind: dataplane.EventClose, Time: time.Duration(port) * time.Second,
			Source: netip.AddrPortFrom(netip.MustParseAddr("10.244.1.9"), port), Destination: ap("10.244.1.5:8080"), Service: ap("10.96.0.1:80")}
	}
	for _, p := range []uint16{1, 2, 3} {
		sink.observe(ev(p))
	}
	if got := store.Last(10, flow.Filter{}); len(got) != 1 || got[0].Source.Address.Port() != 3 || got[0].Service == nil || got[0].Service.Name != "" {
		t.Fatalf("before a state: %+v; want only the event beyond the hold, unnamed", got)
	}
	enricher.SetState([]model.Service{{Name: "shop/web:80", VIP: netip.MustParseAddr("10.96.0.1"), Port: 80, Protocol: model.TCP,
		Endpoints: []model.Endpoint{{Addr: netip.MustParseAddr("10.244.1.5"), Port: 8080}}}}, nil)
	sink.stateKnown()
	sink.observe(ev(4))
	got := store.Last(10, flow.Filter{})
	var ports []uint16
	for _, f := range got {
		ports = append(ports, f.Source.Address.Port())
		if p := f.Source.Address.Port(); p != 3 && (f.Service == nil || f.Service.Name != "shop/web") {
			t.Errorf("flow from port %d not named: %+v", p, f.Service)
		}
	}
	if want := []uint16{3, 1, 2, 4}; len(ports) != len(want) || ports[0] != 3 || ports[1] != 1 || ports[2] != 2 || ports[3] != 4 {
		t.Fatalf("flows recorded from ports %v, want %v", ports, want)
	}
}
