package l7_test

import (
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/sluice-mesh/sluice/dataplane/l7"
	"github.com/sluice-mesh/sluice/dataplane/model"
)

// TestUpstreamProtocol sends requests of each client protocol to clusters
// of each upstream protocol, to backends that speak only what the cluster
// says: the request goes upstream in the cluster's protocol, converted if
// need be, body and response trailers included.
func TestUpstreamProtocol(t *testing.T) {
	echo := func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Trailer", "X-Upstream-Trailer")
		io.WriteString(w, r.Proto+" "+string(body))
		w.Header().Set("X-Upstream-Trailer", "t")
	}
	h1, h2, both := newBackend(t, echo), newH2OnlyBackend(t, echo), newH2Backend(t, echo)
	for _, tc := range []struct {
		name     string
		proto    model.UpstreamProtocol
		backend  *backend
		h2client bool
		want     string // the protocol the backend sees
	}{
		{"HTTP/2 client, HTTP/1.1 cluster", model.UpstreamHTTP1, h1, true, "HTTP/1.1"},
		{"HTTP/1.1 client, HTTP/1.1 cluster", model.UpstreamHTTP1, h1, false, "HTTP/1.1"},
		{"HTTP/1.1 client, HTTP/2 cluster", model.UpstreamHTTP2, h2, false, "HTTP/2.0"},
		{"HTTP/2 client, HTTP/2 cluster", model.UpstreamHTTP2, h2, true, "HTTP/2.0"},
		{"HTTP/1.1 client, client's protocol", model.UpstreamUseDownstream, both, false, "HTTP/1.1"},
		{"HTTP/2 client, client's protocol", model.UpstreamUseDownstream, both, true, "HTTP/2.0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := start(t, l7.Options{}, service([]model.HTTPRoute{route("web", prefix("/"))}, protoCluster("web", tc.proto, endpoint(t, tc.backend.URL))))
			c, clientProto := f.client(), "HTTP/1.1"
			if tc.h2client {
				c, clientProto = f.h2client(), "HTTP/2.0"
			}
			for i := range 2 { // the second on a pooled connection
				// A body of unknown length: chunked over HTTP/1.1, DATA
				// frames over HTTP/2.
				req, _ := http.NewRequest("POST", f.url("/"), io.MultiReader(strings.NewReader("he"), strings.NewReader("llo")))
				req.Host = "web.shop"
				r := f.do(c, req)
				if want := tc.want + " hello"; r.code != 200 || r.body != want || r.res.Proto != clientProto {
					t.Fatalf("request %d: got %d %q over %s; want 200 %q over %s", i, r.code, r.body, r.res.Proto, want, clientProto)
				}
				// An HTTP/2 backend's response has a Content-Length, which
				// leaves an HTTP/1.1 client no way to get its trailers.
				if got := r.res.Trailer.Get("X-Upstream-Trailer"); got != "t" && (tc.h2client || tc.want != "HTTP/2.0") {
					t.Errorf("request %d: trailer %q, want \"t\"", i, got)
				}
			}
			if rs := f.waitRecords(2); rs[0].Proto != clientProto || rs[0].Code != 200 || rs[0].Err != "" {
				t.Errorf("record %+v", rs[0])
			}
		})
	}
}

// TestConnectToHTTP1Cluster tunnels an HTTP/2 CONNECT stream to a cluster
// of HTTP/1.1 as an HTTP/1.1 CONNECT: after the upstream's 200, bytes both
// ways.
func TestConnectToHTTP1Cluster(t *testing.T) {
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Method != "CONNECT" || r.RequestURI != "db.shop:5432" || r.ProtoMajor != 1 {
			http.Error(w, "want an HTTP/1.1 CONNECT db.shop:5432, got "+r.Proto+" "+r.Method+" "+r.RequestURI, 400)
			return
		}
		hijackEcho(t, w, "HTTP/1.1 200 OK\r\n\r\n")
	})
	f := start(t, l7.Options{}, service([]model.HTTPRoute{route("web", prefix(""))}, cluster("web", endpoint(t, b.URL))))
	connectEcho(t, f)
}

// TestProtocolMismatch sends requests to a cluster said to be of a
// protocol its backend does not speak: the client gets the proxy's 502,
// as from an upstream that resets, and the proxy goes on serving.
func TestProtocolMismatch(t *testing.T) {
	for _, tc := range []struct {
		name    string
		proto   model.UpstreamProtocol
		backend *backend
	}{
		{"HTTP/2 cluster, HTTP/1.1 backend", model.UpstreamHTTP2, newBackend(t, text("hello"))},
		{"HTTP/1.1 cluster, HTTP/2 backend", model.UpstreamHTTP1, newH2OnlyBackend(t, text("hello"))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := start(t, l7.Options{}, service([]model.HTTPRoute{route("web", prefix("/"))}, protoCluster("web", tc.proto, endpoint(t, tc.backend.URL))))
			c := f.client()
			for range 2 {
				if r := f.get(c, "/"); r.code != 502 || r.body != "sluice: upstream reset before response headers\n" {
					t.Errorf("got %d %q; want 502 upstream reset", r.code, r.body)
				}
			}
			if n := f.accepts.Load(); n != 1 {
				t.Errorf("%d client connections, want the same one for both requests", n)
			}
		})
	}
}

func TestNewConfigUpstreamProtocol(t *testing.T) {
	svc := service([]model.HTTPRoute{route("web", prefix("/"))}, protoCluster("web", model.UpstreamUseDownstream+1))
	_, err := l7.NewConfig([]model.Service{svc}, nil)
	if !errors.Is(err, l7.ErrInvalidConfig) || !strings.Contains(err.Error(), `cluster "web": unknown upstream protocol UpstreamProtocol(3)`) {
		t.Errorf("unknown upstream protocol: %v, want ErrInvalidConfig naming the cluster", err)
	}
}
