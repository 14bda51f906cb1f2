package observe

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/sluice-mesh/sluice/sockops/flow"
)

// followBuffer is how many flows wait for a following client before the
// ones after are lost to it.
const followBuffer = 1024

// stopTimeout bounds how long Serve waits, once its context ends, for
// responses to a client that does not read.
const stopTimeout = 5 * time.Second

// Server serves the agent's local API over HTTP/1.1:
//
//	GET /v1/status  the agent's Status, as JSON
//	GET /v1/flows   flows as newline-delimited JSON (see docs/observe.md)
//	GET /debug/pprof/...  the agent's Go profiles, for go tool pprof
//
// A Server is safe for concurrent use; it holds no state besides what it
// was made with.
type Server struct {
	store  *flow.Store
	status func() Status
	log    *slog.Logger
	mux    *http.ServeMux
}

// NewServer returns a Server of the flows in store and of the agent's
// status. status is called once per GET /v1/status, from the request's
// goroutine; the Server fills the returned Status's Flows from store,
// except LostKernel, which status reports. log may be nil.
func NewServer(store *flow.Store, status func() Status, log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{store: store, status: status, log: log, mux: http.NewServeMux()}
	s.mux.HandleFunc("GET /v1/status", s.serveStatus)
	s.mux.HandleFunc("GET /v1/flows", s.serveFlows)
	// The socket is the agent's own, root's only: its profiles are no
	// wider exposure than the flows.
	s.mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	s.mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	s.mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	s.mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	return s
}

// Handle serves pattern (as http.ServeMux does) on the API's socket with h:
// what else the agent offers its own node's processes (the L7 proxy's
// feed). Call it before Serve.
func (s *Server) Handle(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

var _ http.Handler = (*Server)(nil)

// Serve serves the API on l until ctx ends, then ends open flow streams,
// waits a bounded time for responses to finish, and returns nil. It
// returns an error only if serving fails before. Serve closes l.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	srv := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second,
		// Requests' contexts end with ctx, which ends --follow streams.
		BaseContext: func(net.Listener) context.Context { return ctx },
		ErrorLog:    slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	select {
	case err := <-served:
		return fmt.Errorf("serve the observe API on %s: %w", l.Addr(), err)
	case <-ctx.Done():
	}
	stop, cancel := context.WithTimeout(context.Background(), stopTimeout)
	defer cancel()
	if err := srv.Shutdown(stop); err != nil {
		srv.Close()
	}
	<-served
	return nil
}

func (s *Server) serveStatus(w http.ResponseWriter, _ *http.Request) {
	st := s.status()
	stats := s.store.Stats()
	st.Flows.Stored, st.Flows.Capacity = stats.Stored, stats.Capacity
	st.Flows.Total, st.Flows.LostSubscribers = stats.Total, stats.LostSubscribers
	b, err := json.Marshal(st)
	if err != nil {
		s.log.Error("encode status", "error", err)
		http.Error(w, "encode status: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(append(b, '\n'))
}

// lostLine is the line a flow stream carries in place of flows a
// following client missed.
type lostLine struct {
	LostFlows uint64 `json:"lost_flows"`
}

func (s *Server) serveFlows(w http.ResponseWriter, r *http.Request) {
	q, err := parseQuery(r.URL.Query(), time.Now())
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var sub *flow.Subscription
	if q.Follow {
		// Subscribe before reading the backlog, so that no flow falls
		// between the two; flows in both are skipped below.
		sub = s.store.Subscribe(q.Filter, followBuffer)
		defer sub.Close()
	}
	var backlog []flow.Flow
	switch {
	case q.Last > 0:
		backlog = s.store.Last(q.Last, q.Filter)
	case !q.Since.IsZero():
		backlog = s.store.Since(q.Since, q.Filter)
	case !q.Follow:
		backlog = s.store.Last(DefaultLast, q.Filter)
	}

	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	send := func(v any) error {
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
		if _, err := w.Write(append(b, '\n')); err != nil {
			return err
		}
		return rc.Flush()
	}
	if err := rc.Flush(); err != nil { // the client learns at once that the query was accepted
		return
	}
	var last uint64
	for _, f := range backlog {
		if err := send(f); err != nil {
			s.log.Debug("flow stream ended", "error", err, "remote", r.RemoteAddr)
			return
		}
		last = f.Seq
	}
	if sub == nil {
		return
	}
	ctx := r.Context()
	var reported uint64
	for {
		select {
		case <-ctx.Done():
			return
		case f, ok := <-sub.C():
			if !ok {
				return
			}
			if f.Seq <= last {
				continue
			}
			if lost := sub.Lost(); lost > reported {
				if err := send(lostLine{LostFlows: lost - reported}); err != nil {
					return
				}
				s.log.Debug("follower lost flows", "lost", lost-reported, "remote", r.RemoteAddr)
				reported = lost
			}
			if err := send(f); err != nil {
				s.log.Debug("flow stream ended", "error", err, "remote", r.RemoteAddr)
				return
			}
		}
	}
}
