package metrics

import (
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluice-mesh/sluice/sockops/flow"
)

const (
	openedName      = "sluice_tcp_connections_opened_total"
	closedName      = "sluice_tcp_connections_closed_total"
	deniedName      = "sluice_tcp_connections_denied_total"
	auditDeniedName = "sluice_tcp_connections_audit_denied_total"

	// unknown fills a label the flow record leaves empty, as Istio does.
	unknown = "unknown"
	// overflow replaces the workload, namespace, principal and service
	// labels of a label set folded past its counter's cap.
	overflow = "overflow"
)

// peerLabels are Istio's standard TCP metric labels, in labelSet order.
var peerLabels = []string{
	"reporter",
	"source_workload",
	"source_workload_namespace",
	"source_principal",
	"destination_service",
	"destination_workload",
	"destination_workload_namespace",
	"destination_principal",
}

// closeLabels add fast_path: only at close does a record say whether the
// same-node fast path carried the connection's bytes.
var closeLabels = append(append([]string(nil), peerLabels...), "fast_path")

// labelSet is one series' label values. Being comparable, it keys the
// families' maps without building a string.
type labelSet struct {
	reporter     string
	srcWorkload  string
	srcNamespace string
	srcPrincipal string
	dstService   string
	dstWorkload  string
	dstNamespace string
	dstPrincipal string
	fastPath     bool // always false in families without the fast_path label
}

// labelsOf takes f by pointer so Observe does not copy the record again.
func labelsOf(f *flow.Flow, withFastPath bool) labelSet {
	l := labelSet{
		reporter:     orUnknown(string(f.Reporter)),
		srcWorkload:  orUnknown(f.Source.Workload),
		srcNamespace: orUnknown(f.Source.Namespace),
		srcPrincipal: orUnknown(f.Source.Identity),
		dstService:   unknown,
		dstWorkload:  orUnknown(f.Destination.Workload),
		dstNamespace: orUnknown(f.Destination.Namespace),
		dstPrincipal: orUnknown(f.Destination.Identity),
		fastPath:     withFastPath && f.FastPath,
	}
	if f.Service != nil {
		l.dstService = orUnknown(f.Service.Name)
	}
	return l
}

func orUnknown(s string) string {
	if s == "" {
		return unknown
	}
	return s
}

// folded is the overflow label set l is counted in past the cap. reporter
// and fast_path are kept: they take two values each, and say which end saw
// the connection and which path carried it.
func (l labelSet) folded() labelSet {
	return labelSet{
		reporter:     l.reporter,
		srcWorkload:  overflow,
		srcNamespace: overflow,
		srcPrincipal: overflow,
		dstService:   overflow,
		dstWorkload:  overflow,
		dstNamespace: overflow,
		dstPrincipal: overflow,
		fastPath:     l.fastPath,
	}
}

// values are l's label values in peerLabels (or closeLabels) order, made
// valid UTF-8: client_golang panics on anything else, and the values come
// from workload names and identities the agent does not control.
func (l labelSet) values(withFastPath bool) []string {
	v := []string{
		l.reporter,
		l.srcWorkload, l.srcNamespace, l.srcPrincipal,
		l.dstService,
		l.dstWorkload, l.dstNamespace, l.dstPrincipal,
	}
	if withFastPath {
		v = append(v, strconv.FormatBool(l.fastPath))
	}
	for i, s := range v {
		if !utf8.ValidString(s) {
			v[i] = strings.ToValidUTF8(s, "\uFFFD")
		}
	}
	return v
}

// series holds one label set's counters, resolved once so that counting
// skips client_golang's label hashing.
type series struct {
	count prometheus.Counter
	sent  prometheus.Counter // closed family only
	recv  prometheus.Counter // closed family only
}

// family is one counter, or counters that share label sets, with a cap on
// its distinct label sets. Label sets are never forgotten: a series lives
// as long as the agent, as Istio's do, so the cap bounds memory too.
type family struct {
	name         string
	limit        int
	withFastPath bool
	vecs         []*prometheus.CounterVec // count, then sent and recv if any
	overflowed   prometheus.Counter

	mu     sync.RWMutex
	sets   map[labelSet]*series // guarded by mu; at most limit entries
	folded map[labelSet]*series // guarded by mu; one per reporter and fast_path value
}

func newFamily(name string, limit int, overflowed *prometheus.CounterVec, withFastPath bool, vecs ...*prometheus.CounterVec) *family {
	return &family{
		name:         name,
		limit:        limit,
		withFastPath: withFastPath,
		vecs:         vecs,
		// Made now so the counter reads 0 until the cap is first reached.
		overflowed: overflowed.WithLabelValues(name),
		sets:       make(map[labelSet]*series),
		folded:     make(map[labelSet]*series),
	}
}

// series returns l's counters, or, when the family is full and l is new,
// the overflow series l folds into.
func (fam *family) series(l labelSet) *series {
	fam.mu.RLock()
	s, ok := fam.sets[l]
	full := len(fam.sets) >= fam.limit
	var f *series
	if !ok && full {
		f = fam.folded[l.folded()]
	}
	fam.mu.RUnlock()
	switch {
	case ok:
		return s
	case f != nil:
		fam.overflowed.Inc()
		return f
	}

	fam.mu.Lock()
	defer fam.mu.Unlock()
	if s, ok := fam.sets[l]; ok {
		return s
	}
	if len(fam.sets) < fam.limit {
		s := fam.newSeries(l)
		fam.sets[l] = s
		return s
	}
	fam.overflowed.Inc()
	fl := l.folded()
	if f, ok := fam.folded[fl]; ok {
		return f
	}
	f = fam.newSeries(fl)
	fam.folded[fl] = f
	return f
}

func (fam *family) newSeries(l labelSet) *series {
	v := l.values(fam.withFastPath)
	s := &series{count: fam.vecs[0].WithLabelValues(v...)}
	if len(fam.vecs) == 3 {
		s.sent = fam.vecs[1].WithLabelValues(v...)
		s.recv = fam.vecs[2].WithLabelValues(v...)
	}
	return s
}
