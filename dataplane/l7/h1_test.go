package l7

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"
)

// rawBackend serves each connection with serve, and counts them.
func rawBackend(t *testing.T, serve func(c net.Conn)) (netip.AddrPort, *atomic.Int32) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	var n atomic.Int32
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			go func() {
				defer c.Close()
				serve(c)
			}()
		}
	}()
	return netip.MustParseAddrPort(l.Addr().String()), &n
}

// answer answers up to n requests on c with "ok", keeping it alive.
func answer(c net.Conn, n int) {
	br := bufio.NewReader(c)
	for range n {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		io.Copy(io.Discard, req.Body)
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	}
}

// opaqueConn hides the socket, so that alive cannot peek at it.
type opaqueConn struct{ net.Conn }

func newTestH1(t *testing.T, opaque bool) *h1Transport {
	var d net.Dialer
	tr := newH1Transport(func(ctx context.Context, addr netip.AddrPort) (net.Conn, error) {
		c, err := d.DialContext(ctx, "tcp", addr.String())
		if err != nil || !opaque {
			return c, err
		}
		return opaqueConn{c}, nil
	})
	t.Cleanup(tr.CloseIdleConnections)
	return tr
}

func h1Get(t *testing.T, tr *h1Transport, ctx context.Context, addr netip.AddrPort) (string, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr.String()+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err := tr.RoundTrip(req)
	if err != nil {
		return "", err
	}
	b, err := io.ReadAll(res.Body)
	res.Body.Close()
	return string(b), err
}

func TestH1Reuse(t *testing.T) {
	addr, conns := rawBackend(t, func(c net.Conn) { answer(c, 100) })
	tr := newTestH1(t, false)
	for i := range 3 {
		if body, err := h1Get(t, tr, t.Context(), addr); err != nil || body != "ok" {
			t.Fatalf("request %d: %q, %v", i, body, err)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("3 requests took %d connections, want 1", n)
	}
	tr.CloseIdleConnections()
	if body, err := h1Get(t, tr, t.Context(), addr); err != nil || body != "ok" {
		t.Fatalf("after CloseIdleConnections: %q, %v", body, err)
	}
	if n := conns.Load(); n != 2 {
		t.Errorf("after CloseIdleConnections: %d connections, want 2", n)
	}
}

// TestH1StaleIdle: the upstream closes a connection after one request; the
// next GET goes on a new one without an error, whether the closing is seen
// before the request (alive) or only after it was sent (the retry).
func TestH1StaleIdle(t *testing.T) {
	for _, opaque := range []bool{false, true} {
		name := "peek"
		if opaque {
			name = "retry"
		}
		t.Run(name, func(t *testing.T) {
			addr, conns := rawBackend(t, func(c net.Conn) { answer(c, 1) })
			tr := newTestH1(t, opaque)
			for i := range 3 {
				if body, err := h1Get(t, tr, t.Context(), addr); err != nil || body != "ok" {
					t.Fatalf("request %d: %q, %v", i, body, err)
				}
				time.Sleep(20 * time.Millisecond) // for the close to arrive
			}
			if n := conns.Load(); n != 3 {
				t.Errorf("%d connections, want 3", n)
			}
		})
	}
	t.Run("post", func(t *testing.T) {
		addr, _ := rawBackend(t, func(c net.Conn) { answer(c, 1) })
		tr := newTestH1(t, true)
		if body, err := h1Get(t, tr, t.Context(), addr); err != nil || body != "ok" {
			t.Fatalf("first request: %q, %v", body, err)
		}
		time.Sleep(20 * time.Millisecond)
		req, _ := http.NewRequest(http.MethodPost, "http://"+addr.String()+"/", nil)
		if _, err := tr.RoundTrip(req); !errors.Is(err, errStaleConn) {
			t.Errorf("POST on a stale connection: %v, want errStaleConn (not retried)", err)
		}
	})
}

func TestH1Cancel(t *testing.T) {
	addr, _ := rawBackend(t, func(c net.Conn) {
		http.ReadRequest(bufio.NewReader(c))
		time.Sleep(10 * time.Second)
	})
	tr := newTestH1(t, false)
	ctx, cancel := context.WithCancel(t.Context())
	time.AfterFunc(50*time.Millisecond, cancel)
	start := time.Now()
	_, err := h1Get(t, tr, ctx, addr)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("err %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("the canceled request returned after %v", d)
	}
}

// TestH1NoBody: responses without a body (HEAD, 204) leave the connection
// reusable.
func TestH1NoBody(t *testing.T) {
	addr, conns := rawBackend(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			if req.Method == http.MethodHead {
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
			} else {
				io.WriteString(c, "HTTP/1.1 204 No Content\r\n\r\n")
			}
		}
	})
	tr := newTestH1(t, false)
	for _, m := range []string{http.MethodHead, http.MethodGet, http.MethodHead} {
		req, _ := http.NewRequest(m, "http://"+addr.String()+"/", nil)
		res, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatalf("%s: %v", m, err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("%d connections, want 1", n)
	}
}
