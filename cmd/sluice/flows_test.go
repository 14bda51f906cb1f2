package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/dataplane"
	"github.com/sluice-mesh/sluice/dataplane/l7"
	"github.com/sluice-mesh/sluice/dataplane/model"
	"github.com/sluice-mesh/sluice/identity"
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

// The L7 proxy's request records reach the agent over its local API
// socket, as the agent mounts them: refused (and kept by the proxy) until
// the agent has a state to name them by, then recorded as request flows,
// counted in the request metrics, and shown by `sluice observe`. A batch
// with a bad line is refused whole.
func TestAgentTakesRequestRecords(t *testing.T) {
	ap := netip.MustParseAddrPort
	enricher := sockops.NewEnricher("node-1", monoToWall)
	store := flow.NewStore(16)
	mets := metrics.New("node-1", nil)
	sink := &flowSink{enricher: enricher, store: store, metrics: mets, hold: 2, log: slog.New(slog.DiscardHandler)}

	path := filepath.Join(t.TempDir(), "agent.sock")
	l, err := observe.Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	api := observe.NewServer(store, func() observe.Status { return observe.Status{} }, nil)
	api.Handle("POST "+l7.RecordsPath, l7.RecordsHandler(sink.requests))
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- api.Serve(ctx, l) }()
	t.Cleanup(func() { cancel(); <-served })

	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}}}
	sender := l7.NewRecordSender(l7.RecordSenderOptions{Client: client, Interval: time.Hour})
	start := time.Now().Add(-time.Second)
	rec := l7.RequestRecord{
		Origin:   l7.Origin{Service: ap("10.96.0.10:80"), Client: ap("10.244.1.4:43210"), Identity: 7},
		ClientID: "spiffe://td/ns/shop/sa/web", Service: "shop/cart:80", Route: "items", Cluster: "cart",
		Upstream: ap("10.244.2.5:8080"), Method: "GET", Path: "/items/42", Proto: "HTTP/1.1", Code: 200, Tries: 1,
		Start: start, Duration: 3 * time.Millisecond,
	}
	sender.Record(rec)
	if err := sender.Flush(context.Background()); err == nil || !strings.Contains(err.Error(), "no state") {
		t.Fatalf("before a state: Flush = %v, want the agent's 503: no state yet", err)
	}

	cart := &model.Workload{Name: "cart-1", Namespace: "shop", SPIFFEID: "spiffe://td/ns/shop/sa/cart"}
	enricher.SetState([]model.Service{{Name: "shop/cart:80", VIP: netip.MustParseAddr("10.96.0.10"), Port: 80, Protocol: model.TCP,
		L7: &model.L7{Clusters: []model.Cluster{{Name: "cart", Endpoints: []model.Endpoint{{Addr: netip.MustParseAddr("10.244.2.5"), Port: 8080, Workload: cart}}}}}}},
		[]identity.Workload{{Name: "web-1", Namespace: "shop", SPIFFEID: "spiffe://td/ns/shop/sa/web", Addrs: []netip.Addr{netip.MustParseAddr("10.244.1.4")}}})
	sink.stateKnown()
	denied := rec
	denied.Upstream, denied.Code, denied.Denied = netip.AddrPort{}, 403, &l7.Verdict{Policy: "shop/cart-http"}
	sender.Record(denied)
	if err := sender.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	got := store.Last(0, flow.Filter{Event: flow.EventRequest})
	if len(got) != 2 {
		t.Fatalf("stored %d request flows, want 2: %+v", len(got), got)
	}
	if f := got[0]; f.Source.Workload != "web-1" || f.Destination.Workload != "cart-1" || f.Service.Name != "shop/cart" ||
		f.HTTP.Code != 200 || f.Reporter != flow.ReporterProxy || f.Duration != 3*time.Millisecond {
		t.Errorf("first request flow %+v (http %+v)", f, f.HTTP)
	}
	if f := got[1]; f.Verdict != flow.VerdictDenied || f.Reason != "http-policy" || f.Policy != "shop/cart-http#default" {
		t.Errorf("denied request flow %+v", f)
	}

	// A batch with one bad line is refused whole.
	resp, err := client.Post("http://agent"+l7.RecordsPath, "application/x-ndjson",
		strings.NewReader(`{"v":1,"method":"GET","path":"/","proto":"HTTP/1.1","code":200,"start":"2026-03-01T12:00:00Z","duration_ns":1}`+"\n{\n"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || store.Stats().Total != 2 {
		t.Errorf("bad batch: %d, %d flows stored; want 400 and still 2", resp.StatusCode, store.Stats().Total)
	}

	srv := httptest.NewServer(mets.Handler())
	defer srv.Close()
	mresp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(mresp.Body)
	mresp.Body.Close()
	for _, want := range []string{
		`sluice_requests_total{destination_principal="spiffe://td/ns/shop/sa/cart",destination_service="shop/cart",destination_workload="cart-1",destination_workload_namespace="shop",grpc_response_status="",reporter="proxy",request_protocol="http",response_code="200",source_principal="spiffe://td/ns/shop/sa/web",source_workload="web-1",source_workload_namespace="shop"} 1`,
		`response_code="403"`,
		`sluice_request_duration_seconds_bucket{destination_principal="spiffe://td/ns/shop/sa/cart",destination_service="shop/cart",destination_workload="cart-1",destination_workload_namespace="shop",grpc_response_status="",reporter="proxy",request_protocol="http",response_code="200",source_principal="spiffe://td/ns/shop/sa/web",source_workload="web-1",source_workload_namespace="shop",le="0.005"} 1`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	var stdout, stderr syncBuffer
	if err := run(context.Background(), &stdout, &stderr, "observe", "--socket", path, "--event", "request", "--http-code", "4xx"); err != nil {
		t.Fatal(err)
	}
	if out := stdout.String(); strings.Count(out, "\n") != 1 ||
		!strings.Contains(out, " request shop/web-1 -> shop/cart (10.96.0.10:80) -> - denied GET /items/42 403 dur=3ms policy=shop/cart-http#default reason=http-policy") {
		t.Errorf("observe --event request --http-code 4xx printed:\n%s", out)
	}
}
