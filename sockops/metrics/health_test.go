package metrics_test

import (
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sluice-mesh/sluice/sockops/metrics"
	"github.com/sluice-mesh/sluice/sockops/observe"
)

var healthNames = []string{
	"sluice_xds_connected",
	"sluice_xds_applied_info",
	"sluice_xds_last_nack_timestamp_seconds",
	"sluice_xds_nacks_total",
	"sluice_xds_reconnects_total",
	"sluice_xds_connection_changed_timestamp_seconds",
	"sluice_dataplane_entries_written_total",
	"sluice_workloads",
	"sluice_services",
	"sluice_backends",
	"sluice_policy_rules",
	"sluice_map_entries",
	"sluice_map_capacity",
	"sluice_map_fill_ratio",
	"sluice_flows_stored",
	"sluice_flow_events_lost_total",
	"sluice_fastpath_sockets_registered_total",
	"sluice_fastpath_sockets_active",
	"sluice_fastpath_redirected_bytes_total",
	"sluice_fastpath_fallbacks_total",
	"sluice_build_info",
}

const healthHelp = `
# HELP sluice_xds_connected 1 while the agent's xDS stream is connected, else 0.
# TYPE sluice_xds_connected gauge
# HELP sluice_xds_applied_info The version last applied of each xDS resource type; always 1.
# TYPE sluice_xds_applied_info gauge
# HELP sluice_xds_last_nack_timestamp_seconds When the agent last refused an xDS response, in Unix seconds; 0 if it never has.
# TYPE sluice_xds_last_nack_timestamp_seconds gauge
# HELP sluice_xds_nacks_total xDS responses the agent refused: reason=capacity, the state did not fit the dataplane's maps; reason=invalid, anything else.
# TYPE sluice_xds_nacks_total counter
# HELP sluice_xds_reconnects_total xDS stream attempts after the first, failed ones included.
# TYPE sluice_xds_reconnects_total counter
# HELP sluice_xds_connection_changed_timestamp_seconds When the xDS stream last connected or disconnected, in Unix seconds; 0 until the first stream opened.
# TYPE sluice_xds_connection_changed_timestamp_seconds gauge
# HELP sluice_dataplane_entries_written_total Service and backend map entries written or deleted since the agent started; flat while nothing changes.
# TYPE sluice_dataplane_entries_written_total counter
# HELP sluice_workloads Local workloads with a cgroup.
# TYPE sluice_workloads gauge
# HELP sluice_services Service VIP:port entries in force.
# TYPE sluice_services gauge
# HELP sluice_backends Usable endpoints over all services.
# TYPE sluice_backends gauge
# HELP sluice_policy_rules Policy rules in force.
# TYPE sluice_policy_rules gauge
# HELP sluice_map_entries Entries in a BPF map.
# TYPE sluice_map_entries gauge
# HELP sluice_map_capacity The most entries a BPF map holds.
# TYPE sluice_map_capacity gauge
# HELP sluice_map_fill_ratio Entries over capacity of a BPF map, from 0 to 1.
# TYPE sluice_map_fill_ratio gauge
# HELP sluice_flows_stored Flow records the agent holds in memory.
# TYPE sluice_flows_stored gauge
# HELP sluice_flow_events_lost_total Flow events lost: where=kernel, the ring buffer had no room; where=subscribers, slow followers missed them; where=proxy, request records the L7 proxy dropped.
# TYPE sluice_flow_events_lost_total counter
# HELP sluice_fastpath_sockets_registered_total Sockets put on the same-node fast path.
# TYPE sluice_fastpath_sockets_registered_total counter
# HELP sluice_fastpath_sockets_active Sockets on the same-node fast path now.
# TYPE sluice_fastpath_sockets_active gauge
# HELP sluice_fastpath_redirected_bytes_total Bytes the same-node fast path carried.
# TYPE sluice_fastpath_redirected_bytes_total counter
# HELP sluice_fastpath_fallbacks_total Sockets (reason=map_full) or connections (reason=peer_not_ready, splice) left on the normal path.
# TYPE sluice_fastpath_fallbacks_total counter
# HELP sluice_build_info The agent's version and node; always 1.
# TYPE sluice_build_info gauge
`

func fixedStatus() observe.Status {
	return observe.Status{
		Node:    "node-a",
		Version: "v0.4.0",
		Started: time.Unix(1700000000, 0),
		XDS: observe.XDS{
			Server:    "10.0.0.2:15010",
			Mode:      "delta",
			Connected: true,
			Since:     time.Unix(1700000050, 500_000_000),
			Applied: map[string]string{
				"type.googleapis.com/envoy.config.listener.v3.Listener": "42",
				"type.googleapis.com/envoy.config.cluster.v3.Cluster":   "17",
			},
			LastNACK: &observe.NACK{
				TypeURL: "type.googleapis.com/envoy.config.cluster.v3.Cluster",
				Version: "18",
				Error:   "bad cluster",
				Time:    time.Unix(1700000123, 500_000_000),
			},
			NACKs:      observe.NACKs{Capacity: 2, Invalid: 5},
			Reconnects: 3,
			LastError:  "rpc error: code = Unavailable",
		},
		Dataplane: observe.Dataplane{EntriesWritten: 250},
		Workloads: 12,
		Services:  30,
		Backends:  95,
		Policies:  7,
		Maps: []observe.MapFill{
			{Name: "sl_services", Entries: 30, Capacity: 16384},
			{Name: "sl_backends", Entries: 95, Capacity: 131072},
			{Name: "sl_services", Entries: 1, Capacity: 1}, // repeated: ignored
			{Name: "sl_empty", Entries: 0, Capacity: 0},    // no ratio
		},
		Flows: observe.Flows{Stored: 4096, Capacity: 8192, Total: 100000, LostKernel: 3, LostSubscribers: 250, LostProxy: 9},
		FastPath: observe.FastPath{
			Default:        "on",
			Registered:     500,
			Active:         40,
			Redirected:     123456789,
			Full:           2,
			Fallbacks:      9,
			SpliceExcluded: 1,
		},
	}
}

func TestHealthReflectsStatus(t *testing.T) {
	m := metrics.New("node-a", fixedStatus)
	want := healthHelp + `
sluice_xds_connected 1
sluice_xds_applied_info{type_url="type.googleapis.com/envoy.config.cluster.v3.Cluster",version="17"} 1
sluice_xds_applied_info{type_url="type.googleapis.com/envoy.config.listener.v3.Listener",version="42"} 1
sluice_xds_last_nack_timestamp_seconds 1.7000001235e+09
sluice_xds_nacks_total{reason="capacity"} 2
sluice_xds_nacks_total{reason="invalid"} 5
sluice_xds_reconnects_total 3
sluice_xds_connection_changed_timestamp_seconds 1.7000000505e+09
sluice_dataplane_entries_written_total 250
sluice_workloads 12
sluice_services 30
sluice_backends 95
sluice_policy_rules 7
sluice_map_entries{map="sl_backends"} 95
sluice_map_entries{map="sl_empty"} 0
sluice_map_entries{map="sl_services"} 30
sluice_map_capacity{map="sl_backends"} 131072
sluice_map_capacity{map="sl_empty"} 0
sluice_map_capacity{map="sl_services"} 16384
sluice_map_fill_ratio{map="sl_backends"} 0.000724792480468750
sluice_map_fill_ratio{map="sl_services"} 0.0018310546875
sluice_flows_stored 4096
sluice_flow_events_lost_total{where="kernel"} 3
sluice_flow_events_lost_total{where="proxy"} 9
sluice_flow_events_lost_total{where="subscribers"} 250
sluice_fastpath_sockets_registered_total 500
sluice_fastpath_sockets_active 40
sluice_fastpath_redirected_bytes_total 1.23456789e+08
sluice_fastpath_fallbacks_total{reason="map_full"} 2
sluice_fastpath_fallbacks_total{reason="peer_not_ready"} 9
sluice_fastpath_fallbacks_total{reason="splice"} 1
sluice_build_info{node="node-a",version="v0.4.0"} 1
`
	url := serve(t, m, nil) + "/metrics"
	if err := testutil.ScrapeAndCompare(url, strings.NewReader(want), healthNames...); err != nil {
		t.Error(err)
	}
}

func TestHealthIsReadAtScrapeTime(t *testing.T) {
	var st atomic.Pointer[observe.Status]
	disconnected := observe.Status{Version: "v0.4.0", XDS: observe.XDS{Connected: false}}
	st.Store(&disconnected)
	m := metrics.New("node-b", func() observe.Status { return *st.Load() })
	url := serve(t, m, nil) + "/metrics"

	s := samples(t, url)
	for series, want := range map[string]float64{
		"sluice_xds_connected":                              0,
		"sluice_xds_last_nack_timestamp_seconds":            0, // never refused one
		"sluice_xds_connection_changed_timestamp_seconds":   0, // never connected
		`sluice_xds_nacks_total{reason="capacity"}`:         0,
		`sluice_xds_nacks_total{reason="invalid"}`:          0,
		"sluice_xds_reconnects_total":                       0,
		"sluice_dataplane_entries_written_total":            0,
		`sluice_build_info{node="node-b",version="v0.4.0"}`: 1,
	} {
		if got, ok := s[series]; !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v", series, got, ok, want)
		}
	}
	if n := sum(s, "sluice_xds_applied_info"); n != 0 {
		t.Errorf("sluice_xds_applied_info has %v series before anything was applied", n)
	}

	connected := fixedStatus()
	st.Store(&connected)
	if got := samples(t, url)["sluice_xds_connected"]; got != 1 {
		t.Errorf("after the stream connected, sluice_xds_connected = %v, want 1", got)
	}
}
