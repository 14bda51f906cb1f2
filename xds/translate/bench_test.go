package translate_test

import (
	"fmt"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"

	"github.com/sluice-mesh/sluice/xds/translate"
)

// BenchmarkTranslate10k translates 10,000 TCP services, each with its own
// EDS cluster and an assignment of 10 endpoints: a large node's full state.
func BenchmarkTranslate10k(b *testing.B) {
	const services, endpoints = 10000, 10
	r := translate.Resources{
		Listeners: make(map[string]*listenerv3.Listener, services),
		Clusters:  make(map[string]*clusterv3.Cluster, services),
		Endpoints: make(map[string]*endpointv3.ClusterLoadAssignment, services),
	}
	for i := range services {
		name := fmt.Sprintf("ns%d/svc%d", i/100, i)
		vip := fmt.Sprintf("10.96.%d.%d", i/250, i%250+1)
		r.Listeners[name] = tcpListener(name, vip, 80, tcpProxy(name))
		r.Clusters[name] = edsCluster(name, "")
		eps := make([]*endpointv3.LbEndpoint, endpoints)
		for j := range eps {
			eps[j] = lbEndpoint(fmt.Sprintf("10.%d.%d.%d", 128+i/(250*250), i/250%250, i%250), uint32(8000+j))
		}
		r.Endpoints[name] = cla(name, eps...)
	}
	b.ReportAllocs()
	for b.Loop() {
		res, err := translate.Translate(r)
		if err != nil {
			b.Fatal(err)
		}
		if len(res.State.Services) != services {
			b.Fatalf("%d services", len(res.State.Services))
		}
	}
}
