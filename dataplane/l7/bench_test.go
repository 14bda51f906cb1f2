package l7_test

import (
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/sluice-mesh/sluice/dataplane/l7"
	"github.com/sluice-mesh/sluice/dataplane/model"
)

// BenchmarkProxy is one keep-alive HTTP/1.1 GET at a time to an upstream,
// direct, through a plain TCP relay (io.Copy both ways: the least a
// user-space hop costs), and through the proxy. proxy minus direct is the
// proxy's latency; proxy minus relay is what its HTTP work adds to the hop.
func BenchmarkProxy(b *testing.B) {
	be := newBackend(b, text("hello"))
	f := start(b, l7.Options{Record: func(l7.RequestRecord) {}},
		service([]model.HTTPRoute{route("web", prefix("/"))}, cluster("web", endpoint(b, be.URL))))
	relay := startRelay(b, strings.TrimPrefix(be.URL, "http://"))
	for _, bc := range []struct{ name, url string }{
		{"direct", be.URL},
		{"relay", "http://" + relay},
		{"proxy", "http://" + f.addr},
	} {
		b.Run(bc.name, func(b *testing.B) {
			tr := &http.Transport{}
			defer tr.CloseIdleConnections()
			c := &http.Client{Transport: tr}
			url := bc.url + "/bench"
			for b.Loop() {
				res, err := c.Get(url)
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, res.Body)
				res.Body.Close()
				if res.StatusCode != 200 {
					b.Fatalf("status %d", res.StatusCode)
				}
			}
		})
	}
}

// startRelay relays each connection to a TCP listener it returns the
// address of to target, with io.Copy both ways, until the benchmark ends.
func startRelay(b *testing.B, target string) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	b.Cleanup(func() {
		l.Close()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				u, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer u.Close()
				wg.Go(func() {
					_, _ = io.Copy(u, c)
					_ = u.(*net.TCPConn).CloseWrite()
				})
				_, _ = io.Copy(c, u)
			})
		}
	})
	return l.Addr().String()
}
