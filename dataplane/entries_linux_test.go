package dataplane

import (
	"encoding/binary"
	"net/netip"
	"slices"
	"testing"

	"github.com/sluice-mesh/sluice/dataplane/model"
)

func TestAddrAndPortEncoding(t *testing.T) {
	w := addrWords(netip.MustParseAddr("10.96.0.1"))
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], w[0])
	if b != [4]byte{10, 96, 0, 1} || w[1]|w[2]|w[3] != 0 {
		t.Errorf("IPv4 words %v are not network order in memory", w)
	}
	for _, s := range []string{"10.96.0.1", "fd00:96::1", "::1"} {
		a := netip.MustParseAddr(s)
		if got := addrFromWords(addrWords(a), family(a)); got != a {
			t.Errorf("round trip of %s gave %s", a, got)
		}
	}
	p := htons(8080)
	var pb [2]byte
	binary.NativeEndian.PutUint16(pb[:], p)
	if pb != [2]byte{0x1f, 0x90} || ntohs(p) != 8080 {
		t.Errorf("port 8080 encoded as %x", pb)
	}
}

func TestDiffFollowsChanges(t *testing.T) {
	a := service("a", "10.0.0.1", ep("10.1.0.1:80"), ep("10.1.0.2:80", weight(3)))
	b := service("b", "10.0.0.2", ep("10.1.0.9:80"))
	p1 := mustPlan(t, model.State{Services: []model.Service{a, b}}, nil, 1)
	first := applyPlan(nil, p1)
	full := flatten(first)
	if len(full.services) != 2 || len(full.backends) != 3 {
		t.Fatalf("flatten: %d services, %d backends", len(full.services), len(full.backends))
	}
	for k, v := range full.services {
		if k.Proto != 6 || k.Family != 4 || ntohs(k.Port) != 80 || (v.Count != 2 && v.Count != 1) {
			t.Errorf("service entry %+v -> %+v", k, v)
		}
	}
	if d := diffPlanned(first, mustPlan(t, model.State{Services: []model.Service{a, b}}, first, 2)); !d.empty() {
		t.Errorf("the same state again produces a diff: %+v", d)
	}

	check := func(prev map[model.ServiceKey]*compiled, p planned) map[model.ServiceKey]*compiled {
		t.Helper()
		next := applyPlan(prev, p)
		d := diffPlanned(prev, p)
		got := flatten(prev)
		for _, k := range d.svcDels {
			delete(got.services, k)
		}
		for i, k := range d.svcKeys {
			got.services[k] = d.svcVals[i]
		}
		for _, k := range d.beDels {
			delete(got.backends, k)
		}
		for i, k := range d.beKeys {
			got.backends[k] = d.beVals[i]
		}
		if !got.equal(flatten(next)) {
			t.Error("applying the diff does not give the new state")
		}
		return next
	}

	// Dropping a's second endpoint: one service value changes, one backend goes; b costs nothing.
	a2 := service("a", "10.0.0.1", ep("10.1.0.1:80"))
	p2 := mustPlan(t, model.State{Services: []model.Service{a2, b}}, first, 3)
	d := diffPlanned(first, p2)
	if len(d.svcKeys) != 1 || len(d.svcDels) != 0 || len(d.beKeys) != 0 || len(d.beDels) != 1 || d.beDels[0].Index != 1 {
		t.Errorf("diff %+v", d)
	}
	second := check(first, p2)

	// Removing b and adding c: b's entries go, c's come under a new id.
	c := service("c", "10.0.0.3", ep("10.1.0.7:80"))
	p3, err := plan(model.State{Services: []model.Service{a2, c}}, Capacity{}, second, nil, p1.nextID, 4)
	if err != nil {
		t.Fatal(err)
	}
	d = diffPlanned(second, p3)
	if len(d.svcDels) != 1 || len(d.svcKeys) != 1 || len(d.beKeys) != 1 || len(d.beDels) != 1 {
		t.Errorf("diff %+v", d)
	}
	third := check(second, p3)

	// Adoption from kernel entries gives back the same entries.
	adopted, strays := adopt(flatten(third))
	if len(strays) != 0 || !flatten(adopted).equal(flatten(third)) {
		t.Errorf("adopt round trip: strays %v", strays)
	}
	// A backend entry beyond a service's count, or of an unknown service, is a stray.
	withStrays := flatten(third)
	id := third[a2.Key()].set.ID
	extra := []serviceSlBeKey{{SvcId: id, Index: 5}, {SvcId: 999, Index: 0}}
	for _, k := range extra {
		withStrays.backends[k] = serviceSlBeValue{CumWeight: 1}
	}
	if _, strays := adopt(withStrays); len(strays) != 2 || !slices.Contains(strays, extra[0]) || !slices.Contains(strays, extra[1]) {
		t.Errorf("strays %v, want %v", strays, extra)
	}
}

func (e kernelEntries) equal(o kernelEntries) bool {
	return mapsEqual(e.services, o.services) && mapsEqual(e.backends, o.backends)
}

func mapsEqual[K, V comparable](a, b map[K]V) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}
