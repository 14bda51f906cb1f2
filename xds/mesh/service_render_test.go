package mesh_test

import (
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/sluice-mesh/sluice/xds/mesh"
)

// TestServiceRender checks that rendering services one at a time gives,
// together, exactly what rendering the whole mesh gives.
func TestServiceRender(t *testing.T) {
	m, err := mesh.Parse("render.yaml", []byte(renderFile))
	if err != nil {
		t.Fatal(err)
	}
	whole := m.Resources()
	var listeners, clusters, endpoints []proto.Message
	for i := range m.Services {
		r := m.Services[i].Render(m.TrustDomain)
		if len(r.Listeners) != len(m.Services[i].Ports) {
			t.Errorf("service %s: %d listeners for %d ports", m.Services[i].Name, len(r.Listeners), len(m.Services[i].Ports))
		}
		for _, l := range r.Listeners {
			listeners = append(listeners, l)
		}
		for _, c := range r.Clusters {
			clusters = append(clusters, c)
		}
		for _, e := range r.Endpoints {
			endpoints = append(endpoints, e)
		}
	}
	for _, c := range []struct {
		kind      string
		got, want []proto.Message
	}{
		{"listener", listeners, toMessages(whole.Listeners)},
		{"cluster", clusters, toMessages(whole.Clusters)},
		{"assignment", endpoints, toMessages(whole.Endpoints)},
	} {
		if len(c.got) != len(c.want) {
			t.Fatalf("%d %ss rendered per service, %d for the mesh", len(c.got), c.kind, len(c.want))
		}
		for _, w := range c.want {
			found := false
			for _, g := range c.got {
				found = found || proto.Equal(g, w)
			}
			if !found {
				t.Errorf("%s %v of the mesh not rendered per service", c.kind, w)
			}
		}
	}
}

func toMessages[M proto.Message](in []M) []proto.Message {
	out := make([]proto.Message, len(in))
	for i, m := range in {
		out[i] = m
	}
	return out
}
