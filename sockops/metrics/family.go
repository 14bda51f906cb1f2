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
	requestsName    = "sluice_requests_total"

	// unknown fills a label the flow record leaves empty, as Istio does.
	unknown = "unknown"
	// overflow replaces the workload, namespace, principal and service
	// labels of a label set folded past its family's cap.
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

// requestLabels add Istio's request_protocol, response_code and
// grpc_response_status ("" for a request that got no gRPC status).
var requestLabels = append(append([]string(nil), peerLabels...), "request_protocol", "response_code", "grpc_response_status")

// labelKind says which labels a family's series have.
type labelKind int

const (
	peerKind    labelKind = iota // peerLabels
	closeKind                    // closeLabels
	requestKind                  // requestLabels
)

// labelSet is one series' label values. Being comparable, it keys the
// families' maps without building a string. The fields a family's
// labelKind lacks stay zero.
type labelSet struct {
	reporter     string
	srcWorkload  string
	srcNamespace string
	srcPrincipal string
	dstService   string
	dstWorkload  string
	dstNamespace string
	dstPrincipal string
	fastPath     bool     // closeKind
	protocol     protocol // requestKind
	code         uint16   // requestKind: formatted only when a series is made
	grpcStatus   uint16   // requestKind: the grpc-status + 1; 0 for none
	// The last four fit in the padding after the strings: the request
	// labels do not make the key of the connection counters longer.
}

// protocol is the request_protocol label, as a number so that labelSet
// stays short.
type protocol uint8

const (
	protocolNone protocol = iota // not a request
	protocolHTTP
	protocolGRPC
	protocolOther
)

func protocolOf(s string) protocol {
	switch s {
	case "http":
		return protocolHTTP
	case "grpc":
		return protocolGRPC
	}
	return protocolOther
}

func (p protocol) String() string {
	switch p {
	case protocolHTTP:
		return "http"
	case protocolGRPC:
		return "grpc"
	}
	return unknown
}

// labelsOf takes f by pointer so Observe does not copy the record again.
func labelsOf(f *flow.Flow, kind labelKind) labelSet {
	l := labelSet{
		reporter:     orUnknown(string(f.Reporter)),
		srcWorkload:  orUnknown(f.Source.Workload),
		srcNamespace: orUnknown(f.Source.Namespace),
		srcPrincipal: orUnknown(f.Source.Identity),
		dstService:   unknown,
		dstWorkload:  orUnknown(f.Destination.Workload),
		dstNamespace: orUnknown(f.Destination.Namespace),
		dstPrincipal: orUnknown(f.Destination.Identity),
	}
	if f.Service != nil {
		l.dstService = orUnknown(f.Service.Name)
	}
	switch kind {
	case closeKind:
		l.fastPath = f.FastPath
	case requestKind:
		l.protocol = protocolOf(f.Protocol)
		if f.HTTP != nil && f.HTTP.Code > 0 && f.HTTP.Code <= 999 {
			l.code = uint16(f.HTTP.Code) // else 0: no status recorded
		}
		if f.HTTP != nil && f.HTTP.GRPCStatus != "" {
			if n, err := strconv.Atoi(f.HTTP.GRPCStatus); err == nil && n >= 0 && n <= 999 {
				l.grpcStatus = uint16(n) + 1 // else 0: none
			}
		}
	}
	return l
}

func orUnknown(s string) string {
	if s == "" {
		return unknown
	}
	return s
}

// folded is the overflow label set l is counted in past the cap. reporter,
// fast_path, request_protocol, response_code and grpc_response_status are
// kept: they take few values each, and say which end saw the connection,
// which path carried it, and whether requests fail.
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
		protocol:     l.protocol,
		code:         l.code,
		grpcStatus:   l.grpcStatus,
	}
}

// values are l's label values in the order of kind's labels, made valid
// UTF-8: client_golang panics on anything else, and the values come from
// workload names and identities the agent does not control.
func (l labelSet) values(kind labelKind) []string {
	v := []string{
		l.reporter,
		l.srcWorkload, l.srcNamespace, l.srcPrincipal,
		l.dstService,
		l.dstWorkload, l.dstNamespace, l.dstPrincipal,
	}
	switch kind {
	case closeKind:
		v = append(v, strconv.FormatBool(l.fastPath))
	case requestKind:
		grpc := ""
		if l.grpcStatus > 0 {
			grpc = strconv.Itoa(int(l.grpcStatus) - 1)
		}
		v = append(v, l.protocol.String(), strconv.Itoa(int(l.code)), grpc)
	}
	for i, s := range v {
		if !utf8.ValidString(s) {
			v[i] = strings.ToValidUTF8(s, "\uFFFD")
		}
	}
	return v
}

// series holds one label set's metrics, resolved once so that counting
// skips client_golang's label hashing.
type series struct {
	count    prometheus.Counter
	sent     prometheus.Counter  // closed family only
	recv     prometheus.Counter  // closed family only
	duration prometheus.Observer // requests family only
}

// family is one metric, or metrics that share label sets, with a cap on
// its distinct label sets. Label sets are never forgotten: a series lives
// as long as the agent, as Istio's do, so the cap bounds memory too.
type family struct {
	name       string
	limit      int
	kind       labelKind
	resolve    func(values []string) *series // the series of label values in kind's order
	overflowed prometheus.Counter

	mu     sync.RWMutex
	sets   map[labelSet]*series // guarded by mu; at most limit entries
	folded map[labelSet]*series // guarded by mu; one per value of the labels folded() keeps
}

func newFamily(name string, limit int, overflowed *prometheus.CounterVec, kind labelKind, resolve func(values []string) *series) *family {
	return &family{
		name:    name,
		limit:   limit,
		kind:    kind,
		resolve: resolve,
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
	return fam.resolve(l.values(fam.kind))
}
