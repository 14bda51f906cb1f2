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

	// One family per counter, or per group of counters that share label
	// sets (closed connections and their bytes); each has its own cap.
	opened      *family
	closed      *family
	denied      *family
	auditDenied *family
}

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

	return &Metrics{
		handler:     promhttp.HandlerFor(reg, promhttp.HandlerOpts{}),
		opened:      newFamily(openedName, o.maxLabelSets, overflowed, false, opened),
		closed:      newFamily(closedName, o.maxLabelSets, overflowed, true, closedCount, sent, recv),
		denied:      newFamily(deniedName, o.maxLabelSets, overflowed, false, denied),
		auditDenied: newFamily(auditDeniedName, o.maxLabelSets, overflowed, false, auditDenied),
	}
}

// Observe counts one flow record. It runs for every flow: once a record's
// label set has been seen it takes a read lock and a few atomic adds,
// without allocating. Records of a protocol other than TCP are ignored; an
// empty Protocol is taken as TCP, the only protocol flow records carry.
// Terminate records are not counted: the metric set has no counter for
// connections policy destroyed.
func (m *Metrics) Observe(f flow.Flow) {
	if f.Protocol != "" && f.Protocol != "tcp" {
		return
	}
	switch f.Event {
	case flow.EventOpen:
		if f.Verdict == flow.VerdictAllowed || f.Verdict == flow.VerdictAudit {
			m.opened.series(labelsOf(&f, false)).count.Inc()
		}
	case flow.EventClose:
		s := m.closed.series(labelsOf(&f, true))
		s.count.Inc()
		s.sent.Add(float64(f.BytesSent))
		s.recv.Add(float64(f.BytesRecv))
	case flow.EventDeny:
		switch f.Verdict {
		case flow.VerdictDenied:
			m.denied.series(labelsOf(&f, false)).count.Inc()
		case flow.VerdictAudit:
			m.auditDenied.series(labelsOf(&f, false)).count.Inc()
		}
	}
}

// Handler serves the registry's metrics in the Prometheus exposition
// formats.
func (m *Metrics) Handler() http.Handler {
	return m.handler
}
