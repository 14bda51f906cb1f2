package dataplane

import (
	"encoding/binary"
	"net/netip"
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
	first, err := plan(model.State{Services: []model.Service{a, b}}, Capacity{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	full := flatten(first)
	if len(full.services) != 2 || len(full.backends) != 3 {
		t.Fatalf("flatten: %d services, %d backends", len(full.services), len(full.backends))
	}
	for k, v := range full.services {
		if k.Proto != 6 || k.Family != 4 || ntohs(k.Port) != 80 || (v.Count != 2 && v.Count != 1) {
			t.Errorf("service entry %+v -> %+v", k, v)
		}
	}
	if !diffCompiled(first, first).empty() {
		t.Error("identical services produce a non-empty diff")
	}

	// Dropping a's second endpoint: one service value changes, one backend goes; b costs nothing.
	a2 := service("a", "10.0.0.1", ep("10.1.0.1:80"))
	second, err := plan(model.State{Services: []model.Service{a2, b}}, Capacity{}, first)
	if err != nil {
		t.Fatal(err)
	}
	d := diffCompiled(first, second)
	if len(d.svcPuts) != 1 || len(d.svcDels) != 0 || len(d.bePuts) != 0 || len(d.beDels) != 1 || d.beDels[0].Index != 1 {
		t.Errorf("diff %+v", d)
	}

	// Removing b and adding c, which takes b's id: b's entry goes, c's
	// backend overwrites b's under the shared id.
	c := service("c", "10.0.0.3", ep("10.1.0.7:80"))
	third, err := plan(model.State{Services: []model.Service{a2, c}}, Capacity{}, second)
	if err != nil {
		t.Fatal(err)
	}
	if third[c.Key()].set.ID != second[b.Key()].set.ID {
		t.Fatalf("c did not take b's id")
	}
	d = diffCompiled(second, third)
	if len(d.svcDels) != 1 || len(d.svcPuts) != 1 || len(d.bePuts) != 1 || len(d.beDels) != 0 {
		t.Errorf("diff %+v", d)
	}
	// The result equals flattening from scratch.
	want := flatten(third)
	got := flatten(second)
	for _, k := range d.svcDels {
		delete(got.services, k)
	}
	for k, v := range d.svcPuts {
		got.services[k] = v
	}
	for _, k := range d.beDels {
		delete(got.backends, k)
	}
	for k, v := range d.bePuts {
		got.backends[k] = v
	}
	if !got.equal(want) {
		t.Error("applying the diff does not give the new state")
	}

	// Adoption from kernel entries gives back the same entries.
	adopted, strays := adopt(want)
	if strays != 0 || !flatten(adopted).equal(want) {
		t.Errorf("adopt round trip: strays %d", strays)
	}
}
