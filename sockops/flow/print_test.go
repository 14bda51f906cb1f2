package flow_test

import (
	"bytes"
	"encoding/json"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/sockops/flow"
)

// printed returns fixed flows: an open via a service on the fast path, its
// close, a direct connection policy denied, a request the L7 proxy served
// after a retry, and one HTTP policy denied.
func printed() []flow.Flow {
	open := webToCart
	open.Seq, open.Node, open.Reporter = 12, "node-a", flow.ReporterSource
	open.Time = time.Date(2026, 3, 1, 12, 0, 1, 123456789, time.UTC)
	open.FastPath = true
	closed := open
	closed.Seq, closed.Event = 13, flow.EventClose
	closed.Time = open.Time.Add(1503 * time.Millisecond)
	closed.BytesSent, closed.BytesRecv = 1234, 56789
	closed.Duration, closed.RTT, closed.Retransmits = 1503*time.Millisecond+217*time.Microsecond, 120*time.Microsecond+400, 2
	deny := flow.Flow{
		Seq: 14, Time: time.Date(2026, 3, 1, 12, 0, 3, 0, time.UTC), Node: "node-a",
		Event: flow.EventDeny, Reporter: flow.ReporterDestination, Verdict: flow.VerdictDenied,
		Reason: "policy", Policy: "store/cart-ingress#1", Protocol: "tcp",
		Source:      flow.Peer{Address: netip.MustParseAddrPort("192.168.5.9:51000")},
		Destination: flow.Peer{Workload: "cart-1", Namespace: "store", Address: netip.MustParseAddrPort("10.244.1.5:8080")},
	}
	req := webToCart
	req.Seq, req.Node, req.Event, req.Reporter, req.Protocol = 15, "node-a", flow.EventRequest, flow.ReporterProxy, "http"
	req.Time = time.Date(2026, 3, 1, 12, 0, 4, 0, time.UTC)
	req.Duration = 1234567 * time.Nanosecond
	req.HTTP = &flow.HTTP{Method: "GET", Path: "/items/42", Authority: "cart", Protocol: "HTTP/1.1", Code: 200,
		Route: "items", Cluster: "cart-v1", Tries: 2}
	denied := req
	denied.Seq, denied.Verdict, denied.Reason, denied.Policy = 16, flow.VerdictDenied, "http-policy", "store/cart-http#default"
	denied.Destination, denied.Duration = flow.Peer{}, 85*time.Microsecond
	denied.HTTP = &flow.HTTP{Method: "DELETE", Path: "/items/" + strings.Repeat("x", 20), PathTruncated: true, Protocol: "HTTP/2.0",
		Code: 403, GRPCStatus: "7", Error: "denied by policy"}
	return []flow.Flow{open, closed, deny, req, denied}
}

func print(t *testing.T, format flow.Format, opts flow.PrinterOptions, flows []flow.Flow) string {
	t.Helper()
	var b bytes.Buffer
	p := flow.NewPrinter(&b, format, opts)
	for _, f := range flows {
		if err := p.Print(f); err != nil {
			t.Fatalf("Print: %v", err)
		}
	}
	if err := p.Flush(); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	return b.String()
}

func TestPrintCompact(t *testing.T) {
	got := print(t, flow.FormatCompact, flow.PrinterOptions{}, printed())
	want := "" +
		"12:00:01.123 open  shop/web -> cart (10.96.0.10:80) -> store/cart-1 10.244.1.5:8080 allowed fast\n" +
		"12:00:02.626 close shop/web -> cart (10.96.0.10:80) -> store/cart-1 10.244.1.5:8080 allowed fast sent=1234 recv=56789 dur=1.503s rtt=120µs retrans=2\n" +
		"12:00:03.000 deny  192.168.5.9:51000 -> store/cart-1 10.244.1.5:8080 denied policy=store/cart-ingress#1 reason=policy\n" +
		"12:00:04.000 request shop/web -> cart (10.96.0.10:80) -> store/cart-1 10.244.1.5:8080 allowed GET /items/42 200 dur=1.235ms tries=2\n" +
		"12:00:04.000 request shop/web -> cart (10.96.0.10:80) -> - denied DELETE /items/xxxxxxxxxxxxxxxxxxxx... 403 grpc-status=7 dur=85µs policy=store/cart-http#default reason=http-policy error=\"denied by policy\"\n"
	if got != want {
		t.Errorf("compact output:\n%s\nwant:\n%s", got, want)
	}
}

func TestPrintLocation(t *testing.T) {
	zone := time.FixedZone("X", 2*60*60)
	got := print(t, flow.FormatCompact, flow.PrinterOptions{Location: zone}, printed()[:1])
	if !strings.HasPrefix(got, "14:00:01.123 open ") {
		t.Errorf("compact output in UTC+2 = %q, want it to start at 14:00:01.123", got)
	}
}

func TestPrintJSON(t *testing.T) {
	flows := printed()
	got := print(t, flow.FormatJSON, flow.PrinterOptions{}, flows)
	lines := strings.Split(strings.TrimSuffix(got, "\n"), "\n")
	if len(lines) != len(flows) {
		t.Fatalf("got %d lines, want %d:\n%s", len(lines), len(flows), got)
	}
	stable := []string{"seq", "time", "node", "event", "reporter", "verdict", "protocol", "source", "destination",
		"bytes_sent", "bytes_received", "duration_ns", "rtt_ns", "retransmits", "fast_path"}
	wantKeys := [][]string{
		append(slices.Clone(stable), "service"),
		append(slices.Clone(stable), "service"),
		append(slices.Clone(stable), "reason", "policy"),
		append(slices.Clone(stable), "service", "http"),
		append(slices.Clone(stable), "service", "http", "reason", "policy"),
	}
	for i, line := range lines {
		want, err := json.Marshal(flows[i])
		if err != nil {
			t.Fatal(err)
		}
		if line != string(want) {
			t.Errorf("line %d = %s, want json.Marshal's %s", i, line, want)
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("line %d is not a JSON object: %v", i, err)
		}
		keys := slices.Sorted(maps.Keys(m))
		if w := slices.Sorted(slices.Values(wantKeys[i])); !slices.Equal(keys, w) {
			t.Errorf("line %d keys %v, want %v", i, keys, w)
		}
	}
	// Values that the stable interface fixes: units and address forms.
	var m map[string]any
	if err := json.Unmarshal([]byte(lines[1]), &m); err != nil {
		t.Fatal(err)
	}
	checks := map[string]any{
		"seq": 13.0, "event": "close", "reporter": "source", "verdict": "allowed", "protocol": "tcp",
		"time": "2026-03-01T12:00:02.626456789Z", "bytes_sent": 1234.0, "bytes_received": 56789.0,
		"duration_ns": 1503217000.0, "rtt_ns": 120400.0, "retransmits": 2.0, "fast_path": true,
	}
	for k, want := range checks {
		if m[k] != want {
			t.Errorf("%s = %v (%T), want %v", k, m[k], m[k], want)
		}
	}
	src := m["source"].(map[string]any)
	if src["address"] != "10.244.1.4:43210" || src["identity"] != "spiffe://td/ns/shop/sa/web" || src["workload"] != "web" || src["namespace"] != "shop" {
		t.Errorf("source = %v", src)
	}
	if svc := m["service"].(map[string]any); svc["name"] != "cart" || svc["vip"] != "10.96.0.10:80" {
		t.Errorf("service = %v", svc)
	}
	if dst := m["destination"].(map[string]any); dst["address"] != "10.244.1.5:8080" {
		t.Errorf("destination = %v", dst)
	}
	// Round trip: a client decodes what the agent prints.
	var back flow.Flow
	if err := json.Unmarshal([]byte(lines[1]), &back); err != nil {
		t.Fatal(err)
	}
	if back.Destination != flows[1].Destination || *back.Service != *flows[1].Service || back.Duration != flows[1].Duration || !back.Time.Equal(flows[1].Time) {
		t.Errorf("decoded %+v, want %+v", back, flows[1])
	}

	// A request's part, with the names the stable interface fixes.
	var req struct {
		Event    string         `json:"event"`
		Reporter string         `json:"reporter"`
		Protocol string         `json:"protocol"`
		Duration int64          `json:"duration_ns"`
		HTTP     map[string]any `json:"http"`
	}
	if err := json.Unmarshal([]byte(lines[3]), &req); err != nil {
		t.Fatal(err)
	}
	wantHTTP := map[string]any{"method": "GET", "path": "/items/42", "authority": "cart", "protocol": "HTTP/1.1",
		"code": 200.0, "route": "items", "cluster": "cart-v1", "tries": 2.0}
	if req.Event != "request" || req.Reporter != "proxy" || req.Protocol != "http" || req.Duration != 1234567 || !maps.Equal(req.HTTP, wantHTTP) {
		t.Errorf("request line %s;\nwant event request, reporter proxy, protocol http, duration_ns 1234567, http %v", lines[3], wantHTTP)
	}
	if err := json.Unmarshal([]byte(lines[4]), &req); err != nil {
		t.Fatal(err)
	}
	if req.HTTP["path_truncated"] != true || req.HTTP["error"] != "denied by policy" || req.HTTP["code"] != 403.0 {
		t.Errorf("denied request's http part %v", req.HTTP)
	}
	if err := json.Unmarshal([]byte(lines[4]), &back); err != nil {
		t.Fatal(err)
	}
	if back.HTTP == nil || *back.HTTP != *flows[4].HTTP {
		t.Errorf("decoded http %+v, want %+v", back.HTTP, flows[4].HTTP)
	}
}

func TestPrintTable(t *testing.T) {
	got := print(t, flow.FormatTable, flow.PrinterOptions{}, printed())
	want := "" +
		"TIME          EVENT    SOURCE             SERVICE             DESTINATION                   VERDICT  SENT  RECEIVED  DURATION  RTT    FAST  POLICY                   REQUEST\n" +
		"12:00:01.123  open     shop/web           cart 10.96.0.10:80  store/cart-1 10.244.1.5:8080  allowed  -     -         -         -      yes   -                        -\n" +
		"12:00:02.626  close    shop/web           cart 10.96.0.10:80  store/cart-1 10.244.1.5:8080  allowed  1234  56789     1.503s    120µs  yes   -                        -\n" +
		"12:00:03.000  deny     192.168.5.9:51000  -                   store/cart-1 10.244.1.5:8080  denied   -     -         -         -      -     store/cart-ingress#1     -\n" +
		"12:00:04.000  request  shop/web           cart 10.96.0.10:80  store/cart-1 10.244.1.5:8080  allowed  -     -         1.235ms   -      -     -                        GET /items/42 200\n" +
		"12:00:04.000  request  shop/web           cart 10.96.0.10:80  -                             denied   -     -         85µs      -      -     store/cart-http#default  DELETE /items/xxxxxxxxxxxxxxxxxxxx... 403 error=\"denied by policy\"\n"
	if got != want {
		t.Errorf("table output:\n%s\nwant:\n%s", got, want)
	}
	if got := print(t, flow.FormatTable, flow.PrinterOptions{}, nil); !strings.HasPrefix(got, "TIME ") || strings.Count(got, "\n") != 1 {
		t.Errorf("empty table = %q, want the header alone", got)
	}
}

// A streamed table writes each row at Print, with the header once, and
// its columns line up across rows.
func TestPrintTableStream(t *testing.T) {
	var b bytes.Buffer
	p := flow.NewPrinter(&b, flow.FormatTable, flow.PrinterOptions{Stream: true})
	if err := p.Flush(); err != nil { // the header, before any flow arrives
		t.Fatal(err)
	}
	if !strings.HasPrefix(b.String(), "TIME ") || strings.Count(b.String(), "\n") != 1 {
		t.Fatalf("after the first Flush: %q, want the header", b.String())
	}
	for i, f := range printed() {
		if err := p.Print(f); err != nil {
			t.Fatal(err)
		}
		if n := strings.Count(b.String(), "\n"); n != i+2 {
			t.Fatalf("after Print #%d: %d lines, want %d", i+1, n, i+2)
		}
	}
	if err := p.Flush(); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")
	if strings.Count(b.String(), "TIME") != 1 {
		t.Errorf("header printed more than once:\n%s", b.String())
	}
	// Every row's verdict starts under the VERDICT header.
	at := strings.Index(lines[0], "VERDICT")
	for i, v := range []string{"allowed", "allowed", "denied", "allowed", "denied"} {
		if got := strings.Index(lines[i+1], v); got != at {
			t.Errorf("row %d: %s at byte %d, want %d under VERDICT:\n%s", i+1, v, got, at, b.String())
		}
	}
}

func TestParseFormat(t *testing.T) {
	for _, f := range []flow.Format{flow.FormatTable, flow.FormatCompact, flow.FormatJSON} {
		if got, err := flow.ParseFormat(string(f)); err != nil || got != f {
			t.Errorf("ParseFormat(%q) = %q, %v", f, got, err)
		}
	}
	_, err := flow.ParseFormat("yaml")
	if err == nil || !strings.Contains(err.Error(), `"yaml"`) || !strings.Contains(err.Error(), "compact") {
		t.Errorf("ParseFormat(yaml) error = %v, want one naming the value and the formats", err)
	}
}
