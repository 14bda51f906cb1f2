package flow_test

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/sockops/flow"
)

// webToCart is shop/web calling cart's VIP, answered by shop/cart-1.
var webToCart = flow.Flow{
	Time:     t0,
	Event:    flow.EventOpen,
	Verdict:  flow.VerdictAllowed,
	Protocol: "tcp",
	Source: flow.Peer{Workload: "web", Namespace: "shop", Identity: "spiffe://td/ns/shop/sa/web",
		Address: netip.MustParseAddrPort("10.244.1.4:43210")},
	Service: &flow.Service{Name: "cart", VIP: netip.MustParseAddrPort("10.96.0.10:80")},
	Destination: flow.Peer{Workload: "cart-1", Namespace: "store", Identity: "spiffe://td/ns/store/sa/cart",
		Address: netip.MustParseAddrPort("10.244.1.5:8080")},
}

func TestFilterMatch(t *testing.T) {
	direct := webToCart
	direct.Service = nil
	req := webToCart
	req.Event, req.Protocol = flow.EventRequest, "http"
	req.HTTP = &flow.HTTP{Method: "GET", Path: "/items", Code: 503}
	tests := []struct {
		name string
		fl   flow.Filter
		f    flow.Flow
		want bool
	}{
		{"zero filter", flow.Filter{}, webToCart, true},
		{"zero filter, zero flow", flow.Filter{}, flow.Flow{}, true},
		{"from workload name", flow.Filter{FromWorkload: "web"}, webToCart, true},
		{"from workload qualified", flow.Filter{FromWorkload: "shop/web"}, webToCart, true},
		{"from workload other namespace", flow.Filter{FromWorkload: "store/web"}, webToCart, false},
		{"from workload is not the destination", flow.Filter{FromWorkload: "cart-1"}, webToCart, false},
		{"from workload prefix is not a match", flow.Filter{FromWorkload: "we"}, webToCart, false},
		{"to workload name", flow.Filter{ToWorkload: "cart-1"}, webToCart, true},
		{"to workload qualified", flow.Filter{ToWorkload: "store/cart-1"}, webToCart, true},
		{"to workload wrong namespace", flow.Filter{ToWorkload: "shop/cart-1"}, webToCart, false},
		{"namespace of source", flow.Filter{Namespace: "shop"}, webToCart, true},
		{"namespace of destination", flow.Filter{Namespace: "store"}, webToCart, true},
		{"namespace of neither", flow.Filter{Namespace: "data"}, webToCart, false},
		{"to service", flow.Filter{ToService: "cart"}, webToCart, true},
		{"to other service", flow.Filter{ToService: "web"}, webToCart, false},
		{"to service, dialed directly", flow.Filter{ToService: "cart"}, direct, false},
		{"identity exact", flow.Filter{FromIdentity: "spiffe://td/ns/shop/sa/web"}, webToCart, true},
		{"identity exact is not a prefix", flow.Filter{FromIdentity: "spiffe://td/ns/shop"}, webToCart, false},
		{"identity prefix", flow.Filter{FromIdentity: "spiffe://td/ns/shop/*"}, webToCart, true},
		{"identity prefix of destination only", flow.Filter{FromIdentity: "spiffe://td/ns/store/*"}, webToCart, false},
		{"identity star matches all", flow.Filter{FromIdentity: "spiffe://*"}, webToCart, true},
		{"verdict", flow.Filter{Verdict: flow.VerdictAllowed}, webToCart, true},
		{"other verdict", flow.Filter{Verdict: flow.VerdictDenied}, webToCart, false},
		{"backend port", flow.Filter{Port: 8080}, webToCart, true},
		{"service port", flow.Filter{Port: 80}, webToCart, true},
		{"source port is not matched", flow.Filter{Port: 43210}, webToCart, false},
		{"service port, dialed directly", flow.Filter{Port: 80}, direct, false},
		{"since equal", flow.Filter{Since: t0}, webToCart, true},
		{"since after", flow.Filter{Since: t0.Add(time.Nanosecond)}, webToCart, false},
		{"event", flow.Filter{Event: flow.EventOpen}, webToCart, true},
		{"other event", flow.Filter{Event: flow.EventRequest}, webToCart, false},
		{"request event", flow.Filter{Event: flow.EventRequest}, req, true},
		{"method", flow.Filter{HTTPMethod: "GET"}, req, true},
		{"method in another case", flow.Filter{HTTPMethod: "get"}, req, true},
		{"other method", flow.Filter{HTTPMethod: "POST"}, req, false},
		{"method of a connection", flow.Filter{HTTPMethod: "GET"}, webToCart, false},
		{"code", flow.Filter{HTTPCode: "503"}, req, true},
		{"other code", flow.Filter{HTTPCode: "500"}, req, false},
		{"code class", flow.Filter{HTTPCode: "5xx"}, req, true},
		{"other code class", flow.Filter{HTTPCode: "2xx"}, req, false},
		{"code of a connection", flow.Filter{HTTPCode: "5xx"}, webToCart, false},
		{"all fields", flow.Filter{FromWorkload: "shop/web", ToWorkload: "cart-1", Namespace: "store", ToService: "cart",
			FromIdentity: "spiffe://td/*", Verdict: flow.VerdictAllowed, Port: 80, Since: t0.Add(-time.Second),
			Event: flow.EventRequest, HTTPMethod: "GET", HTTPCode: "5xx"}, req, true},
		{"all fields but one", flow.Filter{FromWorkload: "shop/web", ToWorkload: "cart-1", Namespace: "store", ToService: "cart",
			FromIdentity: "spiffe://td/*", Verdict: flow.VerdictAudit, Port: 80}, webToCart, false},
	}
	for _, tt := range tests {
		if got := tt.fl.Match(tt.f); got != tt.want {
			t.Errorf("%s: Match = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestParseVerdict(t *testing.T) {
	for _, v := range []flow.Verdict{flow.VerdictAllowed, flow.VerdictDenied, flow.VerdictAudit} {
		if got, err := flow.ParseVerdict(string(v)); err != nil || got != v {
			t.Errorf("ParseVerdict(%q) = %q, %v", v, got, err)
		}
	}
	for _, bad := range []string{"", "allow", "DENIED", "drop"} {
		_, err := flow.ParseVerdict(bad)
		if err == nil {
			t.Errorf("ParseVerdict(%q) succeeded", bad)
			continue
		}
		for _, want := range []string{`"` + bad + `"`, "allowed", "denied", "audit"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("ParseVerdict(%q) error %q does not mention %s", bad, err, want)
			}
		}
	}
}

func TestParseEvent(t *testing.T) {
	for _, e := range []flow.Event{flow.EventOpen, flow.EventClose, flow.EventDeny, flow.EventTerminate, flow.EventRequest} {
		if got, err := flow.ParseEvent(string(e)); err != nil || got != e {
			t.Errorf("ParseEvent(%q) = %q, %v", e, got, err)
		}
	}
	_, err := flow.ParseEvent("requests")
	if err == nil || !strings.Contains(err.Error(), `"requests"`) || !strings.Contains(err.Error(), "request") {
		t.Errorf("ParseEvent(requests) error = %v, want one naming the value and the events", err)
	}
}

func TestCheckHTTPFilters(t *testing.T) {
	tests := []struct {
		check func(string) error
		in    string
		ok    bool
	}{
		{flow.CheckHTTPCode, "200", true},
		{flow.CheckHTTPCode, "5xx", true},
		{flow.CheckHTTPCode, "1xx", true},
		{flow.CheckHTTPCode, "0", true},
		{flow.CheckHTTPCode, "6xx", false},
		{flow.CheckHTTPCode, "5XX", false},
		{flow.CheckHTTPCode, "99", false},
		{flow.CheckHTTPCode, "600", false},
		{flow.CheckHTTPCode, "0200", false},
		{flow.CheckHTTPCode, "ok", false},
		{flow.CheckHTTPMethod, "GET", true},
		{flow.CheckHTTPMethod, "purge", true},
		{flow.CheckHTTPMethod, "GET POST", false},
		{flow.CheckHTTPMethod, "", false},
	}
	for _, tt := range tests {
		err := tt.check(tt.in)
		if (err == nil) != tt.ok {
			t.Errorf("check(%q) = %v, want ok %v", tt.in, err, tt.ok)
		}
		if err != nil && !strings.Contains(err.Error(), `"`+tt.in+`"`) {
			t.Errorf("check(%q) error %q does not name the value", tt.in, err)
		}
	}
}

func TestCheckWorkloadAndIdentity(t *testing.T) {
	tests := []struct {
		check func(string) error
		in    string
		ok    bool
	}{
		{flow.CheckWorkload, "web", true},
		{flow.CheckWorkload, "shop/web", true},
		{flow.CheckWorkload, "", false},
		{flow.CheckWorkload, "shop/", false},
		{flow.CheckWorkload, "/web", false},
		{flow.CheckWorkload, "a/b/c", false},
		{flow.CheckIdentity, "spiffe://td/ns/shop/sa/web", true},
		{flow.CheckIdentity, "spiffe://td/ns/shop/*", true},
		{flow.CheckIdentity, "td/ns/shop", false},
		{flow.CheckIdentity, "spiffe://td/*/sa/web", false},
	}
	for _, tt := range tests {
		err := tt.check(tt.in)
		if (err == nil) != tt.ok {
			t.Errorf("check(%q) = %v, want ok %v", tt.in, err, tt.ok)
		}
		if err != nil && !strings.Contains(err.Error(), tt.in) {
			t.Errorf("check(%q) error %q does not name the value", tt.in, err)
		}
	}
}
