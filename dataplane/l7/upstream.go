package l7

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/sluice-mesh/sluice/dataplane/model"
)

const (
	// maxReplayBody is the largest request body kept for retries; a
	// request with a larger body is tried once.
	maxReplayBody = 64 << 10

	idleConnTimeout     = 90 * time.Second
	maxIdleConns        = 1024
	maxIdleConnsPerHost = 64
	dialTimeout         = 5 * time.Second // with the default dialer only

	// A pool unused this long is dropped: by then its idle connections
	// have timed out anyway.
	poolIdle      = 2 * idleConnTimeout
	sweepInterval = 30 * time.Second

	// A retried 5xx response is read this far (so that its connection can
	// be reused), for at most this long.
	drainLimit   = 4 << 10
	drainTimeout = 100 * time.Millisecond
)

var (
	errRouteTimeout  = errors.New("route timeout")
	errPerTryTimeout = errors.New("per-try timeout")
	errRetried       = errors.New("try abandoned for a retry")
	errDrainTimeout  = errors.New("draining a retried response took too long")
	// errDownstreamGone: the client went away (or the proxy was closed)
	// before the response; nobody is left to answer.
	errDownstreamGone = errors.New("downstream went away")
)

// connectError is an upstream connection that could not be made.
type connectError struct {
	addr string
	err  error
}

func (e *connectError) Error() string { return "connect to " + e.addr + ": " + e.err.Error() }
func (e *connectError) Unwrap() error { return e.err }

// localReply is an error the proxy answers itself, with code and msg.
type localReply struct {
	code int
	msg  string
	err  error // the cause, for the record; may be nil
}

func (e *localReply) Error() string {
	if e.err == nil {
		return e.msg
	}
	return e.msg + ": " + e.err.Error()
}

func (e *localReply) Unwrap() error { return e.err }

// failure is why a try did not give a response to pass on.
type failure uint8

const (
	succeeded     failure = iota
	failedStatus          // a 5xx response
	failedConnect         // no connection to the endpoint
	failedReset           // the upstream reset or disconnected before response headers
	failedTimeout         // the per-try timeout fired before response headers
	failedFinal           // nothing a retry can mend: the route timed out, the client left, its body failed
)

// retriable reports whether a failure is worth another try under on, as
// Envoy's retry_on: every condition covers connect failures (Envoy counts
// them as resets), "5xx" and "gateway-error" cover resets and per-try
// timeouts (which would give the client a 502, 503 or 504).
func retriable(on model.RetryOn, f failure, code int) bool {
	switch f {
	case failedConnect:
		return on != 0
	case failedReset, failedTimeout:
		return on&(model.Retry5xx|model.RetryGatewayError|model.RetryReset) != 0
	case failedStatus:
		gateway := code == http.StatusBadGateway || code == http.StatusServiceUnavailable || code == http.StatusGatewayTimeout
		return on&model.Retry5xx != 0 || on&model.RetryGatewayError != 0 && gateway
	}
	return false
}

// poolKey names an upstream connection pool: the client identity its
// connections carry and their protocol.
type poolKey struct {
	identity uint32
	h2       bool
}

// transport is a pool's connections: an h1Transport for HTTP/1.1, an
// http.Transport for HTTP/2.
type transport interface {
	http.RoundTripper
	CloseIdleConnections()
}

var (
	_ transport = (*h1Transport)(nil)
	_ transport = (*http.Transport)(nil)
)

type pool struct {
	tr       transport
	lastUsed time.Time // guarded by upstreams.mu
}

// upstreams is the proxy's http.RoundTripper: it chooses an endpoint for
// each try, retries as the route says, and keeps one transport per
// (identity, protocol) so that a pooled connection only ever carries the
// identity it was dialed with.
type upstreams struct {
	dial func(ctx context.Context, addr netip.AddrPort, identity uint32) (net.Conn, error)
	log  *slog.Logger

	mu        sync.Mutex
	pools     map[poolKey]*pool // guarded by mu
	lastSweep time.Time         // guarded by mu
}

func newUpstreams(dial func(context.Context, netip.AddrPort, uint32) (net.Conn, error), log *slog.Logger) *upstreams {
	if dial == nil {
		d := &net.Dialer{Timeout: dialTimeout}
		dial = func(ctx context.Context, addr netip.AddrPort, _ uint32) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", addr.String())
		}
	}
	return &upstreams{dial: dial, log: log, pools: map[poolKey]*pool{}}
}

// transport returns the pool for key, creating it if needed.
func (u *upstreams) transport(key poolKey) transport {
	now := time.Now()
	u.mu.Lock()
	defer u.mu.Unlock()
	if now.Sub(u.lastSweep) > sweepInterval {
		u.sweepLocked(now)
	}
	p := u.pools[key]
	if p == nil {
		p = &pool{tr: u.newTransport(key)}
		u.pools[key] = p
	}
	p.lastUsed = now
	return p.tr
}

// sweep drops the pools unused for poolIdle. Requests still using a
// dropped pool finish on it.
func (u *upstreams) sweep() {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.sweepLocked(time.Now())
}

func (u *upstreams) sweepLocked(now time.Time) {
	u.lastSweep = now
	for k, p := range u.pools {
		if now.Sub(p.lastUsed) > poolIdle {
			p.tr.CloseIdleConnections()
			delete(u.pools, k)
		}
	}
}

// closeIdle closes the idle connections of every pool.
func (u *upstreams) closeIdle() {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, p := range u.pools {
		p.tr.CloseIdleConnections()
	}
}

func (u *upstreams) newTransport(key poolKey) transport {
	if !key.h2 {
		return newH1Transport(func(ctx context.Context, addr netip.AddrPort) (net.Conn, error) {
			c, err := u.dial(ctx, addr, key.identity)
			if err != nil {
				return nil, &connectError{addr.String(), err}
			}
			return c, nil
		})
	}
	protos := new(http.Protocols)
	protos.SetUnencryptedHTTP2(true)
	return &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			ap, err := netip.ParseAddrPort(addr)
			if err != nil {
				return nil, &connectError{addr, err}
			}
			c, err := u.dial(ctx, ap, key.identity)
			if err != nil {
				return nil, &connectError{addr, err}
			}
			return c, nil
		},
		Protocols:           protos,
		MaxIdleConns:        maxIdleConns,
		MaxIdleConnsPerHost: maxIdleConnsPerHost,
		IdleConnTimeout:     idleConnTimeout,
		// A proxy passes bodies on as they are.
		DisableCompression: true,
	}
}

// RoundTrip sends out, the request ReverseProxy prepared, to the endpoints
// of its exchange's cluster: one try, and as many retries as the route
// allows and the request permits.
func (u *upstreams) RoundTrip(out *http.Request) (*http.Response, error) {
	x, _ := out.Context().Value(exchangeKey{}).(*exchange)
	if x == nil {
		return nil, errors.New("l7: request without an exchange")
	}
	if out.Body != nil && out.Body != http.NoBody {
		limit := 0
		if x.maxTries > 1 {
			limit = maxReplayBody
		}
		x.body = newRequestBody(out.Body, out.ContentLength, limit, x.deadline.start)
	} else {
		x.deadline.start()
	}
	tr := u.transport(poolKey{x.origin.Identity, x.h2})
	var tried []netip.AddrPort
	for try := 1; ; try++ {
		ep, ok := PickEndpoint(x.endpoints, tried, x.rand())
		if !ok {
			return nil, &localReply{code: http.StatusServiceUnavailable, msg: "no healthy upstream in cluster " + x.cluster}
		}
		x.rec.Upstream, x.rec.Tries = ep, try
		res, f, cancel, err := x.try(tr, out, ep)
		if f == succeeded {
			x.rec.Code = res.StatusCode
			if res.StatusCode == http.StatusSwitchingProtocols {
				// The route timeout bounds an upgrade until the switch; the
				// tunnel then lasts as long as its ends want.
				x.deadline.stop()
			}
			return res, nil
		}
		code := 0
		if res != nil {
			code = res.StatusCode
		}
		if try >= x.maxTries || !retriable(x.retryOn, f, code) || !x.body.replayable() {
			if res != nil {
				x.rec.Code = code
				return res, nil
			}
			cancel(err)
			return nil, err
		}
		u.log.Debug("l7: retrying", "cluster", x.cluster, "upstream", ep, "try", try, "status", code, "err", err)
		if res != nil {
			discard(res, cancel)
		}
		cancel(errRetried)
		tried = append(tried, ep)
	}
}

// try sends one try of out to ep. It returns the response to pass on
// (succeeded) or to judge (failedStatus), or why there is none (err, a
// *localReply or errDownstreamGone). cancel ends the try's context; a
// response's body is read under it.
func (x *exchange) try(tr http.RoundTripper, out *http.Request, ep netip.AddrPort) (_ *http.Response, _ failure, cancel context.CancelCauseFunc, _ error) {
	ctx, cancel := context.WithCancelCause(out.Context())
	x.cancels = append(x.cancels, cancel)
	req := out.WithContext(ctx)
	u := *out.URL
	u.Host = ep.String()
	req.URL = &u
	if x.body != nil {
		req.Body = x.body.reader()
	}
	var timer *time.Timer
	if x.perTry > 0 {
		timer = time.AfterFunc(x.perTry, func() { cancel(errPerTryTimeout) })
	}
	res, err := tr.RoundTrip(req)
	if timer != nil && !timer.Stop() && err == nil {
		// The timer fired as the response headers came: the try's context
		// is gone, and the response with it.
		res.Body.Close()
		res, err = nil, errPerTryTimeout
	}
	if err == nil {
		if res.StatusCode >= 500 {
			return res, failedStatus, cancel, nil
		}
		return res, succeeded, cancel, nil
	}
	var ce *connectError
	switch cause := context.Cause(out.Context()); {
	case errors.Is(cause, errRouteTimeout):
		return nil, failedFinal, cancel, &localReply{http.StatusGatewayTimeout, "upstream timeout", err}
	case cause != nil:
		return nil, failedFinal, cancel, errDownstreamGone
	case errors.Is(context.Cause(ctx), errPerTryTimeout):
		return nil, failedTimeout, cancel, &localReply{http.StatusGatewayTimeout, "upstream timeout", err}
	case errors.As(err, &ce):
		return nil, failedConnect, cancel, &localReply{http.StatusServiceUnavailable, "upstream connect error", err}
	case x.body.failed() != nil:
		return nil, failedFinal, cancel, &localReply{http.StatusBadRequest, "reading the request body failed", x.body.failed()}
	}
	return nil, failedReset, cancel, &localReply{http.StatusBadGateway, "upstream reset before response headers", err}
}

// discard reads a little of a response that will not be passed on, so
// that an HTTP/1.1 connection can be reused, and closes it.
func discard(res *http.Response, cancel context.CancelCauseFunc) {
	t := time.AfterFunc(drainTimeout, func() { cancel(errDrainTimeout) })
	io.CopyN(io.Discard, res.Body, drainLimit)
	t.Stop()
	res.Body.Close()
}

// deadline is a route timeout: it cancels the request when it fires, and
// starts when the request has been received in full (as xDS's route
// timeout does). A nil *deadline is no timeout.
type deadline struct {
	d      time.Duration
	cancel context.CancelCauseFunc

	mu      sync.Mutex
	t       *time.Timer // guarded by mu
	stopped bool        // guarded by mu
}

func (t *deadline) start() {
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.t == nil && !t.stopped {
		t.t = time.AfterFunc(t.d, func() { t.cancel(errRouteTimeout) })
	}
}

func (t *deadline) stop() {
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.stopped = true
	if t.t != nil {
		t.t.Stop()
	}
}

// requestBody is a downstream request body shared by the tries of a
// request. It streams: each try reads what earlier tries read from the
// copy kept of it, then the rest from the client, and while the body has
// not outgrown limit it keeps the copy, so that another try can replay
// it. A body larger than limit cannot be replayed.
type requestBody struct {
	src   io.Reader
	limit int
	onEnd func() // called once src is read to its end

	srcMu sync.Mutex // held while reading src, without mu

	mu    sync.Mutex
	buf   []byte      // guarded by mu: src's bytes, while they fit in limit
	total int         // guarded by mu: bytes read from src
	over  bool        // guarded by mu: src outgrew limit; buf is gone
	err   error       // guarded by mu: src's error, io.EOF at its end
	cur   *bodyReader // guarded by mu: the current try's reader
	ended bool        // guarded by mu: onEnd was called
}

var (
	errBodyReplaced = errors.New("request body taken over by another try")
	errBodyTooLarge = errors.New("request body too large to replay")
)

func newRequestBody(src io.Reader, contentLength int64, limit int, onEnd func()) *requestBody {
	b := &requestBody{src: src, limit: limit, onEnd: onEnd}
	if contentLength > int64(limit) {
		b.over = true // no use keeping a copy
	}
	return b
}

// reader returns a reader of the body from its start for a new try; the
// previous try's reader fails from now on.
func (b *requestBody) reader() io.ReadCloser {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.cur = &bodyReader{b: b}
	return b.cur
}

// replayable reports whether another try could send the body again; a
// nil body can always be.
func (b *requestBody) replayable() bool {
	if b == nil {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return !b.over && (b.err == nil || b.err == io.EOF)
}

// failed returns the client's body error, if reading it failed.
func (b *requestBody) failed() error {
	if b == nil {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err == io.EOF {
		return nil
	}
	return b.err
}

type bodyReader struct {
	b   *requestBody
	off int // guarded by b.mu: bytes of the body this reader has returned
}

func (r *bodyReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	b := r.b
	for {
		b.mu.Lock()
		n, err, done := r.fromCopy(p)
		b.mu.Unlock()
		if done {
			return n, err
		}
		b.srcMu.Lock()
		b.mu.Lock()
		// Another reader may have read src while this one waited.
		if r.off < b.total || b.err != nil || b.cur != r {
			b.mu.Unlock()
			b.srcMu.Unlock()
			continue
		}
		b.mu.Unlock()
		n, err = b.src.Read(p)
		b.mu.Lock()
		b.total += n
		if !b.over {
			if len(b.buf)+n <= b.limit {
				b.buf = append(b.buf, p[:n]...)
			} else {
				b.over, b.buf = true, nil
			}
		}
		if err != nil {
			b.err = err
		}
		end := err == io.EOF && !b.ended
		b.ended = b.ended || end
		current := b.cur == r
		if current {
			r.off += n
		}
		b.mu.Unlock()
		b.srcMu.Unlock()
		if end && b.onEnd != nil {
			b.onEnd()
		}
		if !current {
			// What was read is in the copy for the try that replaced this one.
			return 0, errBodyReplaced
		}
		return n, err
	}
}

// fromCopy reads from what src gave so far; done is false if r must read
// src itself.
func (r *bodyReader) fromCopy(p []byte) (n int, err error, done bool) {
	b := r.b
	switch {
	case b.cur != r:
		return 0, errBodyReplaced, true
	case r.off < b.total && b.over:
		return 0, errBodyTooLarge, true
	case r.off < b.total:
		n = copy(p, b.buf[r.off:])
		r.off += n
		return n, nil, true
	case b.err != nil:
		return 0, b.err, true
	}
	return 0, nil, false
}

// Close ends this reader; the body itself is the server's to close.
func (r *bodyReader) Close() error {
	r.b.mu.Lock()
	defer r.b.mu.Unlock()
	if r.b.cur == r {
		r.b.cur = nil
	}
	return nil
}
