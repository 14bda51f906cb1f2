package l7_test

import (
	"io"
	"net/http"
	"testing"

	"github.com/sluice-mesh/sluice/dataplane/l7"
	"github.com/sluice-mesh/sluice/dataplane/model"
)

// BenchmarkProxy is one keep-alive HTTP/1.1 GET at a time to an upstream,
// direct and through the proxy: the difference is the proxy's latency.
func BenchmarkProxy(b *testing.B) {
	be := newBackend(b, text("hello"))
	f := start(b, l7.Options{Record: func(l7.RequestRecord) {}},
		service([]model.HTTPRoute{route("web", prefix("/"))}, cluster("web", endpoint(b, be.URL))))
	for _, bc := range []struct{ name, url string }{
		{"direct", be.URL},
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
