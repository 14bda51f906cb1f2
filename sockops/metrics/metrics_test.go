package metrics_test

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sluice-mesh/sluice/sockops/flow"
	"github.com/sluice-mesh/sluice/sockops/metrics"
	"github.com/sluice-mesh/sluice/sockops/observe"
)

var (
	frontend = flow.Peer{
		Workload:  "frontend",
		Namespace: "shop",
		Identity:  "spiffe://example.org/ns/shop/sa/frontend",
		Address:   netip.MustParseAddrPort("10.0.0.5:41000"),
	}
	cart = flow.Peer{
		Workload:  "cart",
		Namespace: "shop",
		Identity:  "spiffe://example.org/ns/shop/sa/cart",
		Address:   netip.MustParseAddrPort("10.0.1.7:8080"),
	}
	cartService = &flow.Service{
		Name: "cart.shop.svc.cluster.local",
		VIP:  netip.MustParseAddrPort("10.96.0.20:80"),
	}
)

// record is a frontend → cart flow through cart's service.
func record(ev flow.Event, v flow.Verdict) flow.Flow {
	return flow.Flow{
		Time:        time.Unix(1700000000, 0),
		Node:        "node-a",
		Event:       ev,
		Reporter:    flow.ReporterSource,
		Verdict:     v,
		Protocol:    "tcp",
		Source:      frontend,
		Service:     cartService,
		Destination: cart,
	}
}

func closed(sent, recv uint64, fastPath bool) flow.Flow {
	f := record(flow.EventClose, flow.VerdictAllowed)
	f.BytesSent, f.BytesRecv, f.FastPath = sent, recv, fastPath
	return f
}

// serve runs m's server on a free loopback port until the test ends and
// returns its base URL.
func serve(t *testing.T, m *metrics.Metrics, ready metrics.Readiness) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.ServeListener(ctx, ln, ready) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return "http://" + ln.Addr().String()
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

// samples scrapes url and returns each sample line's value, keyed by the
// series as the text format prints it: name{label="value",...}.
func samples(t *testing.T, url string) map[string]float64 {
	t.Helper()
	code, body := get(t, url)
	if code != http.StatusOK {
		t.Fatalf("GET %s: %d %s", url, code, body)
	}
	out := make(map[string]float64)
	for _, line := range strings.Split(body, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("sample %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out
}

// sum adds the values of every series of the metric called name.
func sum(s map[string]float64, name string) float64 {
	var total float64
	for series, v := range s {
		if series == name || strings.HasPrefix(series, name+"{") {
			total += v
		}
	}
	return total
}

const flowHelp = `
# HELP sluice_tcp_connections_opened_total TCP connections established and allowed (including audit: allowed, but a dry-run rule would deny them).
# TYPE sluice_tcp_connections_opened_total counter
# HELP sluice_tcp_connections_closed_total TCP connections closed.
# TYPE sluice_tcp_connections_closed_total counter
# HELP sluice_tcp_sent_bytes_total Bytes sent from source to destination over TCP connections, counted when they close.
# TYPE sluice_tcp_sent_bytes_total counter
# HELP sluice_tcp_received_bytes_total Bytes received by the source from the destination over TCP connections, counted when they close.
# TYPE sluice_tcp_received_bytes_total counter
# HELP sluice_tcp_connections_denied_total TCP connections refused by policy.
# TYPE sluice_tcp_connections_denied_total counter
# HELP sluice_tcp_connections_audit_denied_total TCP connections a dry-run (audit) policy rule would have refused; they were allowed.
# TYPE sluice_tcp_connections_audit_denied_total counter
# HELP sluice_metrics_label_sets_overflowed_total Flow records counted in an overflow series because their counter already held its cap of label sets.
# TYPE sluice_metrics_label_sets_overflowed_total counter
`

var flowNames = []string{
	"sluice_tcp_connections_opened_total",
	"sluice_tcp_connections_closed_total",
	"sluice_tcp_sent_bytes_total",
	"sluice_tcp_received_bytes_total",
	"sluice_tcp_connections_denied_total",
	"sluice_tcp_connections_audit_denied_total",
	"sluice_metrics_label_sets_overflowed_total",
}

const noOverflow = `
sluice_metrics_label_sets_overflowed_total{metric="sluice_requests_total"} 0
sluice_metrics_label_sets_overflowed_total{metric="sluice_tcp_connections_audit_denied_total"} 0
sluice_metrics_label_sets_overflowed_total{metric="sluice_tcp_connections_closed_total"} 0
sluice_metrics_label_sets_overflowed_total{metric="sluice_tcp_connections_denied_total"} 0
sluice_metrics_label_sets_overflowed_total{metric="sluice_tcp_connections_opened_total"} 0
`

// fc are the labels of a frontend → cart flow through cart's service.
var fc = map[string]string{
	"reporter":                       "source",
	"source_workload":                "frontend",
	"source_workload_namespace":      "shop",
	"source_principal":               "spiffe://example.org/ns/shop/sa/frontend",
	"destination_service":            "cart.shop.svc.cluster.local",
	"destination_workload":           "cart",
	"destination_workload_namespace": "shop",
	"destination_principal":          "spiffe://example.org/ns/shop/sa/cart",
}

// labels renders base with the name, value pairs of kv set, sorted by
// name as /metrics prints them.
func labels(base map[string]string, kv ...string) string {
	m := maps.Clone(base)
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	var pairs []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		pairs = append(pairs, k+"="+strconv.Quote(m[k]))
	}
	return "{" + strings.Join(pairs, ",") + "}"
}

func TestObserveCountsEachFlowOnce(t *testing.T) {
	m := metrics.New("node-a", nil)

	udp := closed(1, 1, false)
	udp.Protocol = "udp"
	for _, f := range []flow.Flow{
		record(flow.EventOpen, flow.VerdictAllowed),
		record(flow.EventOpen, flow.VerdictAllowed),
		record(flow.EventOpen, flow.VerdictAudit),
		record(flow.EventOpen, flow.VerdictDenied), // not an open connection
		closed(100, 2000, false),
		closed(300, 4000, false),
		closed(5, 7, true),
		closed(0, 0, true),
		record(flow.EventDeny, flow.VerdictDenied),
		record(flow.EventDeny, flow.VerdictDenied),
		record(flow.EventDeny, flow.VerdictAudit),
		record(flow.EventTerminate, flow.VerdictDenied), // no counter
		udp, // not TCP
	} {
		m.Observe(f)
	}

	want := flowHelp + noOverflow + `
sluice_tcp_connections_opened_total` + labels(fc) + ` 3
sluice_tcp_connections_closed_total` + labels(fc, "fast_path", "false") + ` 2
sluice_tcp_connections_closed_total` + labels(fc, "fast_path", "true") + ` 2
sluice_tcp_sent_bytes_total` + labels(fc, "fast_path", "false") + ` 400
sluice_tcp_sent_bytes_total` + labels(fc, "fast_path", "true") + ` 5
sluice_tcp_received_bytes_total` + labels(fc, "fast_path", "false") + ` 6000
sluice_tcp_received_bytes_total` + labels(fc, "fast_path", "true") + ` 7
sluice_tcp_connections_denied_total` + labels(fc) + ` 2
sluice_tcp_connections_audit_denied_total` + labels(fc) + ` 1
`
	url := serve(t, m, nil) + "/metrics"
	if err := testutil.ScrapeAndCompare(url, strings.NewReader(want), flowNames...); err != nil {
		t.Error(err)
	}
}

func TestObserveLabels(t *testing.T) {
	direct := record(flow.EventDeny, flow.VerdictDenied)
	direct.Service = nil // the client dialed the workload's address

	anonymous := record(flow.EventDeny, flow.VerdictDenied)
	anonymous.Reporter = flow.ReporterDestination
	anonymous.Source = flow.Peer{Address: netip.MustParseAddrPort("192.168.9.9:5000")}
	anonymous.Service = &flow.Service{VIP: cartService.VIP}
	anonymous.Destination.Identity = ""

	m := metrics.New("node-a", nil)
	m.Observe(direct)
	m.Observe(anonymous)

	want := `
# HELP sluice_tcp_connections_denied_total TCP connections refused by policy.
# TYPE sluice_tcp_connections_denied_total counter
sluice_tcp_connections_denied_total` + labels(fc, "destination_service", "unknown") + ` 1
sluice_tcp_connections_denied_total` + labels(fc,
		"reporter", "destination",
		"source_workload", "unknown",
		"source_workload_namespace", "unknown",
		"source_principal", "unknown",
		"destination_service", "unknown",
		"destination_principal", "unknown") + ` 1
`
	url := serve(t, m, nil) + "/metrics"
	if err := testutil.ScrapeAndCompare(url, strings.NewReader(want), "sluice_tcp_connections_denied_total"); err != nil {
		t.Error(err)
	}
	_, body := get(t, url)
	for _, addr := range []string{"10.0.0.5", "10.0.1.7", "10.96.0.20", "192.168.9.9", "41000", "8080"} {
		if strings.Contains(body, addr) {
			t.Errorf("/metrics shows %s; addresses and ports are not labels", addr)
		}
	}
}

func TestCardinalityCapFoldsIntoOverflow(t *testing.T) {
	m := metrics.New("node-a", nil, metrics.WithMaxLabelSets(2))
	from := func(workload string, f flow.Flow) flow.Flow {
		f.Source.Workload = workload
		return f
	}
	for _, w := range []string{"w0", "w1", "w2", "w3", "w4", "w0"} {
		m.Observe(from(w, record(flow.EventOpen, flow.VerdictAllowed)))
	}
	m.Observe(from("w0", closed(10, 20, false)))
	m.Observe(from("w1", closed(10, 20, true)))
	m.Observe(from("w2", closed(10, 20, true)))
	m.Observe(from("w3", closed(1, 2, true)))
	m.Observe(from("w4", closed(1, 2, false)))

	folded := maps.Clone(fc)
	for k := range folded {
		if k != "reporter" {
			folded[k] = "overflow"
		}
	}
	want := flowHelp + `
sluice_tcp_connections_opened_total` + labels(fc, "source_workload", "w0") + ` 2
sluice_tcp_connections_opened_total` + labels(fc, "source_workload", "w1") + ` 1
sluice_tcp_connections_opened_total` + labels(folded) + ` 3
sluice_tcp_connections_closed_total` + labels(fc, "source_workload", "w0", "fast_path", "false") + ` 1
sluice_tcp_connections_closed_total` + labels(fc, "source_workload", "w1", "fast_path", "true") + ` 1
sluice_tcp_connections_closed_total` + labels(folded, "fast_path", "true") + ` 2
sluice_tcp_connections_closed_total` + labels(folded, "fast_path", "false") + ` 1
sluice_tcp_sent_bytes_total` + labels(fc, "source_workload", "w0", "fast_path", "false") + ` 10
sluice_tcp_sent_bytes_total` + labels(fc, "source_workload", "w1", "fast_path", "true") + ` 10
sluice_tcp_sent_bytes_total` + labels(folded, "fast_path", "true") + ` 11
sluice_tcp_sent_bytes_total` + labels(folded, "fast_path", "false") + ` 1
sluice_tcp_received_bytes_total` + labels(fc, "source_workload", "w0", "fast_path", "false") + ` 20
sluice_tcp_received_bytes_total` + labels(fc, "source_workload", "w1", "fast_path", "true") + ` 20
sluice_tcp_received_bytes_total` + labels(folded, "fast_path", "true") + ` 22
sluice_tcp_received_bytes_total` + labels(folded, "fast_path", "false") + ` 2
sluice_metrics_label_sets_overflowed_total{metric="sluice_requests_total"} 0
sluice_metrics_label_sets_overflowed_total{metric="sluice_tcp_connections_audit_denied_total"} 0
sluice_metrics_label_sets_overflowed_total{metric="sluice_tcp_connections_closed_total"} 3
sluice_metrics_label_sets_overflowed_total{metric="sluice_tcp_connections_denied_total"} 0
sluice_metrics_label_sets_overflowed_total{metric="sluice_tcp_connections_opened_total"} 3
`
	url := serve(t, m, nil) + "/metrics"
	if err := testutil.ScrapeAndCompare(url, strings.NewReader(want), flowNames...); err != nil {
		t.Error(err)
	}
}

func TestObserveConcurrently(t *testing.T) {
	const (
		goroutines = 8
		each       = 2000
		workloads  = 50
		limit      = 20
	)
	m := metrics.New("node-a", nil, metrics.WithMaxLabelSets(limit))
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range each {
				f := closed(3, 5, i%2 == 0)
				f.Source.Workload = fmt.Sprintf("w%d", (g+i)%workloads)
				m.Observe(f)
			}
		})
	}
	wg.Wait()

	s := samples(t, serve(t, m, nil)+"/metrics")
	const n = goroutines * each
	for name, want := range map[string]float64{
		"sluice_tcp_connections_closed_total": n,
		"sluice_tcp_sent_bytes_total":         3 * n,
		"sluice_tcp_received_bytes_total":     5 * n,
	} {
		if got := sum(s, name); got != want {
			t.Errorf("%s sums to %v, want %v", name, got, want)
		}
	}
	series, foldedCount := 0, 0.0
	for k, v := range s {
		if strings.HasPrefix(k, "sluice_tcp_connections_closed_total{") {
			if strings.Contains(k, `source_workload="overflow"`) {
				foldedCount += v
			} else {
				series++
			}
		}
	}
	if series != limit {
		t.Errorf("%d closed series below the cap, want %d", series, limit)
	}
	overflowed := s[`sluice_metrics_label_sets_overflowed_total{metric="sluice_tcp_connections_closed_total"}`]
	if overflowed != foldedCount || overflowed == 0 {
		t.Errorf("overflowed_total %v, overflow series count %v; want them equal and above 0", overflowed, foldedCount)
	}
}

// request is a frontend → cart request through the L7 proxy.
func request(code int, d time.Duration, grpc bool) flow.Flow {
	f := record(flow.EventRequest, flow.VerdictAllowed)
	f.Reporter, f.Protocol, f.Duration = flow.ReporterProxy, "http", d
	if grpc {
		f.Protocol = "grpc"
	}
	f.HTTP = &flow.HTTP{Method: "GET", Path: "/items", Protocol: "HTTP/1.1", Code: code, Tries: 1}
	return f
}

// rq are the labels of a frontend → cart request.
var rq = func() map[string]string {
	m := maps.Clone(fc)
	m["reporter"], m["request_protocol"], m["response_code"], m["grpc_response_status"] = "proxy", "http", "200", ""
	return m
}()

func TestObserveRequests(t *testing.T) {
	m := metrics.New("node-a", nil)
	denied := request(403, 100*time.Microsecond, false)
	denied.Verdict, denied.Destination = flow.VerdictDenied, flow.Peer{}
	noHTTP := request(200, time.Millisecond, false)
	noHTTP.HTTP = nil // not a request record: not counted
	grpcStatus := func(status string) flow.Flow {
		f := request(200, 20*time.Millisecond, true)
		f.HTTP.GRPCStatus = status
		return f
	}
	for _, f := range []flow.Flow{
		request(200, 300*time.Microsecond, false),
		request(200, 2*time.Millisecond, false),
		request(200, 40*time.Second, false),
		request(503, 7*time.Millisecond, false),
		request(200, 20*time.Millisecond, true), // no grpc-status
		grpcStatus("0"),
		grpcStatus("14"),
		grpcStatus("14"),
		grpcStatus("not a number"), // as none
		denied,
		noHTTP,
	} {
		m.Observe(f)
	}

	buckets := func(l string, counts ...int) string {
		var b strings.Builder
		for i, le := range []string{"0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "30", "+Inf"} {
			fmt.Fprintf(&b, "sluice_request_duration_seconds_bucket%s %d\n", strings.Replace(l, "}", `,le="`+le+`"}`, 1), counts[i])
		}
		return b.String()
	}
	ok := labels(rq)
	unavailable := labels(rq, "response_code", "503")
	grpc := labels(rq, "request_protocol", "grpc")
	grpcOK := labels(rq, "request_protocol", "grpc", "grpc_response_status", "0")
	grpcUnavailable := labels(rq, "request_protocol", "grpc", "grpc_response_status", "14")
	forbidden := labels(rq, "response_code", "403", "destination_workload", "unknown",
		"destination_workload_namespace", "unknown", "destination_principal", "unknown")
	want := `
# HELP sluice_requests_total Requests the L7 proxy served, by response code, including those it answered itself (403 denied by HTTP policy, 503 no upstream, 499 client gone).
# TYPE sluice_requests_total counter
sluice_requests_total` + ok + ` 3
sluice_requests_total` + unavailable + ` 1
sluice_requests_total` + grpc + ` 2
sluice_requests_total` + grpcOK + ` 1
sluice_requests_total` + grpcUnavailable + ` 2
sluice_requests_total` + forbidden + ` 1
# HELP sluice_request_duration_seconds Time from a request's start at the L7 proxy to the end of its response.
# TYPE sluice_request_duration_seconds histogram
` + buckets(ok, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 3) + `sluice_request_duration_seconds_sum` + ok + ` 40.0023
sluice_request_duration_seconds_count` + ok + ` 3
` + buckets(unavailable, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1) + `sluice_request_duration_seconds_sum` + unavailable + ` 0.007
sluice_request_duration_seconds_count` + unavailable + ` 1
` + buckets(grpc, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2) + `sluice_request_duration_seconds_sum` + grpc + ` 0.04
sluice_request_duration_seconds_count` + grpc + ` 2
` + buckets(grpcOK, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1) + `sluice_request_duration_seconds_sum` + grpcOK + ` 0.02
sluice_request_duration_seconds_count` + grpcOK + ` 1
` + buckets(grpcUnavailable, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2) + `sluice_request_duration_seconds_sum` + grpcUnavailable + ` 0.04
sluice_request_duration_seconds_count` + grpcUnavailable + ` 2
` + buckets(forbidden, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1) + `sluice_request_duration_seconds_sum` + forbidden + ` 0.0001
sluice_request_duration_seconds_count` + forbidden + ` 1
`
	url := serve(t, m, nil) + "/metrics"
	if err := testutil.ScrapeAndCompare(url, strings.NewReader(want), "sluice_requests_total", "sluice_request_duration_seconds"); err != nil {
		t.Error(err)
	}
	// Request records count in no connection counter.
	s := samples(t, url)
	for _, name := range flowNames[:6] {
		if n := sum(s, name); n != 0 {
			t.Errorf("%s = %v after request records only", name, n)
		}
	}
}

// Past the cap, a request's label set folds into an overflow series that
// keeps its reporter, protocol and code, for the counter and the
// histogram alike.
func TestRequestsCardinalityCap(t *testing.T) {
	m := metrics.New("node-a", nil, metrics.WithMaxLabelSets(1))
	from := func(workload string, code int) flow.Flow {
		f := request(code, time.Millisecond, false)
		f.Source.Workload = workload
		return f
	}
	for _, f := range []flow.Flow{from("w0", 200), from("w1", 200), from("w2", 200), from("w3", 500), from("w0", 200)} {
		m.Observe(f)
	}
	folded := maps.Clone(rq)
	for k := range folded {
		if k != "reporter" && k != "request_protocol" && k != "response_code" && k != "grpc_response_status" {
			folded[k] = "overflow"
		}
	}
	s := samples(t, serve(t, m, nil)+"/metrics")
	for series, want := range map[string]float64{
		"sluice_requests_total" + labels(rq, "source_workload", "w0"):                              2,
		"sluice_requests_total" + labels(folded):                                                   2,
		"sluice_requests_total" + labels(folded, "response_code", "500"):                           1,
		"sluice_request_duration_seconds_count" + labels(folded):                                   2,
		"sluice_request_duration_seconds_count" + labels(folded, "response_code", "500"):           1,
		"sluice_request_duration_seconds_count" + labels(rq, "source_workload", "w0"):              2,
		`sluice_metrics_label_sets_overflowed_total{metric="sluice_requests_total"}`:               3,
		`sluice_metrics_label_sets_overflowed_total{metric="sluice_tcp_connections_opened_total"}`: 0,
	} {
		if got := s[series]; got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
	if n := sum(s, "sluice_requests_total"); n != 5 {
		t.Errorf("sluice_requests_total sums to %v, want 5", n)
	}
}

// Counting a request whose label set was seen allocates nothing.
func TestObserveRequestDoesNotAllocate(t *testing.T) {
	m := metrics.New("node-a", nil)
	f := request(200, time.Millisecond, false)
	m.Observe(f)
	if n := testing.AllocsPerRun(1000, func() { m.Observe(f) }); n != 0 {
		t.Errorf("Observe of a request allocates %v times", n)
	}
}

func BenchmarkObserve(b *testing.B) {
	b.Run("request", func(b *testing.B) {
		m := metrics.New("node-a", nil)
		f := request(200, 1200*time.Microsecond, false)
		b.ReportAllocs()
		for b.Loop() {
			m.Observe(f)
		}
	})
	b.Run("request-parallel", func(b *testing.B) {
		m := metrics.New("node-a", nil)
		f := request(200, 1200*time.Microsecond, false)
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				m.Observe(f)
			}
		})
	})
	b.Run("close", func(b *testing.B) {
		m := metrics.New("node-a", nil)
		f := closed(1500, 64000, true)
		b.ReportAllocs()
		for b.Loop() {
			m.Observe(f)
		}
	})
	b.Run("close-parallel", func(b *testing.B) {
		m := metrics.New("node-a", nil)
		f := closed(1500, 64000, true)
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				m.Observe(f)
			}
		})
	})
	b.Run("open-1000-label-sets", func(b *testing.B) {
		m := metrics.New("node-a", nil)
		flows := make([]flow.Flow, 1000)
		for i := range flows {
			flows[i] = record(flow.EventOpen, flow.VerdictAllowed)
			flows[i].Source.Workload = fmt.Sprintf("w%d", i)
		}
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			m.Observe(flows[i%len(flows)])
			i++
		}
	})
	b.Run("open-overflow", func(b *testing.B) {
		m := metrics.New("node-a", nil, metrics.WithMaxLabelSets(1))
		flows := make([]flow.Flow, 1000)
		for i := range flows {
			flows[i] = record(flow.EventOpen, flow.VerdictAllowed)
			flows[i].Source.Workload = fmt.Sprintf("w%d", i)
		}
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			m.Observe(flows[i%len(flows)])
			i++
		}
	})
}

// Label values come from names the agent does not control; client_golang
// panics on invalid UTF-8, so Observe and the health collector repair it.
func TestInvalidUTF8IsRepaired(t *testing.T) {
	m := metrics.New("node-a", func() observe.Status {
		return observe.Status{Maps: []observe.MapFill{{Name: "sl_\xff", Entries: 1, Capacity: 2}}}
	})
	f := record(flow.EventDeny, flow.VerdictDenied)
	f.Source.Workload = "front\xffend"
	m.Observe(f)

	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	s := samples(t, srv.URL)
	if got := s["sluice_tcp_connections_denied_total"+labels(fc, "source_workload", "front\uFFFDend")]; got != 1 {
		t.Errorf("denied with a repaired workload name = %v, want 1", got)
	}
	if got := s[`sluice_map_entries{map="sl_`+"\uFFFD"+`"}`]; got != 1 {
		t.Errorf("entries of a map with a repaired name = %v, want 1", got)
	}
}
