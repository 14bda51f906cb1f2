package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sluice-mesh/sluice/dataplane"
	"github.com/sluice-mesh/sluice/dataplane/l7"
	"github.com/sluice-mesh/sluice/sockops"
	"github.com/sluice-mesh/sluice/sockops/flow"
	"github.com/sluice-mesh/sluice/sockops/metrics"
	"github.com/sluice-mesh/sluice/sockops/observe"
	"github.com/sluice-mesh/sluice/xds"
)

// monoToWall converts a CLOCK_MONOTONIC time, as BPF programs read it, to
// wall time.
func monoToWall(mono time.Duration) time.Time {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return time.Now()
	}
	return time.Now().Add(mono - time.Duration(ts.Nano()))
}

// flowSink takes the dataplane's events to the flow store and the metrics.
// Events read before the enricher knows a state (a restarted agent reads
// what happened while none ran before its first state arrives) are held,
// up to hold of them, and named once it does.
type flowSink struct {
	enricher *sockops.Enricher
	store    *flow.Store
	metrics  *metrics.Metrics
	log      *slog.Logger
	hold     int

	named   atomic.Bool       // the enricher has a state: events go straight through
	mu      sync.Mutex        // guards the rest while not named
	held    []dataplane.Event // read before it had
	dropped int               // events beyond hold, recorded unnamed

	lostProxy atomic.Uint64 // request records the L7 proxy reported it dropped
}

// errNoState is what the sink answers the L7 proxy's request records
// before it can name them; the proxy keeps them and sends them again.
var errNoState = errors.New("the agent has no state yet to name them by; send them again later")

// requests records the request records of the node's L7 proxy, and the
// number it reports it dropped. Before the enricher has a state it takes
// none: the proxy keeps them until the agent can name their peers.
func (s *flowSink) requests(records []l7.WireRecord, lost uint64) error {
	if !s.named.Load() {
		return errNoState
	}
	s.lostProxy.Add(lost)
	for i := range records {
		f := s.store.Add(s.enricher.Request(records[i]))
		s.metrics.Observe(f)
	}
	return nil
}

func (s *flowSink) observe(e dataplane.Event) {
	if e.Kind != dataplane.EventOpen && e.Kind != dataplane.EventClose {
		s.log.Debug("policy event", "kind", e.Kind, "source", e.Source, "identity", e.SPIFFEID,
			"destination", e.Destination, "policy", e.Rule.Policy, "rule", e.Rule.Rule)
	}
	if s.named.Load() {
		s.add(e)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.named.Load() { // the state arrived meanwhile: the held ones are recorded
		s.add(e)
		return
	}
	if len(s.held) < s.hold {
		s.held = append(s.held, e)
		return
	}
	s.dropped++
	s.add(e)
}

// stateKnown tells the sink that the enricher has a state: the events held
// are recorded, named, before any later one.
func (s *flowSink) stateKnown() {
	if s.named.Load() {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.named.Load() {
		return
	}
	for _, e := range s.held {
		s.add(e)
	}
	s.named.Store(true)
	if s.dropped > 0 {
		s.log.Warn("flows read before the first state beyond those held are recorded without names", "held", len(s.held), "unnamed", s.dropped)
	}
	s.held = nil
}

func (s *flowSink) add(e dataplane.Event) {
	f := s.store.Add(s.enricher.Flow(e))
	s.metrics.Observe(f)
}

// statusSource assembles the agent's status from its parts.
type statusSource struct {
	node     string
	started  time.Time
	fastPath bool
	capacity dataplane.Capacity
	dp       *dataplane.Dataplane
	client   *xds.Client
	store    *flow.Store
	sink     *flowSink
	ids      *identityApplier
	log      *slog.Logger
}

func (s *statusSource) status() observe.Status {
	st := observe.Status{Node: s.node, Version: version(), Started: s.started}
	if s.client != nil {
		xs := s.client.Status()
		st.XDS = observe.XDS{Server: xs.Server, Mode: string(xs.Mode), Connected: xs.Connected,
			Since: xs.ConnectedSince, Applied: xs.Versions, Reconnects: xs.Reconnects, LastError: xs.LastError,
			NACKs: observe.NACKs{Capacity: xs.CapacityNACKs, Invalid: xs.NACKs - xs.CapacityNACKs}}
		if n := xs.LastNACK; n != nil {
			st.XDS.LastNACK = &observe.NACK{TypeURL: n.Type, Version: n.Version, Error: n.Error, Time: n.At}
		}
	}
	ds := s.dp.Status()
	st.Services, st.Backends = ds.Services, ds.Backends
	st.Dataplane.EntriesWritten = ds.EntriesWritten
	st.Workloads, st.Policies = s.ids.counts()
	fast, err := s.dp.FastPathSockets()
	if err != nil {
		s.log.Warn("status: could not count fast-path sockets", "err", err)
	}
	st.Maps = []observe.MapFill{
		{Name: "services", Entries: ds.Services, Capacity: s.capacity.Services},
		{Name: "backends", Entries: ds.Backends, Capacity: s.capacity.Backends},
		{Name: "workloads", Entries: st.Workloads, Capacity: s.capacity.Workloads},
		{Name: "fast_path", Entries: fast, Capacity: s.capacity.FastPath},
	}
	fs := s.store.Stats()
	st.Flows = observe.Flows{Stored: fs.Stored, Capacity: fs.Capacity, Total: fs.Total, LostSubscribers: fs.LostSubscribers}
	if s.sink != nil {
		st.Flows.LostProxy = s.sink.lostProxy.Load()
	}
	st.FastPath = observe.FastPath{Default: "off", Active: fast}
	if s.fastPath {
		st.FastPath.Default = "on"
	}
	if ks, err := s.dp.Stats(); err == nil {
		st.Flows.LostKernel = ks.EventsLost
		st.FastPath.Registered = ks.FastRegistered
		st.FastPath.Redirected = ks.FastBytes
		st.FastPath.Full = ks.FastFull
		st.FastPath.Fallbacks = ks.FastFallback
	} else {
		s.log.Warn("status: could not read the dataplane's counters", "err", err)
	}
	return st
}

// serveLocal serves the local API on socket and the metrics on addr (if
// not empty) until ctx ends. A failure to start either is returned at
// once; one that happens later is logged.
func serveLocal(ctx context.Context, socket, addr string, api *observe.Server, m *metrics.Metrics, ready metrics.Readiness, log *slog.Logger) (wait func(), err error) {
	var mln net.Listener
	if addr != "" {
		var lc net.ListenConfig
		if mln, err = lc.Listen(ctx, "tcp", addr); err != nil {
			return nil, fmt.Errorf("--metrics-addr %q (want a free host:port, or \"\" for none): %w", addr, err)
		}
	}
	lis, err := observe.Listen(socket)
	if err != nil {
		if mln != nil {
			mln.Close()
		}
		return nil, fmt.Errorf("--socket: %w", err)
	}
	done := make(chan struct{}, 2)
	go func() {
		defer func() { done <- struct{}{} }()
		if err := api.Serve(ctx, lis); err != nil && !errors.Is(err, context.Canceled) {
			log.Error("local API stopped", "socket", socket, "err", err)
		}
	}()
	n := 1
	if addr != "" {
		n++
		go func() {
			defer func() { done <- struct{}{} }()
			if err := m.ServeListener(ctx, mln, ready); err != nil {
				log.Error("metrics and health endpoints stopped", "addr", addr, "err", err)
			}
		}()
	}
	return func() {
		for range n {
			<-done
		}
	}, nil
}
