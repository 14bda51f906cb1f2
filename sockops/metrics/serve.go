package metrics

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"time"
)

// shutdownGrace is how long Serve lets scrapes in progress finish once its
// context ends.
const shutdownGrace = 5 * time.Second

// Readiness says whether the agent is ready and why, in a line /readyz
// answers with.
type Readiness func() (ready bool, why string)

// Serve serves, on addr (host:port), /metrics, /healthz (200 while the
// process runs) and /readyz (200 while ready says so, else 503, with its
// reason as the body). It returns nil when ctx ends, once requests in
// progress finish or a few seconds pass, and an error naming addr if it
// cannot listen there. A nil ready is always ready.
func (m *Metrics) Serve(ctx context.Context, addr string, ready Readiness) error {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("serve metrics on %q (want a free host:port): %w", addr, err)
	}
	return m.ServeListener(ctx, ln, ready)
}

// ServeListener is Serve on a listener the caller made (to learn of a
// busy address before starting anything else); it closes ln.
func (m *Metrics) ServeListener(ctx context.Context, ln net.Listener, ready Readiness) error {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", m.handler)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		text(w, http.StatusOK, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if ready == nil {
			text(w, http.StatusOK, "ok")
			return
		}
		ok, why := ready()
		code := http.StatusOK
		if !ok {
			code = http.StatusServiceUnavailable
		}
		text(w, code, why)
	})

	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()

	select {
	case err := <-done:
		return fmt.Errorf("serve metrics on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownGrace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close() // scrapes that outlived the grace period
	}
	<-done
	return nil
}

func text(w http.ResponseWriter, code int, body string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	fmt.Fprintln(w, body)
}
