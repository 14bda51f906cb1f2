// Package metrics exports Sluice's flow and agent metrics to Prometheus.
package metrics

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sluice-mesh/sluice/sockops/flow"
	"github.com/sluice-mesh/sluice/sockops/observe"
)

// DefaultMaxLabelSets is how many distinct label sets each flow counter
// keeps before it folds new ones into its overflow series.
const DefaultMaxLabelSets = 10000

// Metrics owns a Prometheus registry holding Sluice's flow counters, the
// agent's health read at scrape time, and the Go and process collectors.
// Nothing is registered with Prometheus's global registry. All methods are
// safe for concurrent use.
type Metrics struct {
	handler http.Handler

	// One family per counter, or per group of metrics that share label
	// sets (closed connections and their bytes; requests and their
	// durations); each has its own cap.
	opened      *family
	closed      *family
	denied      *family
	auditDenied *family
	requests    *family
}

// requestDurationBuckets are the upper bounds, in seconds, of
// sluice_request_duration_seconds' buckets: 1-2.5-5 steps from half a
// millisecond, for requests within a cluster, to 30 s, for slow ones and
// long route timeouts. Read-only.
var requestDurationBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}

// Option changes how New builds Metrics.
type Option func(*options)

type options struct {
	maxLabelSets int
}

// WithMaxLabelSets caps the distinct label sets each flow counter keeps at
// n (DefaultMaxLabelSets without this option). Once a counter holds n, a
// flow with a label set it has not seen is counted in the counter's
// overflow series instead. n below 1 keeps the default.
func WithMaxLabelSets(n int) Option {
	return func(o *options) {
		if n >= 1 {
			o.maxLabelSets = n
		}
	}
}

// New returns Metrics for the agent on node. status is called once per
// scrape, on the scraping goroutine, for the health metrics; it must be
// safe to call concurrently and should not block. A nil status exports
// no health metrics.
func New(node string, status func() observe.Status, opts ...Option) *Metrics {
	o := options{maxLabelSets: DefaultMaxLabelSets}
	for _, opt := range opts {
		opt(&o)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	if status != nil {
		reg.MustRegister(newHealth(node, status))
	}

	overflowed := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sluice_metrics_label_sets_overflowed_total",
		Help: "Flow records counted in an overflow series because their counter already held its cap of label sets.",
	}, []string{"metric"})
	reg.MustRegister(overflowed)

	counter := func(name, help string, labels []string) *prometheus.CounterVec {
		v := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
		reg.MustRegister(v)
		return v
	}
	opened := counter(openedName,
		"TCP connections established and allowed (including audit: allowed, but a dry-run rule would deny them).",
		peerLabels)
	closedCount := counter(closedName,
		"TCP connections closed.",
		closeLabels)
	sent := counter("sluice_tcp_sent_bytes_total",
		"Bytes sent from source to destination over TCP connections, counted when they close.",
		closeLabels)
	recv := counter("sluice_tcp_received_bytes_total",
		"Bytes received by the source from the destination over TCP connections, counted when they close.",
		closeLabels)
	denied := counter(deniedName,
		"TCP connections refused by policy.",
		peerLabels)
	auditDenied := counter(auditDeniedName,
		"TCP connections a dry-run (audit) policy rule would have refused; they were allowed.",
		peerLabels)
	requests := counter(requestsName,
		"Requests the L7 proxy served, by response code, including those it answered itself (403 denied by HTTP policy, 503 no upstream, 499 client gone).",
		requestLabels)
	durations := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "sluice_request_duration_seconds",
		Help:    "Time from a request's start at the L7 proxy to the end of its response.",
		Buckets: requestDurationBuckets,
	}, requestLabels)
	reg.MustRegister(durations)

	count := func(v *prometheus.CounterVec) func([]string) *series {
		return func(lv []string) *series { return &series{count: v.WithLabelValues(lv...)} }
	}
	return &Metrics{
		handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}),
		opened:  newFamily(openedName, o.maxLabelSets, overflowed, peerKind, count(opened)),
		closed: newFamily(closedName, o.maxLabelSets, overflowed, closeKind, func(lv []string) *series {
			return &series{count: closedCount.WithLabelValues(lv...), sent: sent.WithLabelValues(lv...), recv: recv.WithLabelValues(lv...)}
		}),
		denied:      newFamily(deniedName, o.maxLabelSets, overflowed, peerKind, count(denied)),
		auditDenied: newFamily(auditDeniedName, o.maxLabelSets, overflowed, peerKind, count(auditDenied)),
		requests: newFamily(requestsName, o.maxLabelSets, overflowed, requestKind, func(lv []string) *series {
			return &series{count: requests.WithLabelValues(lv...), duration: durations.WithLabelValues(lv...)}
		}),
	}
}

// Observe counts one flow record. It runs for every flow: once a record's
// label set has been seen it takes a read lock and a few atomic adds,
// without allocating. Request records (EventRequest, with HTTP set) count
// in the request metrics, whatever their protocol. Connection records of
// a protocol other than TCP are ignored; an empty Protocol is taken as
// TCP. Terminate records are not counted: the metric set has no counter
// for connections policy destroyed.
func (m *Metrics) Observe(f flow.Flow) {
	if f.Event == flow.EventRequest {
		if f.HTTP != nil {
			s := m.requests.series(labelsOf(&f, requestKind))
			s.count.Inc()
			s.duration.Observe(f.Duration.Seconds())
		}
		return
	}
	if f.Protocol != "" && f.Protocol != "tcp" {
		return
	}
	switch f.Event {
	case flow.EventOpen:
		if f.Verdict == flow.VerdictAllowed || f.Verdict == flow.VerdictAudit {
			m.opened.series(labelsOf(&f, peerKind)).count.Inc()
		}
	case flow.EventClose:
		s := m.closed.series(labelsOf(&f, closeKind))
		s.count.Inc()
		s.sent.Add(float64(f.BytesSent))
		s.recv.Add(float64(f.BytesRecv))
	case flow.EventDeny:
		switch f.Verdict {
		case flow.VerdictDenied:
			m.denied.series(labelsOf(&f, peerKind)).count.Inc()
		case flow.VerdictAudit:
			m.auditDenied.series(labelsOf(&f, peerKind)).count.Inc()
		}
	}
}

// Handler serves the registry's metrics in the Prometheus exposition
// formats.
func (m *Metrics) Handler() http.Handler {
	return m.handler
}
