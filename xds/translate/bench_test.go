package translate_test

import (
	"fmt"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"google.golang.org/protobuf/proto"

	"github.com/sluice-mesh/sluice/xds/translate"
)

const benchServices, benchEndpoints = 10000, 10

// mesh10k is 10,000 TCP services, each with its own EDS cluster and an
// assignment of 10 endpoints: a large node's full state.
func mesh10k() translate.Resources {
	r := translate.Resources{
		Listeners: make(map[string]*listenerv3.Listener, benchServices),
		Clusters:  make(map[string]*clusterv3.Cluster, benchServices),
		Endpoints: make(map[string]*endpointv3.ClusterLoadAssignment, benchServices),
	}
	for i := range benchServices {
		name := fmt.Sprintf("ns%d/svc%d", i/100, i)
		vip := fmt.Sprintf("10.96.%d.%d", i/250, i%250+1)
		r.Listeners[name] = tcpListener(name, vip, 80, tcpProxy(name))
		r.Clusters[name] = edsCluster(name, "")
		r.Endpoints[name] = assignment10(name, i, 0)
	}
	return r
}

// assignment10 is service i's assignment, its first endpoint of weight w.
func assignment10(name string, i int, w uint32) *endpointv3.ClusterLoadAssignment {
	eps := make([]*endpointv3.LbEndpoint, benchEndpoints)
	for j := range eps {
		eps[j] = lbEndpoint(fmt.Sprintf("10.%d.%d.%d", 128+i/(250*250), i/250%250, i%250), uint32(8000+j))
	}
	if w != 0 {
		withWeight(eps[0], w)
	}
	return cla(name, eps...)
}

// BenchmarkTranslate10k translates mesh10k from scratch.
func BenchmarkTranslate10k(b *testing.B) {
	r := mesh10k()
	b.ReportAllocs()
	for b.Loop() {
		res, err := translate.Translate(r)
		if err != nil {
			b.Fatal(err)
		}
		if len(res.State.Services) != benchServices {
			b.Fatalf("%d services", len(res.State.Services))
		}
	}
}

// swapSetup translates mesh10k with a new Translator, and returns with it
// the names of 100 assignments and two versions of each (the one in mesh10k
// first): each iteration of a benchmark swaps one for its other version.
func swapSetup(b *testing.B) (translate.Resources, *translate.Translator, []string, [][2]*endpointv3.ClusterLoadAssignment) {
	r := mesh10k()
	tr := translate.NewTranslator()
	if _, err := tr.Translate(r); err != nil {
		b.Fatal(err)
	}
	const swapped = 100
	names := make([]string, swapped)
	versions := make([][2]*endpointv3.ClusterLoadAssignment, swapped)
	for k := range versions {
		i := k * (benchServices / swapped)
		names[k] = fmt.Sprintf("ns%d/svc%d", i/100, i)
		versions[k] = [2]*endpointv3.ClusterLoadAssignment{r.Endpoints[names[k]], assignment10(names[k], i, 7)}
	}
	return r, tr, names, versions
}

// BenchmarkTranslatorOneEndpointChange10k translates mesh10k again after
// each change of one endpoint's weight in one assignment (a new message),
// as one EDS update does.
func BenchmarkTranslatorOneEndpointChange10k(b *testing.B) {
	r, tr, names, versions := swapSetup(b)
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		k := n % len(names)
		r.Endpoints[names[k]] = versions[k][(n/len(names)+1)%2]
		n++
		res, err := tr.Translate(r)
		if err != nil {
			b.Fatal(err)
		}
		if len(res.State.Services) != benchServices {
			b.Fatalf("%d services", len(res.State.Services))
		}
	}
}

// BenchmarkTranslatorOneEndpointChangeHinted10k is
// BenchmarkTranslatorOneEndpointChange10k told what changed and given only
// that, as the xDS client does.
func BenchmarkTranslatorOneEndpointChangeHinted10k(b *testing.B) {
	_, tr, names, versions := swapSetup(b)
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		k := n % len(names)
		in := translate.Resources{Endpoints: map[string]*endpointv3.ClusterLoadAssignment{names[k]: versions[k][(n/len(names)+1)%2]}}
		n++
		res, err := tr.TranslateHint(in, &translate.Hint{Endpoints: names[k : k+1]})
		if err != nil {
			b.Fatal(err)
		}
		if len(res.State.Services) != benchServices {
			b.Fatalf("%d services", len(res.State.Services))
		}
	}
}

// BenchmarkTranslatorUnchanged10k translates mesh10k again, unchanged.
func BenchmarkTranslatorUnchanged10k(b *testing.B) {
	r := mesh10k()
	tr := translate.NewTranslator()
	if _, err := tr.Translate(r); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		res, err := tr.Translate(r)
		if err != nil {
			b.Fatal(err)
		}
		if len(res.State.Services) != benchServices {
			b.Fatalf("%d services", len(res.State.Services))
		}
	}
}

// BenchmarkTranslatorFirst10k is a Translator's first translation of
// mesh10k: what it costs over Translate to remember it.
func BenchmarkTranslatorFirst10k(b *testing.B) {
	r := mesh10k()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := translate.NewTranslator().Translate(r); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkValidate10k is model.State.Validate on mesh10k's state: what a
// Translator saves by validating only the services that changed.
func BenchmarkValidate10k(b *testing.B) {
	res, err := translate.Translate(mesh10k())
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := res.State.Validate(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPrepareAssignments10k prepares the 10,000 encoded assignments
// of mesh10k as the xDS client receives them: decoded and prepared with
// Assignment, and prepared from the encoding with AssignmentWire, in the
// same run.
func BenchmarkPrepareAssignments10k(b *testing.B) {
	var encoded [][]byte
	for _, a := range mesh10k().Endpoints {
		e, err := proto.Marshal(a)
		if err != nil {
			b.Fatal(err)
		}
		encoded = append(encoded, e)
	}
	b.Run("decode", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			var p translate.Preparer
			for _, e := range encoded {
				a := new(endpointv3.ClusterLoadAssignment)
				if err := proto.Unmarshal(e, a); err != nil {
					b.Fatal(err)
				}
				if p.Assignment(a.GetClusterName(), a).Err() != nil {
					b.Fatal("refused")
				}
			}
		}
	})
	b.Run("wire", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			var p translate.Preparer
			for _, e := range encoded {
				if _, _, ok := p.AssignmentWire(e); !ok {
					b.Fatal("declined")
				}
			}
		}
	})
}
