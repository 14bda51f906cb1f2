package metrics

import (
	"strings"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluice-mesh/sluice/sockops/observe"
)

// health exports the agent's observe.Status, read once per scrape, so the
// values are as fresh as the scrape and no goroutine copies them around.
type health struct {
	node   string
	status func() observe.Status

	xdsConnected   *prometheus.Desc
	xdsApplied     *prometheus.Desc
	xdsLastNACK    *prometheus.Desc
	xdsNACKs       *prometheus.Desc
	xdsReconnects  *prometheus.Desc
	xdsChanged     *prometheus.Desc
	entriesWritten *prometheus.Desc
	workloads      *prometheus.Desc
	services       *prometheus.Desc
	backends       *prometheus.Desc
	policyRules    *prometheus.Desc
	mapEntries     *prometheus.Desc
	mapCapacity    *prometheus.Desc
	mapFill        *prometheus.Desc
	flowsStored    *prometheus.Desc
	flowEventsLost *prometheus.Desc
	fpRegistered   *prometheus.Desc
	fpActive       *prometheus.Desc
	fpRedirected   *prometheus.Desc
	fpFallbacks    *prometheus.Desc
	buildInfo      *prometheus.Desc
}

var _ prometheus.Collector = (*health)(nil)

func newHealth(node string, status func() observe.Status) *health {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, nil)
	}
	return &health{
		node:   node,
		status: status,

		xdsConnected: d("sluice_xds_connected",
			"1 while the agent's xDS stream is connected, else 0."),
		xdsApplied: d("sluice_xds_applied_info",
			"The version last applied of each xDS resource type; always 1.",
			"type_url", "version"),
		xdsLastNACK: d("sluice_xds_last_nack_timestamp_seconds",
			"When the agent last refused an xDS response, in Unix seconds; 0 if it never has."),
		xdsNACKs: d("sluice_xds_nacks_total",
			"xDS responses the agent refused: reason=capacity, the state did not fit the dataplane's maps; reason=invalid, anything else.",
			"reason"),
		xdsReconnects: d("sluice_xds_reconnects_total",
			"xDS stream attempts after the first, failed ones included."),
		xdsChanged: d("sluice_xds_connection_changed_timestamp_seconds",
			"When the xDS stream last connected or disconnected, in Unix seconds; 0 until the first stream opened."),
		entriesWritten: d("sluice_dataplane_entries_written_total",
			"Service and backend map entries written or deleted since the agent started; flat while nothing changes."),
		workloads: d("sluice_workloads",
			"Local workloads with a cgroup."),
		services: d("sluice_services",
			"Service VIP:port entries in force."),
		backends: d("sluice_backends",
			"Usable endpoints over all services."),
		policyRules: d("sluice_policy_rules",
			"Policy rules in force."),
		mapEntries: d("sluice_map_entries",
			"Entries in a BPF map.", "map"),
		mapCapacity: d("sluice_map_capacity",
			"The most entries a BPF map holds.", "map"),
		mapFill: d("sluice_map_fill_ratio",
			"Entries over capacity of a BPF map, from 0 to 1.", "map"),
		flowsStored: d("sluice_flows_stored",
			"Flow records the agent holds in memory."),
		flowEventsLost: d("sluice_flow_events_lost_total",
			"Flow events lost: where=kernel, the ring buffer had no room; where=subscribers, slow followers missed them; where=proxy, request records the L7 proxy dropped.",
			"where"),
		fpRegistered: d("sluice_fastpath_sockets_registered_total",
			"Sockets put on the same-node fast path."),
		fpActive: d("sluice_fastpath_sockets_active",
			"Sockets on the same-node fast path now."),
		fpRedirected: d("sluice_fastpath_redirected_bytes_total",
			"Bytes the same-node fast path carried."),
		fpFallbacks: d("sluice_fastpath_fallbacks_total",
			"Sockets (reason=map_full) or connections (reason=peer_not_ready, splice) left on the normal path.",
			"reason"),
		buildInfo: d("sluice_build_info",
			"The agent's version and node; always 1.",
			"version", "node"),
	}
}

// Describe sends every descriptor Collect uses, so the registry checks
// them.
func (h *health) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		h.xdsConnected, h.xdsApplied, h.xdsLastNACK, h.xdsNACKs, h.xdsReconnects, h.xdsChanged,
		h.entriesWritten,
		h.workloads, h.services, h.backends, h.policyRules,
		h.mapEntries, h.mapCapacity, h.mapFill,
		h.flowsStored, h.flowEventsLost,
		h.fpRegistered, h.fpActive, h.fpRedirected, h.fpFallbacks,
		h.buildInfo,
	} {
		ch <- d
	}
}

// Collect reads the status once and sends its metrics.
func (h *health) Collect(ch chan<- prometheus.Metric) {
	st := h.status()

	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- constMetric(d, prometheus.GaugeValue, v, labels)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- constMetric(d, prometheus.CounterValue, float64(v), labels)
	}

	gauge(h.xdsConnected, boolValue(st.XDS.Connected))
	for typeURL, version := range st.XDS.Applied {
		gauge(h.xdsApplied, 1, typeURL, version)
	}
	nack := 0.0
	if n := st.XDS.LastNACK; n != nil {
		nack = unixSeconds(n.Time)
	}
	gauge(h.xdsLastNACK, nack)
	counter(h.xdsNACKs, uint64(st.XDS.NACKs.Capacity), "capacity")
	counter(h.xdsNACKs, uint64(st.XDS.NACKs.Invalid), "invalid")
	counter(h.xdsReconnects, uint64(st.XDS.Reconnects))
	gauge(h.xdsChanged, unixSeconds(st.XDS.Since))
	counter(h.entriesWritten, st.Dataplane.EntriesWritten)

	gauge(h.workloads, float64(st.Workloads))
	gauge(h.services, float64(st.Services))
	gauge(h.backends, float64(st.Backends))
	gauge(h.policyRules, float64(st.Policies))

	seen := make(map[string]bool, len(st.Maps))
	for _, mf := range st.Maps {
		// A repeated name would fail the whole scrape; the first one wins.
		if seen[mf.Name] {
			continue
		}
		seen[mf.Name] = true
		gauge(h.mapEntries, float64(mf.Entries), mf.Name)
		gauge(h.mapCapacity, float64(mf.Capacity), mf.Name)
		if mf.Capacity > 0 {
			gauge(h.mapFill, float64(mf.Entries)/float64(mf.Capacity), mf.Name)
		}
	}

	gauge(h.flowsStored, float64(st.Flows.Stored))
	counter(h.flowEventsLost, st.Flows.LostKernel, "kernel")
	counter(h.flowEventsLost, st.Flows.LostSubscribers, "subscribers")
	counter(h.flowEventsLost, st.Flows.LostProxy, "proxy")

	counter(h.fpRegistered, st.FastPath.Registered)
	gauge(h.fpActive, float64(st.FastPath.Active))
	counter(h.fpRedirected, st.FastPath.Redirected)
	counter(h.fpFallbacks, st.FastPath.Full, "map_full")
	counter(h.fpFallbacks, st.FastPath.Fallbacks, "peer_not_ready")
	counter(h.fpFallbacks, st.FastPath.SpliceExcluded, "splice")

	node := h.node
	if node == "" {
		node = st.Node
	}
	gauge(h.buildInfo, 1, orUnknown(st.Version), orUnknown(node))
}

// constMetric makes label values valid UTF-8 first: they come from xDS
// type URLs, versions and map names, and one invalid value would fail the
// whole scrape.
func constMetric(d *prometheus.Desc, t prometheus.ValueType, v float64, labels []string) prometheus.Metric {
	for i, s := range labels {
		if !utf8.ValidString(s) {
			labels[i] = strings.ToValidUTF8(s, "\uFFFD")
		}
	}
	m, err := prometheus.NewConstMetric(d, t, v, labels...)
	if err != nil {
		return prometheus.NewInvalidMetric(d, err)
	}
	return m
}

// unixSeconds is t in Unix seconds, 0 for the zero time.
func unixSeconds(t time.Time) float64 {
	if t.IsZero() {
		return 0
	}
	return float64(t.UnixNano()) / 1e9
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
