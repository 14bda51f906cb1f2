package l7

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"

	"github.com/sluice-mesh/sluice/dataplane/model"
)

const (
	readHeaderTimeout = 30 * time.Second
	idleTimeout       = 5 * time.Minute

	// StatusClientClosed is the Code of a RequestRecord whose client went
	// away before its response.
	StatusClientClosed = 499
)

// Options configure a Proxy.
type Options struct {
	// Origin looks up a redirected connection by its addresses as the
	// proxy sees them (local: the proxy's listening address, remote: the
	// client). Optional: nil takes the local address for the service's,
	// for a proxy that clients dial directly.
	Origin func(local, remote netip.AddrPort) (Origin, error)
	// Dial opens an upstream TCP connection to addr carrying the client's
	// identity (the dataplane tags it). Optional: nil dials plainly.
	Dial func(ctx context.Context, addr netip.AddrPort, identity uint32) (net.Conn, error)
	// Record is called once per request, after it ends, on the request's
	// goroutine. Optional.
	Record func(RequestRecord)
	Logger *slog.Logger  // optional: discards logs when nil
	Rand   func() uint64 // optional: uniformly random numbers, for tests; safe for concurrent use
}

// RequestRecord is what the proxy did with one request.
type RequestRecord struct {
	Origin   Origin
	ClientID string // the client's SPIFFE ID (Config.Identities), "" if unknown
	Service  string
	Route    string
	Cluster  string
	Upstream netip.AddrPort // the endpoint of the last try
	Method   string
	// Authority and Path (escaped, without the query) are the client's,
	// before any rewrite.
	Authority, Path string
	Proto           string // the client's protocol: HTTP/1.1, HTTP/2.0
	GRPC            bool   // the request is gRPC (its content type is application/grpc...)
	// GRPCStatus is the grpc-status the client got (the upstream's, in
	// the response's trailers or trailers-only headers, or the proxy's
	// own), as a decimal number; "" if it got none or one that is not a
	// number from 0 to 999.
	GRPCStatus string
	// Code is the response status: the upstream's, or the proxy's own
	// (for a gRPC request, the HTTP status its grpc-status stands for);
	// StatusClientClosed if the client left first.
	Code     int
	Tries    int // tries sent upstream: 1 + retries
	Start    time.Time
	Duration time.Duration // until the response ended
	Denied   *Verdict      // the denying verdict, if authorization denied the request
	Audit    *Verdict      // an allowed request the dry-run rules would have denied: Policy and Rule name that rule
	Err      string        // why the proxy answered itself or cut the response
}

// Proxy is the node's L7 proxy: it serves HTTP/1.1 and cleartext HTTP/2
// (prior knowledge or an h2c upgrade) on the connections redirected to it
// and forwards each request as its service's routes say. Its methods are
// safe for concurrent use.
type Proxy struct {
	origin func(local, remote netip.AddrPort) (Origin, error)
	record func(RequestRecord)
	log    *slog.Logger
	rand   func() uint64

	config atomic.Pointer[Config]

	srv *http.Server
	h2  *http2.Server
	rp  *httputil.ReverseProxy
	up  *upstreams

	base context.Context // of every request; canceled by Close
	stop context.CancelFunc

	// hijacked tracks what the http.Server no longer does: connections
	// upgraded to h2c and requests tunneling after an upgrade.
	hijacked tracker
}

// New returns a proxy with no configuration: until SetConfig, every
// request gets a 503.
func New(o Options) *Proxy {
	p := &Proxy{origin: o.Origin, record: o.Record, log: o.Logger, rand: o.Rand}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	if p.rand == nil {
		p.rand = rand.Uint64
	}
	if p.origin == nil {
		p.origin = func(local, remote netip.AddrPort) (Origin, error) {
			return Origin{Service: local, Client: remote}, nil
		}
	}
	p.config.Store(&Config{})
	p.base, p.stop = context.WithCancel(context.Background())
	p.up = newUpstreams(o.Dial, p.log)
	p.rp = &httputil.ReverseProxy{
		Rewrite:   p.rewrite,
		Transport: p.up,
		// ReverseProxy flushes every write of a response of unknown
		// length (gRPC, server-sent events, chunked), and its headers at
		// once. A negative interval would do so for every response, and
		// could split a gRPC error sent as trailers only (one HEADERS
		// frame ending the stream) in two.
		FlushInterval: 0,
		ErrorHandler:  p.proxyError,
		ErrorLog:      slog.NewLogLogger(p.log.Handler(), slog.LevelDebug),
		BufferPool:    &bufferPool{},
	}
	protos := new(http.Protocols)
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	p.srv = &http.Server{
		Handler:           http.HandlerFunc(p.serveHTTP1),
		Protocols:         protos,
		ReadHeaderTimeout: readHeaderTimeout,
		IdleTimeout:       idleTimeout,
		BaseContext:       func(net.Listener) context.Context { return p.base },
		ConnContext:       p.connContext,
		ErrorLog:          slog.NewLogLogger(p.log.Handler(), slog.LevelDebug),
	}
	// One HTTP/2 server for both ways into HTTP/2: net/http hands it the
	// prior-knowledge connections, serveH2C the upgraded ones, and
	// srv.Shutdown sends GOAWAY on all of them.
	p.h2 = &http2.Server{}
	if err := http2.ConfigureServer(p.srv, p.h2); err != nil {
		panic("l7: configure HTTP/2: " + err.Error()) // only a TLS configuration can fail, and there is none
	}
	return p
}

// SetConfig replaces the configuration. Requests that start afterwards
// use c; requests in flight finish on the one they started with.
func (p *Proxy) SetConfig(c *Config) {
	if c == nil {
		c = &Config{}
	}
	p.config.Store(c)
	p.up.sweep()
}

// Serve accepts connections on l until Shutdown or Close, and then returns
// http.ErrServerClosed. Serve may be called for several listeners.
func (p *Proxy) Serve(l net.Listener) error {
	return p.srv.Serve(l)
}

// Shutdown stops accepting connections, sends GOAWAY on HTTP/2
// connections, closes idle ones, and waits for the requests in flight,
// tunnels included, to end. If ctx ends first it returns ctx's error and
// leaves the rest to Close.
func (p *Proxy) Shutdown(ctx context.Context) error {
	err := p.srv.Shutdown(ctx)
	if werr := p.hijacked.wait(ctx); err == nil {
		err = werr
	}
	p.up.closeIdle()
	return err
}

// Close closes the listeners and every connection at once, ending the
// requests in flight.
func (p *Proxy) Close() error {
	err := p.srv.Close()
	p.stop()
	p.hijacked.closeAll()
	p.up.closeIdle()
	return err
}

// connInfo is what the proxy knows of a downstream connection.
type connInfo struct {
	origin Origin
	err    error // the Origin lookup's
}

type connKey struct{}

func (p *Proxy) connContext(ctx context.Context, c net.Conn) context.Context {
	ci := &connInfo{}
	local, lerr := addrPort(c.LocalAddr())
	remote, rerr := addrPort(c.RemoteAddr())
	if ci.err = errors.Join(lerr, rerr); ci.err == nil {
		ci.origin, ci.err = p.origin(local, remote)
	}
	if ci.err != nil {
		p.log.Warn("l7: connection of unknown origin; its requests get 502",
			"local", c.LocalAddr().String(), "remote", c.RemoteAddr().String(), "err", ci.err)
	}
	return context.WithValue(ctx, connKey{}, ci)
}

func addrPort(a net.Addr) (netip.AddrPort, error) {
	var ap netip.AddrPort
	if t, ok := a.(*net.TCPAddr); ok {
		ap = t.AddrPort()
	} else {
		var err error
		if ap, err = netip.ParseAddrPort(a.String()); err != nil {
			return ap, fmt.Errorf("address %s: %w", a, err)
		}
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

// exchange is one request on its way through the proxy: what the handler
// decided, what the upstream side did, and the record of it. Its fields
// are used by the request's goroutine only (ReverseProxy calls the
// Rewrite, RoundTrip and ErrorHandler hooks on it), save
// body and deadline, which guard themselves.
type exchange struct {
	ctx       context.Context // the request's, canceled with errRouteTimeout by the deadline
	origin    Origin
	route     *model.HTTPRoute
	cluster   string
	endpoints []model.Endpoint
	h2        bool // the upstream request goes over HTTP/2 (upstreamH2)
	maxTries  int
	retryOn   model.RetryOn
	perTry    time.Duration
	rand      func() uint64
	deadline  *deadline                 // nil: no route timeout
	body      *requestBody              // nil: no request body
	cancels   []context.CancelCauseFunc // of the tries' contexts, called when the request ends
	rec       RequestRecord
}

type exchangeKey struct{}

// serveHTTP1 takes up an h2c upgrade, if the request asks for one it can
// have, and otherwise serves the request as it came.
func (p *Proxy) serveHTTP1(w http.ResponseWriter, r *http.Request) {
	if r.ProtoMajor == 1 && isH2CUpgrade(r.Header) {
		settings, err := h2cSettings(r.Header)
		if err == nil && r.ContentLength >= 0 && r.ContentLength <= maxReplayBody && r.Method != http.MethodConnect {
			p.serveH2C(w, r, settings)
			return
		}
		// A server may ignore an upgrade (RFC 9110, 7.8): serve HTTP/1.1,
		// and do not pass the upgrade on.
		r.Header.Del("Upgrade")
		r.Header.Del("Http2-Settings")
	}
	p.serveHTTP(w, r)
}

func (p *Proxy) serveHTTP(w http.ResponseWriter, r *http.Request) {
	x := &exchange{rand: p.rand}
	x.rec = RequestRecord{
		Method: r.Method, Authority: r.Host, Path: r.URL.EscapedPath(), Proto: r.Proto,
		GRPC: strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc"), Start: time.Now(),
	}
	defer func() {
		if x.rec.GRPC {
			x.rec.GRPCStatus = grpcStatusOf(w.Header())
		}
		if v := recover(); v != nil {
			// ReverseProxy aborts a response it cannot finish with
			// ErrAbortHandler: the server then resets the stream (HTTP/2)
			// or closes the connection (HTTP/1.1).
			if x.rec.Err == "" {
				x.rec.Err = "response cut: " + cutReason(r.Context(), x)
			}
			p.finish(x)
			panic(v)
		}
		p.finish(x)
	}()

	ci, _ := r.Context().Value(connKey{}).(*connInfo)
	if ci == nil || ci.err != nil {
		cause := errors.New("no connection information")
		if ci != nil {
			cause = ci.err
		}
		x.rec.Err = cause.Error()
		p.reply(w, r, x, http.StatusBadGateway, "connection origin unknown: "+cause.Error())
		return
	}
	x.origin, x.rec.Origin = ci.origin, ci.origin
	cfg := p.config.Load()
	x.rec.ClientID = cfg.Identities[ci.origin.Identity]
	vip := netip.AddrPortFrom(ci.origin.Service.Addr().Unmap(), ci.origin.Service.Port())
	svc := cfg.Services[vip]
	if svc == nil || svc.Router == nil {
		p.reply(w, r, x, http.StatusServiceUnavailable, "no L7 service at "+vip.String())
		return
	}
	x.rec.Service = svc.Name
	if r.ProtoMajor == 1 && r.Method == http.MethodConnect {
		p.reply(w, r, x, http.StatusNotImplemented, "CONNECT over HTTP/1.1 is not supported")
		return
	}
	if svc.Authorize != nil {
		v := svc.Authorize(r, ci.origin)
		if v.Allowed && v.ShadowDenied {
			x.rec.Audit = &Verdict{Policy: v.ShadowPolicy, Rule: v.ShadowRule}
		}
		if !v.Allowed {
			x.rec.Denied = &v
			// The body names no policy: which rule denied is for the
			// mesh's operators (the request's record), not its clients.
			p.reply(w, r, x, http.StatusForbidden, "access denied")
			return
		}
	}
	route := svc.Router.Route(r)
	if route == nil {
		p.reply(w, r, x, http.StatusNotFound, "no route")
		return
	}
	x.route, x.rec.Route = route, route.Name
	x.cluster = Pick(route.Action.Clusters, p.rand())
	x.rec.Cluster = x.cluster
	if x.cluster == "" {
		p.reply(w, r, x, http.StatusServiceUnavailable, "no cluster of the route has a weight")
		return
	}
	cl := svc.cluster(x.cluster)
	if cl == nil {
		p.reply(w, r, x, http.StatusServiceUnavailable, "no healthy upstream in cluster "+x.cluster)
		return
	}
	x.endpoints = cl.Endpoints
	upgrade := httpguts.HeaderValuesContainsToken(r.Header["Connection"], "upgrade") && r.Header.Get("Upgrade") != ""
	x.h2 = upstreamH2(cl.Protocol, r, upgrade)

	x.maxTries = 1
	if rp := route.Action.Retry; rp != nil && !upgrade && r.Method != http.MethodConnect {
		x.perTry = rp.PerTryTimeout
		if rp.On != 0 {
			x.maxTries += int(rp.NumRetries)
			x.retryOn = rp.On
		}
	}
	if upgrade {
		p.hijacked.add(nil)
		defer p.hijacked.done(nil)
	}

	ctx, cancel := context.WithCancelCause(r.Context())
	defer cancel(nil)
	x.ctx = ctx
	if d := route.Action.Timeout; d > 0 {
		x.deadline = &deadline{d: d, cancel: cancel}
		defer x.deadline.stop()
	}
	defer func() {
		for _, c := range x.cancels {
			c(nil)
		}
	}()
	if r.ProtoMajor == 1 {
		// The upstream may answer before the request body ends; without
		// this the server would swallow the rest of the body before
		// sending the response headers.
		http.NewResponseController(w).EnableFullDuplex()
	}
	p.rp.ServeHTTP(w, r.WithContext(context.WithValue(ctx, exchangeKey{}, x)))
}

// upstreamH2 reports whether r, which upgrade says is an HTTP/1.1
// upgrade, goes to a cluster of protocol p over HTTP/2 rather than
// HTTP/1.1. An upgrade goes over HTTP/1.1 whatever p says: HTTP/2 has no
// Upgrade, and the proxy does not turn one into an extended CONNECT (what
// allow_connect in a cluster's HTTP/2 options asks for, which translation
// refuses). An HTTP/2 CONNECT to an HTTP/1.1 cluster goes as an HTTP/1.1
// CONNECT.
func upstreamH2(p model.UpstreamProtocol, r *http.Request, upgrade bool) bool {
	switch p {
	case model.UpstreamHTTP2:
		return !upgrade
	case model.UpstreamUseDownstream:
		return r.ProtoMajor == 2
	}
	return false
}

// cutReason says why a response was cut after its headers.
func cutReason(downstream context.Context, x *exchange) string {
	switch {
	case x.ctx != nil && errors.Is(context.Cause(x.ctx), errRouteTimeout):
		return "upstream timeout"
	case downstream.Err() != nil:
		return "downstream went away"
	}
	return "upstream response failed"
}

func (p *Proxy) finish(x *exchange) {
	x.rec.Duration = time.Since(x.rec.Start)
	if p.record != nil {
		p.record(x.rec)
	}
}

// rewrite prepares the upstream request: the route's path rewrite and
// header changes. The authority stays the client's; the transport sets
// each try's endpoint.
func (p *Proxy) rewrite(pr *httputil.ProxyRequest) {
	x := pr.In.Context().Value(exchangeKey{}).(*exchange)
	out := pr.Out
	out.URL.Scheme = "http"
	out.URL.Host = x.cluster
	if in := pr.In.URL.EscapedPath(); in != "" {
		if path := Rewrite(x.route, in); path != in {
			setPath(out.URL, path)
		}
	}
	// A mesh proxy is no trust boundary: the client's forwarding headers
	// pass unchanged, as its other headers do.
	for _, h := range []string{"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"} {
		if v, ok := pr.In.Header[h]; ok {
			out.Header[h] = v
		}
	}
	EditHeaders(&x.route.Action, out.Header)
}

func setPath(u *url.URL, escaped string) {
	if p, err := url.PathUnescape(escaped); err == nil {
		u.Path, u.RawPath = p, escaped
	} else {
		u.Path, u.RawPath = escaped, ""
	}
}

// proxyError answers a request that got no upstream response.
func (p *Proxy) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	x := r.Context().Value(exchangeKey{}).(*exchange)
	x.rec.Err = err.Error()
	var lr *localReply
	switch {
	case errors.Is(err, errDownstreamGone) || r.Context().Err() != nil && !errors.As(err, &lr):
		x.rec.Code = StatusClientClosed
	case errors.As(err, &lr):
		p.reply(w, r, x, lr.code, lr.msg)
	default:
		p.reply(w, r, x, http.StatusBadGateway, "upstream error")
	}
	if x.rec.Code >= 500 {
		p.log.Debug("l7: no upstream response", "service", x.rec.Service, "route", x.rec.Route,
			"cluster", x.cluster, "upstream", x.rec.Upstream, "code", x.rec.Code, "err", err)
	}
}

// reply answers r itself. A gRPC client gets the status as gRPC
// (HTTP 200 with grpc-status, as Envoy answers), everyone else a short
// text.
func (p *Proxy) reply(w http.ResponseWriter, r *http.Request, x *exchange, code int, msg string) {
	x.rec.Code = code
	if x.rec.Err == "" {
		x.rec.Err = msg
	}
	h := w.Header()
	if ct := r.Header.Get("Content-Type"); strings.HasPrefix(ct, "application/grpc") {
		h.Set("Content-Type", "application/grpc")
		h.Set("Grpc-Status", strconv.Itoa(grpcStatus(code)))
		h.Set("Grpc-Message", grpcMessage("sluice: "+msg))
		w.WriteHeader(http.StatusOK)
		return
	}
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	io.WriteString(w, "sluice: "+msg+"\n")
}

// grpcStatus maps the status of a local reply to a gRPC status code, as
// gRPC clients map HTTP statuses; a timeout is DEADLINE_EXCEEDED.
func grpcStatus(code int) int {
	switch code {
	case http.StatusBadRequest:
		return 13 // INTERNAL
	case http.StatusForbidden:
		return 7 // PERMISSION_DENIED
	case http.StatusNotFound, http.StatusNotImplemented:
		return 12 // UNIMPLEMENTED
	case http.StatusGatewayTimeout:
		return 4 // DEADLINE_EXCEEDED
	}
	return 14 // UNAVAILABLE
}

// grpcStatusOf is the grpc-status of a response whose handler has ended,
// h being its header: a trailer (announced, or sent with
// http.TrailerPrefix), or a header of a trailers-only response, as
// canonicalGRPCStatus gives it.
func grpcStatusOf(h http.Header) string {
	v := h.Get("Grpc-Status")
	if v == "" {
		v = h.Get(http.TrailerPrefix + "Grpc-Status")
	}
	return canonicalGRPCStatus(v)
}

// canonicalGRPCStatus is the grpc-status v as a number from 0 to 999 in
// its shortest form, and "" if v is no such number: the value ends up in
// a metric's labels.
func canonicalGRPCStatus(v string) string {
	if n, err := strconv.Atoi(v); err == nil && n >= 0 && n <= 999 {
		return strconv.Itoa(n)
	}
	return ""
}

// grpcMessage percent-encodes msg for grpc-message.
func grpcMessage(msg string) string {
	var b strings.Builder
	for i := 0; i < len(msg); i++ {
		if c := msg[i]; c < ' ' || c > '~' || c == '%' {
			fmt.Fprintf(&b, "%%%02X", c)
		} else {
			b.WriteByte(c)
		}
	}
	return b.String()
}

// bufferPool lends ReverseProxy its copy buffers.
type bufferPool struct{ p sync.Pool }

func (b *bufferPool) Get() []byte {
	if v, ok := b.p.Get().(*[]byte); ok {
		return *v
	}
	return make([]byte, 32<<10)
}

func (b *bufferPool) Put(buf []byte) { b.p.Put(&buf) }

// tracker counts what the proxy must wait for on Shutdown and close on
// Close, beyond what the http.Server does itself.
type tracker struct {
	mu    sync.Mutex
	n     int                   // guarded by mu
	idle  chan struct{}         // guarded by mu: closed when n drops to 0
	conns map[net.Conn]struct{} // guarded by mu
}

// add counts one more; c, if not nil, is closed by closeAll.
func (t *tracker) add(c net.Conn) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.n == 0 {
		t.idle = make(chan struct{})
	}
	t.n++
	if c != nil {
		if t.conns == nil {
			t.conns = map[net.Conn]struct{}{}
		}
		t.conns[c] = struct{}{}
	}
}

func (t *tracker) done(c net.Conn) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.n--; t.n == 0 {
		close(t.idle)
	}
	delete(t.conns, c)
}

// wait waits until nothing is counted, or ctx ends.
func (t *tracker) wait(ctx context.Context) error {
	for {
		t.mu.Lock()
		n, idle := t.n, t.idle
		t.mu.Unlock()
		if n == 0 {
			return nil
		}
		select {
		case <-idle:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (t *tracker) closeAll() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for c := range t.conns {
		c.Close()
	}
}
