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

func TestFlattenAndDiff(t *testing.T) {
	s1 := model.State{Services: []model.Service{service("a", "10.0.0.1", ep("10.1.0.1:80"), ep("10.1.0.2:80", weight(3)))}}
	sets1, err := compile(s1, Capacity{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	e1 := flatten(sets1)
	if len(e1.services) != 1 || len(e1.backends) != 2 {
		t.Fatalf("flatten: %d services, %d backends", len(e1.services), len(e1.backends))
	}
	for k, v := range e1.services {
		if v.Count != 2 || v.TotalWeight != 4 || k.Proto != 6 || k.Family != 4 || ntohs(k.Port) != 80 {
			t.Errorf("service entry %+v -> %+v", k, v)
		}
	}
	if ids := serviceIDs(e1); ids[s1.Services[0].Key()] != 1 {
		t.Errorf("ids recovered from entries: %v", ids)
	}

	// Dropping the second endpoint changes the service value and deletes one backend.
	s2 := model.State{Services: []model.Service{service("a", "10.0.0.1", ep("10.1.0.1:80"))}}
	sets2, err := compile(s2, Capacity{}, serviceIDs(e1))
	if err != nil {
		t.Fatal(err)
	}
	d := diffEntries(e1, flatten(sets2))
	if len(d.svcPuts) != 1 || len(d.svcDels) != 0 || len(d.bePuts) != 0 || len(d.beDels) != 1 || d.beDels[0].Index != 1 {
		t.Errorf("diff %+v", d)
	}
	if !diffEntries(e1, e1).empty() || !e1.equal(flatten(sets1)) {
		t.Error("identical entries produce a non-empty diff")
	}
}
