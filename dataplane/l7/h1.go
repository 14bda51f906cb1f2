package l7

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"net/textproto"
	"sync"
	"syscall"
	"time"
)

// errStaleConn: a reused connection ended before any byte of the
// response, as when the upstream closed it while it was idle. The request
// may never have reached the upstream.
var errStaleConn = errors.New("reused connection closed before the response")

// h1Transport is an HTTP/1.1 http.RoundTripper that sends each request on
// the calling goroutine: it takes an idle connection (or dials one),
// writes the request, reads the response headers, and hands the
// connection back to its idle list when the response body ends. Unlike
// http.Transport it starts no goroutines per connection or request, whose
// hand-offs cost most of a proxied request's time; the price is that an
// idle connection the upstream closed is only noticed when it is next
// taken (see alive), and that a request body is written in full before
// the response is read. Its methods are safe for concurrent use.
type h1Transport struct {
	dial func(ctx context.Context, addr netip.AddrPort) (net.Conn, error)

	maxIdle        int // for all hosts
	maxIdlePerHost int
	idleTimeout    time.Duration

	mu    sync.Mutex
	idle  map[netip.AddrPort][]*h1Conn // guarded by mu: most recently used last
	nidle int                          // guarded by mu
	timer *time.Timer                  // guarded by mu: prunes idle connections; nil when none
}

func newH1Transport(dial func(context.Context, netip.AddrPort) (net.Conn, error)) *h1Transport {
	return &h1Transport{
		dial:           dial,
		maxIdle:        maxIdleConns,
		maxIdlePerHost: maxIdleConnsPerHost,
		idleTimeout:    idleConnTimeout,
		idle:           map[netip.AddrPort][]*h1Conn{},
	}
}

// h1Conn is one upstream connection. It is used by one request at a time:
// the one that took it from the idle list or dialed it.
type h1Conn struct {
	t      *h1Transport
	addr   netip.AddrPort
	c      net.Conn
	br     *bufio.Reader
	bw     *bufio.Writer
	reused bool      // it has carried a request before
	idleAt time.Time // guarded by t.mu while idle
}

// RoundTrip sends req to req.URL.Host, an address:port.
func (t *h1Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	addr, err := netip.ParseAddrPort(req.URL.Host)
	if err != nil {
		closeBody(req)
		return nil, &connectError{req.URL.Host, err}
	}
	for {
		pc, err := t.get(req.Context(), addr)
		if err != nil {
			closeBody(req)
			return nil, err
		}
		res, err := pc.roundTrip(req)
		if err == nil {
			return res, nil
		}
		if !errors.Is(err, errStaleConn) || !replayable(req) {
			return nil, err
		}
		// As http.Transport does: the upstream closed the idle connection
		// as the request went out, so it has not seen it; send it again on
		// a connection of its own.
		if req.GetBody != nil {
			body, gerr := req.GetBody()
			if gerr != nil {
				return nil, err
			}
			r := *req
			r.Body = body
			req = &r
		}
	}
}

// replayable reports whether req may be sent again after a stale
// connection, by http.Transport's rule: its body can be had again, and
// sending it twice does no harm.
func replayable(req *http.Request) bool {
	if req.Body != nil && req.Body != http.NoBody && req.GetBody == nil {
		return false
	}
	switch req.Method {
	case "", http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	_, ok := req.Header["Idempotency-Key"]
	if !ok {
		_, ok = req.Header["X-Idempotency-Key"]
	}
	return ok
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		req.Body.Close()
	}
}

// get takes the most recently used live idle connection to addr, or
// dials a new one.
func (t *h1Transport) get(ctx context.Context, addr netip.AddrPort) (*h1Conn, error) {
	now := time.Now()
	var stale []*h1Conn
	t.mu.Lock()
	conns := t.idle[addr]
	var pc *h1Conn
	for len(conns) > 0 {
		c := conns[len(conns)-1]
		conns[len(conns)-1] = nil
		conns = conns[:len(conns)-1]
		t.nidle--
		if now.Sub(c.idleAt) > t.idleTimeout {
			// The rest are older still.
			stale = append(stale, c)
			for _, c := range conns {
				stale = append(stale, c)
			}
			t.nidle -= len(conns)
			conns = conns[:0]
			break
		}
		pc = c
		break
	}
	if len(conns) == 0 {
		delete(t.idle, addr)
	} else {
		t.idle[addr] = conns
	}
	t.mu.Unlock()
	for _, c := range stale {
		c.c.Close()
	}
	for pc != nil {
		if now.Sub(pc.idleAt) <= t.idleTimeout && alive(pc.c) {
			return pc, nil
		}
		pc.c.Close()
		pc = t.take(addr)
	}
	c, err := t.dial(ctx, addr)
	if err != nil {
		return nil, err
	}
	return &h1Conn{t: t, addr: addr, c: c, br: bufio.NewReader(c), bw: bufio.NewWriter(c)}, nil
}

// take takes the most recently used idle connection to addr, if any.
func (t *h1Transport) take(addr netip.AddrPort) *h1Conn {
	t.mu.Lock()
	defer t.mu.Unlock()
	conns := t.idle[addr]
	if len(conns) == 0 {
		return nil
	}
	c := conns[len(conns)-1]
	conns[len(conns)-1] = nil
	if conns = conns[:len(conns)-1]; len(conns) == 0 {
		delete(t.idle, addr)
	} else {
		t.idle[addr] = conns
	}
	t.nidle--
	return c
}

// put makes pc idle, or closes it if the idle lists are full.
func (t *h1Transport) put(pc *h1Conn) {
	pc.reused = true
	t.mu.Lock()
	if t.nidle >= t.maxIdle || len(t.idle[pc.addr]) >= t.maxIdlePerHost {
		t.mu.Unlock()
		pc.c.Close()
		return
	}
	pc.idleAt = time.Now()
	t.idle[pc.addr] = append(t.idle[pc.addr], pc)
	t.nidle++
	if t.timer == nil {
		t.timer = time.AfterFunc(t.idleTimeout, t.prune)
	}
	t.mu.Unlock()
}

// prune closes the connections idle longer than the idle timeout, and
// runs again when the oldest of the others would be.
func (t *h1Transport) prune() {
	now := time.Now()
	var old []*h1Conn
	t.mu.Lock()
	oldest := now
	for addr, conns := range t.idle {
		n := 0
		for n < len(conns) && now.Sub(conns[n].idleAt) > t.idleTimeout {
			n++
		}
		old = append(old, conns[:n]...)
		if n == len(conns) {
			delete(t.idle, addr)
			continue
		}
		t.idle[addr] = append(conns[:0], conns[n:]...)
		if conns[0].idleAt.Before(oldest) {
			oldest = conns[0].idleAt
		}
	}
	t.nidle -= len(old)
	t.timer = nil
	if t.nidle > 0 {
		t.timer = time.AfterFunc(oldest.Add(t.idleTimeout).Sub(now)+time.Millisecond, t.prune)
	}
	t.mu.Unlock()
	for _, c := range old {
		c.c.Close()
	}
}

// CloseIdleConnections closes every idle connection.
func (t *h1Transport) CloseIdleConnections() {
	t.mu.Lock()
	idle := t.idle
	t.idle, t.nidle = map[netip.AddrPort][]*h1Conn{}, 0
	if t.timer != nil {
		t.timer.Stop()
		t.timer = nil
	}
	t.mu.Unlock()
	for _, conns := range idle {
		for _, c := range conns {
			c.c.Close()
		}
	}
}

// roundTrip sends req on pc and reads the response headers. The response
// body owns pc; on an error pc is closed.
func (pc *h1Conn) roundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	// Closing the connection is what unblocks a write or read when the
	// request is canceled.
	stop := context.AfterFunc(ctx, func() { pc.c.Close() })
	fail := func(err error) (*http.Response, error) {
		stop()
		pc.c.Close()
		if cerr := context.Cause(ctx); cerr != nil {
			err = fmt.Errorf("%w (%w)", cerr, err)
		}
		return nil, err
	}
	var wrote chan error
	if req.Body == nil || req.Body == http.NoBody {
		if err := pc.write(req); err != nil {
			if pc.reused && ctx.Err() == nil {
				err = fmt.Errorf("%w: %w", errStaleConn, err)
			}
			return fail(err)
		}
	} else {
		// A body may stream both ways at once with the response (gRPC-like
		// full duplex): it is written by a goroutine of its own, and the
		// connection is reused only if that has finished when the response
		// ends.
		wrote = make(chan error, 1)
		go func() {
			err := pc.write(req)
			if err != nil {
				// The upstream may be waiting for the rest of the body.
				pc.c.Close()
			}
			wrote <- err
		}()
		fail0 := fail
		fail = func(err error) (*http.Response, error) {
			res, err := fail0(err)
			if errors.Is(err, errStaleConn) && req.GetBody != nil {
				<-wrote // before RoundTrip asks for the body again
			}
			return res, err
		}
	}
	var res *http.Response
	for {
		if _, err := pc.br.Peek(1); err != nil {
			if pc.reused && ctx.Err() == nil && (err == io.EOF || errors.Is(err, net.ErrClosed) || isReset(err)) {
				err = fmt.Errorf("%w: %w", errStaleConn, err)
			}
			return fail(err)
		}
		var err error
		if res, err = http.ReadResponse(pc.br, req); err != nil {
			return fail(err)
		}
		if res.StatusCode >= 200 || res.StatusCode == http.StatusSwitchingProtocols {
			break
		}
		// ReverseProxy passes informational responses on through its
		// client trace, as it does with http.Transport.
		if trace := httptrace.ContextClientTrace(ctx); trace != nil && trace.Got1xxResponse != nil {
			if err := trace.Got1xxResponse(res.StatusCode, textproto.MIMEHeader(res.Header)); err != nil {
				return fail(err)
			}
		}
	}
	if res.StatusCode == http.StatusSwitchingProtocols {
		// The connection is the tunnel's now; it is closed with the
		// request's context as before.
		res.Body = &h1Tunnel{pc: pc, stop: stop}
		return res, nil
	}
	keep := !res.Close && !req.Close
	if res.Body == http.NoBody {
		if stop() && keep && written(wrote) {
			pc.t.put(pc)
		} else {
			pc.c.Close()
		}
		return res, nil
	}
	res.Body = &h1Body{pc: pc, body: res.Body, keep: keep, stop: stop, wrote: wrote}
	return res, nil
}

func (pc *h1Conn) write(req *http.Request) error {
	if err := req.Write(pc.bw); err != nil {
		return err
	}
	return pc.bw.Flush()
}

// h1Body is a response body: at its end its connection goes back to the
// idle list if both ends allow it, and is closed otherwise.
type h1Body struct {
	pc    *h1Conn
	body  io.ReadCloser
	keep  bool
	stop  func() bool
	wrote chan error // the request body's writer, if any

	mu   sync.Mutex
	done bool // guarded by mu: pc was released
}

func (b *h1Body) Read(p []byte) (int, error) {
	n, err := b.body.Read(p)
	if err == io.EOF {
		b.release(true)
	} else if err != nil {
		b.release(false)
	}
	return n, err
}

// Close closes the connection unless the body was read to its end.
func (b *h1Body) Close() error {
	b.release(false)
	return nil
}

func (b *h1Body) release(eof bool) {
	b.mu.Lock()
	done := b.done
	b.done = true
	b.mu.Unlock()
	if done {
		return
	}
	// stop reports false if the context was canceled: the connection is
	// closed, or about to be.
	if b.stop() && eof && b.keep && written(b.wrote) {
		b.pc.t.put(b.pc)
		return
	}
	b.pc.c.Close()
}

// h1Tunnel is the body of a 101 response: the connection, for
// ReverseProxy to copy both ways.
type h1Tunnel struct {
	pc   *h1Conn
	stop func() bool
}

func (t *h1Tunnel) Read(p []byte) (int, error)  { return t.pc.br.Read(p) }
func (t *h1Tunnel) Write(p []byte) (int, error) { return t.pc.c.Write(p) }
func (t *h1Tunnel) Close() error {
	t.stop()
	return t.pc.c.Close()
}

func isReset(err error) bool { return errors.Is(err, syscall.ECONNRESET) }

// written reports whether the request was written in full, without
// waiting for a body still being written.
func written(wrote chan error) bool {
	if wrote == nil {
		return true
	}
	select {
	case err := <-wrote:
		return err == nil
	default:
		return false
	}
}
