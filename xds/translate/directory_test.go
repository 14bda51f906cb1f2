package translate_test

import (
	"reflect"
	"testing"

	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	udpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/udp/udp_proxy/v3"

	"github.com/sluice-mesh/sluice/dataplane/model"
	"github.com/sluice-mesh/sluice/xds/translate"
)

// directory adds to r the workload directory name (its EDS cluster and its
// assignment) listing eps.
func directory(r *translate.Resources, name string, eps ...*endpointv3.LbEndpoint) {
	r.Clusters[name] = edsCluster(name, "")
	r.Endpoints[name] = cla(name, eps...)
}

func client(ip string, sa string) *endpointv3.LbEndpoint {
	return withWorkload(lbEndpoint(ip, 0), map[string]any{
		"spiffe_id": "spiffe://td/ns/shop/sa/" + sa, "namespace": "shop", "service_account": sa, "workload": sa + "-0",
	})
}

func TestDirectory(t *testing.T) {
	if !translate.IsDirectory("sluice.io/workloads") || !translate.IsDirectory("sluice.io/workloads/shop") ||
		translate.IsDirectory("sluice.io/workloadsx") || translate.IsDirectory("web") {
		t.Fatal("IsDirectory names the wrong names")
	}
	r := demo()
	dirB, dirA := translate.Directory+"/b", translate.Directory+"/a"
	directory(&r, dirB, client("10.244.9.2", "batch"))
	directory(&r, dirA, client("10.244.9.1", "cron"), client("fd00::9", "cron"))
	res, err := translate.Translate(r)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(res.State.Services, []model.Service{demoService()}) {
		t.Errorf("services %s, want the demo's alone", dump(res.State.Services))
	}
	w := func(sa string) *model.Workload {
		return &model.Workload{Name: sa + "-0", Namespace: "shop", ServiceAccount: sa, SPIFFEID: "spiffe://td/ns/shop/sa/" + sa}
	}
	want := []model.Peer{ // directories in name order, endpoints in theirs
		{Addr: ip("10.244.9.1"), Workload: w("cron")},
		{Addr: ip("fd00::9"), Workload: w("cron")},
		{Addr: ip("10.244.9.2"), Workload: w("batch")},
	}
	if !reflect.DeepEqual(res.State.Peers, want) {
		t.Errorf("peers %+v, want %+v", res.State.Peers, want)
	}
	if len(res.Missing) != 0 {
		t.Errorf("missing %q: no listener needs a directory", res.Missing)
	}
	names := translate.EDSNames(r)
	if !reflect.DeepEqual(names, []string{dirA, dirB, "web"}) {
		t.Errorf("EDS names %q: a client must subscribe to the directories", names)
	}
	checkTranslator(t, r)

	// A Translator follows a directory's changes and removal, and keeps
	// the peers when no directory changed.
	tr := translate.NewTranslator()
	if _, err := tr.Translate(r); err != nil {
		t.Fatal(err)
	}
	r.Endpoints["web"] = cla("web", lbEndpoint("10.244.1.5", 8080))
	got, err := tr.Translate(r)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got.State.Peers, want) {
		t.Errorf("after a service's change, peers %+v", got.State.Peers)
	}
	delete(r.Endpoints, dirA)
	got, err = tr.Translate(r)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got.State.Peers, want[2:]) {
		t.Errorf("after a directory went, peers %+v, want %+v", got.State.Peers, want[2:])
	}
}

func TestDirectoryRefusals(t *testing.T) {
	dir := translate.Directory + "/shop"
	withDir := func(f func(r *translate.Resources)) func(r *translate.Resources) {
		return func(r *translate.Resources) {
			directory(r, dir, client("10.244.9.1", "cron"))
			f(r)
		}
	}
	runRefusals(t, []refusal{
		{"listener routes to a directory", withDir(func(r *translate.Resources) {
			setProxy(listener(*r), tcpProxy(dir))
		}), "Listener", lname, f0 + ".typed_config.cluster", "is a workload directory"},
		{"weighted split to a directory", withDir(func(r *translate.Resources) {
			setProxy(listener(*r), weighted("web", 1, dir, 1))
		}), "Listener", lname, f0 + ".typed_config.weighted_clusters.clusters[1].name", "has no backends to route to"},
		{"UDP listener to a directory", withDir(func(r *translate.Resources) {
			r.Listeners["dns"] = udpListener("dns", "10.96.0.53", 53, &udpproxyv3.UdpProxyConfig{
				StatPrefix: "dns", RouteSpecifier: udpMatcher(dir)})
		}), "Listener", "dns", "listener_filters[0].typed_config", "is a workload directory"},
		{"STATIC directory cluster", withDir(func(r *translate.Resources) {
			r.Clusters[dir] = staticCluster(dir, client("10.244.9.1", "cron"))
		}), "Cluster", dir, "type", "must be EDS"},
		{"directory cluster reads another assignment", withDir(func(r *translate.Resources) {
			r.Clusters[dir] = edsCluster(dir, "web")
		}), "Cluster", dir, "eds_cluster_config.service_name", "not a workload directory name"},
		{"cluster reads a directory", withDir(func(r *translate.Resources) {
			r.Clusters["web"] = edsCluster("web", dir)
		}), "Cluster", "web", "eds_cluster_config.service_name", "only a cluster named sluice.io/workloads"},
		{"directory endpoint without workload", withDir(func(r *translate.Resources) {
			r.Endpoints[dir] = cla(dir, client("10.244.9.1", "cron"), lbEndpoint("10.244.9.2", 0))
		}), "ClusterLoadAssignment", dir, "endpoints[0].lb_endpoints[1].metadata", "needs filter_metadata[\"sluice.io/workload\"] with spiffe_id"},
		{"directory endpoint without SPIFFE ID", withDir(func(r *translate.Resources) {
			r.Endpoints[dir] = cla(dir, withWorkload(lbEndpoint("10.244.9.2", 0), map[string]any{"namespace": "shop"}))
		}), "ClusterLoadAssignment", dir, "endpoints[0].lb_endpoints[0].metadata", "with spiffe_id"},
		{"directory address twice", withDir(func(r *translate.Resources) {
			r.Endpoints[dir] = cla(dir, client("10.244.9.1", "cron"), client("10.244.9.1", "batch"))
		}), "ClusterLoadAssignment", dir, "endpoints[0].lb_endpoints[1].endpoint.address", "listed twice"},
		{"L7 proxy as a service's endpoint", changeEndpoint(func(e *endpointv3.LbEndpoint) {
			withWorkload(e, map[string]any{"spiffe_id": "spiffe://td/ns/sluice/sa/agent", "l7_proxy": true})
		}), "ClusterLoadAssignment", "web", "endpoints[0].lb_endpoints[0].metadata.filter_metadata[\"sluice.io/workload\"].l7_proxy", "listed in a workload directory"},
		{"l7_proxy not a bool", withDir(func(r *translate.Resources) {
			r.Endpoints[dir] = cla(dir, withWorkload(lbEndpoint("10.244.9.2", 0), map[string]any{"spiffe_id": "spiffe://td/ns/sluice/sa/agent", "l7_proxy": "yes"}))
		}), "ClusterLoadAssignment", dir, "endpoints[0].lb_endpoints[0].metadata.filter_metadata[\"sluice.io/workload\"].l7_proxy", "want a bool"},
		{"port 0 outside a directory", changeEndpoint(func(e *endpointv3.LbEndpoint) {
			e.GetEndpoint().Address = sockAddr("10.244.1.5", 0)
		}), "ClusterLoadAssignment", "web", "endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value", "not a port"},
	})
}

// TestDirectoryProxy checks that a directory lists a node's L7 proxy as a
// peer marked L7Proxy, in both translation paths.
func TestDirectoryProxy(t *testing.T) {
	r := demo()
	dir := translate.Directory + "/proxies"
	directory(&r, dir, withWorkload(lbEndpoint("192.168.0.2", 15001), map[string]any{
		"spiffe_id": "spiffe://td/ns/sluice/sa/agent", "node": "n2", "l7_proxy": true,
	}), client("10.244.9.1", "cron"))
	res, err := translate.Translate(r)
	if err != nil {
		t.Fatal(err)
	}
	want := []model.Peer{
		{Addr: ip("192.168.0.2"), Workload: &model.Workload{SPIFFEID: "spiffe://td/ns/sluice/sa/agent", Node: "n2", L7Proxy: true}},
		{Addr: ip("10.244.9.1"), Workload: &model.Workload{Name: "cron-0", Namespace: "shop", ServiceAccount: "cron", SPIFFEID: "spiffe://td/ns/shop/sa/cron"}},
	}
	if !reflect.DeepEqual(res.State.Peers, want) {
		t.Errorf("peers %+v, want %+v", res.State.Peers, want)
	}
	checkTranslator(t, r)
}
