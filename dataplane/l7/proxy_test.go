package l7_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/dataplane/l7"
	"github.com/sluice-mesh/sluice/dataplane/model"
)

var vip = netip.MustParseAddrPort("10.96.0.10:80")

const clientIdentity = 7

// fixture is a proxy on a loopback listener whose connections all come
// from an identity-7 client of the service at vip.
type fixture struct {
	t       testing.TB
	proxy   *l7.Proxy
	addr    string
	accepts atomic.Int32

	mu         sync.Mutex
	records    []l7.RequestRecord // guarded by mu
	identities []uint32           // guarded by mu: of every upstream dial
}

// start serves services on a new proxy; o's Origin, Dial and Record are
// the fixture's unless set.
func start(t testing.TB, o l7.Options, services ...model.Service) *fixture {
	t.Helper()
	f := &fixture{t: t}
	if o.Origin == nil {
		o.Origin = func(_, remote netip.AddrPort) (l7.Origin, error) {
			return l7.Origin{Service: vip, Client: remote, Identity: clientIdentity}, nil
		}
	}
	if o.Dial == nil {
		var d net.Dialer
		o.Dial = func(ctx context.Context, addr netip.AddrPort, identity uint32) (net.Conn, error) {
			f.mu.Lock()
			f.identities = append(f.identities, identity)
			f.mu.Unlock()
			return d.DialContext(ctx, "tcp", addr.String())
		}
	}
	if o.Record == nil {
		o.Record = func(r l7.RequestRecord) {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.records = append(f.records, r)
		}
	}
	f.proxy = l7.New(o)
	cfg, err := l7.NewConfig(services, map[uint32]string{clientIdentity: "spiffe://test/ns/default/sa/client"})
	if err != nil {
		t.Fatal(err)
	}
	f.proxy.SetConfig(cfg)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.addr = l.Addr().String()
	done := make(chan error, 1)
	go func() { done <- f.proxy.Serve(&countingListener{l, &f.accepts}) }()
	t.Cleanup(func() {
		f.proxy.Close()
		if err := <-done; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	})
	return f
}

type countingListener struct {
	net.Listener
	n *atomic.Int32
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// waitRecords waits for n records: a request is recorded after its
// response ends, which the client may see first.
func (f *fixture) waitRecords(n int) []l7.RequestRecord {
	f.t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		f.mu.Lock()
		rs := append([]l7.RequestRecord(nil), f.records...)
		f.mu.Unlock()
		if len(rs) >= n {
			return rs
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("%d records, want %d: %+v", len(rs), n, rs)
		}
	}
}

// client returns an HTTP/1.1 client of the proxy.
func (f *fixture) client() *http.Client {
	tr := &http.Transport{}
	f.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// h2client returns an HTTP/2 client of the proxy (prior knowledge).
func (f *fixture) h2client() *http.Client {
	tr := &http.Transport{Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	f.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func (f *fixture) url(path string) string { return "http://" + f.addr + path }

type result struct {
	code int
	body string
	res  *http.Response
}

// get sends a request through c and reads the response.
func (f *fixture) do(c *http.Client, req *http.Request) result {
	f.t.Helper()
	res, err := c.Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		f.t.Fatalf("%s %s: body: %v", req.Method, req.URL, err)
	}
	return result{res.StatusCode, string(b), res}
}

// getAsync GETs path with c on a goroutine of its own; the result comes
// on the channel (the zero result, the error reported, if it fails).
func (f *fixture) getAsync(c *http.Client, path string) <-chan result {
	out := make(chan result, 1)
	go func() {
		res, err := c.Get(f.url(path))
		if err != nil {
			f.t.Error(err)
			out <- result{}
			return
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		out <- result{code: res.StatusCode, body: string(body)}
	}()
	return out
}

func (f *fixture) get(c *http.Client, path string, header ...string) result {
	f.t.Helper()
	req, err := http.NewRequest("GET", f.url(path), nil)
	if err != nil {
		f.t.Fatal(err)
	}
	req.Host = "web.shop"
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Add(header[i], header[i+1])
	}
	return f.do(c, req)
}

// service is an L7 service at vip: one virtual host for every authority,
// with routes, and clusters.
func service(routes []model.HTTPRoute, clusters ...model.Cluster) model.Service {
	return model.Service{
		Name: "web", VIP: vip.Addr(), Port: vip.Port(), Protocol: model.TCP,
		L7: &model.L7{
			Routes:   &model.HTTPRoutes{VirtualHosts: []model.VirtualHost{{Name: "all", Domains: []string{"*"}, Routes: routes}}},
			Clusters: clusters,
		},
	}
}

// cluster is a cluster of the default upstream protocol, HTTP/1.1.
func cluster(name string, eps ...model.Endpoint) model.Cluster {
	return model.Cluster{Name: name, Endpoints: eps}
}

// protoCluster is a cluster of upstream protocol p.
func protoCluster(name string, p model.UpstreamProtocol, eps ...model.Endpoint) model.Cluster {
	return model.Cluster{Name: name, Endpoints: eps, Protocol: p}
}

// endpoint is the endpoint at addr ("127.0.0.1:port" or an httptest URL).
func endpoint(t testing.TB, addr string) model.Endpoint {
	t.Helper()
	ap, err := netip.ParseAddrPort(strings.TrimPrefix(addr, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	return model.Endpoint{Addr: ap.Addr(), Port: ap.Port()}
}

// backend is an upstream server that counts its connections and requests.
type backend struct {
	*httptest.Server
	conns, requests atomic.Int32
}

// newBackend serves HTTP/1.1 only.
func newBackend(t testing.TB, h http.HandlerFunc) *backend {
	return startBackend(t, h, true, false)
}

// newH2Backend serves cleartext HTTP/2 with prior knowledge, and HTTP/1.1.
func newH2Backend(t *testing.T, h http.HandlerFunc) *backend {
	return startBackend(t, h, true, true)
}

// newH2OnlyBackend serves cleartext HTTP/2 with prior knowledge only.
func newH2OnlyBackend(t *testing.T, h http.HandlerFunc) *backend {
	return startBackend(t, h, false, true)
}

func startBackend(t testing.TB, h http.HandlerFunc, h1, h2 bool) *backend {
	b := &backend{}
	b.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.requests.Add(1)
		h(w, r)
	}))
	b.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			b.conns.Add(1)
		}
	}
	b.Config.Protocols = new(http.Protocols)
	b.Config.Protocols.SetHTTP1(h1)
	b.Config.Protocols.SetUnencryptedHTTP2(h2)
	b.Start()
	t.Cleanup(b.Close)
	return b
}

// echoLines answers each line of body with "echo <line>" as it comes,
// flushing the headers first and each answer after.
func echoLines(w http.ResponseWriter, body io.Reader) {
	w.(http.Flusher).Flush()
	br := bufio.NewReader(body)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		io.WriteString(w, "echo "+line)
		w.(http.Flusher).Flush()
	}
}

func text(s string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, s) }
}

// closedPort returns a loopback address nothing listens on.
func closedPort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func TestHTTP1KeepAlive(t *testing.T) {
	b := newBackend(t, text("hello"))
	f := start(t, l7.Options{}, service([]model.HTTPRoute{route("web", prefix("/"))}, cluster("web", endpoint(t, b.URL))))
	c := f.client()
	for range 2 {
		if r := f.get(c, "/x"); r.code != 200 || r.body != "hello" {
			t.Fatalf("got %d %q", r.code, r.body)
		}
	}
	if n := f.accepts.Load(); n != 1 {
		t.Errorf("proxy accepted %d connections, want 1", n)
	}
	if n := b.conns.Load(); n != 1 {
		t.Errorf("backend saw %d connections, want 1", n)
	}
	for _, r := range f.waitRecords(2) {
		want := l7.RequestRecord{
			Origin: r.Origin, ClientID: "spiffe://test/ns/default/sa/client", Service: "web", Route: "web", Cluster: "web",
			Upstream: netip.MustParseAddrPort(strings.TrimPrefix(b.URL, "http://")), Method: "GET", Authority: "web.shop",
			Path: "/x", Proto: "HTTP/1.1", Code: 200, Tries: 1, Start: r.Start, Duration: r.Duration,
		}
		if r != want {
			t.Errorf("record\n%+v, want\n%+v", r, want)
		}
		if r.Origin.Service != vip || r.Origin.Identity != clientIdentity {
			t.Errorf("record origin %+v", r.Origin)
		}
	}
}

// TestStreamingHTTP1 sends a chunked body and gets a chunked response,
// each part answered before the next is sent: both directions stream.
func TestStreamingHTTP1(t *testing.T) {
	var te atomic.Value
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		te.Store(strings.Join(r.TransferEncoding, ","))
		http.NewResponseController(w).EnableFullDuplex()
		w.WriteHeader(200)
		echoLines(w, r.Body)
	})
	f := start(t, l7.Options{}, service([]model.HTTPRoute{route("web", prefix("/"))}, cluster("web", endpoint(t, b.URL))))
	pr, pw := io.Pipe()
	defer pw.Close()
	req, _ := http.NewRequest("POST", f.url("/stream"), pr)
	got := make(chan *http.Response, 1)
	go func() {
		res, err := f.client().Do(req)
		if err != nil {
			t.Error(err)
		}
		got <- res
	}()
	var res *http.Response
	select {
	case res = <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("no response headers while the request body is open")
	}
	if res == nil {
		return
	}
	defer res.Body.Close()
	if len(res.TransferEncoding) != 1 || res.TransferEncoding[0] != "chunked" {
		t.Errorf("response Transfer-Encoding %v, want chunked", res.TransferEncoding)
	}
	br := bufio.NewReader(res.Body)
	for i := range 3 {
		fmt.Fprintf(pw, "part %d\n", i)
		line, err := br.ReadString('\n')
		if want := fmt.Sprintf("echo part %d\n", i); err != nil || line != want {
			t.Fatalf("read %q, %v; want %q", line, err, want)
		}
	}
	pw.Close()
	if rest, err := io.ReadAll(br); err != nil || len(rest) > 0 {
		t.Errorf("after the request ended: %q, %v", rest, err)
	}
	if got := te.Load(); got != "chunked" {
		t.Errorf("backend saw Transfer-Encoding %q, want chunked", got)
	}
}

// TestUpgrade passes a websocket-like upgrade through: after the 101, a
// raw byte stream both ways. An upgrade goes upstream over HTTP/1.1
// whatever the cluster's protocol: HTTP/2 has no Upgrade.
func TestUpgrade(t *testing.T) {
	for _, tc := range []struct {
		name  string
		proto model.UpstreamProtocol
	}{{"HTTP1 cluster", model.UpstreamHTTP1}, {"HTTP2 cluster", model.UpstreamHTTP2}, {"client's protocol", model.UpstreamUseDownstream}} {
		t.Run(tc.name, func(t *testing.T) { testUpgrade(t, tc.proto) })
	}
}

func testUpgrade(t *testing.T, proto model.UpstreamProtocol) {
	// The backend speaks both HTTP/1.1 and HTTP/2, so that the protocol
	// the proxy chose is the one that worked.
	b := newH2Backend(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "sluice-echo" || r.ProtoMajor != 1 {
			http.Error(w, "want an HTTP/1.1 upgrade, got "+r.Proto, 400)
			return
		}
		hijackEcho(t, w, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: sluice-echo\r\nConnection: Upgrade\r\n\r\nhello\n")
	})
	// The route timeout bounds the upgrade until the 101, not the tunnel.
	rt := route("web", prefix("/"))
	rt.Action.Timeout = 100 * time.Millisecond
	f := start(t, l7.Options{}, service([]model.HTTPRoute{rt}, protoCluster("web", proto, endpoint(t, b.URL))))
	conn, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(conn, "GET /ws HTTP/1.1\r\nHost: web.shop\r\nConnection: Upgrade\r\nUpgrade: sluice-echo\r\n\r\n")
	br := bufio.NewReader(conn)
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != 101 || res.Header.Get("Upgrade") != "sluice-echo" {
		t.Fatalf("got %d, Upgrade %q", res.StatusCode, res.Header.Get("Upgrade"))
	}
	// The backend speaks first, then answers.
	if line, err := br.ReadString('\n'); line != "hello\n" {
		t.Fatalf("read %q, %v", line, err)
	}
	for i, msg := range []string{"one\n", "two\n"} {
		if i > 0 {
			time.Sleep(3 * rt.Action.Timeout)
		}
		io.WriteString(conn, msg)
		if line, err := br.ReadString('\n'); line != "echo "+msg {
			t.Fatalf("read %q, %v; want %q", line, err, "echo "+msg)
		}
	}
	conn.Close()
	if r := f.waitRecords(1)[0]; r.Code != 101 || r.Tries != 1 {
		t.Errorf("record: code %d, tries %d", r.Code, r.Tries)
	}
}

// TestProtocols serves HTTP/1.1 and prior-knowledge HTTP/2 on one
// listener, each forwarded upstream in the client's protocol, as a
// cluster of UpstreamUseDownstream says.
func TestProtocols(t *testing.T) {
	b := newH2Backend(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, r.Proto) })
	f := start(t, l7.Options{}, service([]model.HTTPRoute{route("web", prefix("/"))}, protoCluster("web", model.UpstreamUseDownstream, endpoint(t, b.URL))))
	r2 := f.get(f.h2client(), "/")
	if r2.res.Proto != "HTTP/2.0" || r2.body != "HTTP/2.0" {
		t.Errorf("HTTP/2 client: response %s, upstream saw %q", r2.res.Proto, r2.body)
	}
	r1 := f.get(f.client(), "/")
	if r1.res.Proto != "HTTP/1.1" || r1.body != "HTTP/1.1" {
		t.Errorf("HTTP/1.1 client: response %s, upstream saw %q", r1.res.Proto, r1.body)
	}
	rs := f.waitRecords(2)
	if rs[0].Proto != "HTTP/2.0" || rs[1].Proto != "HTTP/1.1" {
		t.Errorf("record protocols %q, %q", rs[0].Proto, rs[1].Proto)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.identities) != 2 {
		t.Errorf("%d upstream dials, want one per protocol", len(f.identities))
	}
	for _, id := range f.identities {
		if id != clientIdentity {
			t.Errorf("upstream dialed with identity %d, want %d", id, clientIdentity)
		}
	}
}

// settle returns a logger and a function that counts the lines logged
// with msg.
func countingLogger() (*slog.Logger, func(msg string) int) {
	var mu sync.Mutex
	var buf bytes.Buffer
	l := slog.New(slog.NewTextHandler(lockedWriter{&mu, &buf}, nil))
	return l, func(msg string) int {
		mu.Lock()
		defer mu.Unlock()
		return strings.Count(buf.String(), msg)
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.Write(p)
}

func TestOriginUnknown(t *testing.T) {
	b := newBackend(t, text("hello"))
	log, count := countingLogger()
	f := start(t, l7.Options{
		Logger: log,
		Origin: func(_, _ netip.AddrPort) (l7.Origin, error) { return l7.Origin{}, errors.New("no such redirect") },
	}, service([]model.HTTPRoute{route("web", prefix("/"))}, cluster("web", endpoint(t, b.URL))))
	c := f.client()
	for range 2 {
		r := f.get(c, "/")
		if r.code != 502 || !strings.Contains(r.body, "no such redirect") {
			t.Errorf("got %d %q, want 502 naming the cause", r.code, r.body)
		}
	}
	if f.accepts.Load() != 1 {
		t.Errorf("%d connections, want 1", f.accepts.Load())
	}
	if n := count("connection of unknown origin"); n != 1 {
		t.Errorf("logged %d times, want once per connection", n)
	}
	if b.requests.Load() != 0 {
		t.Error("the backend got a request")
	}
}

func TestLocalReplies(t *testing.T) {
	b := newBackend(t, text("hello"))
	api := route("web", prefix("/api/"))
	other := service([]model.HTTPRoute{api}, cluster("web", endpoint(t, b.URL)))
	other.Name, other.VIP = "other", netip.MustParseAddr("10.96.0.11")
	f := start(t, l7.Options{}, service([]model.HTTPRoute{api}, cluster("web", endpoint(t, b.URL))), other)
	c := f.client()
	if r := f.get(c, "/nothing-here"); r.code != 404 || r.body != "sluice: no route\n" {
		t.Errorf("no route: got %d %q", r.code, r.body)
	}
	if r := f.get(c, "/api/x"); r.code != 200 {
		t.Errorf("route: got %d %q", r.code, r.body)
	}

	// A VIP the configuration does not have.
	g := start(t, l7.Options{Origin: func(_, remote netip.AddrPort) (l7.Origin, error) {
		return l7.Origin{Service: netip.MustParseAddrPort("10.96.0.99:8080"), Client: remote}, nil
	}}, other)
	if r := g.get(g.client(), "/api/x"); r.code != 503 || r.body != "sluice: no L7 service at 10.96.0.99:8080\n" {
		t.Errorf("no service: got %d %q", r.code, r.body)
	}

	// A cluster without a usable endpoint.
	sick := endpoint(t, b.URL)
	sick.Health = model.HealthUnhealthy
	h := start(t, l7.Options{}, service([]model.HTTPRoute{route("web", prefix("/"))}, cluster("web", sick)))
	if r := h.get(h.client(), "/"); r.code != 503 || r.body != "sluice: no healthy upstream in cluster web\n" {
		t.Errorf("no endpoint: got %d %q", r.code, r.body)
	}
	if b.requests.Load() != 1 {
		t.Errorf("backend got %d requests, want 1", b.requests.Load())
	}
}

func TestProxyAuthorizeHook(t *testing.T) {
	b := newBackend(t, text("hello"))
	f := start(t, l7.Options{}, service([]model.HTTPRoute{route("web", prefix("/"))}, cluster("web", endpoint(t, b.URL))))
	cfg, err := l7.NewConfig([]model.Service{service([]model.HTTPRoute{route("web", prefix("/"))}, cluster("web", endpoint(t, b.URL)))}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var seen atomic.Value
	cfg.Services[vip].Authorize = func(r *http.Request, o l7.Origin) l7.Verdict {
		seen.Store(o)
		if r.Header.Get("X-Deny") != "" {
			return l7.Verdict{Policy: "ns/deny-test", Rule: "no-x-deny"}
		}
		return l7.Verdict{Allowed: true}
	}
	f.proxy.SetConfig(cfg)
	c := f.client()
	r := f.get(c, "/", "X-Deny", "1")
	if r.code != 403 || r.body != "sluice: access denied\n" {
		t.Errorf("denied: got %d %q", r.code, r.body)
	}
	if r.res.Close {
		t.Error("a denial closes the connection")
	}
	if r := f.get(c, "/"); r.code != 200 || r.body != "hello" {
		t.Errorf("allowed: got %d %q", r.code, r.body)
	}
	if f.accepts.Load() != 1 {
		t.Errorf("%d connections, want the same one for both requests", f.accepts.Load())
	}
	if o, _ := seen.Load().(l7.Origin); o.Identity != clientIdentity || o.Service != vip {
		t.Errorf("Authorize saw origin %+v", o)
	}
	if rs := f.waitRecords(2); rs[0].Denied == nil || *rs[0].Denied != (l7.Verdict{Policy: "ns/deny-test", Rule: "no-x-deny"}) || rs[1].Denied != nil {
		t.Errorf("records: %+v", rs)
	}
	if b.requests.Load() != 1 {
		t.Errorf("backend got %d requests, want 1", b.requests.Load())
	}
}

func TestHeaderRouting(t *testing.T) {
	stable, canary := newBackend(t, text("stable")), newBackend(t, text("canary"))
	byHeader := prefix("/")
	byHeader.Headers = []model.HeaderMatch{{Name: "x-canary", Value: model.StringMatch{Kind: model.MatchExact, Value: "yes"}}}
	f := start(t, l7.Options{}, service(
		[]model.HTTPRoute{route("canary", byHeader), route("stable", prefix("/"))},
		cluster("stable", endpoint(t, stable.URL)), cluster("canary", endpoint(t, canary.URL))))
	c := f.client()
	for _, tc := range []struct {
		header []string
		want   string
	}{
		{nil, "stable"},
		{[]string{"X-Canary", "yes"}, "canary"},
		{[]string{"X-Canary", "no"}, "stable"},
	} {
		if r := f.get(c, "/", tc.header...); r.body != tc.want {
			t.Errorf("header %v: got %q, want %q", tc.header, r.body, tc.want)
		}
	}
}

func TestProxyRewriteAndHeaders(t *testing.T) {
	type seen struct {
		uri, host string
		header    http.Header
	}
	got := make(chan seen, 1)
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		got <- seen{r.RequestURI, r.Host, r.Header.Clone()}
	})
	rt := route("web", prefix("/api/"))
	rt.Action.PrefixRewrite = "/v2/"
	rt.Action.RemoveHeaders = []string{"x-secret"}
	rt.Action.AddHeaders = []model.HeaderValue{{Name: "x-added", Value: "1"}, {Name: "x-multi", Value: "b", Append: true}, {Name: "x-set", Value: "new"}}
	f := start(t, l7.Options{}, service([]model.HTTPRoute{rt}, cluster("web", endpoint(t, b.URL))))
	r := f.get(f.client(), "/api/items%2Fx?q=1", "X-Secret", "s", "X-Multi", "a", "X-Set", "old", "X-Forwarded-For", "192.0.2.1")
	if r.code != 200 {
		t.Fatalf("got %d %q", r.code, r.body)
	}
	s := <-got
	if s.uri != "/v2/items%2Fx?q=1" || s.host != "web.shop" {
		t.Errorf("upstream saw %s with Host %s, want /v2/items%%2Fx?q=1 with Host web.shop", s.uri, s.host)
	}
	for name, want := range map[string]string{"X-Secret": "", "X-Added": "1", "X-Multi": "a,b", "X-Set": "new", "X-Forwarded-For": "192.0.2.1"} {
		if v := strings.Join(s.header.Values(name), ","); v != want {
			t.Errorf("upstream header %s: %q, want %q", name, v, want)
		}
	}
}

func TestWeightedSplit(t *testing.T) {
	a, b := newBackend(t, text("a")), newBackend(t, text("b"))
	rt := route("split", prefix("/"))
	rt.Action.Clusters = []model.WeightedCluster{{Name: "a", Weight: 80}, {Name: "b", Weight: 20}}
	f := start(t, l7.Options{}, service([]model.HTTPRoute{rt}, cluster("a", endpoint(t, a.URL)), cluster("b", endpoint(t, b.URL))))
	c := f.client()
	const n, p = 2000, 0.8
	counts := map[string]int{}
	for range n {
		counts[f.get(c, "/").body]++
	}
	sigma := math.Sqrt(n * p * (1 - p))
	if d := math.Abs(float64(counts["a"]) - n*p); d > 5*sigma || counts["a"]+counts["b"] != n {
		t.Errorf("split %v over %d requests; want a within %.0f of %.0f", counts, n, 5*sigma, n*p)
	}
}

func TestPriorityAndHealth(t *testing.T) {
	backends := map[string]*backend{}
	var eps []model.Endpoint
	for _, e := range []struct {
		name     string
		priority uint32
		health   model.Health
	}{
		{"p0-unhealthy", 0, model.HealthUnhealthy},
		{"p0-draining", 0, model.HealthDraining},
		{"p1-healthy", 1, model.HealthHealthy},
		{"p1-unknown", 1, model.HealthUnknown},
		{"p2-healthy", 2, model.HealthHealthy},
	} {
		b := newBackend(t, text(e.name))
		backends[e.name] = b
		ep := endpoint(t, b.URL)
		ep.Priority, ep.Health = e.priority, e.health
		eps = append(eps, ep)
	}
	f := start(t, l7.Options{}, service([]model.HTTPRoute{route("web", prefix("/"))}, cluster("web", eps...)))
	c := f.client()
	counts := map[string]int{}
	for range 60 {
		counts[f.get(c, "/").body]++
	}
	if counts["p1-healthy"] == 0 || counts["p1-unknown"] == 0 || counts["p1-healthy"]+counts["p1-unknown"] != 60 {
		t.Errorf("requests went to %v; want the two usable endpoints of priority 1 only", counts)
	}
}

// TestConfigSwap changes the routes while a request is in flight: it
// finishes on the routes it started with, the next request takes the new.
func TestConfigSwap(t *testing.T) {
	arrived, release := make(chan struct{}), make(chan struct{})
	old := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		close(arrived)
		<-release
		io.WriteString(w, "old")
	})
	nu := newBackend(t, text("new"))
	svc := func(to string) model.Service {
		return service([]model.HTTPRoute{route(to, prefix("/"))}, cluster("old", endpoint(t, old.URL)), cluster("new", endpoint(t, nu.URL)))
	}
	f := start(t, l7.Options{}, svc("old"))
	slow := f.getAsync(f.client(), "/")
	<-arrived
	cfg, err := l7.NewConfig([]model.Service{svc("new")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	f.proxy.SetConfig(cfg)
	if r := f.get(f.client(), "/"); r.body != "new" {
		t.Errorf("after SetConfig: got %q, want new", r.body)
	}
	close(release)
	if r := <-slow; r.code != 200 || r.body != "old" {
		t.Errorf("in flight: got %d %q, want 200 old", r.code, r.body)
	}
}

func TestShutdown(t *testing.T) {
	arrived, release := make(chan struct{}), make(chan struct{})
	b := newH2Backend(t, func(w http.ResponseWriter, r *http.Request) {
		close(arrived)
		<-release
		io.WriteString(w, "done")
	})
	f := start(t, l7.Options{}, service([]model.HTTPRoute{route("web", prefix("/"))}, protoCluster("web", model.UpstreamHTTP2, endpoint(t, b.URL))))
	slow := f.getAsync(f.h2client(), "/")
	<-arrived
	shut := make(chan error, 1)
	go func() { shut <- f.proxy.Shutdown(context.Background()) }()
	// Shutdown stops accepting at once.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		c, err := net.Dial("tcp", f.addr)
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("the proxy still accepts connections after Shutdown")
		}
	}
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v with a request in flight", err)
	default:
	}
	close(release)
	if r := <-slow; r.code != 200 || r.body != "done" {
		t.Errorf("in flight: got %d %q (%+v)", r.code, r.body, f.waitRecords(1))
	}
	if err := <-shut; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}

func TestNewConfig(t *testing.T) {
	l4 := model.Service{Name: "l4", VIP: netip.MustParseAddr("10.96.0.1"), Port: 80, Protocol: model.TCP}
	web := service([]model.HTTPRoute{route("web", prefix("/"))}, cluster("web"))
	cfg, err := l7.NewConfig([]model.Service{l4, web}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Services) != 1 || cfg.Services[vip] == nil || cfg.Services[vip].Router == nil {
		t.Errorf("services %v, want web at %s with a router", cfg.Services, vip)
	}

	bad := service([]model.HTTPRoute{route("web", prefix("/"))}, cluster("other"))
	_, err = l7.NewConfig([]model.Service{bad}, nil)
	if !errors.Is(err, l7.ErrInvalidConfig) {
		t.Fatalf("unknown cluster: %v, want ErrInvalidConfig", err)
	}
	for _, s := range []string{`"web"`, `route "web"`, `cluster "web"`} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not name %s", err, s)
		}
	}
	if _, err := l7.NewConfig([]model.Service{web, web}, nil); !errors.Is(err, l7.ErrInvalidConfig) {
		t.Errorf("two services at one address: %v", err)
	}
}

func TestPickEndpoint(t *testing.T) {
	ep := func(addr string, weight, priority uint32, h model.Health) model.Endpoint {
		ap := netip.MustParseAddrPort(addr)
		return model.Endpoint{Addr: ap.Addr(), Port: ap.Port(), Weight: weight, Priority: priority, Health: h}
	}
	a, b, c := "10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"
	tests := []struct {
		name  string
		eps   []model.Endpoint
		avoid []string
		n     uint64
		want  string // "" for none
	}{
		{"none", nil, nil, 0, ""},
		{"all unusable", []model.Endpoint{ep(a, 1, 0, model.HealthUnhealthy), ep(b, 1, 0, model.HealthDraining)}, nil, 0, ""},
		{"weight 0 counts as 1", []model.Endpoint{ep(a, 0, 0, 0), ep(b, 0, 0, 0)}, nil, 1, b},
		{"weights", []model.Endpoint{ep(a, 3, 0, 0), ep(b, 1, 0, 0)}, nil, 2, a},
		{"weights, last", []model.Endpoint{ep(a, 3, 0, 0), ep(b, 1, 0, 0)}, nil, 3, b},
		{"best priority", []model.Endpoint{ep(a, 1, 1, 0), ep(b, 1, 0, model.HealthHealthy), ep(c, 1, 0, model.HealthUnhealthy)}, nil, 7, b},
		{"fall back a priority", []model.Endpoint{ep(a, 1, 1, 0), ep(b, 1, 0, model.HealthUnhealthy)}, nil, 0, a},
		{"avoid a tried one", []model.Endpoint{ep(a, 1, 0, 0), ep(b, 1, 0, 0)}, []string{a}, 0, b},
		{"only tried ones left", []model.Endpoint{ep(a, 1, 0, 0), ep(b, 1, 1, 0)}, []string{a}, 0, a},
	}
	for _, tc := range tests {
		var avoid []netip.AddrPort
		for _, s := range tc.avoid {
			avoid = append(avoid, netip.MustParseAddrPort(s))
		}
		got, ok := l7.PickEndpoint(tc.eps, avoid, tc.n)
		if tc.want == "" {
			if ok {
				t.Errorf("%s: got %s, want none", tc.name, got)
			}
		} else if !ok || got != netip.MustParseAddrPort(tc.want) {
			t.Errorf("%s: got %s %v, want %s", tc.name, got, ok, tc.want)
		}
	}
}

// TestConnectH2 tunnels an HTTP/2 CONNECT stream to an upstream that
// answers it, both ways; HTTP/1.1 CONNECT is refused.
func TestConnectH2(t *testing.T) {
	b := newH2Backend(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Method != "CONNECT" || r.Host != "db.shop:5432" {
			http.Error(w, "want CONNECT db.shop:5432, got "+r.Method+" "+r.Host, 400)
			return
		}
		w.WriteHeader(200)
		echoLines(w, r.Body)
	})
	// A CONNECT request has no path: only an empty prefix matches it.
	f := start(t, l7.Options{}, service([]model.HTTPRoute{route("web", prefix(""))}, protoCluster("web", model.UpstreamHTTP2, endpoint(t, b.URL))))
	connectEcho(t, f)

	conn, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, "CONNECT db.shop:5432 HTTP/1.1\r\nHost: db.shop:5432\r\n\r\n")
	if res, err := http.ReadResponse(bufio.NewReader(conn), nil); err != nil || res.StatusCode != 501 {
		t.Errorf("HTTP/1.1 CONNECT: %v, %v; want 501", res, err)
	}
}

// TestShutdownTunnel waits for a tunnel on Shutdown, and ends it on Close.
func TestShutdownTunnel(t *testing.T) {
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: sluice-echo\r\nConnection: Upgrade\r\n\r\n")
		brw.Flush()
		io.Copy(io.Discard, brw)
	})
	f := start(t, l7.Options{}, service([]model.HTTPRoute{route("web", prefix("/"))}, cluster("web", endpoint(t, b.URL))))
	conn, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(conn, "GET /ws HTTP/1.1\r\nHost: web.shop\r\nConnection: Upgrade\r\nUpgrade: sluice-echo\r\n\r\n")
	br := bufio.NewReader(conn)
	if res, err := http.ReadResponse(br, nil); err != nil || res.StatusCode != 101 {
		t.Fatalf("%v, %v; want 101", res, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := f.proxy.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown with a tunnel open: %v, want the context's deadline", err)
	}
	f.proxy.Close()
	var ne net.Error
	if n, err := br.Read(make([]byte, 1)); err == nil || errors.As(err, &ne) && ne.Timeout() {
		t.Errorf("after Close, the tunnel gave %d bytes, %v; want it closed", n, err)
	}
}

// TestHTTPPolicies checks that NewConfig enforces a service's HTTP
// policies: by method, path and the client's identity, with a 403 that
// leaves the connection usable.
func TestHTTPPolicies(t *testing.T) {
	b := newBackend(t, text("hello"))
	svc := service([]model.HTTPRoute{route("web", prefix("/"))}, cluster("web", endpoint(t, b.URL)))
	svc.L7.Policies = []model.Policy{
		allow("readers", rrule("client-reads", perms(method("GET")), authn(exactly("spiffe://test/ns/default/sa/client")))),
		deny("no-admin", rrule("admin-path", perms(path(model.StringMatch{Kind: model.MatchPrefix, Value: "/admin"})))),
		{Name: "dry-run", Shadow: denySet(rrule("again", perms(path(exactly("/again")))))},
	}
	f := start(t, l7.Options{}, svc)
	c := f.client()
	cases := []struct {
		method, path string
		code         int
		body         string
	}{
		{"GET", "/", 200, "hello"},
		{"POST", "/", 403, "sluice: access denied\n"},
		{"GET", "/admin/users", 403, "sluice: access denied\n"},
		{"GET", "/again", 200, "hello"},
	}
	for _, tc := range cases {
		req, err := http.NewRequest(tc.method, f.url(tc.path), nil)
		if err != nil {
			t.Fatal(err)
		}
		if r := f.do(c, req); r.code != tc.code || r.body != tc.body {
			t.Errorf("%s %s: got %d %q, want %d %q", tc.method, tc.path, r.code, r.body, tc.code, tc.body)
		}
	}
	if n := f.accepts.Load(); n != 1 {
		t.Errorf("%d connections, want one for all requests", n)
	}
	if n := b.requests.Load(); n != 2 {
		t.Errorf("backend got %d requests, want the 2 allowed", n)
	}
	rs := f.waitRecords(len(cases))
	if rs[2].Denied == nil || *rs[2].Denied != (l7.Verdict{Policy: "no-admin", Rule: "admin-path"}) || rs[0].Denied != nil {
		t.Errorf("records' verdicts: %+v, %+v", rs[0].Denied, rs[2].Denied)
	}
	if rs[1].Err != "access denied" {
		t.Errorf("a denied request's record says %q, want the proxy's answer", rs[1].Err)
	}
	// /again is allowed, but the dry-run rules would have denied it.
	if rs[3].Audit == nil || *rs[3].Audit != (l7.Verdict{Policy: "dry-run", Rule: "again"}) || rs[3].Denied != nil || rs[0].Audit != nil {
		t.Errorf("records' audits: %+v, %+v", rs[0].Audit, rs[3].Audit)
	}

	// A client whose identity the proxy does not know is no authenticated
	// principal.
	stranger := start(t, l7.Options{Origin: func(_, remote netip.AddrPort) (l7.Origin, error) {
		return l7.Origin{Service: vip, Client: remote, Identity: 99}, nil
	}}, svc)
	if r := stranger.get(stranger.client(), "/"); r.code != 403 {
		t.Errorf("GET / by an unknown identity: got %d %q, want 403", r.code, r.body)
	}
}

// connectEcho opens an HTTP/2 CONNECT tunnel to db.shop:5432 through the
// proxy, whose far end echoes each line prefixed with "echo ", and checks
// two lines' round trips.
func connectEcho(t *testing.T, f *fixture) {
	t.Helper()
	pr, pw := io.Pipe()
	defer pw.Close()
	req, _ := http.NewRequest("CONNECT", f.url(""), pr)
	req.Host = "db.shop:5432"
	res, err := f.h2client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.StatusCode != 200 {
		b, _ := io.ReadAll(res.Body)
		t.Fatalf("got %d %q", res.StatusCode, b)
	}
	br := bufio.NewReader(res.Body)
	for _, msg := range []string{"one\n", "two\n"} {
		io.WriteString(pw, msg)
		if line, err := br.ReadString('\n'); line != "echo "+msg {
			t.Fatalf("read %q, %v; want %q", line, err, "echo "+msg)
		}
	}
}

// hijackEcho takes over a backend's connection, writes head (a response's
// status line and headers, and what follows), then answers each line with
// "echo " and the line, until the connection ends.
func hijackEcho(t *testing.T, w http.ResponseWriter, head string) {
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		t.Error(err)
		return
	}
	defer conn.Close()
	brw.WriteString(head)
	brw.Flush()
	for {
		line, err := brw.ReadString('\n')
		if err != nil {
			return
		}
		brw.WriteString("echo " + line)
		brw.Flush()
	}
}
