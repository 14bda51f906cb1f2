package l7_test

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/dataplane/l7"
	"github.com/sluice-mesh/sluice/dataplane/model"
)

// flaky answers every odd request with code and every even one with
// "ok" and the SHA-256 of the request body.
func flaky(code int) http.HandlerFunc {
	var n atomic.Int32
	return func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		if n.Add(1)%2 == 1 {
			http.Error(w, "flaky", code)
			return
		}
		fmt.Fprintf(w, "ok %x", sha256.Sum256(body))
	}
}

func retrying(on model.RetryOn, retries uint32, perTry time.Duration) model.HTTPRoute {
	rt := route("web", prefix("/"))
	rt.Action.Retry = &model.RetryPolicy{On: on, NumRetries: retries, PerTryTimeout: perTry}
	return rt
}

func TestRetry5xx(t *testing.T) {
	b := newBackend(t, flaky(503))
	f := start(t, l7.Options{}, service([]model.HTTPRoute{retrying(model.Retry5xx, 1, 0)}, cluster("web", endpoint(t, b.URL))))
	c := f.client()
	for i := range 5 {
		if r := f.get(c, "/"); r.code != 200 || !strings.HasPrefix(r.body, "ok") {
			t.Fatalf("request %d: got %d %q", i, r.code, r.body)
		}
	}
	for _, r := range f.waitRecords(5) {
		if r.Tries != 2 || r.Code != 200 {
			t.Errorf("record: %d tries, code %d; want 2, 200", r.Tries, r.Code)
		}
	}
	if n := b.conns.Load(); n != 1 {
		t.Errorf("backend saw %d connections; a retried response's connection should be reused", n)
	}
}

func TestNoRetry(t *testing.T) {
	b := newBackend(t, flaky(503))
	f := start(t, l7.Options{}, service([]model.HTTPRoute{route("web", prefix("/"))}, cluster("web", endpoint(t, b.URL))))
	if r := f.get(f.client(), "/"); r.code != 503 || r.body != "flaky\n" {
		t.Errorf("got %d %q, want the backend's 503", r.code, r.body)
	}
	if r := f.waitRecords(1)[0]; r.Tries != 1 || r.Code != 503 {
		t.Errorf("record: %d tries, code %d", r.Tries, r.Code)
	}
}

func TestRetryGatewayError(t *testing.T) {
	for _, tc := range []struct {
		code, want, tries int
	}{
		{503, 200, 2},
		{502, 200, 2},
		{500, 500, 1}, // not a gateway error
	} {
		b := newBackend(t, flaky(tc.code))
		f := start(t, l7.Options{}, service([]model.HTTPRoute{retrying(model.RetryGatewayError, 1, 0)}, cluster("web", endpoint(t, b.URL))))
		if r := f.get(f.client(), "/"); r.code != tc.want {
			t.Errorf("backend %d: got %d %q, want %d", tc.code, r.code, r.body, tc.want)
		}
		if r := f.waitRecords(1)[0]; r.Tries != tc.tries {
			t.Errorf("backend %d: %d tries, want %d", tc.code, r.Tries, tc.tries)
		}
	}
}

// TestRetryBody replays a body kept for retries, and does not retry one
// too large to keep.
func TestRetryBody(t *testing.T) {
	for _, tc := range []struct {
		name    string
		size    int
		chunked bool
		want    int
	}{
		{"small", 1000, false, 200},
		{"small chunked", 60 << 10, true, 200},
		{"64 KiB", 64 << 10, false, 200},
		{"large", 100 << 10, false, 503},
		{"large chunked", 100 << 10, true, 503},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newBackend(t, flaky(503))
			f := start(t, l7.Options{}, service([]model.HTTPRoute{retrying(model.Retry5xx, 2, 0)}, cluster("web", endpoint(t, b.URL))))
			body := bytes.Repeat([]byte("0123456789abcdef"), tc.size/16)
			var rd io.Reader = bytes.NewReader(body)
			if tc.chunked {
				rd = io.MultiReader(rd) // hides the length: sent chunked
			}
			req, _ := http.NewRequest("POST", f.url("/"), rd)
			r := f.do(f.client(), req)
			if r.code != tc.want {
				t.Fatalf("got %d %q, want %d", r.code, r.body, tc.want)
			}
			if r.code == 200 && r.body != fmt.Sprintf("ok %x", sha256.Sum256(body)) {
				t.Errorf("the retry sent a different body")
			}
			wantTries := 2
			if tc.want != 200 {
				wantTries = 1
			}
			if rec := f.waitRecords(1)[0]; rec.Tries != wantTries || int(b.requests.Load()) != wantTries {
				t.Errorf("%d tries recorded, backend got %d requests; want %d", rec.Tries, b.requests.Load(), wantTries)
			}
		})
	}
}

// TestRetryConnectFailure retries on a second endpoint when the first
// refuses the connection.
func TestRetryConnectFailure(t *testing.T) {
	b := newBackend(t, text("hello"))
	dead, live := endpoint(t, closedPort(t)), endpoint(t, b.URL)
	first := func() uint64 { return 0 } // the dead endpoint first
	for _, tc := range []struct {
		name  string
		route model.HTTPRoute
		code  int
		tries int
	}{
		{"connect-failure", retrying(model.RetryConnectFailure, 1, 0), 200, 2},
		{"reset", retrying(model.RetryReset, 1, 0), 200, 2},
		{"no retry", route("web", prefix("/")), 503, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := start(t, l7.Options{Rand: first}, service([]model.HTTPRoute{tc.route}, cluster("web", dead, live)))
			r := f.get(f.client(), "/")
			if r.code != tc.code {
				t.Errorf("got %d %q, want %d", r.code, r.body, tc.code)
			}
			if tc.code == 503 && r.body != "sluice: upstream connect error\n" {
				t.Errorf("body %q", r.body)
			}
			rec := f.waitRecords(1)[0]
			if rec.Tries != tc.tries {
				t.Errorf("%d tries, want %d", rec.Tries, tc.tries)
			}
			if want := dead; tc.tries == 2 {
				want = live
				if rec.Upstream.Port() != want.Port {
					t.Errorf("last try went to %s, want %d", rec.Upstream, want.Port)
				}
			}
		})
	}
}

// slowFirst holds its first request until the client gives up on it, and
// answers the others at once.
func slowFirst() http.HandlerFunc {
	var n atomic.Int32
	return func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) == 1 {
			select {
			case <-r.Context().Done():
			case <-time.After(10 * time.Second):
			}
			return
		}
		io.WriteString(w, "fast")
	}
}

func TestPerTryTimeout(t *testing.T) {
	for _, tc := range []struct {
		name  string
		on    model.RetryOn
		retry uint32
		code  int
		tries int
	}{
		{"retried", model.RetryReset, 1, 200, 2},
		{"5xx retried", model.Retry5xx, 1, 200, 2},
		{"connect-failure only", model.RetryConnectFailure, 1, 504, 1},
		{"no retries left", model.RetryReset, 0, 504, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newBackend(t, slowFirst())
			f := start(t, l7.Options{}, service([]model.HTTPRoute{retrying(tc.on, tc.retry, 100*time.Millisecond)}, cluster("web", endpoint(t, b.URL))))
			r := f.get(f.client(), "/")
			if r.code != tc.code {
				t.Errorf("got %d %q, want %d", r.code, r.body, tc.code)
			}
			if tc.code == 504 && r.body != "sluice: upstream timeout\n" {
				t.Errorf("body %q", r.body)
			}
			if rec := f.waitRecords(1)[0]; rec.Tries != tc.tries {
				t.Errorf("%d tries, want %d", rec.Tries, tc.tries)
			}
		})
	}
}

func TestRouteTimeout(t *testing.T) {
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/after-headers" {
			io.WriteString(w, "partial")
			w.(http.Flusher).Flush()
		}
		select {
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
	})
	rt := route("web", prefix("/"))
	rt.Action.Timeout = 150 * time.Millisecond
	// Retries do not extend the route timeout.
	rt.Action.Retry = &model.RetryPolicy{On: model.Retry5xx, NumRetries: 5}
	f := start(t, l7.Options{}, service([]model.HTTPRoute{rt}, cluster("web", endpoint(t, b.URL))))
	c := f.client()
	if r := f.get(c, "/"); r.code != 504 || r.body != "sluice: upstream timeout\n" {
		t.Errorf("before headers: got %d %q, want 504", r.code, r.body)
	}
	if rec := f.waitRecords(1)[0]; rec.Tries != 1 {
		t.Errorf("%d tries; the route timeout is not retried", rec.Tries)
	}

	// After the headers, the response is cut.
	res, err := c.Get(f.url("/after-headers"))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if res.StatusCode != 200 || string(body) != "partial" || err == nil {
		t.Errorf("after headers: got %d %q, %v; want 200 \"partial\" and an error", res.StatusCode, body, err)
	}
	if rec := f.waitRecords(2)[1]; rec.Err != "response cut: upstream timeout" {
		t.Errorf("record error %q", rec.Err)
	}
}

// TestRouteTimeoutH2 cuts an HTTP/2 response by resetting its stream: the
// connection stays usable.
func TestRouteTimeoutH2(t *testing.T) {
	b := newH2Backend(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			io.WriteString(w, "partial")
			w.(http.Flusher).Flush()
			<-r.Context().Done()
			return
		}
		io.WriteString(w, "fast")
	})
	rt := route("web", prefix("/"))
	rt.Action.Timeout = 150 * time.Millisecond
	f := start(t, l7.Options{}, service([]model.HTTPRoute{rt}, protoCluster("web", model.UpstreamHTTP2, endpoint(t, b.URL))))
	c := f.h2client()
	res, err := c.Get(f.url("/slow"))
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(res.Body)
	res.Body.Close()
	if string(body) != "partial" || err == nil || !strings.Contains(err.Error(), "stream error") {
		t.Errorf("got %q, %v; want \"partial\" and a stream error", body, err)
	}
	if r := f.get(c, "/"); r.body != "fast" {
		t.Errorf("next request: %q", r.body)
	}
	if n := f.accepts.Load(); n != 1 {
		t.Errorf("%d connections, want 1", n)
	}
}
